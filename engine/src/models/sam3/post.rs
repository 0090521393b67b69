//! From SAM 3's per-query outputs to the instances an analyst sees: each
//! query's score is σ(logit)·σ(presence) (the presence head says whether the
//! concept is in the image at all), queries under the threshold are dropped,
//! and — as samgeo's SAM 3 users expect, the reference code does not — greedy
//! box NMS removes duplicates, best first.

use candle_core::{DType, Result};

use super::Prediction;
use crate::base::box_iou;

/// One instance of the concept.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The query it came from (its mask is `Prediction::masks[row][query]`).
    pub query: usize,
    pub score: f32,
    /// x1 y1 x2 y2 in [0, 1] of the model input.
    pub bbox: [f64; 4],
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The instances of batch row `row` scoring at least `threshold`, with boxes
/// overlapping a better one by more than `nms_iou` removed; best first.
pub fn select(p: &Prediction, row: usize, threshold: f32, nms_iou: f64) -> Result<Vec<Instance>> {
    let logits: Vec<f32> = p.logits.get(row)?.to_dtype(DType::F32)?.to_vec1()?;
    let presence = sigmoid(p.presence.get(row)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0]);
    let boxes: Vec<Vec<f32>> = p.boxes.get(row)?.to_dtype(DType::F32)?.to_vec2()?;
    if boxes.len() != logits.len() {
        candle_core::bail!("{} boxes for {} query logits", boxes.len(), logits.len());
    }
    let mut candidates: Vec<Instance> = logits
        .iter()
        .zip(&boxes)
        .enumerate()
        .map(|(query, (l, b))| Instance {
            query,
            score: sigmoid(*l) * presence,
            bbox: [f64::from(b[0]), f64::from(b[1]), f64::from(b[2]), f64::from(b[3])],
        })
        .filter(|i| i.score >= threshold)
        .collect();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Instance> = Vec::new();
    for c in candidates {
        if kept.iter().all(|k| box_iou(k.bbox, c.bbox) <= nms_iou) {
            kept.push(c);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn prediction(logits: &[f32], presence: f32, boxes: &[[f32; 4]]) -> Prediction {
        let d = Device::Cpu;
        let q = logits.len();
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        Prediction {
            logits: Tensor::from_slice(logits, (1, q), &d).unwrap(),
            presence: Tensor::from_slice(&[presence], (1, 1), &d).unwrap(),
            boxes: Tensor::from_vec(flat, (1, q, 4), &d).unwrap(),
            masks: Tensor::zeros((1, q, 2, 2), DType::F32, &d).unwrap(),
            semantic: Tensor::zeros((1, 1, 2, 2), DType::F32, &d).unwrap(),
        }
    }

    #[test]
    fn scores_are_gated_by_presence_thresholded_and_duplicates_removed() {
        let boxes = [[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9], [0.5, 0.0, 0.6, 0.1]];
        let p = prediction(&[3.0, 2.0, 1.0, -3.0], 4.0, &boxes);
        let found = select(&p, 0, 0.5, 0.5).unwrap();
        // Query 1 overlaps query 0 (IoU 0.9) and scores lower; query 3 is under the threshold.
        assert_eq!(found.iter().map(|i| i.query).collect::<Vec<_>>(), vec![0, 2]);
        let expected = sigmoid(3.0) * sigmoid(4.0);
        assert!((found[0].score - expected).abs() < 1e-6);
        assert!(found[0].score > found[1].score);
        // With NMS off both overlapping boxes stay.
        assert_eq!(select(&p, 0, 0.5, 1.0).unwrap().len(), 3);
        // The concept judged absent: nothing passes, however confident the queries.
        let absent = prediction(&[8.0, 8.0, 8.0, 8.0], -6.0, &boxes);
        assert!(select(&absent, 0, 0.5, 0.5).unwrap().is_empty());
        // A row that is not there is an error, not a panic.
        assert!(select(&p, 3, 0.5, 0.5).is_err());
    }
}
