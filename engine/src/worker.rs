//! The engine thread. The GUI (or CLI) sends typed [`Request`]s and polls typed
//! [`Event`]s; the thread owns every GDAL dataset and never shares one.
//!
//! - Tile requests coalesce: a new `Tiles` request replaces the unfinished one
//!   (the latest view wins), and the engine checks for new requests between tiles.
//! - Rendered tiles go through a byte-capped LRU cache.
//! - Long jobs (building overviews) run on their own thread with their own dataset
//!   handle, report progress, and can be cancelled.
//! - A panic inside any job becomes an [`Event::Failed`]; the engine keeps running.
//! - Rasters read over the network (URLs, `/vsi…/`, STAC assets) are opened and
//!   read on a thread of their own ([`crate::raster::reader`]): a slow range
//!   request never holds up the engine thread or another raster.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};

use crate::edit::WorkFeature;
use crate::error::EngineError;
use crate::export::{ExportOptions, ExportReport};
use crate::overviews;
use crate::project::{Project, ProjectMeta};
use crate::raster::reader::{ReaderMsg, ReaderReport};
use crate::raster::{Raster, RasterInfo, RenderParams};
use crate::reasoner::parse::PixelBox;
use crate::reasoner::{Answer, AskEvent, AskOptions, LoadOptions, Reasoner, Task, WindowImage};
use crate::segment::{ImageKey, Mask, Method, Segment, Segmenter};
use crate::tiles::{CacheKey, Tile, TileCache, TileKey, Window};

/// Identifies one request and every event it causes.
pub type JobId = u64;
/// Identifies an open raster (the id of the job that opened it).
pub type RasterId = u64;
/// Called after every event so the GUI can wake up and poll.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// What the engine can be asked to do.
#[derive(Clone, Debug)]
pub enum Request {
    /// Open a raster; answered by [`Event::Opened`] (raster id = job id) or [`Event::Failed`].
    Open { job: JobId, path: PathBuf },
    /// Forget a raster and its cached tiles.
    Close { raster: RasterId },
    /// Render these tiles; replaces any unfinished `Tiles` request.
    Tiles { job: JobId, raster: RasterId, params: RenderParams, keys: Vec<TileKey> },
    /// Build external overviews for a raster (cancellable, with progress).
    BuildOverviews { job: JobId, raster: RasterId },
    /// Load a RemoteReasoner checkpoint (replacing any loaded one); answered by
    /// [`Event::ReasonerLoaded`]. Runs on the model thread.
    LoadReasoner { job: JobId, dir: PathBuf, options: LoadOptions },
    /// Ask an OpenAI-compatible endpoint instead of a local checkpoint (replacing
    /// any loaded one); answered by [`Event::ReasonerLoaded`] once the server answered.
    UseEndpoint { job: JobId, options: crate::reasoner::remote::RemoteOptions },
    /// Ask the loaded checkpoint about `window` of a raster: [`Event::AskStage`]s,
    /// [`Event::AskText`] as the completion grows, then [`Event::AskDone`].
    Ask {
        job: JobId,
        raster: RasterId,
        window: Window,
        /// How the window is turned into RGB (what the analyst sees).
        params: RenderParams,
        task: Task,
        query: String,
        options: AskOptions,
    },
    /// Load a SAM 2.1 checkpoint, or (`None`) go back to the watershed fallback:
    /// [`Event::SegmenterLoaded`].
    LoadSegmenter { job: JobId, checkpoint: Option<PathBuf> },
    /// The pixel task on `window` of a raster: one mask per box (raster pixels),
    /// [`Event::Segmented`]. The window's encoding is cached.
    Segment { job: JobId, raster: RasterId, window: Window, params: RenderParams, boxes: Vec<PixelBox> },
    /// A click refining one feature's mask: its box, the previous mask (for its
    /// logits) and the clicks so far, all in raster pixels: [`Event::Refined`].
    /// A newer click on the same feature supersedes one still queued.
    Refine {
        job: JobId,
        raster: RasterId,
        window: Window,
        params: RenderParams,
        feature: u64,
        bbox: PixelBox,
        previous: Option<Box<Segment>>,
        clicks: Vec<(f64, f64, bool)>,
    },
    /// Save a project (GeoPackage, atomic) on a file thread: [`Event::ProjectSaved`].
    SaveProject { job: JobId, path: PathBuf, meta: Box<ProjectMeta>, features: Vec<WorkFeature> },
    /// Load a project on a file thread: [`Event::ProjectLoaded`].
    /// With `or_raster`, a file that is not a project is opened as a raster
    /// instead (answered by [`Event::Opened`] for the same job).
    LoadProject { job: JobId, path: PathBuf, or_raster: bool },
    /// Export features (re-simplified first when asked) on a file thread: [`Event::Exported`].
    Export {
        job: JobId,
        path: PathBuf,
        features: Vec<WorkFeature>,
        simplify: Option<(crate::contour::SimplifyMethod, f64)>,
        geotransform: Option<crate::geo::GeoTransform>,
        crs_wkt: Option<String>,
        options: ExportOptions,
    },
    /// Sweep a whole raster with the loaded reasoner (on the model thread; an
    /// endpoint gets `concurrency` parallel requests): [`Event::Progress`] per
    /// tile, then [`Event::SweepDone`]. Resumable through `progress_file`'s stem.
    Sweep {
        job: JobId,
        raster: RasterId,
        params: RenderParams,
        options: crate::sweep::SweepOptions,
        /// SAM checkpoint for the pixel/contour tasks (None: watershed fallback).
        sam: Option<PathBuf>,
        concurrency: usize,
        /// Where progress is kept (`<this>.sweep.jsonl`).
        progress_file: PathBuf,
    },
    /// Download a checkpoint from the hub on a thread of its own:
    /// [`Event::Progress`] per chunk, then [`Event::ModelPulled`].
    PullModel { job: JobId, request: crate::hub::PullRequest },
    /// Cancel a job (tile rendering, overview building, a question between tokens).
    Cancel { job: JobId },
}

/// What a question is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskStage {
    /// Waiting for the model thread (a checkpoint is loading or another question runs).
    Queued,
    EncodingImage,
    ReadingPrompt {
        tokens: usize,
    },
    Reasoning,
}

/// A loaded checkpoint, as the UI shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReasonerInfo {
    pub dir: PathBuf,
    pub device: String,
    /// f32, bf16, q8_0, …
    pub precision: String,
    pub parameters: u64,
    pub load_ms: f64,
    /// For provenance: [`crate::hub::weights_fingerprint`] of a local checkpoint
    /// (computed here, on the model thread: it may hash gigabytes), empty for an endpoint.
    pub weights_hash: String,
}

/// The pixel task's result on a raster window.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentOutcome {
    pub raster: RasterId,
    pub window: Window,
    /// The masks' pixel grid: the window as read (decimated when large).
    pub image_size: (usize, usize),
    pub merged: Mask,
    /// Per box: the box in raster pixels and its mask on the image grid.
    pub per_box: Vec<(PixelBox, Segment)>,
    pub method: Method,
    /// Whether the window was encoded for this request (false: from the cache).
    pub encoded: bool,
    /// Per box: its mask traced into polygons (exact, raster pixels).
    pub polygons: Vec<geo::MultiPolygon<f64>>,
}

/// A finished question: the model's answer and its boxes in raster pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct AskOutcome {
    pub raster: RasterId,
    pub window: Window,
    pub answer: Answer,
    /// `answer.boxes` mapped into the raster's pixel coordinates.
    pub boxes: Vec<PixelBox>,
}

/// What the engine reports back. Plain data only.
#[derive(Clone, Debug)]
pub enum Event {
    Opened {
        job: JobId,
        raster: RasterId,
        info: Box<RasterInfo>,
    },
    /// One tile, rendered with the parameters whose [`RenderParams::cache_hash`] is `params`.
    Tile {
        job: JobId,
        raster: RasterId,
        params: u64,
        tile: Arc<Tile>,
    },
    /// Every tile of the request was sent (or had failed).
    TilesDone {
        job: JobId,
    },
    Progress {
        job: JobId,
        fraction: f32,
        message: String,
    },
    /// Overviews exist now; the raster was reopened and its cached tiles dropped.
    OverviewsBuilt {
        job: JobId,
        raster: RasterId,
        info: Box<RasterInfo>,
    },
    ReasonerLoaded {
        job: JobId,
        info: ReasonerInfo,
    },
    AskStage {
        job: JobId,
        stage: AskStage,
    },
    /// New text of the completion (the reasoning trace streams through here).
    AskText {
        job: JobId,
        text: String,
    },
    AskDone {
        job: JobId,
        outcome: Box<AskOutcome>,
    },
    SegmenterLoaded {
        job: JobId,
        method: Method,
    },
    Segmented {
        job: JobId,
        outcome: Box<SegmentOutcome>,
    },
    Refined {
        job: JobId,
        feature: u64,
        segment: Box<Segment>,
        /// The refined mask traced into polygons (exact, raster pixels).
        polygons: geo::MultiPolygon<f64>,
    },
    ProjectSaved {
        job: JobId,
        path: PathBuf,
    },
    ProjectLoaded {
        job: JobId,
        path: PathBuf,
        project: Box<Project>,
    },
    Exported {
        job: JobId,
        report: ExportReport,
    },
    /// A sweep finished: merged boxes and polygons (raster pixels).
    SweepDone {
        job: JobId,
        raster: RasterId,
        result: Box<crate::sweep::SweepResult>,
        segmenter: String,
    },
    /// A checkpoint is in the hub cache, verified: its snapshot directory.
    ModelPulled {
        job: JobId,
        path: PathBuf,
    },
    /// The job stopped early: cancelled, or superseded by a newer request.
    Cancelled {
        job: JobId,
    },
    Failed {
        job: JobId,
        error: String,
    },
}

impl Event {
    /// The job an event belongs to.
    pub fn job(&self) -> JobId {
        match self {
            Self::Opened { job, .. }
            | Self::Tile { job, .. }
            | Self::TilesDone { job }
            | Self::Progress { job, .. }
            | Self::OverviewsBuilt { job, .. }
            | Self::ReasonerLoaded { job, .. }
            | Self::AskStage { job, .. }
            | Self::AskText { job, .. }
            | Self::AskDone { job, .. }
            | Self::SegmenterLoaded { job, .. }
            | Self::Segmented { job, .. }
            | Self::Refined { job, .. }
            | Self::ProjectSaved { job, .. }
            | Self::ProjectLoaded { job, .. }
            | Self::Exported { job, .. }
            | Self::ModelPulled { job, .. }
            | Self::SweepDone { job, .. }
            | Self::Cancelled { job }
            | Self::Failed { job, .. } => *job,
        }
    }
}

/// Engine settings.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Memory cap of the rendered-tile cache.
    pub tile_cache_bytes: usize,
    /// GDAL's own block cache (`GDAL_CACHEMAX`).
    pub gdal_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { tile_cache_bytes: 256 << 20, gdal_cache_bytes: 256 << 20 }
    }
}

/// Messages on the engine's channel: requests, plus reports from its job threads.
enum Msg {
    Request(Request),
    OverviewsDone {
        job: JobId,
        raster: RasterId,
        result: Result<(), EngineError>,
    },
    /// A remote raster's reader thread reports.
    Reader {
        raster: RasterId,
        report: ReaderReport,
    },
    /// The model thread finished a question (its cancel flag can go).
    ModelJobDone {
        job: JobId,
    },
    #[cfg(test)]
    Panic(JobId),
    Shutdown,
}

/// Handle to the engine thread. Dropping it stops the thread.
pub struct Engine {
    tx: Sender<Msg>,
    events: Receiver<Event>,
    next_job: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("next_job", &self.next_job).finish_non_exhaustive()
    }
}

impl Engine {
    /// Spawns the engine thread (named `engine`).
    pub fn spawn(config: EngineConfig, waker: Waker) -> Self {
        crate::gdal_init();
        // SAFETY: plain setter of a process-wide GDAL setting.
        unsafe { gdal_sys::GDALSetCacheMax64(config.gdal_cache_bytes as i64) };
        let (tx, rx) = unbounded();
        let (etx, events) = unbounded();
        let self_tx = tx.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                Worker {
                    rx,
                    self_tx,
                    events: etx,
                    waker,
                    rasters: HashMap::new(),
                    remote: HashMap::new(),
                    remote_tiles: None,
                    cache: TileCache::new(config.tile_cache_bytes),
                    tiles: None,
                    cancels: HashMap::new(),
                    model: None,
                    latest_click: Arc::default(),
                }
                .run();
            })
            .ok();
        Self { tx, events, next_job: AtomicU64::new(1), thread }
    }

    /// A fresh job id.
    pub fn next_job(&self) -> JobId {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request built from a fresh job id, and returns that id.
    pub fn send(&self, make: impl FnOnce(JobId) -> Request) -> JobId {
        let job = self.next_job();
        self.send_request(make(job));
        job
    }

    /// Sends a request as it is.
    pub fn send_request(&self, request: Request) {
        // The thread only stops when `self` is dropped, so sending cannot fail earlier.
        let _ = self.tx.send(Msg::Request(request));
    }

    pub fn open(&self, path: impl Into<PathBuf>) -> JobId {
        let path = path.into();
        self.send(|job| Request::Open { job, path })
    }

    pub fn request_tiles(&self, raster: RasterId, params: RenderParams, keys: Vec<TileKey>) -> JobId {
        self.send(|job| Request::Tiles { job, raster, params, keys })
    }

    pub fn build_overviews(&self, raster: RasterId) -> JobId {
        self.send(|job| Request::BuildOverviews { job, raster })
    }

    pub fn cancel(&self, job: JobId) {
        self.send_request(Request::Cancel { job });
    }

    pub fn close(&self, raster: RasterId) {
        self.send_request(Request::Close { raster });
    }

    /// The next event, if one is waiting (never blocks: for the GUI's frame loop).
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event (for the CLI, benchmarks and tests).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    #[cfg(test)]
    fn inject_panic(&self, job: JobId) {
        let _ = self.tx.send(Msg::Panic(job));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The unfinished tile request.
struct TileJob {
    job: JobId,
    raster: RasterId,
    params: RenderParams,
    hash: u64,
    queue: VecDeque<TileKey>,
}

struct Worker {
    rx: Receiver<Msg>,
    self_tx: Sender<Msg>,
    events: Sender<Event>,
    waker: Waker,
    rasters: HashMap<RasterId, Raster>,
    /// Remote rasters: their reader threads, and their info once open.
    remote: HashMap<RasterId, (Sender<ReaderMsg>, Option<Box<RasterInfo>>)>,
    /// The tile request a reader thread works on (one view at a time, as `tiles`).
    remote_tiles: Option<(JobId, RasterId)>,
    cache: TileCache,
    tiles: Option<TileJob>,
    cancels: HashMap<JobId, Arc<AtomicBool>>,
    /// The model thread, started on the first model request.
    model: Option<(Sender<ModelMsg>, JoinHandle<()>)>,
    /// The newest refinement job per feature: older queued clicks are dropped.
    latest_click: Arc<std::sync::Mutex<HashMap<u64, JobId>>>,
}

/// Work for the model thread, which owns the loaded checkpoint.
enum ModelMsg {
    Load {
        job: JobId,
        dir: PathBuf,
        options: LoadOptions,
    },
    UseEndpoint {
        job: JobId,
        options: crate::reasoner::remote::RemoteOptions,
    },
    Sweep {
        job: JobId,
        raster: RasterId,
        path: PathBuf,
        params: RenderParams,
        options: crate::sweep::SweepOptions,
        sam: Option<PathBuf>,
        concurrency: usize,
        progress_file: PathBuf,
        cancel: Arc<AtomicBool>,
    },
    Ask {
        job: JobId,
        raster: RasterId,
        image: WindowImage,
        task: Task,
        query: String,
        options: AskOptions,
        cancel: Arc<AtomicBool>,
    },
    LoadSegmenter {
        job: JobId,
        checkpoint: Option<PathBuf>,
    },
    Segment {
        job: JobId,
        raster: RasterId,
        key: ImageKey,
        image: WindowImage,
        boxes: Vec<PixelBox>,
    },
    Refine {
        job: JobId,
        key: ImageKey,
        image: WindowImage,
        feature: u64,
        bbox: PixelBox,
        previous: Option<Box<Segment>>,
        clicks: Vec<(f64, f64, bool)>,
    },
}

/// Pixels a window is read at for segmentation, at most: SAM sees 1024² anyway.
const SEGMENT_PIXEL_BUDGET: usize = 1 << 20;

/// The key of a window read for segmentation: its decimation level is part of it.
fn image_key(raster: RasterId, window: Window, image: &WindowImage) -> ImageKey {
    let scale = window.width as f64 / image.image.width.max(1) as f64;
    ImageKey { raster, window, level: scale.log2().round().clamp(0.0, 30.0) as u8 }
}

/// A raster-pixel box in pixels of the image read for `view`.
fn to_image(view: &WindowImage, b: &PixelBox) -> PixelBox {
    let sx = view.image.width as f64 / view.window.width as f64;
    let sy = view.image.height as f64 / view.window.height as f64;
    let (x, y) = (view.window.x as f64, view.window.y as f64);
    PixelBox { x1: (b.x1 - x) * sx, y1: (b.y1 - y) * sy, x2: (b.x2 - x) * sx, y2: (b.y2 - y) * sy }
}

impl Worker {
    fn run(mut self) {
        loop {
            // Handle everything queued before rendering the next tile, so a newer
            // view replaces an older one at once.
            let msg = if self.tiles.is_some() {
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            };
            match msg {
                Some(Msg::Shutdown) => break,
                Some(msg) => self.handle(msg),
                None => self.render_next_tile(),
            }
        }
        // Stop any question between two tokens, then wait for the model thread.
        for flag in self.cancels.values() {
            flag.store(true, Ordering::Relaxed);
        }
        if let Some((tx, handle)) = self.model.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// The model thread's inbox, starting the thread on first use.
    fn model_thread(&mut self) -> Result<&Sender<ModelMsg>, EngineError> {
        if self.model.is_none() {
            let (tx, rx) = unbounded();
            let (events, waker, done) = (self.events.clone(), self.waker.clone(), self.self_tx.clone());
            let handle = std::thread::Builder::new()
                .name("model".into())
                .spawn({
                    let latest = self.latest_click.clone();
                    move || model_loop(&rx, &events, &waker, &done, &latest)
                })
                .map_err(|e| EngineError::Internal(format!("cannot start the model thread: {e}")))?;
            self.model = Some((tx, handle));
        }
        match &self.model {
            Some((tx, _)) => Ok(tx),
            None => Err(EngineError::Internal("no model thread".into())),
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
        (self.waker)();
    }

    /// Runs file work (saving, loading, exporting) on a thread of its own, so
    /// tiles keep flowing; its outcome, error or panic comes back as an event.
    fn file_job(&mut self, job: JobId, f: impl FnOnce() -> Result<Event, EngineError> + Send + 'static) {
        let (events, waker) = (self.events.clone(), self.waker.clone());
        let spawned = std::thread::Builder::new().name(format!("job-{job}-file")).spawn(move || {
            let event = match catch_unwind(AssertUnwindSafe(f)) {
                Ok(Ok(event)) => event,
                Ok(Err(e)) => Event::Failed { job, error: e.to_string() },
                Err(p) => Event::Failed { job, error: format!("internal error: {}", panic_message(&*p)) },
            };
            let _ = events.send(event);
            waker();
        });
        if let Err(e) = spawned {
            self.emit(Event::Failed { job, error: format!("cannot start a file thread: {e}") });
        }
    }

    /// Runs `f`, turning an error or a panic into a `Failed` event.
    fn guarded(&mut self, job: JobId, f: impl FnOnce(&mut Self) -> Result<(), EngineError>) {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(Ok(())) => {}
            Ok(Err(EngineError::Cancelled)) => self.emit(Event::Cancelled { job }),
            Ok(Err(e)) => self.emit(Event::Failed { job, error: e.to_string() }),
            Err(panic) => {
                self.emit(Event::Failed { job, error: format!("internal error: {}", panic_message(&*panic)) });
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Request(Request::Open { job, path }) if crate::raster::source::is_remote_or_stac(&path) => {
                self.guarded(job, |w| w.open_remote(job, path));
            }
            Msg::Request(Request::Open { job, path }) => self.guarded(job, |w| {
                let raster = Raster::open(&path)?;
                let info = Box::new(raster.info().clone());
                w.rasters.insert(job, raster);
                w.emit(Event::Opened { job, raster: job, info });
                Ok(())
            }),
            Msg::Request(Request::Close { raster }) => {
                self.rasters.remove(&raster);
                self.remote.remove(&raster);
                self.cache.remove_where(|k| k.raster == raster);
                if self.tiles.as_ref().is_some_and(|t| t.raster == raster) {
                    self.tiles = None;
                }
            }
            Msg::Request(Request::Tiles { job, raster, params, keys }) => self.guarded(job, |w| {
                if let Some(old) = w.tiles.take() {
                    w.emit(Event::Cancelled { job: old.job });
                }
                if let Some((old, _)) = w.remote_tiles.take() {
                    w.emit(Event::Cancelled { job: old });
                }
                if !w.rasters.contains_key(&raster) && !w.remote.contains_key(&raster) {
                    return Err(EngineError::UnknownRaster(raster));
                }
                let hash = params.cache_hash();
                let mut queue = VecDeque::new();
                for key in keys {
                    match w.cache.get(&CacheKey { raster, params: hash, tile: key }) {
                        Some(tile) => w.emit(Event::Tile { job, raster, params: hash, tile }),
                        None => queue.push_back(key),
                    }
                }
                if queue.is_empty() {
                    w.emit(Event::TilesDone { job });
                } else if let Some((reader, _)) = w.remote.get(&raster) {
                    let _ = reader.send(ReaderMsg::Tiles { job, params, hash, keys: queue });
                    w.remote_tiles = Some((job, raster));
                } else {
                    w.tiles = Some(TileJob { job, raster, params, hash, queue });
                }
                Ok(())
            }),
            Msg::Request(Request::BuildOverviews { job, raster }) => {
                self.guarded(job, |w| w.start_overviews(job, raster));
            }
            Msg::Request(Request::Sweep { job, raster, params, options, sam, concurrency, progress_file }) => {
                self.guarded(job, |w| {
                    let path = match w.rasters.get(&raster) {
                        Some(r) => r.path().to_owned(),
                        None => w
                            .remote
                            .get(&raster)
                            .and_then(|(_, info)| info.as_ref())
                            .map(|i| i.path.clone())
                            .ok_or(EngineError::UnknownRaster(raster))?,
                    };
                    let cancel = Arc::new(AtomicBool::new(false));
                    w.cancels.insert(job, cancel.clone());
                    w.model_thread()?
                        .send(ModelMsg::Sweep {
                            job,
                            raster,
                            path,
                            params,
                            options,
                            sam,
                            concurrency,
                            progress_file,
                            cancel,
                        })
                        .map_err(|_| EngineError::Internal("the model thread stopped".into()))
                });
            }
            Msg::Request(Request::UseEndpoint { job, options }) => self.guarded(job, |w| {
                w.model_thread()?
                    .send(ModelMsg::UseEndpoint { job, options })
                    .map_err(|_| EngineError::Internal("the model thread stopped".into()))
            }),
            Msg::Request(Request::LoadReasoner { job, dir, options }) => self.guarded(job, |w| {
                w.model_thread()?
                    .send(ModelMsg::Load { job, dir, options })
                    .map_err(|_| EngineError::Internal("the model thread stopped".into()))
            }),
            Msg::Request(Request::Ask { job, raster, window, params, task, query, options }) => {
                self.guarded(job, |w| {
                    let budget = options.max_pixels.unwrap_or(crate::reasoner::processor::TRAINING_MAX_PIXELS);
                    let cancel = Arc::new(AtomicBool::new(false));
                    w.cancels.insert(job, cancel.clone());
                    w.with_window(job, raster, window, params, budget, move |image| ModelMsg::Ask {
                        job,
                        raster,
                        image,
                        task,
                        query,
                        options,
                        cancel,
                    })?;
                    w.emit(Event::AskStage { job, stage: AskStage::Queued });
                    Ok(())
                });
            }
            Msg::Request(Request::LoadSegmenter { job, checkpoint }) => self.guarded(job, |w| {
                w.model_thread()?
                    .send(ModelMsg::LoadSegmenter { job, checkpoint })
                    .map_err(|_| EngineError::Internal("the model thread stopped".into()))
            }),
            Msg::Request(Request::Segment { job, raster, window, params, boxes }) => self.guarded(job, |w| {
                w.with_window(job, raster, window, params, SEGMENT_PIXEL_BUDGET, move |image| {
                    let key = image_key(raster, window, &image);
                    ModelMsg::Segment { job, raster, key, image, boxes }
                })
            }),
            Msg::Request(Request::Refine { job, raster, window, params, feature, bbox, previous, clicks }) => {
                self.guarded(job, |w| {
                    if let Ok(mut latest) = w.latest_click.lock() {
                        latest.insert(feature, job);
                    }
                    w.with_window(job, raster, window, params, SEGMENT_PIXEL_BUDGET, move |image| {
                        let key = image_key(raster, window, &image);
                        ModelMsg::Refine { job, key, image, feature, bbox, previous, clicks }
                    })
                });
            }
            Msg::Request(Request::PullModel { job, request }) => {
                let (events, waker) = (self.events.clone(), self.waker.clone());
                self.file_job(job, move || {
                    let mut last = -1.0f32;
                    let path = crate::hub::pull(&request, |p| {
                        // Whole files count as steps; the current one by its bytes.
                        let part = if p.file_size > 0 { p.file_bytes as f32 / p.file_size as f32 } else { 0.0 };
                        let fraction = (p.file_index as f32 + part) / p.files.max(1) as f32;
                        if fraction - last >= 0.01 || part >= 1.0 {
                            last = fraction;
                            let message = format!("{} ({}/{})", p.file, p.file_index + 1, p.files);
                            let _ = events.send(Event::Progress { job, fraction, message });
                            waker();
                        }
                    })?;
                    Ok(Event::ModelPulled { job, path })
                });
            }
            Msg::Request(Request::SaveProject { job, path, meta, features }) => self.file_job(job, move || {
                crate::project::save(&path, &meta, &features)?;
                Ok(Event::ProjectSaved { job, path })
            }),
            Msg::Request(Request::LoadProject { job, path, or_raster: true }) if !crate::project::is_project(&path) => {
                match crate::project::not_a_project(&path) {
                    Some(e) => self.emit(Event::Failed { job, error: e.to_string() }),
                    None => self.handle(Msg::Request(Request::Open { job, path })),
                }
            }
            Msg::Request(Request::LoadProject { job, path, .. }) => self.file_job(job, move || {
                let project = Box::new(crate::project::load(&path)?);
                Ok(Event::ProjectLoaded { job, path, project })
            }),
            Msg::Request(Request::Export { job, path, mut features, simplify, geotransform, crs_wkt, options }) => self
                .file_job(job, move || {
                    if simplify.is_some() {
                        features = features.iter().map(|f| f.with_simplify(simplify)).collect();
                    }
                    let set = crate::edit::feature_set(&features, geotransform, crs_wkt);
                    let report = crate::export::export(&path, &set, &options, &mut |_, _| true)?;
                    Ok(Event::Exported { job, report })
                }),
            Msg::Reader { raster, report } => self.reader_report(raster, report),
            Msg::ModelJobDone { job } => {
                self.cancels.remove(&job);
            }
            Msg::Request(Request::Cancel { job }) => {
                if self.tiles.as_ref().is_some_and(|t| t.job == job) {
                    self.tiles = None;
                    self.emit(Event::Cancelled { job });
                }
                if self.remote_tiles.is_some_and(|(j, _)| j == job) {
                    self.remote_tiles = None;
                    self.emit(Event::Cancelled { job });
                }
                if let Some(flag) = self.cancels.get(&job) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Msg::OverviewsDone { job, raster, result } => {
                self.cancels.remove(&job);
                self.guarded(job, |w| {
                    result?;
                    let Some(old) = w.rasters.get(&raster) else {
                        return Err(EngineError::UnknownRaster(raster));
                    };
                    let reopened = Raster::open(old.path())?;
                    let info = Box::new(reopened.info().clone());
                    w.rasters.insert(raster, reopened);
                    w.cache.remove_where(|k| k.raster == raster);
                    w.emit(Event::OverviewsBuilt { job, raster, info });
                    Ok(())
                });
            }
            #[cfg(test)]
            Msg::Panic(job) => self.guarded(job, |_| panic!("injected panic")),
            Msg::Shutdown => {}
        }
    }

    fn render_next_tile(&mut self) {
        let Some(tj) = self.tiles.as_mut() else { return };
        let Some(key) = tj.queue.pop_front() else {
            let job = tj.job;
            self.tiles = None;
            self.emit(Event::TilesDone { job });
            return;
        };
        let (job, raster, params, hash) = (tj.job, tj.raster, tj.params, tj.hash);
        let rendered = match self.rasters.get(&raster) {
            Some(r) => catch_unwind(AssertUnwindSafe(|| r.render_tile(key, &params)))
                .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p)))),
            None => Err(EngineError::UnknownRaster(raster)),
        };
        match rendered {
            Ok(tile) => {
                let tile = Arc::new(tile);
                self.cache.insert(CacheKey { raster, params: hash, tile: key }, tile.clone());
                self.emit(Event::Tile { job, raster, params: hash, tile });
            }
            Err(e) => {
                // The rest of this view would most likely fail the same way.
                self.tiles = None;
                self.emit(Event::Failed { job, error: e.to_string() });
            }
        }
    }

    /// Opens a remote raster on a reader thread of its own; `Opened` comes from there.
    fn open_remote(&mut self, job: JobId, path: PathBuf) -> Result<(), EngineError> {
        let (tx, inbox) = unbounded();
        let (done, waker) = (self.self_tx.clone(), self.waker.clone());
        crate::raster::reader::spawn(format!("raster-{job}"), path, inbox, move |report| {
            let _ = done.send(Msg::Reader { raster: job, report });
            waker();
        })
        .map_err(|e| EngineError::Internal(format!("cannot start a reader thread: {e}")))?;
        self.remote.insert(job, (tx, None));
        Ok(())
    }

    /// What a remote raster's reader thread says: opened, a tile, or done.
    fn reader_report(&mut self, raster: RasterId, report: ReaderReport) {
        let current = self.remote_tiles.is_some_and(|(_, r)| r == raster);
        match report {
            ReaderReport::Opened(Ok(info)) => {
                if let Some(entry) = self.remote.get_mut(&raster) {
                    entry.1 = Some(info.clone());
                    self.emit(Event::Opened { job: raster, raster, info });
                }
            }
            ReaderReport::Opened(Err(e)) => {
                self.remote.remove(&raster);
                self.emit(Event::Failed { job: raster, error: e.to_string() });
            }
            ReaderReport::Tile { job, hash, result } => match result {
                Ok(tile) if current && self.remote_tiles.is_some_and(|(j, _)| j == job) => {
                    let tile = Arc::new(tile);
                    self.cache.insert(CacheKey { raster, params: hash, tile: tile.key }, tile.clone());
                    self.emit(Event::Tile { job, raster, params: hash, tile });
                }
                Err(e) if self.remote_tiles.is_some_and(|(j, _)| j == job) => {
                    self.remote_tiles = None;
                    self.emit(Event::Failed { job, error: e.to_string() });
                }
                _ => {}
            },
            ReaderReport::TilesDone { job } => {
                if self.remote_tiles.is_some_and(|(j, _)| j == job) {
                    self.remote_tiles = None;
                    self.emit(Event::TilesDone { job });
                }
            }
        }
    }

    /// Reads `window` of `raster` at `budget` pixels and hands the model thread
    /// what `make` builds from it: here for a local raster, on its reader thread
    /// for a remote one (a failure there comes back as `Failed`).
    fn with_window(
        &mut self,
        job: JobId,
        raster: RasterId,
        window: Window,
        params: RenderParams,
        budget: usize,
        make: impl FnOnce(WindowImage) -> ModelMsg + Send + 'static,
    ) -> Result<(), EngineError> {
        let model = self.model_thread()?.clone();
        let stopped = || EngineError::Internal("the model thread stopped".into());
        if let Some(r) = self.rasters.get(&raster) {
            let image = crate::reasoner::read_window(r, window, &params, budget)?;
            return model.send(make(image)).map_err(|_| stopped());
        }
        let (reader, _) = self.remote.get(&raster).ok_or(EngineError::UnknownRaster(raster))?;
        let (events, waker) = (self.events.clone(), self.waker.clone());
        let run = move |r: &Raster| {
            let sent = crate::reasoner::read_window(r, window, &params, budget)
                .and_then(|image| model.send(make(image)).map_err(|_| stopped()));
            if let Err(e) = sent {
                let _ = events.send(Event::Failed { job, error: e.to_string() });
                waker();
            }
        };
        reader.send(ReaderMsg::Run(Box::new(run))).map_err(|_| EngineError::UnknownRaster(raster))
    }

    fn start_overviews(&mut self, job: JobId, raster: RasterId) -> Result<(), EngineError> {
        if self.remote.contains_key(&raster) {
            return Err(EngineError::InvalidRequest(
                "overviews cannot be written next to a raster read over the network; ask its provider for a COG".into(),
            ));
        }
        let r = self.rasters.get(&raster).ok_or(EngineError::UnknownRaster(raster))?;
        let path = r.path().to_owned();
        let factors = overviews::default_factors(r.info().width, r.info().height);
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(job, cancel.clone());
        let (events, waker, done) = (self.events.clone(), self.waker.clone(), self.self_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("job-{job}-overviews")).spawn(move || {
            let mut last = -1.0f64;
            let result = catch_unwind(AssertUnwindSafe(|| {
                overviews::build_overviews(&path, &factors, "AVERAGE", |fraction| {
                    if fraction - last >= 0.01 || fraction >= 1.0 {
                        last = fraction;
                        let _ = events.send(Event::Progress {
                            job,
                            fraction: fraction as f32,
                            message: format!("building {} overview levels", factors.len()),
                        });
                        waker();
                    }
                    !cancel.load(Ordering::Relaxed)
                })
            }))
            .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))));
            let _ = done.send(Msg::OverviewsDone { job, raster, result });
        });
        spawned.map(|_| ()).map_err(|e| EngineError::Internal(format!("cannot start job thread: {e}")))
    }
}

/// The model thread: loads checkpoints and answers questions one at a time,
/// streaming events straight to the UI.
fn model_loop(
    rx: &Receiver<ModelMsg>,
    events: &Sender<Event>,
    waker: &Waker,
    done: &Sender<Msg>,
    latest_click: &std::sync::Mutex<HashMap<u64, JobId>>,
) {
    let emit = |event: Event| {
        let _ = events.send(event);
        waker();
    };
    let mut reasoner: Option<crate::reasoner::Backend> = None;
    // Without a checkpoint, the watershed fallback segments.
    let mut segmenter: Box<dyn Segmenter> = Box::new(crate::segment::WatershedSegmenter::default());
    for msg in rx {
        match msg {
            ModelMsg::Load { job, dir, options } => {
                reasoner = None; // free the old weights before mapping the new ones
                match catch_unwind(AssertUnwindSafe(|| Reasoner::load(&dir, &options))) {
                    Ok(Ok(r)) => {
                        let info = ReasonerInfo {
                            dir: r.dir.clone(),
                            device: options.device.to_string(),
                            precision: r.precision.to_string(),
                            parameters: r.config().parameter_count(),
                            load_ms: r.load_ms,
                            weights_hash: crate::hub::weights_fingerprint(&r.dir).unwrap_or_default(),
                        };
                        reasoner = Some(crate::reasoner::Backend::Local(Box::new(r)));
                        emit(Event::ReasonerLoaded { job, info });
                    }
                    Ok(Err(e)) => emit(Event::Failed { job, error: e.to_string() }),
                    Err(p) => emit(Event::Failed { job, error: format!("internal error: {}", panic_message(&*p)) }),
                }
            }
            ModelMsg::Sweep { job, raster, path, params, options, sam, concurrency, progress_file, cancel } => {
                let result = match reasoner.take() {
                    None => Err(EngineError::InvalidRequest(
                        "no RemoteReasoner checkpoint or endpoint is loaded for the sweep".into(),
                    )),
                    Some(backend) => {
                        let mut backends = match backend {
                            crate::reasoner::Backend::Remote(r) => {
                                (0..concurrency.max(1)).map(|_| crate::reasoner::Backend::Remote(r.clone())).collect()
                            }
                            local => vec![local],
                        };
                        let name = std::sync::Mutex::new(String::new());
                        let make = || -> Result<Box<dyn Segmenter>, EngineError> {
                            let s = crate::segment::load_segmenter(sam.as_deref(), &candle_core::Device::Cpu)?;
                            if let Ok(mut n) = name.lock() {
                                *n = s.method().to_string();
                            }
                            Ok(s)
                        };
                        let mut progress = |done: usize, total: usize, eta: f64| {
                            let message = format!("{done}/{total} tiles, about {eta:.0} s left");
                            emit(Event::Progress { job, fraction: done as f32 / total.max(1) as f32, message });
                        };
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            crate::sweep::sweep(
                                &path,
                                &params,
                                &options,
                                &mut backends,
                                &make,
                                &progress_file,
                                &cancel,
                                &mut progress,
                            )
                        }))
                        .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))));
                        // The loaded reasoner stays loaded.
                        reasoner = backends.into_iter().next();
                        r.map(|res| (res, name.into_inner().unwrap_or_default()))
                    }
                };
                match result {
                    Ok((res, segmenter)) => emit(Event::SweepDone { job, raster, result: Box::new(res), segmenter }),
                    Err(EngineError::Cancelled) => emit(Event::Cancelled { job }),
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
                let _ = done.send(Msg::ModelJobDone { job });
            }
            ModelMsg::UseEndpoint { job, options } => {
                reasoner = None;
                let t = std::time::Instant::now();
                match crate::reasoner::remote::RemoteBackend::new(options) {
                    Ok(r) => {
                        let info = ReasonerInfo {
                            dir: PathBuf::from(&r.options.endpoint),
                            device: "remote".into(),
                            precision: r.options.model.clone(),
                            parameters: 0,
                            load_ms: t.elapsed().as_secs_f64() * 1e3,
                            weights_hash: String::new(),
                        };
                        reasoner = Some(crate::reasoner::Backend::Remote(r));
                        emit(Event::ReasonerLoaded { job, info });
                    }
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
            }
            ModelMsg::Ask { job, raster, image, task, query, options, cancel } => {
                let result = match reasoner.as_mut() {
                    None => Err(EngineError::InvalidRequest(
                        "no RemoteReasoner checkpoint is loaded (set one in Settings, or `remote-reasoner models pull`)"
                            .into(),
                    )),
                    Some(_) if cancel.load(Ordering::Relaxed) => Err(EngineError::Cancelled),
                    Some(r) => {
                        emit(Event::AskStage { job, stage: AskStage::EncodingImage });
                        catch_unwind(AssertUnwindSafe(|| {
                            r.ask(&image.image, task, &query, &options, |event| {
                                match event {
                                    AskEvent::ImageEncoded { tokens } => {
                                        emit(Event::AskStage { job, stage: AskStage::ReadingPrompt { tokens } });
                                    }
                                    AskEvent::PromptRead { .. } => {
                                        emit(Event::AskStage { job, stage: AskStage::Reasoning });
                                    }
                                    AskEvent::Text(text) => emit(Event::AskText { job, text }),
                                }
                                if cancel.load(Ordering::Relaxed) {
                                    std::ops::ControlFlow::Break(())
                                } else {
                                    std::ops::ControlFlow::Continue(())
                                }
                            })
                        }))
                        .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))))
                    }
                };
                match result {
                    Ok(answer) => {
                        let boxes = answer.boxes.iter().map(|b| image.to_raster(b)).collect();
                        let outcome = AskOutcome { raster, window: image.window, answer, boxes };
                        emit(Event::AskDone { job, outcome: Box::new(outcome) });
                    }
                    Err(EngineError::Cancelled) => emit(Event::Cancelled { job }),
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
                let _ = done.send(Msg::ModelJobDone { job });
            }
            ModelMsg::LoadSegmenter { job, checkpoint } => {
                let loaded = catch_unwind(AssertUnwindSafe(|| {
                    crate::segment::load_segmenter(checkpoint.as_deref(), &candle_core::Device::Cpu)
                }))
                .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))));
                match loaded {
                    Ok(s) => {
                        segmenter = s;
                        emit(Event::SegmenterLoaded { job, method: segmenter.method() });
                    }
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
            }
            ModelMsg::Segment { job, raster, key, image, boxes } => {
                let image_boxes: Vec<PixelBox> = boxes.iter().map(|b| to_image(&image, b)).collect();
                let result = catch_unwind(AssertUnwindSafe(|| {
                    crate::segment::pixel_task(segmenter.as_mut(), Some(key), &image.image, &image_boxes)
                }))
                .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))));
                match result {
                    Ok(r) => {
                        let frame = crate::contour::ImageFrame {
                            window: image.window,
                            image_size: (image.image.width, image.image.height),
                        };
                        let polygons =
                            r.per_box.iter().map(|(_, s)| crate::contour::trace_to_raster(&s.mask, &frame)).collect();
                        let outcome = SegmentOutcome {
                            raster,
                            window: image.window,
                            image_size: (image.image.width, image.image.height),
                            merged: r.merged,
                            per_box: r.per_box.into_iter().map(|(b, s)| (image.to_raster(&b), s)).collect(),
                            method: r.method,
                            encoded: r.encoded,
                            polygons,
                        };
                        emit(Event::Segmented { job, outcome: Box::new(outcome) });
                    }
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
            }
            ModelMsg::Refine { job, key, image, feature, bbox, previous, clicks } => {
                let newest = latest_click.lock().map(|l| l.get(&feature).copied()).unwrap_or(Some(job));
                if newest.is_some_and(|n| n != job) {
                    emit(Event::Cancelled { job }); // a newer click on this feature is queued
                    continue;
                }
                let b = to_image(&image, &bbox);
                let clicks: Vec<(f32, f32, bool)> = clicks
                    .iter()
                    .map(|&(x, y, positive)| {
                        let p = to_image(&image, &PixelBox { x1: x, y1: y, x2: x, y2: y });
                        (p.x1 as f32, p.y1 as f32, positive)
                    })
                    .collect();
                let result = catch_unwind(AssertUnwindSafe(|| -> Result<Segment, EngineError> {
                    let b = crate::segment::clip_box(b, image.image.width, image.image.height)
                        .map_err(|e| EngineError::InvalidRequest(format!("the feature's box {e}")))?;
                    segmenter.set_image(Some(key), &image.image)?;
                    crate::segment::refine(segmenter.as_mut(), b, previous.as_deref(), &clicks)
                }))
                .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))));
                match result {
                    Ok(segment) => {
                        let frame = crate::contour::ImageFrame {
                            window: image.window,
                            image_size: (image.image.width, image.image.height),
                        };
                        let polygons = crate::contour::trace_to_raster(&segment.mask, &frame);
                        emit(Event::Refined { job, feature, segment: Box::new(segment), polygons });
                    }
                    Err(e) => emit(Event::Failed { job, error: e.to_string() }),
                }
            }
        }
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::spawn(EngineConfig::default(), Arc::new(|| {}))
    }

    fn next(engine: &Engine) -> Event {
        engine.recv_timeout(Duration::from_secs(30)).expect("engine answered")
    }

    #[test]
    fn panic_in_a_job_becomes_a_failure_and_engine_lives_on() {
        let e = engine();
        e.inject_panic(7);
        match next(&e) {
            Event::Failed { job: 7, error } => assert!(error.contains("injected panic"), "{error}"),
            other => panic!("unexpected {other:?}"),
        }
        let job = e.open("/definitely/not/here.tif");
        match next(&e) {
            Event::Failed { job: j, error } => {
                assert_eq!(j, job);
                assert!(error.contains("/definitely/not/here.tif") && error.contains("not found"), "{error}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tiles_for_unknown_raster_fail_cleanly() {
        let e = engine();
        let params = RenderParams { bands: crate::raster::BandMapping::Grey(1), stretch: crate::raster::Stretch::None };
        let job = e.request_tiles(999, params, vec![TileKey { level: 0, x: 0, y: 0 }]);
        assert!(matches!(next(&e), Event::Failed { job: j, .. } if j == job));
    }
}
