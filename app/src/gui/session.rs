//! The analyst's session: settings, the question being asked, the features
//! and the editing state. Plain state and the transitions the engine's events
//! cause; the `*_ui` functions in `query`, `overlay` and `features` draw it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::contour::SimplifyMethod;
use engine::edit::{FeatureStore, SegmentState, VertexRef, WorkFeature};
use engine::features::Provenance;
use engine::models::DeviceChoice;
use engine::reasoner::Task;
use engine::reasoner::parse::PixelBox;
use engine::segment::Method;
use engine::tiles::Window;
use engine::worker::{AskOutcome, AskStage, ReasonerInfo, SegmentOutcome};
use engine::{Engine, JobId, RasterId};
use serde::{Deserialize, Serialize};

/// What the analyst asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AskTask {
    /// Boxes.
    Region,
    /// Boxes → masks.
    Pixel,
    /// Boxes → masks → polygons.
    #[default]
    Contour,
    Vqa,
    Caption,
}

impl AskTask {
    pub const ALL: [Self; 5] = [Self::Region, Self::Pixel, Self::Contour, Self::Vqa, Self::Caption];

    pub fn label(self) -> &'static str {
        match self {
            Self::Region => "Region (boxes)",
            Self::Pixel => "Pixel (masks)",
            Self::Contour => "Contour (polygons)",
            Self::Vqa => "Question (VQA)",
            Self::Caption => "Caption",
        }
    }

    pub fn model_task(self) -> Task {
        match self {
            Self::Region | Self::Pixel | Self::Contour => Task::Region,
            Self::Vqa => Task::Vqa,
            Self::Caption => Task::Caption,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Pixel => "pixel",
            Self::Contour => "contour",
            Self::Vqa => "vqa",
            Self::Caption => "caption",
        }
    }
}

/// Which part of the raster the model sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AreaMode {
    /// The part of the raster on screen.
    #[default]
    View,
    /// A rectangle drawn on the map.
    Drawn,
    /// All of it (downsampled to the model's pixel budget).
    Whole,
}

/// Persisted settings (eframe storage).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Checkpoint directory or hub repository id.
    pub model: String,
    /// An OpenAI-compatible endpoint used instead of `model` when set (its key
    /// comes from RR_API_KEY / OPENAI_API_KEY, never from here).
    pub endpoint: String,
    /// The model name on the endpoint; empty: the first it lists.
    pub api_model: String,
    /// SAM checkpoint; empty: the watershed fallback.
    pub sam: String,
    pub device: DeviceChoice,
    pub max_pixels: usize,
    /// `None`: the checkpoint's own decoding settings.
    pub temperature: Option<f64>,
    pub max_new_tokens: usize,
    pub simplify_method: SimplifyMethod,
    /// Hub server for downloads; empty: `HF_ENDPOINT`, else huggingface.co.
    pub hub_endpoint: String,
    /// Where downloads go; empty: `RR_MODELS`, else the Hugging Face cache.
    pub models_cache: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            endpoint: String::new(),
            api_model: String::new(),
            sam: String::new(),
            device: DeviceChoice::Cpu,
            max_pixels: engine::reasoner::processor::TRAINING_MAX_PIXELS,
            temperature: None,
            max_new_tokens: 1024,
            simplify_method: SimplifyMethod::VisvalingamPreserve,
            hub_endpoint: String::new(),
            models_cache: String::new(),
        }
    }
}

/// The stages a run goes through, as the stage line shows them.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    LoadingModel,
    Asking(AskStage),
    LoadingSegmenter,
    Segmenting,
}

impl Stage {
    pub fn label(&self) -> String {
        match self {
            Self::LoadingModel => "Loading model…".into(),
            Self::Asking(AskStage::Queued) => "Waiting for the model…".into(),
            Self::Asking(AskStage::EncodingImage) => "Encoding image…".into(),
            Self::Asking(AskStage::ReadingPrompt { tokens }) => format!("Reading prompt ({tokens} tokens)…"),
            Self::Asking(AskStage::Reasoning) => "Reasoning…".into(),
            Self::LoadingSegmenter => "Loading segmenter…".into(),
            Self::Segmenting => "Segmenting and tracing…".into(),
        }
    }
}

/// One question in flight (or the last one finished).
#[derive(Clone, Debug)]
pub struct Run {
    pub task: AskTask,
    pub query: String,
    pub raster: RasterId,
    pub window: Window,
    pub started: Instant,
    pub stage: Option<Stage>,
    /// The job to cancel now (load, ask or segment).
    pub job: Option<JobId>,
    /// The streamed completion so far.
    pub text: String,
    pub outcome: Option<Box<AskOutcome>>,
    pub finished: Option<Duration>,
    pub error: Option<String>,
}

impl Run {
    pub fn is_running(&self) -> bool {
        self.finished.is_none()
    }
}

/// Map tools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tool {
    /// Select features, drag vertices and box handles; drag elsewhere pans.
    #[default]
    Select,
    /// Drag a box; it is segmented into a feature.
    DrawBox,
    /// Drag the area the model will see.
    DrawArea,
    /// Click on the selected feature: left = object, right = not object.
    Refine,
}

/// A vertex or box handle being dragged: the edited copy, committed on release.
#[derive(Clone, Debug)]
pub struct Drag {
    pub feature: u64,
    pub target: DragTarget,
    pub preview: WorkFeature,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DragTarget {
    Vertex(VertexRef),
    /// Box corner: 0 = (x1,y1), 1 = (x2,y1), 2 = (x2,y2), 3 = (x1,y2).
    BoxCorner(usize),
    /// The whole box, from where it was grabbed.
    BoxMove {
        grab: [f64; 2],
        start: [f64; 4],
    },
}

/// Segmentation requests in flight: what each is for.
#[derive(Clone, Debug)]
pub enum SegmentPurpose {
    /// The boxes of a question.
    Ask { provenance: Arc<Provenance> },
    /// A box drawn by hand.
    Manual,
}

/// Everything the workbench knows about the analysis (beyond the raster view).
#[derive(Debug)]
pub struct Session {
    pub settings: Settings,
    pub task: AskTask,
    pub query: String,
    pub history: Vec<String>,
    pub area_mode: AreaMode,
    pub drawn_area: Option<Window>,
    pub run: Option<Run>,
    pub reasoner: Option<ReasonerInfo>,
    /// The model settings the loaded reasoner was loaded with (model or endpoint, device).
    pub reasoner_key: Option<(String, DeviceChoice)>,
    pub segmenter: Option<Method>,
    pub segmenter_key: Option<String>,
    /// A question waiting for its model to load.
    pub pending_ask: bool,
    /// Boxes waiting for the segmenter to load: (window, boxes, purpose).
    pub pending_segment: Option<(Window, Vec<PixelBox>, SegmentPurpose)>,
    pub segment_jobs: Vec<(JobId, SegmentPurpose)>,
    /// Refinement clicks in flight: job, feature, all its clicks so far.
    pub refine_jobs: Vec<(JobId, u64, Clicks)>,
    pub features: FeatureStore,
    pub selected: Option<u64>,
    pub selected_vertex: Option<VertexRef>,
    pub hovered: Option<u64>,
    pub tool: Tool,
    pub drag: Option<Drag>,
    /// A box or area being drawn: start and current point (raster pixels).
    pub drawing: Option<([f64; 2], [f64; 2])>,
    pub project_path: Option<PathBuf>,
    /// Revision of the features last saved to the project / the recovery file.
    pub saved_revision: u64,
    pub autosaved_revision: u64,
    pub last_autosave: Instant,
    /// Save in flight: job, path, recovery (autosave) or not, the revision it holds.
    pub save_job: Option<(JobId, PathBuf, bool, u64)>,
    pub load_job: Option<JobId>,
    pub export_job: Option<JobId>,
    pub show_settings: bool,
    pub show_help: bool,
    pub export_dialog: Option<crate::gui::dialogs::ExportDialog>,
    /// The "Open URL" dialog's text, while it is open.
    pub open_url: Option<String>,
    /// A recovery file found at start, offered for restoring (with when it was
    /// last written, read once at start).
    pub recovery_offer: Option<(PathBuf, Option<std::time::SystemTime>)>,
    /// The last export's summary.
    pub last_export: Option<String>,
    /// A download in flight: job, fraction done, what it is fetching.
    pub pull: Option<(JobId, f32, String)>,
    /// The window was asked to close with unsaved work: the question is shown.
    pub confirm_close: bool,
    /// Close once the save in flight is done.
    pub close_after_save: bool,
    /// The analyst chose to close without saving.
    pub discard_on_close: bool,
    /// A whole-raster sweep in flight.
    pub sweep: Option<SweepState>,
    /// A sweep waiting for its model to load: the request to send.
    pub pending_sweep: Option<engine::Request>,
}

/// A sweep in flight: its job (the model's load while `pending_sweep` waits, then
/// the sweep), progress.
#[derive(Clone, Debug)]
pub struct SweepState {
    pub job: JobId,
    pub fraction: f32,
    pub message: String,
    pub started: Instant,
    pub task: AskTask,
    pub query: String,
}

impl Session {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            task: AskTask::default(),
            query: String::new(),
            history: Vec::new(),
            area_mode: AreaMode::default(),
            drawn_area: None,
            run: None,
            reasoner: None,
            reasoner_key: None,
            segmenter: None,
            segmenter_key: None,
            pending_ask: false,
            pending_segment: None,
            segment_jobs: Vec::new(),
            refine_jobs: Vec::new(),
            features: FeatureStore::new(),
            selected: None,
            selected_vertex: None,
            hovered: None,
            tool: Tool::default(),
            drag: None,
            drawing: None,
            project_path: None,
            saved_revision: 0,
            autosaved_revision: 0,
            last_autosave: Instant::now(),
            save_job: None,
            load_job: None,
            export_job: None,
            show_settings: false,
            show_help: false,
            export_dialog: None,
            open_url: None,
            recovery_offer: None,
            last_export: None,
            pull: None,
            confirm_close: false,
            close_after_save: false,
            discard_on_close: false,
            sweep: None,
            pending_sweep: None,
        }
    }

    /// Unsaved changes since the project was last saved.
    pub fn is_dirty(&self) -> bool {
        self.features.revision() != self.saved_revision
    }

    /// Whether a question or segmentation is in flight.
    pub fn busy(&self) -> bool {
        self.run.as_ref().is_some_and(Run::is_running) || !self.segment_jobs.is_empty() || self.sweep.is_some()
    }

    /// The hub cache downloads go to and models are looked up in.
    pub fn models_cache(&self) -> PathBuf {
        match self.settings.models_cache.trim() {
            "" => engine::hub::default_cache_dir(),
            dir => PathBuf::from(dir),
        }
    }

    /// Whether the model setting looks like a hub repository id (`owner/name`).
    pub fn model_is_repo(&self) -> bool {
        // Syntax only: this runs every frame the settings window is open.
        let m = self.settings.model.trim();
        m.split('/').count() == 2 && !m.starts_with(['/', '.', '~']) && m.split('/').all(|p| !p.is_empty())
    }

    /// Starts downloading the configured repository.
    pub fn start_pull(&mut self, engine: &Engine) {
        let request = engine::hub::PullRequest {
            repo_id: self.settings.model.trim().to_owned(),
            revision: "main".into(),
            cache_dir: Some(self.models_cache()),
            endpoint: Some(self.settings.hub_endpoint.trim().to_owned()).filter(|e| !e.is_empty()),
        };
        let job = engine.send(|job| engine::Request::PullModel { job, request });
        self.pull = Some((job, 0.0, "starting".into()));
    }

    /// Starts a question on `window` of `raster`: loads the model first when the
    /// settings changed. Errors (no model configured) are returned for display.
    pub fn start_ask(
        &mut self,
        engine: &Engine,
        raster: RasterId,
        window: Window,
        params: engine::raster::RenderParams,
    ) -> Result<(), String> {
        let endpoint = self.settings.endpoint.trim().to_owned();
        if self.settings.model.trim().is_empty() && endpoint.is_empty() {
            return Err(NO_MODEL.into());
        }
        if self.task != AskTask::Caption && self.query.trim().is_empty() {
            return Err("Type a question first.".into());
        }
        let query = self.query.trim().to_owned();
        if !query.is_empty() {
            self.history.retain(|q| q != &query);
            self.history.insert(0, query.clone());
            self.history.truncate(30);
        }
        let mut run = Run {
            task: self.task,
            query,
            raster,
            window,
            started: Instant::now(),
            stage: None,
            job: None,
            text: String::new(),
            outcome: None,
            finished: None,
            error: None,
        };
        if let Some(job) = self.ensure_backend(engine) {
            run.stage = Some(Stage::LoadingModel);
            run.job = Some(job);
            self.pending_ask = true;
            self.run = Some(run);
            let _ = params;
            return Ok(());
        }
        self.run = Some(run);
        self.send_ask(engine, params);
        Ok(())
    }

    /// Loads the configured checkpoint or connects to the endpoint unless that
    /// is what is loaded; returns the load job when one was started.
    pub fn ensure_backend(&mut self, engine: &Engine) -> Option<JobId> {
        let endpoint = self.settings.endpoint.trim().to_owned();
        let key = if endpoint.is_empty() {
            (self.settings.model.trim().to_owned(), self.settings.device)
        } else {
            (format!("{}@{endpoint}", self.settings.api_model.trim()), self.settings.device)
        };
        if self.reasoner_key.as_ref() == Some(&key) && self.reasoner.is_some() {
            return None;
        }
        let job = if endpoint.is_empty() {
            let dir = engine::hub::resolve_model(std::path::Path::new(&key.0), &self.models_cache());
            let options = engine::reasoner::LoadOptions { device: key.1, precision: None };
            engine.send(|job| engine::Request::LoadReasoner { job, dir, options })
        } else {
            let options = engine::reasoner::remote::RemoteOptions {
                endpoint: endpoint.clone(),
                model: self.settings.api_model.trim().to_owned(),
                api_key: engine::reasoner::remote::api_key_from_env(),
                ..Default::default()
            };
            engine.send(|job| engine::Request::UseEndpoint { job, options })
        };
        self.reasoner = None;
        self.reasoner_key = Some(key);
        Some(job)
    }

    /// Sweeps the whole raster with the question (tiles of 1024 px with 128 px
    /// of overlap; progress kept under `state_dir`, so a sweep resumes).
    pub fn start_sweep(
        &mut self,
        engine: &Engine,
        raster: RasterId,
        raster_path: &std::path::Path,
        params: engine::raster::RenderParams,
        state_dir: &std::path::Path,
    ) -> Result<(), String> {
        if self.settings.model.trim().is_empty() && self.settings.endpoint.trim().is_empty() {
            return Err(NO_MODEL.into());
        }
        let query = self.query.trim().to_owned();
        if query.is_empty() || matches!(self.task, AskTask::Vqa | AskTask::Caption) {
            return Err(
                "A sweep looks for objects: pick the region, pixel or contour task and type what to find.".into()
            );
        }
        let task = match self.task {
            AskTask::Region => engine::sweep::SweepTask::Region,
            AskTask::Pixel => engine::sweep::SweepTask::Pixel,
            _ => engine::sweep::SweepTask::Contour,
        };
        let options = engine::sweep::SweepOptions {
            query: query.clone(),
            task,
            tile: 1024,
            overlap: 128,
            level: 0,
            aoi: None,
            max_pixels: self.settings.max_pixels,
        };
        // One progress file per (raster, question, task): rerunning resumes.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (raster_path, &query, self.task.name(), self.settings.max_pixels).hash(&mut h);
        let _ = std::fs::create_dir_all(state_dir);
        let progress_file = state_dir.join(format!("sweep-{:016x}", h.finish()));
        let sam = Some(PathBuf::from(self.settings.sam.trim())).filter(|p| !p.as_os_str().is_empty());
        let concurrency = if self.settings.endpoint.trim().is_empty() { 1 } else { 4 };
        let load = self.ensure_backend(engine);
        let request =
            move |job| engine::Request::Sweep { job, raster, params, options, sam, concurrency, progress_file };
        let (job, loading) = match load {
            Some(job) => {
                // Sent once the model is there; the job id is the load's until then.
                self.pending_sweep = Some(request(0));
                (job, true)
            }
            None => (engine.send(request), false),
        };
        self.sweep = Some(SweepState {
            job,
            fraction: 0.0,
            message: if loading { "loading the model".into() } else { "starting".into() },
            started: Instant::now(),
            task: self.task,
            query,
        });
        Ok(())
    }

    /// Sends the question of the current run (its model is loaded).
    pub fn send_ask(&mut self, engine: &Engine, params: engine::raster::RenderParams) {
        let Some(run) = self.run.as_mut() else { return };
        let decoding = self.settings.temperature.map(|t| engine::reasoner::generate::Decoding {
            temperature: (t > 0.0).then_some(t),
            top_p: None,
            top_k: None,
            repetition_penalty: 1.0,
            seed: 299_792_458,
            max_new_tokens: self.settings.max_new_tokens,
            ignore_eos: false,
        });
        let options = engine::reasoner::AskOptions {
            max_pixels: Some(self.settings.max_pixels),
            decoding,
            max_new_tokens: Some(self.settings.max_new_tokens),
        };
        let (raster, window, task, query) = (run.raster, run.window, run.task.model_task(), run.query.clone());
        let job = engine.send(|job| engine::Request::Ask { job, raster, window, params, task, query, options });
        run.job = Some(job);
        run.stage = Some(Stage::Asking(AskStage::Queued));
        self.pending_ask = false;
    }

    /// Segments `boxes` (raster pixels) on `window`, loading the segmenter first when needed.
    pub fn start_segment(
        &mut self,
        engine: &Engine,
        raster: RasterId,
        window: Window,
        params: engine::raster::RenderParams,
        boxes: Vec<PixelBox>,
        purpose: SegmentPurpose,
    ) {
        let key = self.settings.sam.trim().to_owned();
        if self.segmenter_key.as_ref() != Some(&key) || self.segmenter.is_none() {
            let checkpoint = (!key.is_empty()).then(|| PathBuf::from(&key));
            let job = engine.send(|job| engine::Request::LoadSegmenter { job, checkpoint });
            if let Some(run) = self.run.as_mut().filter(|r| r.is_running()) {
                run.stage = Some(Stage::LoadingSegmenter);
                run.job = Some(job);
            }
            self.segmenter = None;
            self.segmenter_key = Some(key);
            self.pending_segment = Some((window, boxes, purpose));
            return;
        }
        let job = engine.send(|job| engine::Request::Segment { job, raster, window, params, boxes });
        if let Some(run) = self.run.as_mut().filter(|r| r.is_running()) {
            run.stage = Some(Stage::Segmenting);
            run.job = Some(job);
        }
        self.segment_jobs.push((job, purpose));
    }

    /// Ends the current run (done, failed or cancelled).
    pub fn finish_run(&mut self, error: Option<String>) {
        if let Some(run) = self.run.as_mut().filter(|r| r.is_running()) {
            run.finished = Some(run.started.elapsed());
            run.stage = None;
            run.job = None;
            run.error = error;
        }
        self.pending_ask = false;
    }

    /// The loaded model for provenance: `name@endpoint`, or the model as configured.
    pub fn model_label(&self) -> String {
        match &self.reasoner {
            Some(r) if r.device == "remote" => format!("{}@{}", r.precision, r.dir.display()),
            // As the analyst named it when it loaded (a repository id reads better than its snapshot path).
            Some(_) => self.reasoner_key.as_ref().map_or_else(String::new, |(m, _)| m.clone()),
            None => self.settings.model.trim().to_owned(),
        }
    }

    /// Provenance of a finished question, for the features it makes.
    pub fn provenance_for(&self, outcome: &AskOutcome, source: &std::path::Path, segmenter: &str) -> Arc<Provenance> {
        let task = self.run.as_ref().map_or("region", |r| r.task.name());
        let model = self.model_label();
        // Fingerprinted on the model thread when it loaded (empty for an endpoint).
        let weights_hash = self.reasoner.as_ref().map(|r| r.weights_hash.clone()).unwrap_or_default();
        Arc::new(Provenance {
            task: task.into(),
            query: outcome.answer.query.clone(),
            answer: outcome.answer.answer.clone(),
            model,
            weights_hash,
            segmenter: segmenter.into(),
            reasoning: outcome.answer.think.clone(),
            source: source.display().to_string(),
            window: Some(outcome.window),
            created_at: Provenance::now(),
        })
    }

    /// Features from a segmentation: one per box, polygons traced exactly.
    pub fn features_from(outcome: &SegmentOutcome, provenance: &Arc<Provenance>) -> Vec<WorkFeature> {
        outcome
            .per_box
            .iter()
            .zip(&outcome.polygons)
            .map(|((b, seg), polygons)| {
                let mut f = WorkFeature::new(Some([b.x1, b.y1, b.x2, b.y2]), polygons.clone(), provenance.clone());
                f.score = seg.iou.map(f64::from);
                f.object_score = seg.object_score.map(f64::from);
                f.segment =
                    Some(Arc::new(SegmentState { window: outcome.window, segment: seg.clone(), clicks: vec![] }));
                f
            })
            .collect()
    }
}

/// Clicks on a mask, raster pixels; `true` = object.
pub type Clicks = Vec<(f64, f64, bool)>;

/// What the query panel says when no checkpoint is configured.
pub const NO_MODEL: &str = "No RemoteReasoner checkpoint is configured. Set its directory in Settings, or download it \
with `remote-reasoner models pull 1e12Leon/RemoteReasoner` and enter 1e12Leon/RemoteReasoner. Without it you can \
still draw boxes (tool B): they are segmented, traced and exported.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_persist_and_tolerate_missing_fields() {
        let s = Settings { model: "1e12Leon/RemoteReasoner".into(), temperature: Some(0.7), ..Settings::default() };
        let text = serde_json::to_string(&s).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Settings>(&text).ok(), Some(s));
        // Settings saved by an older version (fewer fields) still load.
        let old: Settings = serde_json::from_str(r#"{"model":"/models/rr"}"#).unwrap_or_default();
        assert_eq!((old.model.as_str(), old.max_pixels), ("/models/rr", Settings::default().max_pixels));
    }
}
