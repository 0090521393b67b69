//! Results over the map — masks as filled polygons, outlines, boxes, the
//! selected feature's vertices and handles, the model's area — and the map
//! tools that edit them. Geometry edits go through `engine::edit`, so every
//! one is undoable.

use std::collections::HashMap;

use egui::epaint::{Mesh, PathShape, PathStroke, Vertex};
use egui::{Color32, Pos2, Rect, Response, Shape, Stroke};
use engine::base::PixelBox;
use engine::base::Window;
use engine::edit::{FeatureStore, VertexRef, WorkFeature, nearest_edge, nearest_vertex};
use geo::{Coord, MultiPolygon, TriangulateEarcut};

use super::session::{Drag, DragTarget, Session, Tool};
use super::view::ViewTransform;
use super::{Command, WorkbenchApp};

/// Screen points within which a vertex or handle is grabbed.
const GRAB: f64 = 7.0;

/// A distinct colour per feature (golden-ratio hues).
pub fn feature_colour(id: u64) -> Color32 {
    let h = (id as f32 * 0.618_034).fract();
    let c = egui::ecolor::Hsva::new(h, 0.85, 0.95, 1.0);
    c.into()
}

/// Triangulated fills and bounds, cached per feature until its geometry changes.
#[derive(Default)]
pub struct FillCache {
    fills: HashMap<u64, Fill>,
    /// The store revision the cache was last checked against: while it holds,
    /// cached entries are used without re-hashing their geometry.
    revision: Option<u64>,
}

/// A feature's geometry key, bounds, triangulation vertices (raster pixels) and triangle indices.
struct Fill {
    key: u64,
    bounds: Option<[f64; 4]>,
    vertices: Vec<[f64; 2]>,
    indices: Vec<u32>,
}

impl std::fmt::Debug for FillCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillCache").field("features", &self.fills.len()).finish()
    }
}

fn geometry_key(mp: &MultiPolygon<f64>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in &mp.0 {
        for r in std::iter::once(p.exterior()).chain(p.interiors()) {
            r.0.len().hash(&mut h);
            for c in &r.0 {
                c.x.to_bits().hash(&mut h);
                c.y.to_bits().hash(&mut h);
            }
        }
    }
    h.finish()
}

impl FillCache {
    /// The fill of `f`; `trusted`: the store did not change since the entry was made.
    fn get(&mut self, f: &WorkFeature, trusted: bool) -> &Fill {
        use geo::BoundingRect;
        let fresh = |key| {
            let (mut vertices, mut indices) = (Vec::new(), Vec::new());
            for p in &f.polygons.0 {
                let raw = p.earcut_triangles_raw();
                let base = vertices.len() as u32;
                vertices.extend(raw.vertices);
                indices.extend(raw.triangle_indices.iter().map(|&i| base + i as u32));
            }
            let bounds = f
                .polygons
                .bounding_rect()
                .map(|r| [r.min().x, r.min().y, r.max().x, r.max().y])
                .into_iter()
                .chain(f.bbox)
                .reduce(|a, b| [a[0].min(b[0]), a[1].min(b[1]), a[2].max(b[2]), a[3].max(b[3])]);
            Fill { key, bounds, vertices, indices }
        };
        if trusted && self.fills.contains_key(&f.id) {
            return &self.fills[&f.id];
        }
        let key = geometry_key(&f.polygons)
            ^ f.bbox.map_or(0, |b| b.iter().fold(0u64, |h, v| h.rotate_left(7) ^ v.to_bits()));
        let entry = self.fills.entry(f.id).or_insert_with(|| Fill {
            key: !key,
            bounds: None,
            vertices: vec![],
            indices: vec![],
        });
        if entry.key != key {
            *entry = fresh(key);
        }
        entry
    }

    /// Forgets features that no longer exist; remembers the revision checked.
    fn sync(&mut self, store: &FeatureStore) {
        if self.revision != Some(store.revision()) {
            self.fills.retain(|id, _| store.get(*id).is_some());
        }
        self.revision = Some(store.revision());
    }
}

fn screen(view: &ViewTransform, rect: Rect, c: Coord<f64>) -> Pos2 {
    view.source_to_screen(rect, [c.x, c.y])
}

fn box_corners(b: [f64; 4]) -> [[f64; 2]; 4] {
    [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]
}

fn bounds_visible(view: &ViewTransform, rect: Rect, bounds: Option<[f64; 4]>) -> bool {
    let Some([x0, y0, x1, y1]) = bounds else { return false };
    let a = view.source_to_screen(rect, [x0, y0]);
    let b = view.source_to_screen(rect, [x1, y1]);
    Rect::from_two_pos(a, b).intersects(rect)
}

/// A ring on screen, without vertices closer than a pixel to the last one kept:
/// zoomed out, a 100-vertex ring may span a few dozen pixels.
fn screen_ring(view: &ViewTransform, rect: Rect, coords: &[Coord<f64>]) -> Vec<Pos2> {
    let mut out: Vec<Pos2> = Vec::with_capacity(coords.len());
    for c in coords {
        let p = screen(view, rect, *c);
        if out.last().is_none_or(|q| (p - *q).length_sq() >= 1.0) {
            out.push(p);
        }
    }
    out
}

/// Draws one feature: fill (the mask), ring outlines, box.
fn paint_feature(
    shapes: &mut Vec<Shape>,
    mesh: &mut Mesh,
    fill: &Fill,
    view: &ViewTransform,
    rect: Rect,
    f: &WorkFeature,
    emphasis: u8,
) {
    let colour = feature_colour(f.id);
    let tint = colour.gamma_multiply(if emphasis > 0 { 0.45 } else { 0.3 });
    let base = mesh.vertices.len() as u32;
    mesh.vertices.extend(fill.vertices.iter().map(|v| Vertex {
        pos: view.source_to_screen(rect, *v),
        uv: egui::epaint::WHITE_UV,
        color: tint,
    }));
    mesh.indices.extend(fill.indices.iter().map(|i| base + i));
    let width = [1.2, 2.0, 2.5][usize::from(emphasis.min(2))];
    for p in &f.polygons.0 {
        for r in std::iter::once(p.exterior()).chain(p.interiors()) {
            let n = r.0.len().saturating_sub(1);
            let points = screen_ring(view, rect, &r.0[..n]);
            if points.len() >= 2 {
                shapes.push(Shape::Path(PathShape::closed_line(points, PathStroke::new(width, colour))));
            }
        }
    }
    if let Some(b) = f.bbox {
        let c = box_corners(b).map(|p| view.source_to_screen(rect, p));
        let stroke = Stroke::new(if emphasis > 0 { 2.0 } else { 1.0 }, colour.gamma_multiply(0.9));
        shapes.extend(Shape::dashed_line(&[c[0], c[1], c[2], c[3], c[0]], stroke, 6.0, 4.0));
    }
}

/// Where the model will look, as a rectangle in raster pixels.
pub fn area_window(app: &WorkbenchApp) -> Option<Window> {
    use super::session::AreaMode;
    let doc = app.doc.as_ref()?;
    let (w, h) = (doc.info.width, doc.info.height);
    match app.session.area_mode {
        AreaMode::Whole => Some(Window::full(w, h)),
        AreaMode::Drawn => app.session.drawn_area,
        AreaMode::View => {
            let rect = app.map_rect?;
            let [x0, y0, x1, y1] = doc.view.visible_source(rect);
            clip_window(x0, y0, x1, y1, w, h)
        }
    }
}

/// The whole-pixel window covering [x0,x1)×[y0,y1), clipped to the raster.
pub fn clip_window(x0: f64, y0: f64, x1: f64, y1: f64, w: u64, h: u64) -> Option<Window> {
    let (xa, xb) = (x0.min(x1).floor().max(0.0), x0.max(x1).ceil().min(w as f64));
    let (ya, yb) = (y0.min(y1).floor().max(0.0), y0.max(y1).ceil().min(h as f64));
    (xb - xa >= 1.0 && yb - ya >= 1.0).then_some(Window {
        x: xa as u64,
        y: ya as u64,
        width: (xb - xa) as u64,
        height: (yb - ya) as u64,
    })
}

/// A rectangle drawn on the map: its corners snapped to the nearest pixel corners, clipped.
pub fn snap_window(a: [f64; 2], b: [f64; 2], w: u64, h: u64) -> Option<Window> {
    clip_window(a[0].round(), a[1].round(), b[0].round(), b[1].round(), w, h)
}

/// The window SAM sees for a hand-drawn box: the box with as much context again
/// around it (at least 256 px), clipped to the raster.
pub fn context_window(b: &PixelBox, w: u64, h: u64) -> Option<Window> {
    let (bw, bh) = (b.x2 - b.x1, b.y2 - b.y1);
    let side = bw.max(bh).max(128.0);
    let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
    clip_window(cx - side, cy - side, cx + side, cy + side, w, h)
}

/// Runs the current tool on this frame's pointer input. Returns true when the
/// gesture was an edit (the map must not pan with it).
pub fn overlay_input(app: &mut WorkbenchApp, response: &Response, rect: Rect) -> bool {
    let Some(doc) = app.doc.as_ref() else { return false };
    let view = doc.view;
    let (rw, rh) = (doc.info.width, doc.info.height);
    let to_source = |p: Pos2| {
        let s = view.screen_to_source(rect, p);
        Coord { x: s[0], y: s[1] }
    };
    let tol = GRAB / view.zoom;
    let s = &mut app.session;
    let pointer = response.hover_pos();
    let mut consumed = false;

    // Hover highlight: looked up when the pointer moves, not during a drag.
    let moved = response.ctx.input(|i| i.pointer.delta() != egui::Vec2::ZERO);
    if pointer.is_none() {
        s.hovered = None;
    } else if moved && s.drag.is_none() && s.drawing.is_none() {
        s.hovered = pointer.and_then(|p| s.features.feature_at(to_source(p)));
    }

    match s.tool {
        Tool::Select => consumed |= select_input(s, response, &to_source, tol),
        Tool::DrawBox | Tool::DrawArea | Tool::DrawExemplar => {
            consumed = response.dragged() || response.drag_stopped();
            let origin = response.ctx.input(|i| i.pointer.press_origin());
            if response.drag_started()
                && let Some(p) = origin.or(response.interact_pointer_pos())
            {
                let a = to_source(p);
                s.drawing = Some(([a.x, a.y], [a.x, a.y]));
            }
            if let (Some(d), Some(p)) = (s.drawing.as_mut(), response.interact_pointer_pos()) {
                let b = to_source(p);
                d.1 = [b.x, b.y];
            }
            if response.drag_stopped()
                && let Some((a, b)) = s.drawing.take()
                && let Some(win) = snap_window(a, b, rw, rh)
            {
                if s.tool == Tool::DrawArea {
                    s.drawn_area = Some(win);
                    s.area_mode = super::session::AreaMode::Drawn;
                    s.tool = Tool::Select;
                } else if s.tool == Tool::DrawExemplar {
                    let bbox = PixelBox {
                        x1: win.x as f64,
                        y1: win.y as f64,
                        x2: (win.x + win.width) as f64,
                        y2: (win.y + win.height) as f64,
                    };
                    s.find.exemplars.push(engine::segment::concept::Exemplar { bbox, positive: !s.find.negative });
                } else {
                    let bx = PixelBox {
                        x1: win.x as f64,
                        y1: win.y as f64,
                        x2: (win.x + win.width) as f64,
                        y2: (win.y + win.height) as f64,
                    };
                    if let Some(window) = context_window(&bx, rw, rh) {
                        app.commands.push(Command::SegmentBox { window, bbox: bx });
                    }
                }
            }
        }
        Tool::Refine => {
            let click = if response.clicked() {
                Some(true)
            } else if response.secondary_clicked() {
                Some(false)
            } else {
                None
            };
            if let (Some(positive), Some(p)) = (click, response.interact_pointer_pos())
                && let Some(feature) = s.selected
            {
                consumed = true;
                let at = to_source(p);
                app.commands.push(Command::Refine { feature, at: [at.x, at.y], positive });
            }
        }
    }

    consumed
}

/// The select tool: grabbing a box corner, a vertex or a box edge and dragging
/// it (one undoable step when released), then clicks. True while dragging.
fn select_input(s: &mut Session, response: &Response, to_source: &impl Fn(Pos2) -> Coord, tol: f64) -> bool {
    let mut consumed = false;
    // Where the button went down, not where the drag threshold was crossed.
    let origin = response.ctx.input(|i| i.pointer.press_origin());
    if response.drag_started()
        && let Some(p) = origin.or(response.interact_pointer_pos())
        && let Some(id) = s.selected
        && let Some(f) = s.features.get(id)
    {
        let at = to_source(p);
        // Box handles first (drawn larger), then the polygons' vertices, then the box's edges.
        let corner = f.bbox.and_then(|b| box_corners(b).iter().position(|c| (c[0] - at.x).hypot(c[1] - at.y) <= tol));
        let on_box_edge = f.bbox.filter(|b| {
            let inside = at.x >= b[0] - tol && at.x <= b[2] + tol && at.y >= b[1] - tol && at.y <= b[3] + tol;
            let near = [(at.x - b[0]).abs(), (at.x - b[2]).abs(), (at.y - b[1]).abs(), (at.y - b[3]).abs()];
            inside && near.iter().any(|&d| d <= tol)
        });
        let target = if let Some(i) = corner {
            Some(DragTarget::BoxCorner(i))
        } else if let Some((v, _)) = nearest_vertex(&f.polygons, at, tol) {
            Some(DragTarget::Vertex(v))
        } else {
            on_box_edge.map(|b| DragTarget::BoxMove { grab: [at.x, at.y], start: b })
        };
        if let Some(target) = target {
            s.drag = Some(Drag { feature: id, target, preview: f.clone() });
            if let DragTarget::Vertex(v) = target {
                s.selected_vertex = Some(v);
            }
        }
    }
    if let Some(drag) = s.drag.as_mut() {
        consumed = true;
        if let Some(p) = response.interact_pointer_pos().or(response.hover_pos())
            && let Some(base) = s.features.get(drag.feature)
        {
            let at = to_source(p);
            let edited = match drag.target {
                DragTarget::Vertex(v) => base.with_vertex_moved(v, at).ok(),
                // The dragged corner follows the pointer; the opposite one stays.
                DragTarget::BoxCorner(i) => base.bbox.map(|b| {
                    let opposite = box_corners(b)[(i + 2) % 4];
                    base.with_box([at.x, at.y, opposite[0], opposite[1]])
                }),
                DragTarget::BoxMove { grab, start } => {
                    let (dx, dy) = (at.x - grab[0], at.y - grab[1]);
                    Some(base.with_box([start[0] + dx, start[1] + dy, start[2] + dx, start[3] + dy]))
                }
            };
            if let Some(e) = edited {
                drag.preview = e;
            }
        }
        if response.drag_stopped() {
            let drag = s.drag.take();
            if let Some(d) = drag {
                let label = match d.target {
                    DragTarget::Vertex(_) => "move vertex",
                    DragTarget::BoxCorner(_) => "resize box",
                    DragTarget::BoxMove { .. } => "move box",
                };
                let _ = s.features.replace(label, d.preview);
            }
        }
    }
    consumed |= select_clicks(s, response, to_source, tol);
    consumed
}

/// Double-click on the selected outline inserts a vertex; a click selects a
/// vertex, keeps the feature (on its outline) or selects what is under it.
fn select_clicks(s: &mut Session, response: &Response, to_source: &impl Fn(Pos2) -> Coord, tol: f64) -> bool {
    let mut consumed = false;
    // A click just before counts the pair as a triple-click: it is a double-click too.
    if (response.double_clicked() || response.triple_clicked())
        && let Some(p) = response.interact_pointer_pos()
        && let Some(id) = s.selected
        && let Some(f) = s.features.get(id)
        && let Some((v, at)) = nearest_edge(&f.polygons, to_source(p), tol)
        && let Ok(e) = f.with_vertex_inserted(v, at)
    {
        let _ = s.features.replace("insert vertex", e);
        s.selected_vertex = Some(VertexRef { index: v.index + 1, ..v });
        consumed = true;
    } else if response.clicked()
        && let Some(p) = response.interact_pointer_pos()
    {
        let at = to_source(p);
        let selected = s.selected.and_then(|id| s.features.get(id));
        let vertex = selected.and_then(|f| nearest_vertex(&f.polygons, at, tol));
        let on_edge = selected.is_some_and(|f| nearest_edge(&f.polygons, at, tol).is_some());
        match vertex {
            Some((v, _)) => s.selected_vertex = Some(v),
            // On the selected feature's outline: keep it (a double-click there inserts a vertex).
            None if on_edge => s.selected_vertex = None,
            None => {
                s.selected = s.features.feature_at(at);
                s.selected_vertex = None;
            }
        }
    }
    consumed
}

/// Paints the area, the features (a dragged one as its preview), the selected
/// feature's vertices, handles and clicks, and what is being drawn.
pub fn overlay_paint(app: &mut WorkbenchApp, ui: &egui::Ui, rect: Rect) {
    let Some(doc) = app.doc.as_ref() else { return };
    let view = doc.view;
    // The area the model will see, outlined before running (the view's is clipped to the raster).
    let area = area_window(app);
    let s = &mut app.session;
    let painter = ui.painter_at(rect);
    let mut shapes = Vec::new();
    let mut mesh = Mesh::default();
    if let Some(win) = area {
        let a = view.source_to_screen(rect, [win.x as f64, win.y as f64]);
        let b = view.source_to_screen(rect, [(win.x + win.width) as f64, (win.y + win.height) as f64]);
        let r = Rect::from_two_pos(a, b);
        let c = Color32::from_rgb(255, 210, 0);
        shapes.extend(Shape::dashed_line(
            &[r.left_top(), r.right_top(), r.right_bottom(), r.left_bottom(), r.left_top()],
            Stroke::new(1.5, c),
            10.0,
            6.0,
        ));
    }
    let mut fills = std::mem::take(&mut app.fills);
    let trusted = fills.revision == Some(s.features.revision());
    for f in s.features.iter() {
        let (shown, is_preview) = match &s.drag {
            Some(d) if d.feature == f.id => (&d.preview, true),
            _ => (f, false),
        };
        let fill = fills.get(shown, trusted && !is_preview);
        if !bounds_visible(&view, rect, fill.bounds) {
            continue;
        }
        let emphasis = if s.selected == Some(f.id) { 2 } else { u8::from(s.hovered == Some(f.id)) };
        paint_feature(&mut shapes, &mut mesh, fill, &view, rect, shown, emphasis);
    }
    fills.sync(&s.features);
    app.fills = fills;
    let s = &app.session;
    if let Some(f) = s.selected.and_then(|id| match &s.drag {
        Some(d) if d.feature == id => Some(&d.preview),
        _ => s.features.get(id),
    }) {
        for (part, p) in f.polygons.0.iter().enumerate() {
            for (r, ls) in std::iter::once(p.exterior()).chain(p.interiors()).enumerate() {
                let n = ls.0.len().saturating_sub(1);
                for (index, c) in ls.0[..n].iter().enumerate() {
                    let q = screen(&view, rect, *c);
                    let chosen = s.selected_vertex == Some(VertexRef { part, ring: r, index });
                    let fill = if chosen { Color32::from_rgb(255, 60, 60) } else { Color32::WHITE };
                    shapes.push(Shape::rect_filled(Rect::from_center_size(q, egui::vec2(6.0, 6.0)), 0.0, fill));
                }
            }
        }
        if let Some(b) = f.bbox {
            for c in box_corners(b) {
                let q = view.source_to_screen(rect, c);
                shapes.push(Shape::rect_stroke(
                    Rect::from_center_size(q, egui::vec2(9.0, 9.0)),
                    0.0,
                    Stroke::new(1.5, Color32::WHITE),
                    egui::StrokeKind::Middle,
                ));
            }
        }
        if let Some(state) = &f.segment {
            for &(x, y, positive) in &state.clicks {
                let q = view.source_to_screen(rect, [x, y]);
                let c = if positive { Color32::from_rgb(40, 220, 80) } else { Color32::from_rgb(240, 50, 50) };
                shapes.push(Shape::circle_filled(q, 4.5, c));
                shapes.push(Shape::circle_stroke(q, 4.5, Stroke::new(1.0, Color32::BLACK)));
            }
        }
    }
    // "Find all" exemplars: green (like this), red (not like this), dashed.
    for e in &s.find.exemplars {
        let b = e.bbox;
        let r =
            Rect::from_two_pos(view.source_to_screen(rect, [b.x1, b.y1]), view.source_to_screen(rect, [b.x2, b.y2]));
        let c = if e.positive { Color32::from_rgb(40, 220, 80) } else { Color32::from_rgb(240, 50, 50) };
        let corners = [r.left_top(), r.right_top(), r.right_bottom(), r.left_bottom(), r.left_top()];
        shapes.extend(Shape::dashed_line(&corners, Stroke::new(2.0, c), 6.0, 4.0));
    }
    if let Some((a, b)) = s.drawing {
        let r = Rect::from_two_pos(view.source_to_screen(rect, a), view.source_to_screen(rect, b));
        let colour = match s.tool {
            Tool::DrawArea => Color32::from_rgb(255, 210, 0),
            Tool::DrawExemplar if s.find.negative => Color32::from_rgb(240, 50, 50),
            Tool::DrawExemplar => Color32::from_rgb(40, 220, 80),
            _ => Color32::from_rgb(0, 200, 255),
        };
        shapes.push(Shape::rect_stroke(r, 0.0, Stroke::new(2.0, colour), egui::StrokeKind::Middle));
    }
    painter.add(Shape::mesh(mesh));
    painter.extend(shapes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_clipped_whole_pixels() {
        assert_eq!(clip_window(-5.0, 2.5, 10.2, 7.0, 8, 8), Some(Window { x: 0, y: 2, width: 8, height: 5 }));
        assert_eq!(clip_window(9.0, 9.0, 12.0, 12.0, 8, 8), None);
        let b = PixelBox { x1: 100.0, y1: 100.0, x2: 110.0, y2: 120.0 };
        assert_eq!(context_window(&b, 1000, 1000), Some(Window { x: 0, y: 0, width: 233, height: 238 }));
    }
}
