//! The desktop workbench (eframe/egui). The GUI only sends requests to the
//! engine thread and polls its events; it never blocks a frame on I/O.

mod map;
mod panels;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::raster::{RasterInfo, RenderParams};
use engine::tiles::TileKey;
use engine::{Engine, EngineConfig, Event, JobId, RasterId};

pub use map::TileTextures;
use view::ViewTransform;

/// Which GPU backend eframe uses. eframe does not fall back by itself, so the
/// user can pick `glow` where wgpu finds no adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RendererChoice {
    Wgpu,
    Glow,
}

/// Opens the main window, optionally on a raster. With `screenshot`, the window
/// saves itself to that PNG once the raster's first view has loaded, and closes.
pub fn run(path: Option<PathBuf>, renderer: RendererChoice, screenshot: Option<PathBuf>) -> anyhow::Result<()> {
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let shot = screenshot.clone().map(|path| (path, outcome.clone()));
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("RemoteReasoner")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([480.0, 320.0])
            .with_drag_and_drop(true),
        renderer: match renderer {
            RendererChoice::Wgpu => eframe::Renderer::Wgpu,
            RendererChoice::Glow => eframe::Renderer::Glow,
        },
        ..Default::default()
    };
    eframe::run_native(
        "RemoteReasoner",
        options,
        Box::new(move |cc| {
            let mut app = WorkbenchApp::new(&cc.egui_ctx, path);
            app.screenshot = shot.map(|(path, result)| Screenshot { path, requested: false, result });
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window ({e}); try --renderer glow"))?;
    match (screenshot, outcome.lock().map(|mut o| o.take())) {
        (None, _) => Ok(()),
        (Some(_), Ok(Some(result))) => result,
        (Some(p), _) => anyhow::bail!("{}: the window closed before the screenshot was taken", p.display()),
    }
}

/// A message shown to the analyst in the corner of the window.
#[derive(Clone, Debug)]
pub struct Notification {
    pub text: String,
    pub is_error: bool,
    pub since: Instant,
}

/// The raster on screen and everything about how it is shown.
#[derive(Debug)]
pub struct Document {
    pub raster: RasterId,
    pub info: RasterInfo,
    pub params: RenderParams,
    pub view: ViewTransform,
    /// The view is fitted to the map rectangle on the next frame (its size is known only then).
    pub fit_pending: bool,
    pub tiles: TileTextures,
    /// The tile request in flight and the tiles it still owes.
    pub tile_job: Option<(JobId, Vec<TileKey>)>,
    /// Overview building in flight: job and fraction done.
    pub overview_job: Option<(JobId, f32)>,
}

/// Application state. The UI functions in `map` and `panels` draw it and turn
/// input into state changes and engine requests.
pub struct WorkbenchApp {
    pub engine: Engine,
    pub doc: Option<Document>,
    /// The open request in flight, with the path asked for.
    pub opening: Option<(JobId, PathBuf)>,
    pub notifications: Vec<Notification>,
    pub file_dialog: Option<mpsc::Receiver<Option<PathBuf>>>,
    /// Source pixel under the pointer, if it is over the map.
    pub cursor_source: Option<[f64; 2]>,
    /// Screen rectangle of the map on the last frame.
    pub map_rect: Option<egui::Rect>,
    pub show_metadata: bool,
    /// Save a screenshot here once the first view has fully loaded, then quit.
    pub screenshot: Option<Screenshot>,
}

/// A pending `--screenshot` request and, once taken, its outcome.
#[derive(Debug)]
pub struct Screenshot {
    pub path: PathBuf,
    /// Set when the shot was requested (it arrives a frame or two later).
    pub requested: bool,
    pub result: Arc<std::sync::Mutex<Option<anyhow::Result<()>>>>,
}

impl std::fmt::Debug for WorkbenchApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkbenchApp").field("doc", &self.doc).finish_non_exhaustive()
    }
}

impl WorkbenchApp {
    /// Starts the engine (it wakes the UI whenever it has news) and opens `path` if given.
    pub fn new(ctx: &egui::Context, path: Option<PathBuf>) -> Self {
        ctx.options_mut(|o| o.zoom_with_keyboard = false);
        let waker_ctx = ctx.clone();
        let engine = Engine::spawn(EngineConfig::default(), Arc::new(move || waker_ctx.request_repaint()));
        let mut app = Self {
            engine,
            doc: None,
            opening: None,
            notifications: Vec::new(),
            file_dialog: None,
            cursor_source: None,
            map_rect: None,
            show_metadata: true,
            screenshot: None,
        };
        if let Some(p) = path {
            app.open(p);
        }
        app
    }

    /// Asks the engine to open a raster; the current one stays until it succeeds.
    pub fn open(&mut self, path: PathBuf) {
        let job = self.engine.open(path.clone());
        self.opening = Some((job, path));
    }

    pub fn notify_error(&mut self, text: impl Into<String>) {
        self.notifications.push(Notification { text: text.into(), is_error: true, since: Instant::now() });
    }

    pub fn notify_info(&mut self, text: impl Into<String>) {
        self.notifications.push(Notification { text: text.into(), is_error: false, since: Instant::now() });
    }

    /// Shows the native file dialog on its own thread; the result is polled per frame.
    pub fn open_dialog(&mut self) {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("file-dialog".into()).spawn(move || {
            let picked = rfd::FileDialog::new()
                .set_title("Open raster")
                .add_filter("Rasters", &["tif", "tiff", "vrt", "img", "jp2", "png", "jpg", "ntf", "hdf", "nc"])
                .add_filter("All files", &["*"])
                .pick_file();
            let _ = tx.send(picked);
        });
        match spawned {
            Ok(_) => self.file_dialog = Some(rx),
            Err(e) => self.notify_error(format!("cannot show the file dialog: {e}")),
        }
    }

    /// Drains engine events and the file dialog. Never blocks.
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Some(event) = self.engine.try_recv() {
            self.on_event(ctx, event);
        }
        if let Some(rx) = &self.file_dialog {
            match rx.try_recv() {
                Ok(picked) => {
                    self.file_dialog = None;
                    if let Some(p) = picked {
                        self.open(p);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.file_dialog = None,
            }
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw.dropped_files.iter().map(|f| f.path().to_owned()).filter(|p| !p.as_os_str().is_empty()).collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.open(p);
        }
        // Informational notes fade; errors stay until dismissed.
        self.notifications.retain(|n| n.is_error || n.since.elapsed() < Duration::from_secs(6));
    }

    fn on_event(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::Opened { job, raster, info } => {
                if self.opening.as_ref().is_some_and(|(j, _)| *j == job) {
                    self.opening = None;
                    if let Some(old) = self.doc.take() {
                        self.engine.close(old.raster);
                    }
                    let params = RenderParams::default_for(&info);
                    self.doc = Some(Document {
                        raster,
                        params,
                        info: *info,
                        view: ViewTransform::default(),
                        fit_pending: true,
                        tiles: TileTextures::new(params.cache_hash()),
                        tile_job: None,
                        overview_job: None,
                    });
                } else {
                    self.engine.close(raster);
                }
            }
            Event::Tile { raster, params, tile, job } => {
                if let Some(doc) = self.doc.as_mut().filter(|d| d.raster == raster && d.tiles.params == params) {
                    doc.tiles.insert(ctx, &tile);
                    if let Some((j, owed)) = doc.tile_job.as_mut().filter(|(j, _)| *j == job) {
                        owed.retain(|k| *k != tile.key);
                        let _ = j;
                    }
                }
            }
            Event::TilesDone { job } | Event::Cancelled { job } => {
                if let Some(doc) = self.doc.as_mut() {
                    if doc.tile_job.as_ref().is_some_and(|(j, _)| *j == job) {
                        doc.tile_job = None;
                    }
                    if doc.overview_job.is_some_and(|(j, _)| j == job) {
                        doc.overview_job = None;
                        self.notifications.push(Notification {
                            text: "Overview building cancelled; nothing was written.".into(),
                            is_error: false,
                            since: Instant::now(),
                        });
                    }
                }
            }
            Event::Progress { job, fraction, .. } => {
                if let Some((_, f)) = self.doc.as_mut().and_then(|d| d.overview_job.as_mut()).filter(|(j, _)| *j == job)
                {
                    *f = fraction;
                }
            }
            Event::OverviewsBuilt { job, raster, info } => {
                if let Some(doc) = self.doc.as_mut().filter(|d| d.raster == raster) {
                    let levels = info.overviews.len();
                    doc.info = *info;
                    doc.tiles.clear();
                    doc.tile_job = None;
                    if doc.overview_job.is_some_and(|(j, _)| j == job) {
                        doc.overview_job = None;
                    }
                    self.notify_info(format!("Built {levels} overview levels."));
                }
            }
            // The workbench does not send model requests yet.
            Event::ReasonerLoaded { .. }
            | Event::AskStage { .. }
            | Event::AskText { .. }
            | Event::AskDone { .. }
            | Event::SegmenterLoaded { .. }
            | Event::Segmented { .. }
            | Event::Refined { .. } => {}
            Event::Failed { job, error } => {
                if self.opening.as_ref().is_some_and(|(j, _)| *j == job) {
                    self.opening = None;
                }
                if let Some(doc) = self.doc.as_mut() {
                    if let Some((_, owed)) = doc.tile_job.take().filter(|(j, _)| *j == job) {
                        // Do not ask again for tiles that cannot be read.
                        doc.tiles.mark_failed(owed);
                    }
                    if doc.overview_job.is_some_and(|(j, _)| j == job) {
                        doc.overview_job = None;
                    }
                }
                self.notify_error(error);
            }
        }
    }

    /// Applies new render parameters: tiles made with the old ones are dropped.
    pub fn set_params(&mut self, params: RenderParams) {
        if let Some(doc) = self.doc.as_mut().filter(|d| d.params != params) {
            doc.params = params;
            doc.tiles.reset(params.cache_hash());
            doc.tile_job = None;
        }
    }

    /// True when nothing is loading: the raster (if any) is open and every tile
    /// of the current view has arrived (or failed).
    pub fn is_idle(&self) -> bool {
        self.opening.is_none()
            && self.doc.as_ref().is_none_or(|d| !d.fit_pending && d.tile_job.is_none() && !d.tiles.is_empty())
    }

    /// Serves `--screenshot`: once idle, asks the renderer for the frame's pixels,
    /// writes them (atomically) and closes the window.
    fn screenshot_when_loaded(&mut self, ctx: &egui::Context) {
        let idle = self.is_idle();
        let Some(shot) = self.screenshot.as_mut() else { return };
        if shot.requested {
            return;
        }
        if !idle {
            ctx.request_repaint_after(Duration::from_millis(50));
            return;
        }
        shot.requested = true;
        let (path, result, close_ctx) = (shot.path.clone(), shot.result.clone(), ctx.clone());
        ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::ScreenshotCallback::new(move |image| {
            let img = engine::raster::RgbaImage {
                width: image.size[0] as u32,
                height: image.size[1] as u32,
                rgba: image.pixels.iter().flat_map(|c| c.to_array()).collect(),
            };
            let written = crate::cli::write_png_atomic(&path, &img);
            if let Ok(mut slot) = result.lock() {
                *slot = Some(written);
            }
            close_ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        })));
    }

    /// Keyboard shortcuts (QGIS where it has one): Ctrl+O open, Ctrl+Shift+F full extent.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        let (open, fit, native) = ctx.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::O),
                i.consume_key(egui::Modifiers::COMMAND | egui::Modifiers::SHIFT, egui::Key::F),
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Num1),
            )
        });
        if open {
            self.open_dialog();
        }
        if let Some(doc) = self.doc.as_mut() {
            if fit {
                doc.fit_pending = true;
            }
            if native {
                doc.view = doc.view.one_to_one(ctx.pixels_per_point());
            }
        }
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        self.shortcuts(&ctx);
        panels::menu_bar_ui(self, ui);
        panels::status_bar_ui(self, ui);
        panels::side_panel_ui(self, ui);
        egui::CentralPanel::default().frame(egui::Frame::NONE.fill(egui::Color32::from_gray(24))).show(ui, |ui| {
            map::map_ui(self, ui);
        });
        panels::notifications_ui(self, &ctx);
        self.screenshot_when_loaded(&ctx);
        if self.opening.is_some() || self.file_dialog.is_some() {
            // Poll the dialog; engine events wake us by themselves.
            ctx.request_repaint_after(Duration::from_millis(100));
        }
    }
}
