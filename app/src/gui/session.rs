//! The analyst's session: settings, the question being asked, the features
//! and the editing state. Plain state and the transitions the engine's events
//! cause; the `*_ui` functions in `query`, `overlay` and `features` draw it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::base::{Goal, Window};
use engine::edit::{FeatureStore, VertexRef, WorkFeature};
use engine::features::SimplifyMethod;
use engine::models::DeviceChoice;
use engine::pipeline::{Outcome, Question, ReasonerInfo, ReasonerSpec};
use engine::raster::RenderParams;
use engine::segment::Method;
use engine::worker::{AskStage, Models, RequestKind};
use engine::{JobId, RasterId};
use serde::{Deserialize, Serialize};

pub use super::jobs::{Clicks, SweepState};

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
    /// SAM 3 checkpoint directory, for "Find all"; empty: not set up.
    pub sam3: String,
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
    /// The first-run dialog was answered (or put off with "Later"): it does
    /// not open by itself again.
    pub setup_seen: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            endpoint: String::new(),
            api_model: String::new(),
            sam: String::new(),
            sam3: String::new(),
            device: DeviceChoice::Cpu,
            max_pixels: engine::reasoner::processor::TRAINING_MAX_PIXELS,
            temperature: None,
            max_new_tokens: 1024,
            simplify_method: SimplifyMethod::VisvalingamPreserve,
            hub_endpoint: String::new(),
            models_cache: String::new(),
            setup_seen: false,
        }
    }
}

/// One question in flight (or the last one finished).
#[derive(Clone, Debug)]
pub struct Run {
    pub task: Goal,
    pub query: String,
    pub raster: RasterId,
    pub window: Window,
    pub started: Instant,
    pub stage: Option<AskStage>,
    /// The question's job (models load and masks are made within it).
    pub job: Option<JobId>,
    /// The streamed completion so far.
    pub text: String,
    pub outcome: Option<Box<Outcome>>,
    pub finished: Option<Duration>,
    pub error: Option<String>,
}

impl Run {
    /// A run just queued.
    pub fn new(task: Goal, query: String, raster: RasterId, window: Window) -> Self {
        Self {
            task,
            query,
            raster,
            window,
            started: Instant::now(),
            stage: Some(AskStage::Queued),
            job: None,
            text: String::new(),
            outcome: None,
            finished: None,
            error: None,
        }
    }

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
    /// Drag an exemplar box for "Find all" (a counter-example when the panel says so).
    DrawExemplar,
}

/// "Find all" (SAM 3): the concept, the exemplars drawn on the map, the keep rule.
#[derive(Clone, Debug, PartialEq)]
pub struct FindAll {
    /// A noun phrase ("ship"); empty with "from the answer": the reasoner's.
    pub concept: String,
    /// Exemplar boxes in raster pixels.
    pub exemplars: Vec<engine::segment::concept::Exemplar>,
    /// The next exemplar drawn is a counter-example.
    pub negative: bool,
    /// Reasoning + concepts: ask the question first; its boxes are exemplars.
    pub from_answer: bool,
    pub threshold: f32,
}

impl Default for FindAll {
    fn default() -> Self {
        Self { concept: String::new(), exemplars: Vec::new(), negative: false, from_answer: false, threshold: 0.5 }
    }
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

/// Everything the workbench knows about the analysis (beyond the raster view).
#[derive(Debug)]
pub struct Session {
    pub settings: Settings,
    pub task: Goal,
    pub query: String,
    pub history: Vec<String>,
    pub area_mode: AreaMode,
    pub drawn_area: Option<Window>,
    pub run: Option<Run>,
    /// The reasoner the engine holds (told when it loads one).
    pub reasoner: Option<ReasonerInfo>,
    /// The segmenter the engine holds (told when it loads one).
    pub segmenter: Option<Method>,
    pub features: FeatureStore,
    pub selected: Option<u64>,
    pub selected_vertex: Option<VertexRef>,
    pub hovered: Option<u64>,
    pub tool: Tool,
    pub find: FindAll,
    pub drag: Option<Drag>,
    /// A box or area being drawn: start and current point (raster pixels).
    pub drawing: Option<([f64; 2], [f64; 2])>,
    pub project_path: Option<PathBuf>,
    /// Revision of the features last saved to the project / the recovery file.
    pub saved_revision: u64,
    pub autosaved_revision: u64,
    pub last_autosave: Instant,
    pub show_settings: bool,
    pub show_help: bool,
    /// Help > About: version, build and licences.
    pub show_about: bool,
    /// The first-run dialog, while it is open.
    pub setup: Option<crate::gui::setup::Setup>,
    pub export_dialog: Option<crate::gui::dialogs::ExportDialog>,
    /// The "Open URL" dialog's text, while it is open.
    pub open_url: Option<String>,
    /// A recovery file found at start, offered for restoring (with when it was
    /// last written, read once at start).
    pub recovery_offer: Option<(PathBuf, Option<std::time::SystemTime>)>,
    /// The last export's summary.
    pub last_export: Option<String>,
    /// The window was asked to close with unsaved work: the question is shown.
    pub confirm_close: bool,
    /// Close once the save in flight is done.
    pub close_after_save: bool,
    /// The analyst chose to close without saving.
    pub discard_on_close: bool,
}

impl Session {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            task: Goal::default(),
            query: String::new(),
            history: Vec::new(),
            area_mode: AreaMode::default(),
            drawn_area: None,
            run: None,
            reasoner: None,
            segmenter: None,
            features: FeatureStore::new(),
            selected: None,
            selected_vertex: None,
            hovered: None,
            tool: Tool::default(),
            find: FindAll::default(),
            drag: None,
            drawing: None,
            project_path: None,
            saved_revision: 0,
            autosaved_revision: 0,
            last_autosave: Instant::now(),
            show_settings: false,
            show_help: false,
            show_about: false,
            setup: None,
            export_dialog: None,
            open_url: None,
            recovery_offer: None,
            last_export: None,
            confirm_close: false,
            close_after_save: false,
            discard_on_close: false,
        }
    }

    /// Unsaved changes since the project was last saved.
    pub fn is_dirty(&self) -> bool {
        self.features.revision() != self.saved_revision
    }

    /// Whether a question is in flight.
    pub fn running(&self) -> bool {
        self.run.as_ref().is_some_and(Run::is_running)
    }

    /// The hub cache downloads go to and models are looked up in.
    pub fn models_cache(&self) -> PathBuf {
        match self.settings.models_cache.trim() {
            "" => engine::hub::default_cache_dir(),
            dir => PathBuf::from(dir),
        }
    }

    /// The hub server the settings name (`None`: `HF_ENDPOINT`, else huggingface.co).
    pub fn hub_endpoint(&self) -> Option<String> {
        Some(self.settings.hub_endpoint.trim().to_owned()).filter(|e| !e.is_empty())
    }

    /// Whether the model setting looks like a hub repository id (`owner/name`).
    pub fn model_is_repo(&self) -> bool {
        // Syntax only: this runs every frame the settings window is open.
        let m = self.settings.model.trim();
        m.split('/').count() == 2 && !m.starts_with(['/', '.', '~']) && m.split('/').all(|p| !p.is_empty())
    }

    /// The download of the configured repository.
    pub fn pull_request(&self) -> RequestKind {
        RequestKind::PullModel {
            request: engine::hub::PullRequest {
                repo_id: self.settings.model.trim().to_owned(),
                revision: "main".into(),
                cache_dir: Some(self.models_cache()),
                endpoint: self.hub_endpoint(),
                files: Vec::new(),
            },
        }
    }

    /// The SAM checkpoint the settings name (`None`: the watershed fallback).
    pub fn sam(&self) -> Option<PathBuf> {
        Some(PathBuf::from(self.settings.sam.trim())).filter(|p| !p.as_os_str().is_empty())
    }

    /// The models the settings name, for the engine to load when they are not
    /// what it holds; `None` when neither a checkpoint nor an endpoint is set.
    pub fn models(&self) -> Option<Models> {
        let (model, endpoint) = (self.settings.model.trim(), self.settings.endpoint.trim());
        let reasoner = match (model, endpoint) {
            ("", "") => return None,
            (model, "") => ReasonerSpec::Local {
                dir: engine::hub::resolve_model(std::path::Path::new(model), &self.models_cache()),
                options: engine::reasoner::LoadOptions { device: self.settings.device, precision: None },
            },
            (_, endpoint) => ReasonerSpec::Endpoint(engine::remote::RemoteOptions {
                endpoint: endpoint.to_owned(),
                model: self.settings.api_model.trim().to_owned(),
                api_key: engine::remote::api_key_from_env(),
                ..Default::default()
            }),
        };
        let label = matches!(reasoner, ReasonerSpec::Local { .. }).then(|| model.to_owned());
        Some(Models { reasoner, label, sam: self.sam() })
    }

    /// How the model answers, from the settings.
    pub fn ask_options(&self) -> engine::reasoner::AskOptions {
        let decoding = self.settings.temperature.map(|t| engine::reasoner::generate::Decoding {
            temperature: (t > 0.0).then_some(t),
            top_p: None,
            top_k: None,
            repetition_penalty: 1.0,
            seed: 299_792_458,
            max_new_tokens: self.settings.max_new_tokens,
            ignore_eos: false,
        });
        engine::reasoner::AskOptions {
            max_pixels: Some(self.settings.max_pixels),
            decoding,
            max_new_tokens: Some(self.settings.max_new_tokens),
        }
    }

    /// Starts a question on `window` of `raster`: the run is set up and the
    /// one request that carries it to its end (models loaded on the way) is
    /// returned. Errors (no model configured, no question) are for display.
    pub fn ask(&mut self, raster: RasterId, window: Window, params: RenderParams) -> Result<RequestKind, String> {
        let models = self.models().ok_or(NO_MODEL)?;
        if self.task != Goal::Caption && self.query.trim().is_empty() {
            return Err("Type a question first.".into());
        }
        let query = self.query.trim().to_owned();
        if !query.is_empty() {
            self.history.retain(|q| q != &query);
            self.history.insert(0, query.clone());
            self.history.truncate(30);
        }
        self.run = Some(Run::new(self.task, query.clone(), raster, window));
        let question = Question { goal: self.task, query, options: self.ask_options() };
        Ok(RequestKind::Ask { raster, window, params, question, models })
    }

    /// Starts "Find all" on `window`: SAM 3 alone (the concept and exemplars in
    /// the panel), or driven by the reasoner's answer to the question.
    pub fn find_all(&mut self, raster: RasterId, window: Window, params: RenderParams) -> Result<RequestKind, String> {
        let sam3 = PathBuf::from(self.settings.sam3.trim());
        if sam3.as_os_str().is_empty() {
            return Err("Find all needs SAM 3: set its checkpoint folder in Settings.".into());
        }
        let f = &self.find;
        let concept = f.concept.trim().to_owned();
        if !f.from_answer && concept.is_empty() && f.exemplars.is_empty() {
            return Err("Type what to find (e.g. ship), or draw exemplar boxes.".into());
        }
        let options = engine::segment::concept::FindOptions {
            threshold: f.threshold,
            ..engine::segment::concept::FindOptions::default()
        };
        let reasoned = if f.from_answer {
            let models = self.models().ok_or(NO_MODEL)?;
            if self.query.trim().is_empty() {
                return Err("Type the question whose answer SAM 3 extends.".into());
            }
            let question =
                Question { goal: Goal::Region, query: self.query.trim().to_owned(), options: self.ask_options() };
            let how = engine::pipeline::Reasoned {
                concept: Some(concept.clone()).filter(|c| !c.is_empty()),
                options,
                scope: engine::pipeline::Scope::Answer,
            };
            Some(Box::new(engine::pipeline::ReasonedSpec {
                question,
                how,
                reasoner: models.reasoner,
                label: models.label,
            }))
        } else {
            None
        };
        let label = if f.from_answer { self.query.trim().to_owned() } else { format!("Find all: {concept}") };
        self.run = Some(Run::new(Goal::Pixel, label, raster, window));
        let max_pixels = self.settings.max_pixels;
        let query = engine::pipeline::ConceptQuery { text: concept, exemplars: f.exemplars.clone(), options };
        Ok(RequestKind::Find { raster, window, params, max_pixels, sam3, concept: query, reasoned })
    }

    /// A sweep of the whole raster with the question (tiles of 1024 px with
    /// 128 px of overlap; progress kept under `state_dir`, so a sweep resumes).
    pub fn sweep(
        &mut self,
        raster: RasterId,
        raster_path: &std::path::Path,
        params: RenderParams,
        state_dir: &std::path::Path,
    ) -> Result<(RequestKind, SweepState), String> {
        let models = self.models().ok_or(NO_MODEL)?;
        let query = self.query.trim().to_owned();
        if query.is_empty() || !self.task.grounds() {
            return Err(
                "A sweep looks for objects: pick the region, pixel or contour task and type what to find.".into()
            );
        }
        let options = engine::sweep::SweepOptions {
            query: query.clone(),
            task: self.task,
            tile: 1024,
            overlap: 128,
            level: 0,
            aoi: None,
            max_pixels: self.settings.max_pixels,
            concept: None,
        };
        // One progress file per (raster, question, task): rerunning resumes.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (raster_path, &query, self.task.name(), self.settings.max_pixels).hash(&mut h);
        let _ = std::fs::create_dir_all(state_dir);
        let progress_file = state_dir.join(format!("sweep-{:016x}", h.finish()));
        let concurrency = if self.settings.endpoint.trim().is_empty() { 1 } else { 4 };
        let request = RequestKind::Sweep { raster, params, options, models, concurrency, progress_file };
        let state =
            SweepState { fraction: 0.0, message: "starting".into(), started: Instant::now(), goal: self.task, query };
        Ok((request, state))
    }

    /// Ends the current run (done, failed or cancelled).
    pub fn finish_run(&mut self, error: Option<String>) {
        if let Some(run) = self.run.as_mut().filter(|r| r.is_running()) {
            run.finished = Some(run.started.elapsed());
            run.stage = None;
            run.job = None;
            run.error = error;
        }
    }
}

/// What the query panel says when no checkpoint is configured.
pub const NO_MODEL: &str = "No RemoteReasoner checkpoint is configured: Help > Set up models… downloads it, or points \
at a checkpoint folder or a server. Without it you can still draw boxes (tool B): they are segmented, traced and \
exported.";

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
