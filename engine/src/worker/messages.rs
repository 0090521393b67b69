//! What goes in and out of the engine thread: typed requests and events, each
//! in an envelope naming its job.

use std::path::PathBuf;
use std::sync::Arc;

use crate::base::{PixelBox, Window};
use crate::edit::WorkFeature;
use crate::export::{ExportOptions, ExportReport};
use crate::pipeline::{ConceptQuery, Outcome, Question, ReasonedSpec, ReasonerInfo, ReasonerSpec, Segments};
use crate::project::{Project, ProjectMeta};
use crate::raster::{RasterInfo, RenderParams};
use crate::segment::{Method, Segment};
use crate::tiles::{Tile, TileKey};

/// Identifies one request and every event it causes.
pub type JobId = u64;
/// Identifies an open raster (the id of the job that opened it).
pub type RasterId = u64;

/// A request in its envelope: the job it starts — or, for [`RequestKind::Cancel`]
/// and [`RequestKind::Close`], the job or raster it is about.
#[derive(Clone, Debug)]
pub struct Request {
    pub job: JobId,
    pub kind: RequestKind,
}

/// The models a question needs: the thread answering loads them itself when
/// they are not what it holds, so no front end waits on a separate load.
#[derive(Clone, Debug, PartialEq)]
pub struct Models {
    pub reasoner: ReasonerSpec,
    /// The model as the analyst named it, for provenance (a repository id reads
    /// better than its snapshot path); `None`: the backend's own id
    /// (`model@endpoint` for an endpoint, known once it answers).
    pub label: Option<String>,
    /// SAM checkpoint; `None`: the watershed fallback.
    pub sam: Option<PathBuf>,
}

/// What the engine can be asked to do.
#[derive(Clone, Debug)]
pub enum RequestKind {
    /// Open a raster: [`EventKind::Opened`] (raster id = job id).
    Open { path: PathBuf },
    /// Forget raster `job` and its cached tiles.
    Close,
    /// Render these tiles; replaces any unfinished `Tiles` request.
    Tiles { raster: RasterId, params: RenderParams, keys: Vec<TileKey> },
    /// Build external overviews for a raster (cancellable, with progress).
    BuildOverviews { raster: RasterId },
    /// Load a reasoner ahead of a question (replacing any loaded one): [`EventKind::ReasonerLoaded`].
    LoadReasoner { spec: ReasonerSpec },
    /// Load a SAM checkpoint, or (`None`) go back to the watershed fallback:
    /// [`EventKind::SegmenterLoaded`].
    LoadSegmenter { checkpoint: Option<PathBuf> },
    /// A question about `window` of a raster, carried as far as its goal goes
    /// ([`crate::pipeline::run`]): stages, text as it grows, then [`EventKind::Answered`].
    Ask { raster: RasterId, window: Window, params: RenderParams, question: Question, models: Models },
    /// Every instance of a concept in `window` with SAM 3 (checkpoint `sam3`):
    /// [`crate::pipeline::find`]; with `reasoned`, the reasoner answers first and
    /// drives SAM 3 ([`crate::pipeline::reason_then_find`], stages and text as for
    /// `Ask`). Then [`EventKind::Answered`].
    Find {
        raster: RasterId,
        window: Window,
        params: RenderParams,
        max_pixels: usize,
        sam3: PathBuf,
        concept: ConceptQuery,
        reasoned: Option<Box<ReasonedSpec>>,
    },
    /// Boxes drawn by hand (raster pixels) → masks and polygons: [`EventKind::Segmented`].
    /// The window is read at `max_pixels` as for a question, so its encoding is shared.
    Segment {
        raster: RasterId,
        window: Window,
        params: RenderParams,
        max_pixels: usize,
        sam: Option<PathBuf>,
        boxes: Vec<PixelBox>,
    },
    /// A click refining one feature's mask: its box, the previous mask (for its
    /// logits) and the clicks so far, all in raster pixels: [`EventKind::Refined`].
    /// A newer click on the same feature supersedes one still queued.
    Refine {
        raster: RasterId,
        window: Window,
        params: RenderParams,
        max_pixels: usize,
        sam: Option<PathBuf>,
        feature: u64,
        bbox: PixelBox,
        previous: Option<Box<Segment>>,
        clicks: Vec<(f64, f64, bool)>,
    },
    /// Sweep a whole raster (model thread; an endpoint gets `concurrency`
    /// parallel requests): [`EventKind::Progress`] per tile, then [`EventKind::SweepDone`].
    /// Resumable through `progress_file`'s stem.
    Sweep {
        raster: RasterId,
        params: RenderParams,
        options: crate::sweep::SweepOptions,
        models: Models,
        concurrency: usize,
        /// Where progress is kept (`<this>.sweep.jsonl`).
        progress_file: PathBuf,
    },
    /// Save a project (GeoPackage, atomic) on a file thread: [`EventKind::ProjectSaved`].
    SaveProject { path: PathBuf, meta: Box<ProjectMeta>, features: Vec<WorkFeature> },
    /// Load a project on a file thread: [`EventKind::ProjectLoaded`]. With
    /// `or_raster`, a file that is not a project is opened as a raster instead
    /// ([`EventKind::Opened`] for the same job).
    LoadProject { path: PathBuf, or_raster: bool },
    /// Export features (re-simplified first when asked) on a file thread: [`EventKind::Exported`].
    Export {
        path: PathBuf,
        features: Vec<WorkFeature>,
        simplify: Option<(crate::features::SimplifyMethod, f64)>,
        geotransform: Option<crate::geo::GeoTransform>,
        crs_wkt: Option<String>,
        options: ExportOptions,
    },
    /// Download a checkpoint from the hub on a thread of its own:
    /// [`EventKind::Progress`] per chunk, then [`EventKind::ModelPulled`].
    PullModel { request: crate::hub::PullRequest },
    /// Ask the hub what each download would fetch and how big it is, without
    /// fetching: [`EventKind::PullPlanned`] (one entry per request, in order).
    PlanPull { requests: Vec<crate::hub::PullRequest> },
    /// Cancel job `job` (tile rendering, overview building, a question between tokens).
    Cancel,
}

/// What a question is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskStage {
    /// Waiting for the model thread (another job runs).
    Queued,
    LoadingModel,
    EncodingImage,
    ReadingPrompt {
        tokens: usize,
    },
    Reasoning,
    LoadingSegmenter,
    Segmenting,
}

impl AskStage {
    /// As the stage line shows it.
    pub fn label(self) -> String {
        match self {
            Self::Queued => "Waiting for the model…".into(),
            Self::LoadingModel => "Loading model…".into(),
            Self::EncodingImage => "Encoding image…".into(),
            Self::ReadingPrompt { tokens } => format!("Reading prompt ({tokens} tokens)…"),
            Self::Reasoning => "Reasoning…".into(),
            Self::LoadingSegmenter => "Loading segmenter…".into(),
            Self::Segmenting => "Segmenting and tracing…".into(),
        }
    }
}

/// An event in its envelope: the job it belongs to.
#[derive(Clone, Debug)]
pub struct Event {
    pub job: JobId,
    pub kind: EventKind,
}

/// What the engine reports back. Plain data only.
#[derive(Clone, Debug)]
pub enum EventKind {
    Opened {
        raster: RasterId,
        info: Box<RasterInfo>,
    },
    /// One tile, rendered with the parameters whose [`RenderParams::cache_hash`] is `params`.
    Tile {
        raster: RasterId,
        params: u64,
        tile: Arc<Tile>,
    },
    /// Every tile of the request was sent (or had failed).
    TilesDone,
    Progress {
        fraction: f32,
        message: String,
    },
    /// Overviews exist now; the raster was reopened and its cached tiles dropped.
    OverviewsBuilt {
        raster: RasterId,
        info: Box<RasterInfo>,
    },
    /// A reasoner was loaded (by request, or because a question needed it).
    ReasonerLoaded {
        info: ReasonerInfo,
    },
    SegmenterLoaded {
        method: Method,
    },
    AskStage {
        stage: AskStage,
    },
    /// New text of the completion (the reasoning trace streams through here).
    AskText {
        text: String,
    },
    /// A question's answer, carried as far as its goal: boxes, masks, polygons, features.
    Answered {
        raster: RasterId,
        outcome: Box<Outcome>,
    },
    Segmented {
        raster: RasterId,
        segments: Box<Segments>,
    },
    Refined {
        feature: u64,
        segment: Box<Segment>,
        /// The refined mask traced into polygons (exact, raster pixels).
        polygons: geo::MultiPolygon<f64>,
    },
    ProjectSaved {
        path: PathBuf,
    },
    ProjectLoaded {
        path: PathBuf,
        project: Box<Project>,
    },
    Exported {
        report: ExportReport,
    },
    /// A sweep finished: merged boxes and polygons (raster pixels) as features.
    SweepDone {
        raster: RasterId,
        result: Box<crate::sweep::SweepResult>,
        features: Vec<WorkFeature>,
    },
    /// A checkpoint is in the hub cache, verified: its snapshot directory.
    ModelPulled {
        path: PathBuf,
    },
    /// What each requested download would fetch: its files or why the hub could not say.
    PullPlanned {
        plans: Vec<Result<Vec<crate::hub::RemoteFile>, String>>,
    },
    /// The job stopped early: cancelled, or superseded by a newer request.
    Cancelled,
    Failed {
        error: String,
    },
}

impl Event {
    pub fn new(job: JobId, kind: EventKind) -> Self {
        Self { job, kind }
    }

    /// The event that ends a job: its outcome, `Cancelled`, or `Failed` with the error.
    pub fn finish(job: JobId, result: crate::Result<EventKind>) -> Self {
        let kind = match result {
            Ok(kind) => kind,
            Err(crate::EngineError::Cancelled) => EventKind::Cancelled,
            Err(e) => EventKind::Failed { error: e.to_string() },
        };
        Self { job, kind }
    }
}
