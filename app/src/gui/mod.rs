//! The desktop workbench (eframe/egui). The GUI only sends requests to the
//! engine thread and polls its events; it never blocks a frame on I/O.

pub mod dialogs;
mod features;
pub mod jobs;
mod map;
pub mod overlay;
mod panels;
mod query;
pub mod session;
pub mod setup;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::raster::{RasterInfo, RenderParams};
use engine::tiles::TileKey;
use engine::{Engine, EngineConfig, Event, EventKind, JobId, RasterId};

pub use jobs::{Command, Jobs, Pending};

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
            let settings = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_default();
            let mut app = WorkbenchApp::with_session(&cc.egui_ctx, path, settings, engine::project::recovery_path());
            app.screenshot = shot.map(|(path, result)| Screenshot { path, requested: false, result });
            if app.screenshot.is_some() {
                // A screenshot run is not interactive: no restore question in the picture.
                app.session.recovery_offer = None;
            } else {
                app.offer_setup();
            }
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
    /// The map rectangle of the last fit while the analyst has not moved the
    /// view since: a resized map (window, panels) is fitted again.
    pub fitted_to: Option<egui::Rect>,
    pub tiles: TileTextures,
}

/// Application state. The UI functions in `map` and `panels` draw it and turn
/// input into state changes and engine requests.
pub struct WorkbenchApp {
    pub engine: Engine,
    pub doc: Option<Document>,
    /// Every job in flight and what it is for.
    pub jobs: Jobs,
    /// What the `*_ui` functions asked for this frame, applied once it is drawn.
    pub commands: Vec<Command>,
    pub notifications: Vec<Notification>,
    pub file_dialog: Option<mpsc::Receiver<Option<PathBuf>>>,
    /// Source pixel under the pointer, if it is over the map.
    pub cursor_source: Option<[f64; 2]>,
    /// Screen rectangle of the map on the last frame.
    pub map_rect: Option<egui::Rect>,
    pub show_metadata: bool,
    /// Save a screenshot here once the first view has fully loaded, then quit.
    pub screenshot: Option<Screenshot>,
    /// Questions, features, editing, projects.
    pub session: session::Session,
    /// Triangulated feature fills.
    pub fills: overlay::FillCache,
    /// Where unsaved work is kept every few seconds.
    pub recovery_path: PathBuf,
    /// How often unsaved work is written there.
    pub autosave_every: Duration,
    /// A project's view, applied once its raster is open.
    pub pending_view: Option<[f64; 3]>,
    /// A native file dialog in flight (other than "open raster") and what it is for.
    pub picker: Option<(DialogPurpose, mpsc::Receiver<Option<PathBuf>>)>,
    pub picked: Option<(DialogPurpose, PathBuf)>,
}

/// What a file dialog was opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogPurpose {
    OpenProject,
    SaveProject,
    ExportTo,
    ModelDir,
    SamCheckpoint,
    SetupModelDir,
    SetupSam,
}

/// Seconds between two autosaves of unsaved work.
pub const AUTOSAVE_SECONDS: u64 = 5;

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
        Self::with_session(ctx, path, session::Settings::default(), engine::project::recovery_path())
    }

    /// [`Self::new`] with saved settings and a recovery file: if that file exists,
    /// the last session did not end normally and restoring it is offered.
    pub fn with_session(
        ctx: &egui::Context,
        path: Option<PathBuf>,
        settings: session::Settings,
        recovery_path: PathBuf,
    ) -> Self {
        ctx.options_mut(|o| o.zoom_with_keyboard = false);
        let waker_ctx = ctx.clone();
        let engine = Engine::spawn(EngineConfig::default(), Arc::new(move || waker_ctx.request_repaint()));
        let mut app = Self {
            engine,
            doc: None,
            jobs: Jobs::default(),
            commands: Vec::new(),
            notifications: Vec::new(),
            file_dialog: None,
            cursor_source: None,
            map_rect: None,
            show_metadata: true,
            screenshot: None,
            session: session::Session::new(settings),
            fills: overlay::FillCache::default(),
            recovery_path,
            autosave_every: Duration::from_secs(AUTOSAVE_SECONDS),
            pending_view: None,
            picker: None,
            picked: None,
        };
        if app.recovery_path.exists() {
            // Only work that can be restored is offered; anything else is set aside, not lost.
            if engine::project::is_project(&app.recovery_path) {
                let written = std::fs::metadata(&app.recovery_path).and_then(|m| m.modified()).ok();
                app.session.recovery_offer = Some((app.recovery_path.clone(), written));
            } else {
                app.set_recovery_aside("it is not a readable project");
            }
        }
        if let Some(p) = path {
            app.open_any(p);
        }
        app
    }

    /// Opens a project (a GeoPackage saved by the workbench) or else a raster.
    /// (The engine tells which, so no file is read here.)
    pub fn open_any(&mut self, path: PathBuf) {
        let gpkg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gpkg"));
        if gpkg {
            // Either a project arrives for this job, or the raster opens under it.
            let request = engine::RequestKind::LoadProject { path: path.clone(), or_raster: true };
            self.start(request, Pending::Open { path, project: true });
        } else {
            self.open(path);
        }
    }

    /// Asks the engine to open a raster; the current one stays until it succeeds.
    pub fn open(&mut self, path: PathBuf) {
        self.start(engine::RequestKind::Open { path: path.clone() }, Pending::Open { path, project: false });
    }

    /// Moves an unreadable recovery file out of the way (kept, renamed, for
    /// whoever wants to look at it) and says so.
    pub fn set_recovery_aside(&mut self, why: &str) {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let aside = self.recovery_path.with_extension(format!("unreadable-{secs}.gpkg"));
        match std::fs::rename(&self.recovery_path, &aside) {
            Ok(()) => self.notify_error(format!(
                "The unsaved work kept from the last session cannot be restored ({why}); the file was set aside as {}.",
                aside.display()
            )),
            Err(e) => self.notify_error(format!(
                "The unsaved work kept from the last session cannot be restored ({why}), and {} cannot be moved: {e}",
                self.recovery_path.display()
            )),
        }
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
        if let Some((purpose, rx)) = &self.picker {
            match rx.try_recv() {
                Ok(picked) => {
                    let purpose = *purpose;
                    self.picker = None;
                    if picked.is_none() && purpose == DialogPurpose::SaveProject {
                        // No file chosen: closing waits for another answer.
                        self.session.close_after_save = false;
                    }
                    if let Some(p) = picked {
                        match purpose {
                            DialogPurpose::OpenProject => self.load_project(p),
                            DialogPurpose::SaveProject => self.save_project(p, false),
                            _ => self.picked = Some((purpose, p)),
                        }
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.picker = None,
            }
        }
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw.dropped_files.iter().map(|f| f.path().to_owned()).filter(|p| !p.as_os_str().is_empty()).collect()
        });
        if let Some(p) = dropped.into_iter().next() {
            self.open_any(p);
        }
        // Informational notes fade; errors stay until dismissed.
        self.notifications.retain(|n| n.is_error || n.since.elapsed() < Duration::from_secs(6));
    }

    /// One engine event, dispatched by kind to the method that applies it.
    fn on_event(&mut self, ctx: &egui::Context, Event { job, kind }: Event) {
        match kind {
            EventKind::Opened { raster, info } => self.on_opened(job, raster, *info),
            EventKind::Tile { raster, params, tile } => self.on_tile(ctx, job, raster, params, &tile),
            EventKind::TilesDone => {
                self.jobs.remove_where(|p| matches!(p, Pending::Tiles { .. }));
            }
            EventKind::Progress { fraction, message } => self.on_progress(job, fraction, message),
            EventKind::OverviewsBuilt { raster, info } => self.on_overviews_built(job, raster, *info),
            EventKind::ReasonerLoaded { info } => self.session.reasoner = Some(info),
            EventKind::SegmenterLoaded { method } => self.session.segmenter = Some(method),
            EventKind::AskStage { stage } => {
                if let Some(run) = self.session.run.as_mut().filter(|r| r.job == Some(job)) {
                    run.stage = Some(stage);
                }
            }
            EventKind::AskText { text } => {
                if let Some(run) = self.session.run.as_mut().filter(|r| r.job == Some(job)) {
                    run.text.push_str(&text);
                }
            }
            EventKind::Answered { outcome, .. } => self.on_answer(job, outcome),
            EventKind::Segmented { segments, .. } => self.on_segmented(job, &segments),
            EventKind::Refined { feature, segment, polygons } => self.on_refined(job, feature, *segment, polygons),
            EventKind::ProjectSaved { path } => self.on_saved(ctx, job, path),
            EventKind::ProjectLoaded { path, project } => {
                if matches!(self.jobs.remove(job), Some(Pending::Open { .. } | Pending::LoadProject { .. })) {
                    self.apply_project(path, *project);
                }
            }
            EventKind::Exported { report } => self.on_exported(job, &report),
            EventKind::SweepDone { result, features, .. } => self.on_sweep_done(job, &result, features),
            EventKind::ModelPulled { path } => match self.jobs.remove(job) {
                Some(Pending::Pull { offer: Some(offer), .. }) => self.on_setup_pulled(offer, &path),
                Some(Pending::Pull { offer: None, .. }) => {
                    let model = self.session.settings.model.trim().to_owned();
                    self.notify_info(format!("Downloaded and verified {model} into {}", path.display()));
                }
                _ => {}
            },
            EventKind::PullPlanned { plans } => {
                if let Some(Pending::PlanPull) = self.jobs.remove(job) {
                    self.on_pull_planned(plans);
                }
            }
            EventKind::Cancelled => self.on_cancelled(job),
            EventKind::Failed { error } => self.on_failed(job, error),
        }
    }

    /// A raster opened: it replaces the one on screen when it is the one asked for.
    fn on_opened(&mut self, job: JobId, raster: RasterId, info: RasterInfo) {
        if !matches!(self.jobs.remove(job), Some(Pending::Open { .. })) {
            self.engine.close(raster);
            return;
        }
        if let Some(old) = self.doc.take() {
            self.engine.close(old.raster);
        }
        self.jobs.remove_where(|p| matches!(p, Pending::Tiles { .. } | Pending::Overviews { .. }));
        let params = RenderParams::default_for(&info);
        self.doc = Some(Document {
            raster,
            params,
            info,
            view: ViewTransform::default(),
            fit_pending: true,
            fitted_to: None,
            tiles: TileTextures::new(params.cache_hash()),
        });
        self.apply_pending_view();
    }

    fn on_tile(&mut self, ctx: &egui::Context, job: JobId, raster: RasterId, params: u64, tile: &engine::tiles::Tile) {
        if let Some(doc) = self.doc.as_mut().filter(|d| d.raster == raster && d.tiles.params == params) {
            doc.tiles.insert(ctx, tile);
            if let Some(Pending::Tiles { owed }) = self.jobs.get_mut(job) {
                owed.retain(|k| *k != tile.key);
            }
        }
    }

    fn on_progress(&mut self, job: JobId, new_fraction: f32, new_message: String) {
        match self.jobs.get_mut(job) {
            Some(Pending::Pull { fraction, message, .. }) => (*fraction, *message) = (new_fraction, new_message),
            Some(Pending::Sweep(sw)) => (sw.fraction, sw.message) = (new_fraction, new_message),
            Some(Pending::Overviews { fraction }) => *fraction = new_fraction,
            _ => {}
        }
    }

    fn on_overviews_built(&mut self, job: JobId, raster: RasterId, info: RasterInfo) {
        self.jobs.remove(job);
        if let Some(doc) = self.doc.as_mut().filter(|d| d.raster == raster) {
            let levels = info.overviews.len();
            doc.info = info;
            doc.tiles.clear();
            self.jobs.remove_where(|p| matches!(p, Pending::Tiles { .. }));
            self.notify_info(format!("Built {levels} overview levels."));
        }
    }

    /// A question's answer, carried as far as its goal: its features join the store.
    fn on_answer(&mut self, job: JobId, outcome: Box<engine::pipeline::Outcome>) {
        if !matches!(self.jobs.remove(job), Some(Pending::Ask)) {
            return;
        }
        let features = outcome.features.clone();
        if let Some(run) = self.session.run.as_mut() {
            run.outcome = Some(outcome);
        }
        if !features.is_empty() {
            let ids = self.session.features.add("ask", features);
            self.session.selected = ids.first().copied();
            self.session.selected_vertex = None;
        }
        self.session.finish_run(None);
    }

    /// A box drawn by hand, segmented and traced: one feature.
    fn on_segmented(&mut self, job: JobId, segments: &engine::pipeline::Segments) {
        if !matches!(self.jobs.remove(job), Some(Pending::Segment)) {
            return;
        }
        let source = self.doc.as_ref().map(|d| d.info.path.display().to_string()).unwrap_or_default();
        let provenance =
            engine::features::Provenance::manual("manual", &source, Some(segments.window), &segments.method);
        let ids = self.session.features.add("draw box", segments.features(&provenance));
        self.session.selected = ids.first().copied();
        self.session.selected_vertex = None;
    }

    fn on_refined(
        &mut self,
        job: JobId,
        feature: u64,
        segment: engine::segment::Segment,
        polygons: geo::MultiPolygon<f64>,
    ) {
        let Some(Pending::Refine { clicks, .. }) = self.jobs.remove(job) else { return };
        if let Some(f) = self.session.features.get(feature)
            && let Some(old) = &f.segment
        {
            let state = engine::edit::SegmentState { window: old.window, segment, clicks };
            let refined = f.with_segment(state, polygons);
            let _ = self.session.features.replace("refine mask", refined);
        }
    }

    fn on_saved(&mut self, ctx: &egui::Context, job: JobId, path: PathBuf) {
        let Some(Pending::Save { recovery, revision, .. }) = self.jobs.remove(job) else { return };
        if recovery {
            self.session.autosaved_revision = revision;
            if !self.session.is_dirty() {
                // Saved for real while the autosave ran: the copy is not needed.
                let _ = std::fs::remove_file(&self.recovery_path);
            }
            return;
        }
        self.session.saved_revision = revision;
        self.session.autosaved_revision = revision;
        self.notify_info(format!("Saved {}", path.display()));
        self.session.project_path = Some(path);
        // Saved for real: the recovery copy is not needed any more.
        let _ = std::fs::remove_file(&self.recovery_path);
        if self.session.close_after_save {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    fn on_exported(&mut self, job: JobId, report: &engine::export::ExportReport) {
        if !matches!(self.jobs.remove(job), Some(Pending::Export)) {
            return;
        }
        let layers: Vec<String> = report.layers.iter().map(|(l, n)| format!("{n} {l}")).collect();
        let file = report.files.first().map_or_else(String::new, |f| f.display().to_string());
        let mut text = format!("Exported {} to {file}", layers.join(", "));
        if !report.skipped.is_empty() {
            text.push_str(&format!("; skipped: {}", report.skipped.join("; ")));
        }
        for n in &report.notes {
            text.push_str(&format!("\n{n}"));
        }
        self.session.last_export = Some(text.clone());
        self.notify_info(text);
    }

    fn on_sweep_done(
        &mut self,
        job: JobId,
        result: &engine::sweep::SweepResult,
        features: Vec<engine::edit::WorkFeature>,
    ) {
        let Some(Pending::Sweep(sw)) = self.jobs.remove(job) else { return };
        let n = features.len();
        if n > 0 {
            self.session.features.add("sweep", features);
        }
        self.notify_info(format!(
            "Sweep done: {} tiles ({} resumed), {n} feature(s) in {:.0} s",
            result.tiles.len(),
            result.tiles.len() - result.processed,
            sw.started.elapsed().as_secs_f64()
        ));
    }

    fn on_cancelled(&mut self, job: JobId) {
        match self.jobs.remove(job) {
            Some(Pending::Sweep(_)) => {
                self.notify_info("Sweep cancelled; the tiles done are kept and a new sweep resumes from them.");
            }
            Some(Pending::Ask) => self.session.finish_run(Some("Cancelled.".into())),
            Some(Pending::Overviews { .. }) => self.notify_info("Overview building cancelled; nothing was written."),
            _ => {}
        }
    }

    fn on_failed(&mut self, job: JobId, error: String) {
        match self.jobs.remove(job) {
            Some(Pending::Ask) => {
                if self.session.run.as_ref().is_some_and(|r| r.stage == Some(engine::worker::AskStage::LoadingModel)) {
                    self.session.reasoner = None; // the engine let go of the old one before loading
                }
                self.session.finish_run(Some(error.clone()));
            }
            Some(Pending::Tiles { owed }) => {
                if let Some(doc) = self.doc.as_mut() {
                    // Do not ask again for tiles that cannot be read.
                    doc.tiles.mark_failed(owed);
                }
            }
            Some(Pending::LoadProject { restoring: true }) => return self.set_recovery_aside(&error),
            Some(Pending::Pull { offer: Some(_), .. }) => self.on_setup_failed(&error),
            // The dialog says the sizes are unknown; no need for a notification too.
            Some(Pending::PlanPull) => {
                let n = setup::OFFERS.len();
                return self.on_pull_planned(vec![Err(error); n]);
            }
            _ => {}
        }
        self.notify_error(error);
    }

    /// Whether a question, a segmentation or a sweep is in flight.
    pub fn busy(&self) -> bool {
        self.session.running() || self.jobs.any(|p| matches!(p, Pending::Segment | Pending::Sweep(_)))
    }

    /// Sends `kind` to the engine and registers what its job is for.
    pub fn start(&mut self, kind: engine::RequestKind, pending: Pending) -> JobId {
        let job = self.engine.send(kind);
        self.jobs.insert(job, pending);
        job
    }

    /// Applies what the `*_ui` functions asked for while drawing.
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::OpenDialog => self.open_dialog(),
            Command::OpenAny(path) => self.open_any(path),
            Command::RunQuery => self.run_query(),
            Command::FindAll => self.find_all(),
            Command::CancelRun => self.cancel_run(),
            Command::RunSweep => self.run_sweep(),
            Command::Cancel(job) => self.engine.cancel(job),
            Command::RequestTiles(keys) => self.request_tiles(keys),
            Command::BuildOverviews => {
                if let Some(doc) = &self.doc {
                    let raster = doc.raster;
                    self.start(engine::RequestKind::BuildOverviews { raster }, Pending::Overviews { fraction: 0.0 });
                }
            }
            Command::SegmentBox { window, bbox } => self.segment_box(window, bbox),
            Command::Refine { feature, at, positive } => self.refine(feature, at, positive),
            Command::Export(dialog) => self.export(&dialog),
            Command::PullModel => {
                let request = self.session.pull_request();
                self.start(request, Pending::Pull { fraction: 0.0, message: "starting".into(), offer: None });
            }
            Command::Setup(command) => self.apply_setup(command),
            Command::SaveProject(path) => self.save_project(path, false),
            Command::LoadProject(path) => self.load_project(path),
            Command::Restore(path) => {
                let job = self.engine.send(engine::RequestKind::LoadProject { path, or_raster: false });
                self.jobs.insert(job, Pending::LoadProject { restoring: true });
            }
        }
    }

    /// Asks for the view's tiles, replacing the request in flight (none wanted: cancel it).
    fn request_tiles(&mut self, keys: Vec<TileKey>) {
        for old in self.jobs.remove_where(|p| matches!(p, Pending::Tiles { .. })) {
            if keys.is_empty() {
                self.engine.cancel(old);
            }
        }
        if let (false, Some(doc)) = (keys.is_empty(), &self.doc) {
            let (raster, params) = (doc.raster, doc.params);
            let owed = keys.clone();
            self.start(engine::RequestKind::Tiles { raster, params, keys }, Pending::Tiles { owed });
        }
    }

    /// A box drawn by hand, segmented on `window` (read as for a question, so the encodings are shared).
    fn segment_box(&mut self, window: engine::base::Window, bbox: engine::base::PixelBox) {
        let Some(doc) = &self.doc else { return };
        let (raster, params) = (doc.raster, doc.params);
        let (max_pixels, sam) = (self.session.settings.max_pixels, self.session.sam());
        let boxes = vec![bbox];
        self.start(engine::RequestKind::Segment { raster, window, params, max_pixels, sam, boxes }, Pending::Segment);
    }

    /// A refinement click on a feature with a mask.
    fn refine(&mut self, feature: u64, at: [f64; 2], positive: bool) {
        let Some(doc) = &self.doc else { return };
        let (raster, params) = (doc.raster, doc.params);
        let Some(f) = self.session.features.get(feature) else { return };
        let (Some(state), Some(b)) = (&f.segment, f.bbox) else {
            self.notify_info(
                "This feature has no mask to refine (drawn or loaded without one): draw its box again (B).",
            );
            return;
        };
        let mut clicks = state.clicks.clone();
        clicks.push((at[0], at[1], positive));
        let request = engine::RequestKind::Refine {
            raster,
            window: state.window,
            params,
            max_pixels: self.session.settings.max_pixels,
            sam: self.session.sam(),
            feature,
            bbox: engine::base::PixelBox { x1: b[0], y1: b[1], x2: b[2], y2: b[3] },
            previous: Some(Box::new(state.segment.clone())),
            clicks: clicks.clone(),
        };
        self.start(request, Pending::Refine { feature, clicks });
    }

    /// Asks the question in the query panel about the chosen area: one request,
    /// which loads the models it needs on the way.
    pub fn run_query(&mut self) {
        self.start_run(session::Session::ask);
    }

    /// "Find all" on the area: every instance of the panel's concept (SAM 3).
    pub fn find_all(&mut self) {
        self.start_run(session::Session::find_all);
    }

    /// Starts what `make` sets up on the area (a question, a find): one job, its run tracked.
    fn start_run(
        &mut self,
        make: impl FnOnce(
            &mut session::Session,
            RasterId,
            engine::base::Window,
            RenderParams,
        ) -> Result<engine::RequestKind, String>,
    ) {
        let Some(doc) = &self.doc else {
            self.notify_error("Open a raster first.");
            return;
        };
        let Some(window) = overlay::area_window(self) else {
            self.notify_error("The area is empty: draw it on the map, or pick View or Whole raster.");
            return;
        };
        let (raster, params) = (doc.raster, doc.params);
        match make(&mut self.session, raster, window, params) {
            Ok(request) => {
                let job = self.start(request, Pending::Ask);
                if let Some(run) = self.session.run.as_mut() {
                    run.job = Some(job);
                }
            }
            Err(e) => self.notify_error(e),
        }
    }

    /// Sweeps the whole raster with the question in the panel.
    pub fn run_sweep(&mut self) {
        let Some(doc) = &self.doc else {
            self.notify_error("Open a raster first.");
            return;
        };
        let (raster, params, path) = (doc.raster, doc.params, doc.info.path.clone());
        let dir = self.recovery_path.parent().map_or_else(std::env::temp_dir, |p| p.join("sweeps"));
        match self.session.sweep(raster, &path, params, &dir) {
            Ok((request, state)) => {
                self.start(request, Pending::Sweep(state));
            }
            Err(e) => self.notify_error(e),
        }
    }

    /// Stops the current question at whatever stage it is.
    pub fn cancel_run(&mut self) {
        if let Some(job) = self.session.run.as_ref().filter(|r| r.is_running()).and_then(|r| r.job) {
            self.engine.cancel(job);
            self.jobs.remove(job);
        }
        self.session.finish_run(Some("Cancelled.".into()));
    }

    /// Project settings for saving: the raster, the view, its georeferencing.
    fn project_meta(&self) -> engine::project::ProjectMeta {
        let doc = self.doc.as_ref();
        engine::project::ProjectMeta {
            raster: doc.map(|d| d.info.path.clone()),
            view: doc.map(|d| [d.view.center[0], d.view.center[1], d.view.zoom]),
            geotransform: doc.and_then(|d| d.info.geotransform),
            crs_wkt: doc.and_then(|d| d.info.crs_wkt.clone()),
            ..Default::default()
        }
    }

    /// Saves the project (on a file thread); `recovery` = the autosave copy.
    pub fn save_project(&mut self, path: PathBuf, recovery: bool) {
        // An autosave in flight does not hold up the analyst's save (they write
        // different files); a second save of the same kind waits for the first.
        if self.jobs.any(|p| matches!(p, Pending::Save { recovery: r, .. } if *r == recovery)) {
            if !recovery {
                self.notify_info("A save is already running; save again when it is done.");
            }
            return;
        }
        if recovery && let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let meta = Box::new(self.project_meta());
        let features: Vec<_> = self.session.features.iter().cloned().collect();
        let revision = self.session.features.revision();
        let request = engine::RequestKind::SaveProject { path: path.clone(), meta, features };
        self.start(request, Pending::Save { path, recovery, revision });
    }

    pub fn load_project(&mut self, path: PathBuf) {
        self.start(
            engine::RequestKind::LoadProject { path, or_raster: false },
            Pending::LoadProject { restoring: false },
        );
    }

    fn apply_project(&mut self, path: PathBuf, project: engine::project::Project) {
        let recovered = path == self.recovery_path;
        self.session.features.reset(project.features);
        self.session.selected = None;
        self.session.selected_vertex = None;
        if recovered {
            // Restored work is unsaved work.
            self.session.saved_revision = u64::MAX;
            self.notify_info("Restored the unsaved work.");
        } else {
            self.session.saved_revision = self.session.features.revision();
            self.session.project_path = Some(path);
        }
        self.session.autosaved_revision = self.session.features.revision();
        self.pending_view = project.meta.view;
        if let Some(raster) = project.meta.raster {
            let same = self.doc.as_ref().is_some_and(|d| d.info.path == raster);
            if same {
                self.apply_pending_view();
            } else {
                self.open(raster);
            }
        }
    }

    fn apply_pending_view(&mut self) {
        if let (Some([x, y, zoom]), Some(doc)) = (self.pending_view.take(), self.doc.as_mut()) {
            doc.view = ViewTransform { center: [x, y], zoom };
            doc.fit_pending = false;
            doc.fitted_to = None;
        }
    }

    /// Keeps unsaved work in the recovery file every few seconds.
    fn autosave(&mut self) {
        let s = &self.session;
        let due = s.last_autosave.elapsed() >= self.autosave_every;
        if due
            && s.features.revision() != s.autosaved_revision
            && s.is_dirty()
            && !self.jobs.any(|p| matches!(p, Pending::Save { .. }))
        {
            self.session.last_autosave = Instant::now();
            self.save_project(self.recovery_path.clone(), true);
        }
    }

    /// Shows a native file dialog for `purpose` on its own thread.
    pub fn pick_file(&mut self, purpose: DialogPurpose, save: bool, extension: &str) {
        let (tx, rx) = mpsc::channel();
        let ext = extension.to_owned();
        let spawned = std::thread::Builder::new().name("file-dialog".into()).spawn(move || {
            let mut d = rfd::FileDialog::new();
            if !ext.is_empty() {
                d = d.add_filter(ext.to_uppercase(), &[ext.as_str()]);
            }
            let picked = match (purpose, save) {
                (DialogPurpose::ModelDir | DialogPurpose::SetupModelDir, _) => d.pick_folder(),
                (_, true) => d.save_file(),
                (_, false) => d.pick_file(),
            };
            let _ = tx.send(picked);
        });
        match spawned {
            Ok(_) => self.picker = Some((purpose, rx)),
            Err(e) => self.notify_error(format!("cannot show the file dialog: {e}")),
        }
    }

    /// The file picked for `purpose`, once.
    pub fn take_picked(&mut self, purpose: DialogPurpose) -> Option<PathBuf> {
        if self.picked.as_ref().is_some_and(|(p, _)| *p == purpose) {
            return self.picked.take().map(|(_, path)| path);
        }
        None
    }

    /// Selects a tool; leaving a tool drops what it was drawing.
    pub fn set_tool(&mut self, tool: session::Tool) {
        self.session.tool = tool;
        self.session.drawing = None;
    }

    /// Deletes the selected vertex, or else the selected feature.
    pub fn delete_selection(&mut self) {
        let s = &mut self.session;
        let Some(id) = s.selected else { return };
        match (s.selected_vertex.take(), s.features.get(id)) {
            (Some(v), Some(f)) => match f.with_vertices_deleted(&[v]) {
                Ok(e) => {
                    let _ = s.features.replace("delete vertex", e);
                }
                Err(e) => {
                    let text = format!("Cannot delete the vertex: {e}");
                    self.notify_error(text);
                }
            },
            _ => {
                s.features.remove("delete feature", &[id]);
                s.selected = None;
            }
        }
    }

    /// Applies new render parameters: tiles made with the old ones are dropped.
    pub fn set_params(&mut self, params: RenderParams) {
        if let Some(doc) = self.doc.as_mut().filter(|d| d.params != params) {
            doc.params = params;
            doc.tiles.reset(params.cache_hash());
            self.jobs.remove_where(|p| matches!(p, Pending::Tiles { .. }));
        }
    }

    /// True when nothing is loading: the raster (if any) is open and every tile
    /// of the current view has arrived (or failed).
    pub fn is_idle(&self) -> bool {
        !self.jobs.any(|p| matches!(p, Pending::Open { .. } | Pending::LoadProject { .. } | Pending::Tiles { .. }))
            && self.doc.as_ref().is_none_or(|d| !d.fit_pending && !d.tiles.is_empty())
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
            let written = crate::png::write_png_atomic(&path, &img);
            if let Ok(mut slot) = result.lock() {
                *slot = Some(written);
            }
            close_ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        })));
    }

    /// Keyboard shortcuts (QGIS where it has one; the help window lists them).
    fn shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, Modifiers};
        let cmd = Modifiers::COMMAND;
        let cmd_shift = Modifiers::COMMAND | Modifiers::SHIFT;
        // With-Shift variants first: `consume_key(cmd, …)` also matches Cmd+Shift+….
        let (fit, save_as, open, native, save, export, help) = ctx.input_mut(|i| {
            (
                i.consume_key(cmd_shift, Key::F),
                i.consume_key(cmd_shift, Key::S),
                i.consume_key(cmd, Key::O),
                i.consume_key(cmd, Key::Num1),
                i.consume_key(cmd, Key::S),
                i.consume_key(cmd, Key::E),
                i.consume_key(Modifiers::NONE, Key::F1),
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
                doc.fitted_to = None;
            }
        }
        if save_as || (save && self.session.project_path.is_none()) {
            self.pick_file(DialogPurpose::SaveProject, true, "gpkg");
        } else if save && let Some(p) = self.session.project_path.clone() {
            self.save_project(p, false);
        }
        if export {
            self.session.export_dialog.get_or_insert_with(Default::default);
        }
        if help {
            self.session.show_help = !self.session.show_help;
        }
        // Single keys and undo only when no text field has the keyboard.
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let (redo, undo, redo_y, delete, escape, tools) = ctx.input_mut(|i| {
            (
                i.consume_key(cmd_shift, Key::Z),
                i.consume_key(cmd, Key::Z),
                i.consume_key(cmd, Key::Y),
                i.consume_key(Modifiers::NONE, Key::Delete) || i.consume_key(Modifiers::NONE, Key::Backspace),
                i.consume_key(Modifiers::NONE, Key::Escape),
                [
                    (i.consume_key(Modifiers::NONE, Key::V), session::Tool::Select),
                    (i.consume_key(Modifiers::NONE, Key::B), session::Tool::DrawBox),
                    (i.consume_key(Modifiers::NONE, Key::A), session::Tool::DrawArea),
                    (i.consume_key(Modifiers::NONE, Key::R), session::Tool::Refine),
                    (i.consume_key(Modifiers::NONE, Key::E), session::Tool::DrawExemplar),
                ],
            )
        });
        if undo && let Some(label) = self.session.features.undo() {
            self.after_history(&format!("Undid {label}"));
        }
        if (redo || redo_y)
            && let Some(label) = self.session.features.redo()
        {
            self.after_history(&format!("Redid {label}"));
        }
        if delete {
            self.delete_selection();
        }
        if escape {
            self.set_tool(session::Tool::Select);
            self.session.selected = None;
            self.session.selected_vertex = None;
        }
        if let Some((_, tool)) = tools.into_iter().find(|(pressed, _)| *pressed) {
            self.set_tool(tool);
        }
    }

    /// After undo/redo: drop a selection that no longer exists.
    fn after_history(&mut self, note: &str) {
        let s = &mut self.session;
        s.drag = None;
        s.selected_vertex = None;
        if s.selected.is_some_and(|id| s.features.get(id).is_none()) {
            s.selected = None;
        }
        tracing::debug!("{note}");
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
        query::query_panel_ui(self, ui);
        features::features_panel_ui(self, ui);
        egui::CentralPanel::default().frame(egui::Frame::NONE.fill(egui::Color32::from_gray(24))).show(ui, |ui| {
            map::map_ui(self, ui);
        });
        dialogs::export_dialog_ui(self, &ctx);
        dialogs::open_url_ui(self, &ctx);
        dialogs::settings_ui(self, &ctx);
        setup::setup_ui(self, &ctx);
        dialogs::help_ui(self, &ctx);
        dialogs::about_ui(self, &ctx);
        dialogs::recovery_ui(self, &ctx);
        dialogs::close_ui(self, &ctx);
        panels::notifications_ui(self, &ctx);
        // What the panels asked for, done now that the frame is drawn.
        for command in std::mem::take(&mut self.commands) {
            self.apply(command);
        }
        self.autosave();
        self.screenshot_when_loaded(&ctx);
        if self.jobs.opening().is_some()
            || self.file_dialog.is_some()
            || self.picker.is_some()
            || self.session.is_dirty()
        {
            // Poll dialogs and the autosave clock; engine events wake us by themselves.
            ctx.request_repaint_after(Duration::from_millis(if self.session.is_dirty() { 1000 } else { 100 }));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.session.settings);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // A normal exit: the work was saved, discarded on request, or there was none.
        // (A crash never gets here: the recovery file stays and is offered next time.)
        if !self.session.is_dirty() || self.session.features.is_empty() || self.session.discard_on_close {
            let _ = std::fs::remove_file(&self.recovery_path);
        }
    }
}

/// Where the settings live in eframe's storage.
pub const SETTINGS_KEY: &str = "remote-reasoner-settings";
