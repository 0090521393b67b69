//! The engine thread. The GUI (or CLI) sends typed [`Request`]s and polls typed
//! [`Event`]s, each in an envelope naming its job; the thread owns every GDAL
//! dataset and never shares one.
//!
//! - Tile requests coalesce: a new `Tiles` request replaces the unfinished one
//!   (the latest view wins), and the engine checks for new requests between tiles.
//! - Rendered tiles go through a byte-capped LRU cache.
//! - Questions, segmentation and sweeps go to the model thread ([`model`]) as
//!   they came, with the window read here (or on a remote raster's reader
//!   thread); the model thread loads the models a request names itself.
//! - Long jobs (building overviews, files, downloads) run on their own threads.
//! - Every job runs inside [`crate::base::guard`]: an error or a panic becomes
//!   [`EventKind::Failed`] and the engine keeps running.
//! - Rasters read over the network (URLs, `/vsi…/`, STAC assets) are opened and
//!   read on a thread of their own ([`crate::raster::reader`]): a slow range
//!   request never holds up the engine thread or another raster.

mod messages;
mod model;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};

pub use messages::{AskStage, Event, EventKind, JobId, Models, RasterId, Request, RequestKind};
use model::{Input, ModelJob};

use crate::base::{Window, guard};
use crate::error::EngineError;
use crate::overviews;
use crate::pipeline::WindowImage;
use crate::raster::reader::{ReaderMsg, ReaderReport};
use crate::raster::{Raster, RasterInfo, RenderParams};
use crate::tiles::{CacheKey, TileCache, TileKey};

/// Called after every event so the GUI can wake up and poll.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

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
    Request(Box<Request>),
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
    /// The model thread finished a job (its cancel flag can go).
    ModelJobDone {
        job: JobId,
    },
    #[cfg(test)]
    Panic(JobId),
    Shutdown,
}

/// Where events go: the GUI's channel, and its waker.
#[derive(Clone)]
struct Outbox {
    events: Sender<Event>,
    waker: Waker,
}

impl Outbox {
    fn emit(&self, job: JobId, kind: EventKind) {
        self.send(Event::new(job, kind));
    }

    fn send(&self, event: Event) {
        let _ = self.events.send(event);
        (self.waker)();
    }
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
                    out: Outbox { events: etx, waker },
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

    /// Sends `kind` as a new job, and returns its id.
    pub fn send(&self, kind: RequestKind) -> JobId {
        let job = self.next_job();
        self.send_request(Request { job, kind });
        job
    }

    /// Sends a request as it is.
    pub fn send_request(&self, request: Request) {
        // The thread only stops when `self` is dropped, so sending cannot fail earlier.
        let _ = self.tx.send(Msg::Request(Box::new(request)));
    }

    pub fn open(&self, path: impl Into<PathBuf>) -> JobId {
        self.send(RequestKind::Open { path: path.into() })
    }

    pub fn request_tiles(&self, raster: RasterId, params: RenderParams, keys: Vec<TileKey>) -> JobId {
        self.send(RequestKind::Tiles { raster, params, keys })
    }

    pub fn build_overviews(&self, raster: RasterId) -> JobId {
        self.send(RequestKind::BuildOverviews { raster })
    }

    pub fn cancel(&self, job: JobId) {
        self.send_request(Request { job, kind: RequestKind::Cancel });
    }

    pub fn close(&self, raster: RasterId) {
        self.send_request(Request { job: raster, kind: RequestKind::Close });
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
    out: Outbox,
    rasters: HashMap<RasterId, Raster>,
    /// Remote rasters: their reader threads, and their info once open.
    remote: HashMap<RasterId, (Sender<ReaderMsg>, Option<Box<RasterInfo>>)>,
    /// The tile request a reader thread works on (one view at a time, as `tiles`).
    remote_tiles: Option<(JobId, RasterId)>,
    cache: TileCache,
    tiles: Option<TileJob>,
    cancels: HashMap<JobId, Arc<AtomicBool>>,
    /// The model thread, started on the first model request.
    model: Option<(Sender<ModelJob>, JoinHandle<()>)>,
    /// The newest refinement job per feature: older queued clicks are dropped.
    latest_click: Arc<std::sync::Mutex<HashMap<u64, JobId>>>,
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
    fn model_thread(&mut self) -> Result<Sender<ModelJob>, EngineError> {
        if self.model.is_none() {
            let (tx, rx) = unbounded();
            let (out, latest) = (self.out.clone(), self.latest_click.clone());
            let handle = std::thread::Builder::new()
                .name("model".into())
                .spawn(move || model::run(&rx, &out, &latest))
                .map_err(|e| EngineError::Internal(format!("cannot start the model thread: {e}")))?;
            self.model = Some((tx, handle));
        }
        match &self.model {
            Some((tx, _)) => Ok(tx.clone()),
            None => Err(EngineError::Internal("no model thread".into())),
        }
    }

    /// Runs a job's work on a thread of its own (files, downloads), so tiles
    /// keep flowing; its outcome, error or panic comes back as an event.
    fn spawn_job(&self, job: JobId, name: &str, f: impl FnOnce() -> crate::Result<EventKind> + Send + 'static) {
        let out = self.out.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{job}-{name}"))
            .spawn(move || out.send(Event::finish(job, guard(f))));
        if let Err(e) = spawned {
            self.out.emit(job, EventKind::Failed { error: format!("cannot start a {name} thread: {e}") });
        }
    }

    /// Runs `f` here; an error or a panic becomes the job's `Failed` event.
    fn guarded(&mut self, job: JobId, f: impl FnOnce(&mut Self) -> crate::Result<()>) {
        if let Err(e) = guard(|| f(self)) {
            self.out.send(Event::finish(job, Err(e)));
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Request(request) => self.request(*request),
            Msg::Reader { raster, report } => self.reader_report(raster, report),
            Msg::ModelJobDone { job } => {
                self.cancels.remove(&job);
            }
            Msg::OverviewsDone { job, raster, result } => {
                self.cancels.remove(&job);
                self.guarded(job, |w| w.overviews_done(job, raster, result));
            }
            #[cfg(test)]
            Msg::Panic(job) => self.guarded(job, |_| panic!("injected panic")),
            Msg::Shutdown => {}
        }
    }

    /// One request: done here, forwarded as it is to the model thread, or given a thread.
    fn request(&mut self, request: Request) {
        let job = request.job;
        match request.kind {
            RequestKind::Open { path } if crate::raster::source::is_remote_or_stac(&path) => {
                self.guarded(job, |w| w.open_remote(job, path));
            }
            RequestKind::Open { path } => self.guarded(job, |w| {
                let raster = Raster::open(&path)?;
                let info = Box::new(raster.info().clone());
                w.rasters.insert(job, raster);
                w.out.emit(job, EventKind::Opened { raster: job, info });
                Ok(())
            }),
            RequestKind::Close => self.close(job),
            RequestKind::Tiles { raster, params, keys } => self.guarded(job, |w| w.tiles(job, raster, params, keys)),
            RequestKind::BuildOverviews { raster } => self.guarded(job, |w| w.start_overviews(job, raster)),
            RequestKind::Cancel => self.cancel(job),
            RequestKind::Ask { .. }
            | RequestKind::Find { .. }
            | RequestKind::Segment { .. }
            | RequestKind::Refine { .. }
            | RequestKind::Sweep { .. }
            | RequestKind::LoadReasoner { .. }
            | RequestKind::LoadSegmenter { .. } => {
                let kind = request.kind;
                self.guarded(job, |w| w.model_request(Request { job, kind }));
            }
            RequestKind::SaveProject { path, meta, features } => self.spawn_job(job, "file", move || {
                crate::project::save(&path, &meta, &features)?;
                Ok(EventKind::ProjectSaved { path })
            }),
            RequestKind::LoadProject { path, or_raster: true } if !crate::project::is_project(&path) => {
                match crate::project::not_a_project(&path) {
                    Some(e) => self.out.emit(job, EventKind::Failed { error: e.to_string() }),
                    None => self.request(Request { job, kind: RequestKind::Open { path } }),
                }
            }
            RequestKind::LoadProject { path, .. } => self.spawn_job(job, "file", move || {
                let project = Box::new(crate::project::load(&path)?);
                Ok(EventKind::ProjectLoaded { path, project })
            }),
            RequestKind::Export { path, mut features, simplify, geotransform, crs_wkt, options } => {
                self.spawn_job(job, "file", move || {
                    if simplify.is_some() {
                        features = features.iter().map(|f| f.with_simplify(simplify)).collect();
                    }
                    let set = crate::edit::feature_set(&features, geotransform, crs_wkt);
                    let report = crate::export::export(&path, &set, &options, &mut |_, _| true)?;
                    Ok(EventKind::Exported { report })
                });
            }
            RequestKind::PullModel { request } => {
                let out = self.out.clone();
                self.spawn_job(job, "file", move || pull(job, &request, &out));
            }
            RequestKind::PlanPull { requests } => {
                self.spawn_job(job, "file", move || {
                    let plans = requests.iter().map(|r| crate::hub::plan(r).map_err(|e| e.to_string())).collect();
                    Ok(EventKind::PullPlanned { plans })
                });
            }
        }
    }

    fn close(&mut self, raster: RasterId) {
        self.rasters.remove(&raster);
        self.remote.remove(&raster);
        self.cache.remove_where(|k| k.raster == raster);
        if self.tiles.as_ref().is_some_and(|t| t.raster == raster) {
            self.tiles = None;
        }
    }

    fn cancel(&mut self, job: JobId) {
        if self.tiles.as_ref().is_some_and(|t| t.job == job) {
            self.tiles = None;
            self.out.emit(job, EventKind::Cancelled);
        }
        if self.remote_tiles.is_some_and(|(j, _)| j == job) {
            self.remote_tiles = None;
            self.out.emit(job, EventKind::Cancelled);
        }
        if let Some(flag) = self.cancels.get(&job) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    fn tiles(&mut self, job: JobId, raster: RasterId, params: RenderParams, keys: Vec<TileKey>) -> crate::Result<()> {
        if let Some(old) = self.tiles.take() {
            self.out.emit(old.job, EventKind::Cancelled);
        }
        if let Some((old, _)) = self.remote_tiles.take() {
            self.out.emit(old, EventKind::Cancelled);
        }
        if !self.rasters.contains_key(&raster) && !self.remote.contains_key(&raster) {
            return Err(EngineError::UnknownRaster(raster));
        }
        let hash = params.cache_hash();
        let mut queue = VecDeque::new();
        for key in keys {
            match self.cache.get(&CacheKey { raster, params: hash, tile: key }) {
                Some(tile) => self.out.emit(job, EventKind::Tile { raster, params: hash, tile }),
                None => queue.push_back(key),
            }
        }
        if queue.is_empty() {
            self.out.emit(job, EventKind::TilesDone);
        } else if let Some((reader, _)) = self.remote.get(&raster) {
            let _ = reader.send(ReaderMsg::Tiles { job, params, hash, keys: queue });
            self.remote_tiles = Some((job, raster));
        } else {
            self.tiles = Some(TileJob { job, raster, params, hash, queue });
        }
        Ok(())
    }

    fn render_next_tile(&mut self) {
        let Some(tj) = self.tiles.as_mut() else { return };
        let Some(key) = tj.queue.pop_front() else {
            let job = tj.job;
            self.tiles = None;
            self.out.emit(job, EventKind::TilesDone);
            return;
        };
        let (job, raster, params, hash) = (tj.job, tj.raster, tj.params, tj.hash);
        let rendered = match self.rasters.get(&raster) {
            Some(r) => guard(|| r.render_tile(key, &params)),
            None => Err(EngineError::UnknownRaster(raster)),
        };
        match rendered {
            Ok(tile) => {
                let tile = Arc::new(tile);
                self.cache.insert(CacheKey { raster, params: hash, tile: key }, tile.clone());
                self.out.emit(job, EventKind::Tile { raster, params: hash, tile });
            }
            Err(e) => {
                // The rest of this view would most likely fail the same way.
                self.tiles = None;
                self.out.emit(job, EventKind::Failed { error: e.to_string() });
            }
        }
    }

    /// Model work: the window read first where the request has one, then the
    /// request handed over as it came.
    fn model_request(&mut self, request: Request) -> crate::Result<()> {
        let job = request.job;
        let read = match &request.kind {
            RequestKind::Ask { raster, window, params, question, .. } => {
                let budget = question.options.max_pixels.unwrap_or(crate::reasoner::processor::TRAINING_MAX_PIXELS);
                Some((*raster, *window, *params, budget))
            }
            RequestKind::Segment { raster, window, params, max_pixels, .. }
            | RequestKind::Find { raster, window, params, max_pixels, .. } => {
                Some((*raster, *window, *params, *max_pixels))
            }
            RequestKind::Refine { raster, window, params, max_pixels, feature, .. } => {
                if let Ok(mut latest) = self.latest_click.lock() {
                    latest.insert(*feature, job);
                }
                Some((*raster, *window, *params, *max_pixels))
            }
            RequestKind::Sweep { raster, .. } => {
                let path = self.raster_path(*raster)?;
                return self.hand_to_model(request, Input::Raster(path));
            }
            _ => None,
        };
        let Some((raster, window, params, budget)) = read else { return self.hand_to_model(request, Input::None) };
        if matches!(request.kind, RequestKind::Ask { .. } | RequestKind::Find { .. }) {
            // Told before the model thread has the job: its own stages come after.
            self.out.emit(job, EventKind::AskStage { stage: AskStage::Queued });
        }
        self.with_window(raster, window, params, budget, request)
    }

    /// The path a raster was opened from (local or remote).
    fn raster_path(&self, raster: RasterId) -> crate::Result<PathBuf> {
        match self.rasters.get(&raster) {
            Some(r) => Ok(r.path().to_owned()),
            None => self
                .remote
                .get(&raster)
                .and_then(|(_, info)| info.as_ref())
                .map(|i| i.path.clone())
                .ok_or(EngineError::UnknownRaster(raster)),
        }
    }

    /// Hands a request to the model thread as it came, with what was read for it.
    fn hand_to_model(&mut self, request: Request, input: Input) -> crate::Result<()> {
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(request.job, cancel.clone());
        let done = self.self_tx.clone();
        self.model_thread()?
            .send(ModelJob { request, input, cancel, done })
            .map_err(|_stopped| EngineError::Internal("the model thread stopped".into()))
    }

    /// Reads `window` of `raster` at `budget` pixels and hands the model thread
    /// the request with that image: here for a local raster, on its reader
    /// thread for a remote one (a failure there comes back as `Failed`).
    fn with_window(
        &mut self,
        raster: RasterId,
        window: Window,
        params: RenderParams,
        budget: usize,
        request: Request,
    ) -> crate::Result<()> {
        let source = self.raster_path(raster).unwrap_or_default();
        if let Some(r) = self.rasters.get(&raster) {
            let image = crate::pipeline::read_window(r, window, &params, budget)?;
            return self.hand_to_model(request, Input::Image { image, raster, source });
        }
        let (reader, _) = self.remote.get(&raster).ok_or(EngineError::UnknownRaster(raster))?;
        let reader = reader.clone();
        let job = request.job;
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(job, cancel.clone());
        let (model, out, done) = (self.model_thread()?, self.out.clone(), self.self_tx.clone());
        let run = move |r: &Raster| {
            let sent = crate::pipeline::read_window(r, window, &params, budget).and_then(|image: WindowImage| {
                let input = Input::Image { image, raster, source };
                model
                    .send(ModelJob { request, input, cancel, done })
                    .map_err(|_stopped| EngineError::Internal("the model thread stopped".into()))
            });
            if let Err(e) = sent {
                out.emit(job, EventKind::Failed { error: e.to_string() });
            }
        };
        reader.send(ReaderMsg::Run(Box::new(run))).map_err(|_closed| EngineError::UnknownRaster(raster))
    }

    /// Opens a remote raster on a reader thread of its own; `Opened` comes from there.
    fn open_remote(&mut self, job: JobId, path: PathBuf) -> crate::Result<()> {
        let (tx, inbox) = unbounded();
        let (done, waker) = (self.self_tx.clone(), self.out.waker.clone());
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
        let current = |w: &Self, job: JobId| w.remote_tiles.is_some_and(|(j, r)| j == job && r == raster);
        match report {
            ReaderReport::Opened(Ok(info)) => {
                if let Some(entry) = self.remote.get_mut(&raster) {
                    entry.1 = Some(info.clone());
                    self.out.emit(raster, EventKind::Opened { raster, info });
                }
            }
            ReaderReport::Opened(Err(e)) => {
                self.remote.remove(&raster);
                self.out.emit(raster, EventKind::Failed { error: e.to_string() });
            }
            ReaderReport::Tile { job, hash, result } => match result {
                Ok(tile) if current(self, job) => {
                    let tile = Arc::new(tile);
                    self.cache.insert(CacheKey { raster, params: hash, tile: tile.key }, tile.clone());
                    self.out.emit(job, EventKind::Tile { raster, params: hash, tile });
                }
                Err(e) if self.remote_tiles.is_some_and(|(j, _)| j == job) => {
                    self.remote_tiles = None;
                    self.out.emit(job, EventKind::Failed { error: e.to_string() });
                }
                _ => {}
            },
            ReaderReport::TilesDone { job } => {
                if self.remote_tiles.is_some_and(|(j, _)| j == job) {
                    self.remote_tiles = None;
                    self.out.emit(job, EventKind::TilesDone);
                }
            }
        }
    }

    fn start_overviews(&mut self, job: JobId, raster: RasterId) -> crate::Result<()> {
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
        let (out, done) = (self.out.clone(), self.self_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("job-{job}-overviews")).spawn(move || {
            let mut last = -1.0f64;
            let result = guard(|| {
                overviews::build_overviews(&path, &factors, "AVERAGE", |fraction| {
                    if fraction - last >= 0.01 || fraction >= 1.0 {
                        last = fraction;
                        let message = format!("building {} overview levels", factors.len());
                        out.emit(job, EventKind::Progress { fraction: fraction as f32, message });
                    }
                    !cancel.load(Ordering::Relaxed)
                })
            });
            let _ = done.send(Msg::OverviewsDone { job, raster, result });
        });
        spawned.map(|_| ()).map_err(|e| EngineError::Internal(format!("cannot start job thread: {e}")))
    }

    /// Overviews were built: the raster is reopened and its cached tiles dropped.
    fn overviews_done(&mut self, job: JobId, raster: RasterId, result: crate::Result<()>) -> crate::Result<()> {
        result?;
        let Some(old) = self.rasters.get(&raster) else {
            return Err(EngineError::UnknownRaster(raster));
        };
        let reopened = Raster::open(old.path())?;
        let info = Box::new(reopened.info().clone());
        self.rasters.insert(raster, reopened);
        self.cache.remove_where(|k| k.raster == raster);
        self.out.emit(job, EventKind::OverviewsBuilt { raster, info });
        Ok(())
    }
}

/// Downloads a checkpoint, reporting whole files as steps and the current one by its bytes.
fn pull(job: JobId, request: &crate::hub::PullRequest, out: &Outbox) -> crate::Result<EventKind> {
    let mut last = -1.0f32;
    let path = crate::hub::pull(request, |p| {
        let part = if p.file_size > 0 { p.file_bytes as f32 / p.file_size as f32 } else { 0.0 };
        let fraction = (p.file_index as f32 + part) / p.files.max(1) as f32;
        if fraction - last >= 0.01 || part >= 1.0 {
            last = fraction;
            let message = format!("{} ({}/{})", p.file, p.file_index + 1, p.files);
            out.emit(job, EventKind::Progress { fraction, message });
        }
    })?;
    Ok(EventKind::ModelPulled { path })
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
            Event { job: 7, kind: EventKind::Failed { error } } => assert!(error.contains("injected panic"), "{error}"),
            other => panic!("unexpected {other:?}"),
        }
        let job = e.open("/definitely/not/here.tif");
        match next(&e) {
            Event { job: j, kind: EventKind::Failed { error } } => {
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
        assert!(matches!(next(&e), Event { job: j, kind: EventKind::Failed { .. } } if j == job));
    }
}
