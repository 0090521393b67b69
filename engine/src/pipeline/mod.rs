//! One question, start to finish: the window image → the reasoner (region,
//! VQA, caption) → SAM, one prompt per box (pixel) → each mask traced into
//! polygons (contour) → features with their provenance. The workbench's model
//! thread, `ask`, `sweep`, `eval` and `serve`'s clients all go through here, so
//! the same question about the same window gives the same boxes, masks and
//! polygons whichever front end asked it.
//!
//! The window is read once, at the model's pixel budget ([`read_window`]), and
//! SAM segments that same image: what the model saw is what is segmented.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use geo::MultiPolygon;
use serde::{Deserialize, Serialize};

use crate::base::{Goal, PixelBox, RgbImage, Window};
use crate::contour::{ImageFrame, trace_to_raster};
use crate::edit::{SegmentState, WorkFeature};
use crate::error::{EngineError, Result};
use crate::features::Provenance;
use crate::raster::{Raster, RenderParams};
use crate::reasoner::{Answer, AskEvent, AskOptions, LoadOptions, Reasoner};
use crate::remote::{RemoteBackend, RemoteOptions};
use crate::segment::{ImageKey, Mask, Method, Segment, Segmenter};

mod concept;
pub use concept::{ConceptQuery, Reasoned, ReasonedSpec, Scope, exemplars_text, find, reason_then_find};

/// Who answers: a checkpoint loaded here, or an OpenAI-compatible endpoint.
#[derive(Debug)]
pub enum Backend {
    Local(Box<Reasoner>),
    Remote(RemoteBackend),
}

/// Which reasoner a request needs, named so that the thread running it can
/// load it itself (and keep it for the next request that names the same one).
#[derive(Clone, Debug, PartialEq)]
pub enum ReasonerSpec {
    /// A checkpoint directory (a repository id is resolved by the caller).
    Local { dir: PathBuf, options: LoadOptions },
    /// An OpenAI-compatible endpoint.
    Endpoint(RemoteOptions),
}

/// A loaded reasoner, as the UI shows it and as provenance names it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReasonerInfo {
    pub dir: PathBuf,
    /// `cpu`, `cuda:0`, … or `remote`.
    pub device: String,
    /// f32, bf16, q8_0, … (an endpoint: its model name).
    pub precision: String,
    pub parameters: u64,
    pub load_ms: f64,
    /// [`Backend::weights_hash`], filled in by whoever needs it (it may hash
    /// gigabytes: the model thread does it once per load); empty for an endpoint.
    pub weights_hash: String,
}

impl Backend {
    /// Loads the checkpoint or connects to the endpoint `spec` names.
    pub fn open(spec: &ReasonerSpec) -> Result<(Self, ReasonerInfo)> {
        let t = std::time::Instant::now();
        match spec {
            ReasonerSpec::Local { dir, options } => {
                let r = Reasoner::load(dir, options)?;
                let info = ReasonerInfo {
                    dir: r.dir.clone(),
                    device: options.device.to_string(),
                    precision: r.precision.to_string(),
                    parameters: r.config().parameter_count(),
                    load_ms: r.load_ms,
                    weights_hash: String::new(),
                };
                Ok((Self::Local(Box::new(r)), info))
            }
            ReasonerSpec::Endpoint(options) => {
                let r = RemoteBackend::new(options.clone())?;
                let info = ReasonerInfo {
                    dir: PathBuf::from(&r.options.endpoint),
                    device: "remote".into(),
                    precision: r.options.model.clone(),
                    load_ms: t.elapsed().as_secs_f64() * 1e3,
                    ..ReasonerInfo::default()
                };
                Ok((Self::Remote(r), info))
            }
        }
    }

    /// One question; the same events and answer either way.
    pub fn ask(
        &mut self,
        image: &RgbImage,
        goal: Goal,
        query: &str,
        opts: &AskOptions,
        on_event: impl FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<Answer> {
        match self {
            Self::Local(r) => r.ask(image, goal, query, opts, on_event),
            Self::Remote(r) => r.ask(image, goal, query, opts, on_event),
        }
    }

    /// For provenance: the weights' fingerprint (a remote server's is unknown here).
    pub fn weights_hash(&self) -> String {
        match self {
            Self::Local(r) => crate::hub::weights_fingerprint(&r.dir).unwrap_or_default(),
            Self::Remote(_) => String::new(),
        }
    }

    /// For provenance: the checkpoint directory, or `model@endpoint`.
    pub fn model_id(&self) -> String {
        match self {
            Self::Local(r) => r.dir.display().to_string(),
            Self::Remote(r) => format!("{}@{}", r.options.model, r.options.endpoint),
        }
    }
}

/// A window of a raster as the RGB image a model sees, and how its pixels map
/// back to the raster's.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowImage {
    pub image: RgbImage,
    pub window: Window,
}

impl WindowImage {
    /// Raster pixel coordinates of a box given in this image's pixels.
    pub fn to_raster(&self, b: &PixelBox) -> PixelBox {
        let sx = self.window.width as f64 / self.image.width as f64;
        let sy = self.window.height as f64 / self.image.height as f64;
        PixelBox { x1: b.x1 * sx, y1: b.y1 * sy, x2: b.x2 * sx, y2: b.y2 * sy }
            .offset(self.window.x as f64, self.window.y as f64)
    }

    /// This image's pixel coordinates of a box given in raster pixels.
    pub fn to_image(&self, b: &PixelBox) -> PixelBox {
        let sx = self.image.width as f64 / self.window.width as f64;
        let sy = self.image.height as f64 / self.window.height as f64;
        let (x, y) = (self.window.x as f64, self.window.y as f64);
        PixelBox { x1: (b.x1 - x) * sx, y1: (b.y1 - y) * sy, x2: (b.x2 - x) * sx, y2: (b.y2 - y) * sy }
    }

    /// The key SAM's encoding of this image is cached under (its decimation is part of it).
    pub fn key(&self, raster: u64) -> ImageKey {
        let scale = self.window.width as f64 / self.image.width.max(1) as f64;
        ImageKey { raster, window: self.window, level: scale.log2().round().clamp(0.0, 30.0) as u8 }
    }

    fn frame(&self) -> ImageFrame {
        ImageFrame { window: self.window, image_size: (self.image.width, self.image.height) }
    }
}

/// Reads `window` of `raster` for a model whose pixel budget is `max_pixels`,
/// through the same display path as the viewer (band mapping, stretch; nodata
/// and transparent pixels become black). Windows up to 4× the budget are read
/// at full resolution so the model's own resize does the downsampling, exactly as
/// in training; larger ones are first decimated by GDAL (overviews when present)
/// to about 4× the budget. SAM segments this same image.
pub fn read_window(raster: &Raster, window: Window, params: &RenderParams, max_pixels: usize) -> Result<WindowImage> {
    let area = window.width as f64 * window.height as f64;
    let limit = 4.0 * max_pixels as f64;
    let scale = if area > limit { (limit / area).sqrt() } else { 1.0 };
    let out =
        (((window.width as f64 * scale).round() as u32).max(1), ((window.height as f64 * scale).round() as u32).max(1));
    let rgba = raster.render_window(window, out, params)?;
    let data = rgba.rgba.chunks_exact(4).flat_map(|p| if p[3] == 0 { [0, 0, 0] } else { [p[0], p[1], p[2]] }).collect();
    Ok(WindowImage { image: RgbImage::new(out.0 as usize, out.1 as usize, data)?, window })
}

/// What is asked: the goal, the words, and how the model answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub goal: Goal,
    pub query: String,
    pub options: AskOptions,
}

/// What provenance says about where an answer came from, besides the answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    /// The model as the analyst named it: a directory, a repository id, `name@endpoint`.
    pub model: String,
    pub weights_hash: String,
    /// The raster asked about.
    pub source: String,
}

/// How far a question has got.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    EncodingImage,
    ReadingPrompt {
        tokens: usize,
    },
    Reasoning,
    /// New text of the completion (the reasoning streams through here).
    Text(String),
    Segmenting,
}

/// The pixel task's result on a window, boxes in raster pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Segments {
    pub window: Window,
    /// The masks' pixel grid: the window as read.
    pub image_size: (usize, usize),
    pub merged: Mask,
    /// Per box: the box in raster pixels and its mask on the image grid.
    pub per_box: Vec<(PixelBox, Segment)>,
    pub method: Method,
    /// Whether the window was encoded for this request (false: from the cache).
    pub encoded: bool,
    /// Per box: its mask traced exactly into polygons (raster pixels).
    pub polygons: Vec<MultiPolygon<f64>>,
}

impl Segments {
    /// One feature per box: the box, its traced polygons, SAM's scores and
    /// what a refinement click needs.
    pub fn features(&self, provenance: &Arc<Provenance>) -> Vec<WorkFeature> {
        self.per_box
            .iter()
            .zip(&self.polygons)
            .map(|((b, seg), polygons)| {
                let mut f = WorkFeature::new(Some(b.to_array()), polygons.clone(), provenance.clone());
                f.score = seg.iou.map(f64::from);
                f.object_score = seg.object_score.map(f64::from);
                let state = SegmentState { window: self.window, segment: seg.clone(), clicks: vec![] };
                f.segment = Some(Arc::new(state));
                f
            })
            .collect()
    }
}

/// Everything one question produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub window: Window,
    pub answer: Answer,
    /// `answer.boxes` in raster pixels.
    pub boxes: Vec<PixelBox>,
    /// Masks and polygons (pixel and contour goals).
    pub segments: Option<Segments>,
    /// One per box (none for VQA and captions), provenance attached.
    pub features: Vec<WorkFeature>,
    pub provenance: Arc<Provenance>,
}

/// Segments `boxes` (raster pixels) on `image`, each mask traced into polygons.
pub fn segment(
    segmenter: &mut dyn Segmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    boxes: &[PixelBox],
) -> Result<Segments> {
    let in_image: Vec<PixelBox> = boxes.iter().map(|b| image.to_image(b)).collect();
    segment_in_image(segmenter, image, key, &in_image)
}

/// [`segment`] with the boxes in pixels of the image (as the model wrote them:
/// no round trip through raster coordinates).
fn segment_in_image(
    segmenter: &mut dyn Segmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    boxes: &[PixelBox],
) -> Result<Segments> {
    let r = crate::segment::pixel_task(segmenter, key, &image.image, boxes)?;
    let frame = image.frame();
    let polygons = r.per_box.iter().map(|(_, s)| trace_to_raster(&s.mask, &frame)).collect();
    Ok(Segments {
        window: image.window,
        image_size: (image.image.width, image.image.height),
        merged: r.merged,
        per_box: r.per_box.into_iter().map(|(b, s)| (image.to_raster(&b), s)).collect(),
        method: r.method,
        encoded: r.encoded,
        polygons,
    })
}

/// The provenance of a question's features: built here and nowhere else.
pub fn provenance(goal: Goal, answer: &Answer, origin: &Origin, window: Window, segmenter: &str) -> Arc<Provenance> {
    Arc::new(Provenance {
        task: goal.name().into(),
        query: answer.query.clone(),
        answer: answer.answer.clone(),
        model: origin.model.clone(),
        weights_hash: origin.weights_hash.clone(),
        segmenter: segmenter.into(),
        reasoning: answer.think.clone(),
        source: origin.source.clone(),
        window: Some(window),
        created_at: Provenance::now(),
        ..Provenance::default()
    })
}

/// Asks `question` about `image` and carries the answer as far as its goal
/// goes. `on` sees the progress and each new piece of text; returning `Break`
/// cancels (between tokens, and before segmenting).
pub fn run(
    backend: &mut Backend,
    segmenter: &mut dyn Segmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    question: &Question,
    origin: &Origin,
    mut on: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<Outcome> {
    let goal = question.goal;
    if on(Progress::EncodingImage).is_break() {
        return Err(EngineError::Cancelled);
    }
    let answer = backend.ask(&image.image, goal, &question.query, &question.options, |event| match event {
        AskEvent::ImageEncoded { tokens } => on(Progress::ReadingPrompt { tokens }),
        AskEvent::PromptRead { .. } => on(Progress::Reasoning),
        AskEvent::Text(text) => on(Progress::Text(text)),
    })?;
    let boxes: Vec<PixelBox> = answer.boxes.iter().map(|b| image.to_raster(b)).collect();
    let segments = if goal.segments() && !boxes.is_empty() {
        if on(Progress::Segmenting).is_break() {
            return Err(EngineError::Cancelled);
        }
        Some(segment_in_image(segmenter, image, key, &answer.boxes)?)
    } else {
        None
    };
    let method = segments.as_ref().map(|s| s.method.to_string()).unwrap_or_default();
    let provenance = provenance(goal, &answer, origin, image.window, &method);
    let features = match &segments {
        Some(s) => s.features(&provenance),
        None if goal.grounds() => boxes
            .iter()
            .map(|b| WorkFeature::new(Some(b.to_array()), MultiPolygon::new(vec![]), provenance.clone()))
            .collect(),
        None => Vec::new(),
    };
    Ok(Outcome { window: image.window, answer, boxes, segments, features, provenance })
}
