//! The desktop workbench (eframe/egui). The GUI only sends requests to the
//! engine thread and polls its events; it never blocks a frame on I/O.

pub mod dialogs;
mod features;
mod map;
pub mod overlay;
mod panels;
mod query;
pub mod session;
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
            let settings = cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY)).unwrap_or_default();
            let mut app = WorkbenchApp::with_session(&cc.egui_ctx, path, settings, engine::project::recovery_path());
            app.screenshot = shot.map(|(path, result)| Screenshot { path, requested: false, result });
            if app.screenshot.is_some() {
                // A screenshot run is not interactive: no restore question in the picture.
                app.session.recovery_offer = None;
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
    /// Questions, features, editing, projects.
    pub session: session::Session,
    /// Triangulated feature fills.
    pub fills: overlay::FillCache,
    /// Where unsaved work is kept every few seconds.
    pub recovery_path: PathBuf,
    /// How often unsaved work is written there.
    pub autosave_every: Duration,
    /// The job restoring the recovery file: if it fails, the file is set aside.
    pub restoring: Option<JobId>,
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
            opening: None,
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
            restoring: None,
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
            let p = path.clone();
            let job = self.engine.send(|job| engine::Request::LoadProject { job, path: p, or_raster: true });
            // Either a project arrives for this job, or the raster opens under it.
            self.session.load_job = Some(job);
            self.opening = Some((job, path));
        } else {
            self.open(path);
        }
    }

    /// Asks the engine to open a raster; the current one stays until it succeeds.
    pub fn open(&mut self, path: PathBuf) {
        let job = self.engine.open(path.clone());
        self.opening = Some((job, path));
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

    fn on_event(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::Opened { job, raster, info } => {
                if self.session.load_job == Some(job) {
                    self.session.load_job = None; // it was a raster, not a project
                }
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
                        fitted_to: None,
                        tiles: TileTextures::new(params.cache_hash()),
                        tile_job: None,
                        overview_job: None,
                    });
                    self.apply_pending_view();
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
                if self.session.sweep.as_ref().is_some_and(|sw| sw.job == job) {
                    self.session.sweep = None;
                    self.notify_info("Sweep cancelled; the tiles done are kept and a new sweep resumes from them.");
                }
                if self.run_job() == Some(job) {
                    self.session.finish_run(Some("Cancelled.".into()));
                }
                self.session.segment_jobs.retain(|(j, _)| *j != job);
                self.session.refine_jobs.retain(|(j, _, _)| *j != job);
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
            Event::Progress { job, fraction, message } if self.session.pull.as_ref().is_some_and(|p| p.0 == job) => {
                self.session.pull = Some((job, fraction, message));
            }
            Event::Progress { job, fraction, message }
                if self.session.sweep.as_ref().is_some_and(|sw| sw.job == job) =>
            {
                if let Some(sw) = self.session.sweep.as_mut() {
                    sw.fraction = fraction;
                    sw.message = message;
                }
            }
            Event::SweepDone { job, raster, result, segmenter } => {
                let Some(sw) = self.session.sweep.take().filter(|sw| sw.job == job) else { return };
                let source =
                    self.doc.as_ref().filter(|d| d.raster == raster).map(|d| d.info.path.display().to_string());
                let model = self.session.model_label();
                let provenance = Arc::new(engine::features::Provenance {
                    task: format!("sweep:{}", sw.task.name()),
                    query: sw.query.clone(),
                    model,
                    segmenter,
                    source: source.unwrap_or_default(),
                    created_at: engine::features::Provenance::now(),
                    ..Default::default()
                });
                let features: Vec<_> = if sw.task == session::AskTask::Region {
                    result
                        .boxes
                        .iter()
                        .map(|b| {
                            engine::edit::WorkFeature::new(Some(*b), geo::MultiPolygon::new(vec![]), provenance.clone())
                        })
                        .collect()
                } else {
                    result
                        .polygons
                        .iter()
                        .map(|p| {
                            engine::edit::WorkFeature::new(
                                None,
                                geo::MultiPolygon::new(vec![p.clone()]),
                                provenance.clone(),
                            )
                        })
                        .collect()
                };
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
            Event::ModelPulled { job, path } => {
                if self.session.pull.as_ref().is_some_and(|p| p.0 == job) {
                    self.session.pull = None;
                    self.notify_info(format!(
                        "Downloaded and verified {} into {}",
                        self.session.settings.model.trim(),
                        path.display()
                    ));
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
            Event::ReasonerLoaded { job, info } => {
                // Loads run in order on the model thread: this is the one the settings asked for,
                // even when the question that needed it was cancelled meanwhile.
                if self.session.reasoner_key.is_some() {
                    self.session.reasoner = Some(info);
                }
                if self.run_job() == Some(job)
                    && self.session.pending_ask
                    && let Some(doc) = &self.doc
                {
                    let params = doc.params;
                    self.session.send_ask(&self.engine, params);
                }
                // A sweep was waiting for this model.
                if let Some(sw) = self.session.sweep.as_mut().filter(|sw| sw.job == job)
                    && let Some(engine::Request::Sweep {
                        raster, params, options, sam, concurrency, progress_file, ..
                    }) = self.session.pending_sweep.take()
                {
                    sw.job = self.engine.send(|job| engine::Request::Sweep {
                        job,
                        raster,
                        params,
                        options,
                        sam,
                        concurrency,
                        progress_file,
                    });
                    sw.message = "starting".into();
                }
            }
            Event::AskStage { job, stage } => {
                if let Some(run) = self.session.run.as_mut().filter(|r| r.job == Some(job)) {
                    run.stage = Some(session::Stage::Asking(stage));
                }
            }
            Event::AskText { job, text } => {
                if let Some(run) = self.session.run.as_mut().filter(|r| r.job == Some(job)) {
                    run.text.push_str(&text);
                }
            }
            Event::AskDone { job, outcome } => {
                if self.run_job() == Some(job) {
                    self.on_answer(outcome);
                }
            }
            Event::SegmenterLoaded { job: _, method } => {
                self.session.segmenter = Some(method);
                if let Some((window, boxes, purpose)) = self.session.pending_segment.take()
                    && let Some(doc) = &self.doc
                {
                    let (raster, params) = (doc.raster, doc.params);
                    self.session.start_segment(&self.engine, raster, window, params, boxes, purpose);
                }
            }
            Event::Segmented { job, outcome } => self.on_segmented(job, &outcome),
            Event::Refined { job, feature, segment, polygons } => {
                let Some(pos) = self.session.refine_jobs.iter().position(|(j, _, _)| *j == job) else { return };
                let (_, _, clicks) = self.session.refine_jobs.remove(pos);
                if let Some(f) = self.session.features.get(feature)
                    && let Some(old) = &f.segment
                {
                    let state = engine::edit::SegmentState { window: old.window, segment: *segment, clicks };
                    let refined = f.with_segment(state, polygons);
                    let _ = self.session.features.replace("refine mask", refined);
                }
            }
            Event::ProjectSaved { job, path } => {
                if let Some((j, _, recovery, revision)) = self.session.save_job.take() {
                    if j != job {
                        self.session.save_job = Some((j, path, recovery, revision));
                    } else if recovery {
                        self.session.autosaved_revision = revision;
                    } else {
                        self.session.saved_revision = revision;
                        self.session.autosaved_revision = revision;
                        self.session.project_path = Some(path.clone());
                        // Saved for real: the recovery copy is not needed any more.
                        let _ = std::fs::remove_file(&self.recovery_path);
                        self.notify_info(format!("Saved {}", path.display()));
                        if self.session.close_after_save {
                            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                        }
                    }
                }
            }
            Event::ProjectLoaded { job, path, project } => {
                if self.opening.as_ref().is_some_and(|(j, _)| *j == job) {
                    self.opening = None;
                }
                if self.session.load_job == Some(job) {
                    self.session.load_job = None;
                    self.restoring = None;
                    self.apply_project(path, *project);
                }
            }
            Event::Exported { job, report } => {
                if self.session.export_job == Some(job) {
                    self.session.export_job = None;
                    let layers: Vec<String> = report.layers.iter().map(|(l, n)| format!("{n} {l}")).collect();
                    let mut text = format!(
                        "Exported {} to {}",
                        layers.join(", "),
                        report.files.first().map_or_else(String::new, |f| f.display().to_string())
                    );
                    if !report.skipped.is_empty() {
                        text.push_str(&format!("; skipped: {}", report.skipped.join("; ")));
                    }
                    for n in &report.notes {
                        text.push_str(&format!("\n{n}"));
                    }
                    self.session.last_export = Some(text.clone());
                    self.notify_info(text);
                }
            }
            Event::Failed { job, error } => {
                if self.run_job() == Some(job) {
                    self.session.finish_run(Some(error.clone()));
                    if self.session.reasoner.is_none() {
                        self.session.reasoner_key = None;
                    }
                    if self.session.segmenter.is_none() {
                        self.session.segmenter_key = None;
                        self.session.pending_segment = None;
                    }
                }
                self.session.segment_jobs.retain(|(j, _)| *j != job);
                self.session.refine_jobs.retain(|(j, _, _)| *j != job);
                if self.session.save_job.as_ref().is_some_and(|(j, ..)| *j == job) {
                    self.session.save_job = None;
                }
                if self.session.load_job == Some(job) {
                    self.session.load_job = None;
                }
                if self.session.export_job == Some(job) {
                    self.session.export_job = None;
                }
                if self.session.pull.as_ref().is_some_and(|p| p.0 == job) {
                    self.session.pull = None;
                }
                if self.session.sweep.as_ref().is_some_and(|sw| sw.job == job) {
                    self.session.sweep = None;
                    self.session.pending_sweep = None;
                }
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
                if self.restoring.take_if(|j| *j == job).is_some() {
                    self.set_recovery_aside(&error);
                } else {
                    self.notify_error(error);
                }
            }
        }
    }

    /// The job the current run waits on.
    fn run_job(&self) -> Option<JobId> {
        self.session.run.as_ref().filter(|r| r.is_running()).and_then(|r| r.job)
    }

    /// Asks the question in the query panel about the chosen area.
    pub fn run_query(&mut self) {
        let Some(doc) = &self.doc else {
            self.notify_error("Open a raster first.");
            return;
        };
        let Some(window) = overlay::area_window(self) else {
            self.notify_error("The area to ask about is empty: draw it on the map, or pick View or Whole raster.");
            return;
        };
        let (raster, params) = (doc.raster, doc.params);
        if let Err(e) = self.session.start_ask(&self.engine, raster, window, params) {
            self.notify_error(e);
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
        if let Err(e) = self.session.start_sweep(&self.engine, raster, &path, params, &dir) {
            self.notify_error(e);
        }
    }

    /// Stops the current run at whatever stage it is.
    pub fn cancel_run(&mut self) {
        if let Some(job) = self.run_job() {
            self.engine.cancel(job);
            self.session.segment_jobs.retain(|(j, _)| *j != job);
        }
        self.session.pending_segment = None;
        self.session.finish_run(Some("Cancelled.".into()));
    }

    fn on_answer(&mut self, outcome: Box<engine::worker::AskOutcome>) {
        let Some(doc) = &self.doc else { return };
        let (raster, params, source) = (doc.raster, doc.params, doc.info.path.clone());
        let task = self.session.run.as_ref().map(|r| r.task).unwrap_or_default();
        let boxes = outcome.boxes.clone();
        let window = outcome.window;
        let provenance = self.session.provenance_for(&outcome, &source, "");
        if let Some(run) = self.session.run.as_mut() {
            run.outcome = Some(outcome);
        }
        match task {
            session::AskTask::Region => {
                let features: Vec<_> = boxes
                    .iter()
                    .map(|b| {
                        engine::edit::WorkFeature::new(
                            Some([b.x1, b.y1, b.x2, b.y2]),
                            geo::MultiPolygon::new(vec![]),
                            provenance.clone(),
                        )
                    })
                    .collect();
                if !features.is_empty() {
                    let ids = self.session.features.add("ask (region)", features);
                    self.session.selected = ids.first().copied();
                }
                self.session.finish_run(None);
            }
            session::AskTask::Pixel | session::AskTask::Contour if !boxes.is_empty() => {
                let purpose = session::SegmentPurpose::Ask { provenance };
                self.session.start_segment(&self.engine, raster, window, params, boxes, purpose);
            }
            _ => self.session.finish_run(None),
        }
    }

    fn on_segmented(&mut self, job: JobId, outcome: &engine::worker::SegmentOutcome) {
        let Some(pos) = self.session.segment_jobs.iter().position(|(j, _)| *j == job) else { return };
        let (_, purpose) = self.session.segment_jobs.remove(pos);
        let segmenter = outcome.method.to_string();
        let source = self.doc.as_ref().map(|d| d.info.path.display().to_string()).unwrap_or_default();
        let (provenance, label) = match purpose {
            session::SegmentPurpose::Ask { provenance, .. } => {
                (Arc::new(engine::features::Provenance { segmenter, ..(*provenance).clone() }), "ask")
            }
            session::SegmentPurpose::Manual => (
                Arc::new(engine::features::Provenance {
                    task: "manual".into(),
                    segmenter,
                    source,
                    window: Some(outcome.window),
                    created_at: engine::features::Provenance::now(),
                    ..Default::default()
                }),
                "draw box",
            ),
        };
        let features = session::Session::features_from(outcome, &provenance);
        let ids = self.session.features.add(label, features);
        self.session.selected = ids.first().copied();
        self.session.selected_vertex = None;
        if self.run_job() == Some(job) {
            self.session.finish_run(None);
        }
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
        if self.session.save_job.is_some() {
            return;
        }
        if recovery && let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let meta = Box::new(self.project_meta());
        let features: Vec<_> = self.session.features.iter().cloned().collect();
        let revision = self.session.features.revision();
        let p = path.clone();
        let job = self.engine.send(|job| engine::Request::SaveProject { job, path: p, meta, features });
        self.session.save_job = Some((job, path, recovery, revision));
    }

    pub fn load_project(&mut self, path: PathBuf) {
        let job = self.engine.send(|job| engine::Request::LoadProject { job, path, or_raster: false });
        self.session.load_job = Some(job);
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
        if due && s.features.revision() != s.autosaved_revision && s.is_dirty() && s.save_job.is_none() {
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
                (DialogPurpose::ModelDir, _) => d.pick_folder(),
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
            doc.tile_job = None;
        }
    }

    /// True when nothing is loading: the raster (if any) is open and every tile
    /// of the current view has arrived (or failed).
    pub fn is_idle(&self) -> bool {
        self.opening.is_none()
            && self.session.load_job.is_none()
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
        dialogs::help_ui(self, &ctx);
        dialogs::recovery_ui(self, &ctx);
        dialogs::close_ui(self, &ctx);
        panels::notifications_ui(self, &ctx);
        self.autosave();
        self.screenshot_when_loaded(&ctx);
        if self.opening.is_some() || self.file_dialog.is_some() || self.picker.is_some() || self.session.is_dirty() {
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
