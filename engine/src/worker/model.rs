//! The model thread: holds the loaded reasoner and segmenter, loads what a
//! request names when it is not what it holds, and runs one request at a
//! time through [`crate::pipeline`], streaming events straight to the UI.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::{AskStage, EventKind, JobId, Models, Msg, Outbox, RasterId, Request, RequestKind};
use crate::base::{PixelBox, guard};
use crate::error::{EngineError, Result};
use crate::models::EncoderPrecision;
use crate::pipeline::{self, Backend, Origin, Progress, ReasonerInfo, ReasonerSpec, WindowImage};
use crate::segment::concept::ConceptSegmenter;
use crate::segment::{Segment, Segmenter, WatershedSegmenter};

/// A request forwarded as it came, with what the engine thread read for it.
pub(super) struct ModelJob {
    pub request: Request,
    pub input: Input,
    pub cancel: Arc<AtomicBool>,
    /// Told when the job is over (its cancel flag can go).
    pub done: Sender<Msg>,
}

/// What the engine thread read for a request.
pub(super) enum Input {
    None,
    /// The window, read once at the question's pixel budget; SAM uses it too.
    Image {
        image: WindowImage,
        raster: RasterId,
        source: PathBuf,
    },
    /// A whole raster to sweep: its path (each sweep worker opens its own handle).
    Raster(PathBuf),
}

/// What the model thread holds between requests.
struct Held {
    reasoner: Option<(ReasonerSpec, Backend, ReasonerInfo)>,
    /// The segmenter and the checkpoint it came from (`None`: the watershed fallback).
    segmenter: (Option<PathBuf>, Box<dyn Segmenter>),
    /// SAM 3, its directory and its weights' fingerprint, once a find asked for it.
    concept: Option<(PathBuf, ConceptSegmenter, String)>,
}

/// Whether loading a model for a job is told: not at all (a load request's
/// own answer says it), as an event, or also as the question's stage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    No,
    Loaded,
    Staged,
}

/// The thread's loop: one job at a time, each inside the one guard.
pub(super) fn run(rx: &Receiver<ModelJob>, out: &Outbox, latest_click: &Mutex<HashMap<u64, JobId>>) {
    let mut held = Held { reasoner: None, segmenter: (None, Box::new(WatershedSegmenter::default())), concept: None };
    for ModelJob { request, input, cancel, done } in rx {
        let job = request.job;
        let superseded = match &request.kind {
            RequestKind::Refine { feature, .. } => {
                latest_click.lock().map(|l| l.get(feature).is_some_and(|&newest| newest != job)).unwrap_or(false)
            }
            _ => false,
        };
        let result = if superseded {
            Err(EngineError::Cancelled) // a newer click on this feature is queued
        } else {
            guard(|| held.handle(job, request.kind, input, &cancel, out))
        };
        out.send(super::Event::finish(job, result));
        let _ = done.send(Msg::ModelJobDone { job });
    }
}

impl Held {
    fn handle(
        &mut self,
        job: JobId,
        kind: RequestKind,
        input: Input,
        cancel: &AtomicBool,
        out: &Outbox,
    ) -> Result<EventKind> {
        match (kind, input) {
            (RequestKind::LoadReasoner { spec }, _) => {
                self.reasoner = None; // loaded again, as asked (the files may have changed)
                Ok(EventKind::ReasonerLoaded { info: self.reasoner(&spec, job, out, Announce::No)?.2.clone() })
            }
            (RequestKind::LoadSegmenter { checkpoint }, _) => {
                let method = self.segmenter(checkpoint.as_deref(), job, out, Announce::No)?.method();
                Ok(EventKind::SegmenterLoaded { method })
            }
            (RequestKind::Ask { question, models, .. }, Input::Image { image, raster, source }) => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Cancelled);
                }
                self.reasoner(&models.reasoner, job, out, Announce::Staged)?;
                if question.goal.segments() {
                    self.segmenter(models.sam.as_deref(), job, out, Announce::Staged)?;
                }
                let Some((_, backend, info)) = self.reasoner.as_mut() else {
                    return Err(EngineError::Internal("no reasoner".into()));
                };
                let origin = Origin {
                    model: models.label.unwrap_or_else(|| backend.model_id()),
                    weights_hash: info.weights_hash.clone(),
                    source: source.display().to_string(),
                };
                let key = Some(image.key(raster));
                let outcome =
                    pipeline::run(backend, self.segmenter.1.as_mut(), &image, key, &question, &origin, |p| {
                        progress(job, out, cancel, p)
                    })?;
                Ok(EventKind::Answered { raster, outcome: Box::new(outcome) })
            }
            (RequestKind::Find { sam3, concept, reasoned, .. }, Input::Image { image, raster, source }) => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Cancelled);
                }
                self.find(job, &sam3, &concept, reasoned.as_deref(), &image, raster, &source, cancel, out)
            }
            (RequestKind::Segment { sam, boxes, .. }, Input::Image { image, raster, .. }) => {
                let segmenter = self.segmenter(sam.as_deref(), job, out, Announce::Loaded)?;
                let segments = pipeline::segment(segmenter.as_mut(), &image, Some(image.key(raster)), &boxes)?;
                Ok(EventKind::Segmented { raster, segments: Box::new(segments) })
            }
            (RequestKind::Refine { sam, feature, bbox, previous, clicks, .. }, Input::Image { image, raster, .. }) => {
                let segmenter = self.segmenter(sam.as_deref(), job, out, Announce::Loaded)?;
                let segment = refine(segmenter.as_mut(), &image, raster, bbox, previous.as_deref(), &clicks)?;
                let frame = crate::contour::ImageFrame {
                    window: image.window,
                    image_size: (image.image.width, image.image.height),
                };
                let polygons = crate::contour::trace_to_raster(&segment.mask, &frame);
                Ok(EventKind::Refined { feature, segment: Box::new(segment), polygons })
            }
            (
                RequestKind::Sweep { raster, params, options, models, concurrency, progress_file },
                Input::Raster(path),
            ) => {
                self.reasoner(&models.reasoner, job, out, Announce::Loaded)?;
                self.sweep(job, raster, &path, &params, &options, &models, concurrency, &progress_file, cancel, out)
            }
            _ => Err(EngineError::Internal("a request reached the model thread without its input".into())),
        }
    }

    /// The reasoner `spec` names, loaded unless it is the one held. A load
    /// for a question shows as its stage; every load is announced.
    fn reasoner(
        &mut self,
        spec: &ReasonerSpec,
        job: JobId,
        out: &Outbox,
        announce: Announce,
    ) -> Result<&mut (ReasonerSpec, Backend, ReasonerInfo)> {
        if self.reasoner.as_ref().is_none_or(|(held, ..)| held != spec) {
            self.reasoner = None; // free the old weights before mapping the new ones
            if announce == Announce::Staged {
                out.emit(job, EventKind::AskStage { stage: AskStage::LoadingModel });
            }
            let (backend, mut info) = Backend::open(spec)?;
            // Fingerprinted once per load, here (it may read gigabytes).
            info.weights_hash = backend.weights_hash();
            if announce != Announce::No {
                out.emit(job, EventKind::ReasonerLoaded { info: info.clone() });
            }
            self.reasoner = Some((spec.clone(), backend, info));
        }
        self.reasoner.as_mut().ok_or_else(|| EngineError::Internal("no reasoner".into()))
    }

    /// The segmenter for `checkpoint`, loaded unless it is the one held.
    fn segmenter(
        &mut self,
        checkpoint: Option<&Path>,
        job: JobId,
        out: &Outbox,
        announce: Announce,
    ) -> Result<&mut Box<dyn Segmenter>> {
        if self.segmenter.0.as_deref() != checkpoint {
            if announce == Announce::Staged {
                out.emit(job, EventKind::AskStage { stage: AskStage::LoadingSegmenter });
            }
            let loaded = crate::segment::load_segmenter(checkpoint, &candle_core::Device::Cpu, EncoderPrecision::Auto)?;
            if announce != Announce::No {
                out.emit(job, EventKind::SegmenterLoaded { method: loaded.method() });
            }
            self.segmenter = (checkpoint.map(Path::to_owned), loaded);
        }
        Ok(&mut self.segmenter.1)
    }

    /// SAM 3 on the window, alone or driven by the reasoner.
    #[allow(clippy::too_many_arguments)] // the find request's fields, unpacked once
    fn find(
        &mut self,
        job: JobId,
        sam3: &Path,
        concept: &pipeline::ConceptQuery,
        reasoned: Option<&pipeline::ReasonedSpec>,
        image: &WindowImage,
        raster: RasterId,
        source: &Path,
        cancel: &AtomicBool,
        out: &Outbox,
    ) -> Result<EventKind> {
        let stage = |stage| out.emit(job, EventKind::AskStage { stage });
        if let Some(r) = reasoned {
            self.reasoner(&r.reasoner, job, out, Announce::Staged)?;
        }
        if self.concept.as_ref().is_none_or(|(dir, ..)| dir != sam3) {
            self.concept = None;
            stage(AskStage::LoadingSegmenter);
            let loaded = ConceptSegmenter::load(sam3, &candle_core::Device::Cpu)?;
            out.emit(job, EventKind::SegmenterLoaded { method: loaded.method() });
            let hash = crate::hub::weights_fingerprint(sam3).unwrap_or_default();
            self.concept = Some((sam3.to_owned(), loaded, hash));
        }
        let (Some((dir, seg, hash)), key) = (self.concept.as_mut(), Some(image.key(raster))) else {
            return Err(EngineError::Internal("no SAM 3".into()));
        };
        let outcome = match (reasoned, self.reasoner.as_mut()) {
            (None, _) => {
                stage(AskStage::Segmenting);
                let origin = Origin {
                    model: dir.display().to_string(),
                    weights_hash: hash.clone(),
                    source: source.display().to_string(),
                };
                pipeline::find(seg, image, key, concept, &origin)?
            }
            (Some(r), Some((_, backend, info))) => {
                let origin = Origin {
                    model: r.label.clone().unwrap_or_else(|| backend.model_id()),
                    weights_hash: info.weights_hash.clone(),
                    source: source.display().to_string(),
                };
                pipeline::reason_then_find(backend, seg, image, key, &r.question, &r.how, &origin, hash, |p| {
                    progress(job, out, cancel, p)
                })?
            }
            (Some(_), None) => return Err(EngineError::Internal("no reasoner".into())),
        };
        Ok(EventKind::Answered { raster, outcome: Box::new(outcome) })
    }

    /// A whole-raster sweep with the held reasoner (an endpoint gets
    /// `concurrency` clones); the reasoner stays loaded afterwards.
    #[allow(clippy::too_many_arguments)] // the sweep request's fields, unpacked once
    fn sweep(
        &mut self,
        job: JobId,
        raster: RasterId,
        path: &Path,
        params: &crate::raster::RenderParams,
        options: &crate::sweep::SweepOptions,
        models: &Models,
        concurrency: usize,
        progress_file: &Path,
        cancel: &AtomicBool,
        out: &Outbox,
    ) -> Result<EventKind> {
        let Some((spec, backend, info)) = self.reasoner.take() else {
            return Err(EngineError::Internal("no reasoner".into()));
        };
        let model = models.label.clone().unwrap_or_else(|| backend.model_id());
        let mut backends = match backend {
            Backend::Remote(r) => (0..concurrency.max(1)).map(|_| Backend::Remote(r.clone())).collect(),
            local => vec![local],
        };
        let sam = models.sam.clone();
        let make =
            move || crate::segment::load_segmenter(sam.as_deref(), &candle_core::Device::Cpu, EncoderPrecision::Auto);
        let mut progress = |done: usize, total: usize, eta: f64| {
            let message = format!("{done}/{total} tiles, about {eta:.0} s left");
            out.emit(job, EventKind::Progress { fraction: done as f32 / total.max(1) as f32, message });
        };
        let origin = Origin { model, weights_hash: info.weights_hash.clone(), source: path.display().to_string() };
        let result =
            crate::sweep::sweep(path, params, options, &mut backends, &make, progress_file, cancel, &mut progress);
        if let Some(backend) = backends.into_iter().next() {
            self.reasoner = Some((spec, backend, info));
        }
        let result = result?;
        let features = result.features(options, &origin);
        Ok(EventKind::SweepDone { raster, result: Box::new(result), features })
    }
}

/// A question's progress as the UI's events (stages, text); a cancel breaks it off.
fn progress(job: JobId, out: &Outbox, cancel: &AtomicBool, p: Progress) -> ControlFlow<()> {
    let stage = |stage| out.emit(job, EventKind::AskStage { stage });
    match p {
        Progress::EncodingImage => stage(AskStage::EncodingImage),
        Progress::ReadingPrompt { tokens } => stage(AskStage::ReadingPrompt { tokens }),
        Progress::Reasoning => stage(AskStage::Reasoning),
        Progress::Segmenting => stage(AskStage::Segmenting),
        Progress::Text(text) => out.emit(job, EventKind::AskText { text }),
    }
    if cancel.load(Ordering::Relaxed) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
}

/// A click on a feature's mask: its box and the clicks (raster pixels) in the
/// image's pixels, the window's encoding reused.
fn refine(
    segmenter: &mut dyn Segmenter,
    image: &WindowImage,
    raster: RasterId,
    bbox: PixelBox,
    previous: Option<&Segment>,
    clicks: &[(f64, f64, bool)],
) -> Result<Segment> {
    let b = image.to_image(&bbox);
    let clicks: Vec<(f32, f32, bool)> = clicks
        .iter()
        .map(|&(x, y, positive)| {
            let p = image.to_image(&PixelBox { x1: x, y1: y, x2: x, y2: y });
            (p.x1 as f32, p.y1 as f32, positive)
        })
        .collect();
    let b = crate::segment::clip_box(b, image.image.width, image.image.height)
        .map_err(|e| EngineError::InvalidRequest(format!("the feature's box {e}")))?;
    segmenter.set_image(Some(image.key(raster)), &image.image)?;
    crate::segment::refine(segmenter, b, previous, clicks.as_slice())
}
