//! Concept segmentation in the pipeline: SAM 3 finds every instance of a
//! concept ([`find`]), and the reasoner can drive it ([`reason_then_find`]):
//! its boxes become positive exemplars, the concept its question and reasoning
//! name becomes the text, and — what SAM 3 cannot do alone — the instances are
//! kept to the part of the image the reasoning pointed at, so "which vessels
//! are moored in the bottom-left basin?" gets every vessel there, not only the
//! ones the reasoner listed, and none of the others.

use std::ops::ControlFlow;
use std::sync::Arc;

use geo::MultiPolygon;
use serde::{Deserialize, Serialize};

use super::{Backend, Origin, Outcome, Progress, Question, Segments, WindowImage};
use crate::base::{Goal, Mask, PixelBox, box_iou};
use crate::contour::trace_to_raster;
use crate::edit::WorkFeature;
use crate::error::{EngineError, Result};
use crate::features::Provenance;
use crate::reasoner::{Answer, AskEvent};
use crate::segment::concept::{ConceptPrompt, ConceptSegmenter, Exemplar, FindOptions, concept_from};
use crate::segment::{ImageKey, Segment};

/// What SAM 3 is asked on a window: a noun phrase, exemplar boxes in raster
/// pixels, and which instances are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConceptQuery {
    pub text: String,
    pub exemplars: Vec<Exemplar>,
    pub options: FindOptions,
}

/// Where instances found from a reasoner's answer may lie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Around the reasoner's boxes: their bounding box grown by the median box
    /// side on every side (the part of the image the reasoning pointed at).
    #[default]
    Answer,
    /// Anywhere in the window.
    Image,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "answer" => Ok(Self::Answer),
            "image" => Ok(Self::Image),
            _ => Err(format!("unknown scope '{s}' (answer or image)")),
        }
    }
}

/// How the reasoner drives SAM 3.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reasoned {
    /// The concept, when the analyst names it; else taken from the question
    /// and reasoning ([`concept_from`]).
    pub concept: Option<String>,
    pub options: FindOptions,
    pub scope: Scope,
}

/// A reasoned find as a request carries it: the question, how SAM 3 is driven,
/// and the reasoner (a [`super::ReasonerSpec`] and the name provenance uses).
#[derive(Clone, Debug, PartialEq)]
pub struct ReasonedSpec {
    pub question: Question,
    pub how: Reasoned,
    pub reasoner: super::ReasonerSpec,
    pub label: Option<String>,
}

/// Exemplars for provenance: `+x1,y1,x2,y2` / `-…` in raster pixels, `;`-separated.
///
/// ```
/// use engine::base::PixelBox;
/// use engine::pipeline::exemplars_text;
/// use engine::segment::concept::Exemplar;
/// let e = [Exemplar { bbox: PixelBox { x1: 1.0, y1: 2.5, x2: 30.0, y2: 40.25 }, positive: true },
///          Exemplar { bbox: PixelBox { x1: 5.0, y1: 6.0, x2: 7.0, y2: 8.0 }, positive: false }];
/// assert_eq!(exemplars_text(&e), "+1,2.5,30,40.25;-5,6,7,8");
/// ```
pub fn exemplars_text(exemplars: &[Exemplar]) -> String {
    let n = |v: f64| {
        let s = format!("{:.2}", v);
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    exemplars
        .iter()
        .map(|e| {
            let b = e.bbox;
            format!("{}{},{},{},{}", if e.positive { '+' } else { '-' }, n(b.x1), n(b.y1), n(b.x2), n(b.y2))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// SAM 3 on `image` for `prompt` (exemplars in image pixels): instances as
/// [`Segments`], boxes in raster pixels, each mask traced into polygons.
fn concept_segments(
    seg: &mut ConceptSegmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    prompt: &ConceptPrompt,
    options: &FindOptions,
    keep: impl Fn(&PixelBox) -> bool,
) -> Result<Segments> {
    let (found, encoded) = seg.find(key, &image.image, prompt, options)?;
    let found: Vec<_> = found.into_iter().filter(|f| keep(&f.bbox)).collect();
    let frame = image.frame();
    let (w, h) = (image.image.width, image.image.height);
    let polygons = found.iter().map(|f| trace_to_raster(&f.mask, &frame)).collect();
    let merged = Mask::union(w, h, found.iter().map(|f| &f.mask));
    let per_box = found
        .into_iter()
        .map(|f| {
            let segment = Segment { mask: f.mask, low_res: None, iou: Some(f.score), object_score: None };
            (image.to_raster(&f.bbox), segment)
        })
        .collect();
    Ok(Segments { window: image.window, image_size: (w, h), merged, per_box, method: seg.method(), encoded, polygons })
}

/// Every instance of `query.text` (and its exemplars) in `image`: one feature
/// per instance with its score, provenance naming the concept, the exemplars
/// and SAM 3's weights (`origin` names SAM 3 here).
pub fn find(
    seg: &mut ConceptSegmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    query: &ConceptQuery,
    origin: &Origin,
) -> Result<Outcome> {
    if query.text.trim().is_empty() && query.exemplars.is_empty() {
        return Err(EngineError::InvalidRequest("finding a concept needs a noun phrase or exemplar boxes".into()));
    }
    let exemplars: Vec<Exemplar> =
        query.exemplars.iter().map(|e| Exemplar { bbox: image.to_image(&e.bbox), positive: e.positive }).collect();
    let prompt = ConceptPrompt { text: query.text.trim().to_owned(), exemplars };
    let segments = concept_segments(seg, image, key, &prompt, &query.options, |_| true)?;
    let provenance = Arc::new(Provenance {
        task: "concept".into(),
        query: prompt.model_text().to_owned(),
        model: origin.model.clone(),
        weights_hash: origin.weights_hash.clone(),
        segmenter: segments.method.to_string(),
        segmenter_hash: origin.weights_hash.clone(),
        concept: prompt.text.clone(),
        exemplars: exemplars_text(&query.exemplars),
        source: origin.source.clone(),
        window: Some(image.window),
        created_at: Provenance::now(),
        ..Provenance::default()
    });
    let features = segments.features(&provenance);
    let answer = Answer { task: Goal::Pixel, query: prompt.model_text().to_owned(), ..Answer::default() };
    let boxes = segments.per_box.iter().map(|(b, _)| *b).collect();
    Ok(Outcome { window: image.window, answer, boxes, segments: Some(segments), features, provenance })
}

/// The area around `boxes` (image pixels) where instances count as what the
/// reasoning pointed at: their bounding box grown by the median box side.
fn answer_area(boxes: &[PixelBox]) -> Option<PixelBox> {
    let first = boxes.first()?;
    let mut sides: Vec<f64> = boxes.iter().map(|b| (b.x2 - b.x1).max(b.y2 - b.y1)).collect();
    sides.sort_by(f64::total_cmp);
    let grow = sides[sides.len() / 2];
    let mut area = *first;
    for b in boxes {
        area = PixelBox { x1: area.x1.min(b.x1), y1: area.y1.min(b.y1), x2: area.x2.max(b.x2), y2: area.y2.max(b.y2) };
    }
    Some(PixelBox { x1: area.x1 - grow, y1: area.y1 - grow, x2: area.x2 + grow, y2: area.y2 + grow })
}

/// The reasoner answers `question` (its boxes: the region task), then SAM 3
/// finds every instance of the concept with those boxes as positive
/// exemplars, kept to `how.scope`. Boxes of the reasoner's that no instance
/// matches (IoU ≥ 0.5) stay as box features: nothing it found is dropped.
/// Provenance names the reasoner (`origin`), its answer and reasoning, SAM 3
/// (`sam3_hash`), the concept and the exemplars.
#[allow(clippy::too_many_arguments)] // the pipeline's inputs, as `run` takes them, plus SAM 3's
pub fn reason_then_find(
    backend: &mut Backend,
    seg: &mut ConceptSegmenter,
    image: &WindowImage,
    key: Option<ImageKey>,
    question: &Question,
    how: &Reasoned,
    origin: &Origin,
    sam3_hash: &str,
    mut on: impl FnMut(Progress) -> ControlFlow<()>,
) -> Result<Outcome> {
    if on(Progress::EncodingImage).is_break() {
        return Err(EngineError::Cancelled);
    }
    let answer = backend.ask(&image.image, Goal::Region, &question.query, &question.options, |event| match event {
        AskEvent::ImageEncoded { tokens } => on(Progress::ReadingPrompt { tokens }),
        AskEvent::PromptRead { .. } => on(Progress::Reasoning),
        AskEvent::Text(text) => on(Progress::Text(text)),
    })?;
    let concept = how
        .concept
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| concept_from(&question.query, &answer.think, &answer.answer))
        .ok_or_else(|| {
            EngineError::InvalidRequest(format!(
                "neither the question nor the reasoning names a concept SAM 3 knows ({:?}); name one",
                question.query
            ))
        })?;
    if on(Progress::Segmenting).is_break() {
        return Err(EngineError::Cancelled);
    }
    let exemplars: Vec<Exemplar> = answer.boxes.iter().map(|&bbox| Exemplar { bbox, positive: true }).collect();
    let area = match how.scope {
        Scope::Answer => answer_area(&answer.boxes),
        Scope::Image => None,
    };
    let inside = |b: &PixelBox| {
        let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
        area.is_none_or(|a| cx >= a.x1 && cx <= a.x2 && cy >= a.y1 && cy <= a.y2)
    };
    let prompt = ConceptPrompt { text: concept.clone(), exemplars };
    let segments = concept_segments(seg, image, key, &prompt, &how.options, inside)?;
    let raster_exemplars: Vec<Exemplar> =
        prompt.exemplars.iter().map(|e| Exemplar { bbox: image.to_raster(&e.bbox), positive: true }).collect();
    let provenance = Arc::new(Provenance {
        task: "reason+concept".into(),
        query: answer.query.clone(),
        answer: answer.answer.clone(),
        model: origin.model.clone(),
        weights_hash: origin.weights_hash.clone(),
        segmenter: segments.method.to_string(),
        segmenter_hash: sam3_hash.to_owned(),
        concept,
        exemplars: exemplars_text(&raster_exemplars),
        reasoning: answer.think.clone(),
        source: origin.source.clone(),
        window: Some(image.window),
        created_at: Provenance::now(),
    });
    let mut features = segments.features(&provenance);
    let boxes: Vec<PixelBox> = answer.boxes.iter().map(|b| image.to_raster(b)).collect();
    for b in &boxes {
        if segments.per_box.iter().all(|(found, _)| box_iou(found.to_array(), b.to_array()) < 0.5) {
            features.push(WorkFeature::new(Some(b.to_array()), MultiPolygon::new(vec![]), provenance.clone()));
        }
    }
    Ok(Outcome { window: image.window, answer, boxes, segments: Some(segments), features, provenance })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x1: f64, y1: f64, x2: f64, y2: f64) -> PixelBox {
        PixelBox { x1, y1, x2, y2 }
    }

    #[test]
    fn the_answer_area_spans_the_boxes_grown_by_the_median_side() {
        assert_eq!(answer_area(&[]), None);
        let area = answer_area(&[b(10.0, 10.0, 20.0, 14.0), b(40.0, 30.0, 44.0, 60.0), b(0.0, 0.0, 6.0, 6.0)]);
        // Sides 10, 30, 6 → median 10; hull (0, 0)–(44, 60).
        assert_eq!(area, Some(b(-10.0, -10.0, 54.0, 70.0)));
    }
}
