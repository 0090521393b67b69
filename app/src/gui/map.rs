//! The map: tiles streamed from the engine at the level the zoom needs, drawn
//! coarse-to-fine so something is always on screen while finer tiles arrive.

use std::collections::{HashMap, HashSet};

use egui::{Color32, Rect, Sense, TextureHandle, TextureOptions, pos2};
use engine::tiles::{Tile, TileKey};

use super::WorkbenchApp;
use super::view::ViewTransform;

/// Tiles kept on the GPU beyond those on screen (256×256 RGBA each: 256 KiB).
const TEXTURE_BUDGET: usize = 768;

/// GPU textures of the tiles received for the current render parameters.
#[derive(Default)]
pub struct TileTextures {
    /// Hash of the render parameters these tiles were made with.
    pub params: u64,
    textures: HashMap<TileKey, (TextureHandle, u64)>,
    failed: HashSet<TileKey>,
    frame: u64,
}

impl std::fmt::Debug for TileTextures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileTextures").field("tiles", &self.textures.len()).finish_non_exhaustive()
    }
}

impl TileTextures {
    pub fn new(params: u64) -> Self {
        Self { params, ..Default::default() }
    }

    /// Uploads a tile. Magnified pixels stay crisp (nearest), minified ones are smoothed.
    pub fn insert(&mut self, ctx: &egui::Context, tile: &Tile) {
        let image = egui::ColorImage::from_rgba_unmultiplied([tile.width as usize, tile.height as usize], &tile.rgba);
        let options = TextureOptions {
            magnification: egui::TextureFilter::Nearest,
            minification: egui::TextureFilter::Linear,
            ..TextureOptions::default()
        };
        let k = tile.key;
        let handle = ctx.load_texture(format!("tile-{}-{}-{}", k.level, k.x, k.y), image, options);
        self.textures.insert(k, (handle, self.frame));
    }

    pub fn contains(&self, key: &TileKey) -> bool {
        self.textures.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.textures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.textures.is_empty()
    }

    pub fn mark_failed(&mut self, keys: impl IntoIterator<Item = TileKey>) {
        self.failed.extend(keys);
    }

    /// Drops every texture (the raster's pixels changed, e.g. new overviews).
    pub fn clear(&mut self) {
        self.textures.clear();
        self.failed.clear();
    }

    /// Drops every texture and switches to new render parameters.
    pub fn reset(&mut self, params: u64) {
        self.clear();
        self.params = params;
    }

    fn texture_for_frame(&mut self, key: &TileKey) -> Option<egui::TextureId> {
        let frame = self.frame;
        self.textures.get_mut(key).map(|(t, used)| {
            *used = frame;
            t.id()
        })
    }

    /// Frees the least recently drawn textures beyond the budget.
    fn evict(&mut self) {
        if self.textures.len() <= TEXTURE_BUDGET {
            return;
        }
        let mut by_age: Vec<(u64, TileKey)> = self.textures.iter().map(|(k, (_, used))| (*used, *k)).collect();
        by_age.sort_unstable();
        let excess = self.textures.len() - TEXTURE_BUDGET;
        for (used, k) in by_age.into_iter().take(excess) {
            if used < self.frame {
                self.textures.remove(&k);
            }
        }
    }
}

/// Draws the map, handles pan/zoom input and asks the engine for missing tiles.
pub fn map_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let rect = ui.max_rect();
    let response = ui.allocate_rect(rect, Sense::click_and_drag());
    app.map_rect = Some(rect);
    let Some(doc) = app.doc.as_mut() else {
        app.cursor_source = None;
        let text = match app.jobs.opening() {
            Some(p) => format!("Opening {} …", p.display()),
            None => {
                "Open a raster: File > Open… (Ctrl+O), drop a file here, or pass a path on the command line.".into()
            }
        };
        ui.painter().text(
            rect.center(),
            egui::Align2::CENTER_CENTER,
            text,
            egui::FontId::proportional(16.0),
            Color32::GRAY,
        );
        return;
    };
    let (w, h) = (doc.info.width, doc.info.height);
    if doc.fit_pending || doc.fitted_to.is_some_and(|r| r != rect) {
        doc.view = ViewTransform::fit(w, h, rect);
        doc.fit_pending = false;
        doc.fitted_to = Some(rect);
    }

    // Input: the overlay's tools take the gestures that edit; any other drag
    // pans, and the wheel (or pinch / ctrl-wheel) zooms about the pointer.
    let edited = super::overlay::overlay_input(app, &response, rect);
    let pans = matches!(app.session.tool, super::session::Tool::Select | super::session::Tool::Refine);
    let Some(doc) = app.doc.as_mut() else { return };
    let view_before = doc.view;
    if response.dragged() && !edited && pans {
        doc.view.pan(response.drag_delta());
    }
    if let Some(pointer) = response.hover_pos() {
        let (scroll, zoom) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
        let factor = f64::from(zoom) * (f64::from(scroll) / 200.0).exp();
        if (factor - 1.0).abs() > 1e-6 {
            doc.view.zoom_at(rect, pointer, factor, ViewTransform::min_zoom_for(w, h));
        }
    }
    if doc.view != view_before {
        doc.fitted_to = None;
    }
    let cursor = response.hover_pos().map(|p| doc.view.screen_to_source(rect, p));
    if cursor != app.cursor_source {
        // The status bar was drawn before the map this frame: show it the new position.
        ui.ctx().request_repaint();
        app.cursor_source = cursor;
    }

    // Which tiles the view needs, at the level that matches the physical zoom.
    let pyramid = doc.info.pyramid();
    let ppp = f64::from(ui.ctx().pixels_per_point());
    let level = pyramid.level_for_zoom(doc.view.zoom * ppp);
    let [x0, y0, x1, y1] = doc.view.visible_source(rect);
    doc.tiles.frame += 1;

    let painter = ui.painter_at(rect);
    // Coarse levels first (fallback while finer tiles stream in), then the wanted level.
    for l in (level..=pyramid.max_level()).rev() {
        for key in pyramid.tiles_in_rect(l, x0, y0, x1, y1) {
            let Some((win, _)) = pyramid.tile_window(key) else { continue };
            if let Some(tex) = doc.tiles.texture_for_frame(&key) {
                let a = doc.view.source_to_screen(rect, [win.x as f64, win.y as f64]);
                let b = doc.view.source_to_screen(rect, [(win.x + win.width) as f64, (win.y + win.height) as f64]);
                painter.image(
                    tex,
                    Rect::from_min_max(a, b),
                    Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0)),
                    Color32::WHITE,
                );
            }
        }
    }
    let outline = Rect::from_min_max(
        doc.view.source_to_screen(rect, [0.0, 0.0]),
        doc.view.source_to_screen(rect, [w as f64, h as f64]),
    );
    painter.rect_stroke(outline, 0.0, egui::Stroke::new(1.0, Color32::from_gray(90)), egui::StrokeKind::Outside);

    // Ask for what is missing: the view's tiles, plus the single coarsest tile as a fallback.
    let mut wanted: Vec<TileKey> = pyramid
        .tiles_in_rect(level, x0, y0, x1, y1)
        .into_iter()
        .filter(|k| !doc.tiles.contains(k) && !doc.tiles.failed.contains(k))
        .collect();
    let top = TileKey { level: pyramid.max_level(), x: 0, y: 0 };
    if level != top.level && !doc.tiles.contains(&top) && !doc.tiles.failed.contains(&top) {
        wanted.insert(0, top);
    }
    let outstanding: &[TileKey] = app.jobs.tiles().map_or(&[], |(_, owed)| owed);
    let same = wanted.len() == outstanding.len() && wanted.iter().all(|k| outstanding.contains(k));
    if !same {
        app.commands.push(super::Command::RequestTiles(wanted));
    }
    doc.tiles.evict();
    // Results over the tiles.
    super::overlay::overlay_paint(app, ui, rect);
}
