//! Evaluation on EarthReason (SegEarth-R1's layout and metrics).
//!
//! Layout: `{split}/images/*.jpg|png`, `{split}/labels/*.png` (non-zero =
//! target), `{split}/QAs/*.json` with `questions` (list) and `answer` (list;
//! empty = no target), matched by file stem. Metrics: gIoU = mean per-sample
//! mask IoU (both empty → 1), cIoU = Σ intersection / Σ union, Pr@τ = share of
//! samples with IoU > τ (τ = 0.5 … 0.9), and for boxes Acc@0.5 = share of
//! queries whose first box has IoU ≥ 0.5 with the label's bounding box.
//!
//! Protocols: `segearth` (SegEarth-R1's: masks letterboxed to 1024, the first
//! question per image) and `full` (full resolution, every question).

pub use crate::base::box_iou;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::segment::Mask;

/// How samples are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Masks letterboxed to 1024, first question per image.
    #[default]
    Segearth,
    /// Full resolution, every question.
    Full,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "segearth" => Ok(Self::Segearth),
            "full" => Ok(Self::Full),
            _ => Err(format!("unknown protocol {s:?} (segearth or full)")),
        }
    }
}

/// One question about one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `{stem}#{question index}`.
    pub id: String,
    pub image: PathBuf,
    pub label: PathBuf,
    pub question: String,
}

#[derive(Deserialize)]
struct Qa {
    questions: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // read for completeness; the label mask is the reference
    answer: Vec<serde_json::Value>,
}

/// The samples of `split` under `root`, sorted by id.
pub fn samples(root: &Path, split: &str, protocol: Protocol) -> Result<Vec<Sample>> {
    let dir = root.join(split);
    let err = |p: &Path, reason: String| EngineError::Read { path: p.to_owned(), reason };
    let qas = dir.join("QAs");
    let entries = std::fs::read_dir(&qas).map_err(|e| err(&qas, format!("not an EarthReason split: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| err(&qas, e.to_string()))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        let qa: Qa = serde_json::from_str(&text).map_err(|e| err(&path, format!("bad QA JSON: {e}")))?;
        let image = ["jpg", "png", "jpeg", "tif"]
            .iter()
            .map(|ext| dir.join("images").join(format!("{stem}.{ext}")))
            .find(|p| p.exists())
            .ok_or_else(|| err(&dir.join("images"), format!("no image for {stem}")))?;
        let label = dir.join("labels").join(format!("{stem}.png"));
        if !label.exists() {
            return Err(EngineError::NotFound { path: label });
        }
        let n = if protocol == Protocol::Segearth { qa.questions.len().min(1) } else { qa.questions.len() };
        for (i, q) in qa.questions.into_iter().take(n).enumerate() {
            out.push(Sample { id: format!("{stem}#{i}"), image: image.clone(), label: label.clone(), question: q });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Intersection and union of two same-sized masks (in pixels).
pub fn intersection_union(pred: &Mask, truth: &Mask) -> (u64, u64) {
    let (mut i, mut u) = (0u64, 0u64);
    for (&p, &t) in pred.data.iter().zip(&truth.data) {
        i += u64::from(p && t);
        u += u64::from(p || t);
    }
    (i, u)
}

/// Per-sample IoU; both empty counts as a perfect 1.
pub fn iou(intersection: u64, union: u64) -> f64 {
    if union == 0 { 1.0 } else { intersection as f64 / union as f64 }
}

/// SegEarth-R1's frame: scaled (nearest) so the longer side is 1024, padded to 1024².
pub fn letterbox(m: &Mask) -> Mask {
    const SIDE: usize = 1024;
    let scale = SIDE as f64 / m.width.max(m.height).max(1) as f64;
    let (w, h) = (
        ((m.width as f64 * scale).round() as usize).clamp(1, SIDE),
        ((m.height as f64 * scale).round() as usize).clamp(1, SIDE),
    );
    let mut out = Mask::empty(SIDE, SIDE);
    for y in 0..h {
        let sy = ((y as f64 + 0.5) / scale) as usize;
        for x in 0..w {
            let sx = ((x as f64 + 0.5) / scale) as usize;
            out.data[y * SIDE + x] = m.data[sy.min(m.height - 1) * m.width + sx.min(m.width - 1)];
        }
    }
    out
}

/// The bounding box of a mask's pixels (corners), if any.
pub fn mask_box(m: &Mask) -> Option<[f64; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for y in 0..m.height {
        for x in 0..m.width {
            if m.data[y * m.width + x] {
                b = Some(match b {
                    None => [x, y, x + 1, y + 1],
                    Some([x1, y1, x2, y2]) => [x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1)],
                });
            }
        }
    }
    b.map(|b| b.map(|v| v as f64))
}

/// One scored sample, as a line of `results.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    pub id: String,
    pub question: String,
    pub iou: f64,
    pub intersection: u64,
    pub union: u64,
    /// Boxes in pixels of the image.
    pub boxes: Vec<[f64; 4]>,
    pub n_boxes: usize,
    pub parse_ok: bool,
    /// Region task: IoU of the first box with the label's bounding box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_iou: Option<f64>,
    pub ask_ms: f64,
    pub segment_ms: f64,
}

/// The set's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: usize,
    #[serde(rename = "gIoU")]
    pub giou: f64,
    #[serde(rename = "cIoU")]
    pub ciou: f64,
    /// (τ, share with IoU > τ) for τ = 0.5 … 0.9.
    pub pr: Vec<(f64, f64)>,
    /// Region task: share of queries whose box has IoU ≥ 0.5.
    #[serde(rename = "Acc@0.5", skip_serializing_if = "Option::is_none")]
    pub acc_05: Option<f64>,
    pub parse_ok: f64,
}

/// gIoU, cIoU, Pr@τ (and Acc@0.5 when the results have box IoUs).
pub fn summarize(results: &[SampleResult]) -> Summary {
    let n = results.len();
    if n == 0 {
        return Summary::default();
    }
    let giou = results.iter().map(|r| r.iou).sum::<f64>() / n as f64;
    let (i, u): (u64, u64) = results.iter().fold((0, 0), |(i, u), r| (i + r.intersection, u + r.union));
    let ciou = iou(i, u);
    let pr = [0.5, 0.6, 0.7, 0.8, 0.9]
        .iter()
        .map(|&t| (t, results.iter().filter(|r| r.iou > t).count() as f64 / n as f64))
        .collect();
    let with_boxes: Vec<f64> = results.iter().filter_map(|r| r.box_iou).collect();
    let acc_05 = (!with_boxes.is_empty())
        .then(|| with_boxes.iter().filter(|&&v| v >= 0.5).count() as f64 / with_boxes.len() as f64);
    let parse_ok = results.iter().filter(|r| r.parse_ok).count() as f64 / n as f64;
    Summary { samples: n, giou, ciou, pr, acc_05, parse_ok }
}

/// Results already in `results.jsonl` (to resume), skipping a torn last line.
pub fn read_results(path: &Path) -> Vec<SampleResult> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: usize, h: usize, on: &[(usize, usize)]) -> Mask {
        let mut m = Mask::empty(w, h);
        for &(x, y) in on {
            m.data[y * w + x] = true;
        }
        m
    }

    #[test]
    fn metrics_by_hand() {
        // pred {0,1,2}, truth {1,2,3} in a 4×1 row: I = 2, U = 4.
        let p = mask(4, 1, &[(0, 0), (1, 0), (2, 0)]);
        let t = mask(4, 1, &[(1, 0), (2, 0), (3, 0)]);
        assert_eq!(intersection_union(&p, &t), (2, 4));
        assert_eq!(iou(2, 4), 0.5);
        assert_eq!(iou(0, 0), 1.0, "both empty");
        let r = |iou_v: f64, i, u| SampleResult {
            iou: iou_v,
            intersection: i,
            union: u,
            parse_ok: true,
            ..Default::default()
        };
        // Samples: IoU 0.5 (2/4), 1.0 (both empty), 0.95 (19/20), 0 (0/10).
        let results = [r(0.5, 2, 4), r(1.0, 0, 0), r(0.95, 19, 20), r(0.0, 0, 10)];
        let s = summarize(&results);
        assert!((s.giou - (0.5 + 1.0 + 0.95) / 4.0).abs() < 1e-12);
        assert!((s.ciou - 21.0 / 34.0).abs() < 1e-12);
        // IoU > 0.5 is strict: 0.5 does not count.
        assert_eq!(s.pr, vec![(0.5, 0.5), (0.6, 0.5), (0.7, 0.5), (0.8, 0.5), (0.9, 0.5)]);
        assert_eq!(s.acc_05, None);
        let mut b = results.to_vec();
        b[0].box_iou = Some(0.5);
        b[1].box_iou = Some(0.49);
        assert_eq!(summarize(&b).acc_05, Some(0.5), "≥ 0.5 counts for Acc@0.5");
    }

    #[test]
    fn boxes_and_letterbox() {
        assert_eq!(box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]), 1.0 / 7.0);
        assert_eq!(box_iou([0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]), 0.0);
        let m = mask(4, 2, &[(1, 0), (2, 1)]);
        assert_eq!(mask_box(&m), Some([1.0, 0.0, 3.0, 2.0]));
        assert_eq!(mask_box(&Mask::empty(3, 3)), None);
        // 512×256 → 1024×512 (each pixel 2×2), padded below.
        let mut big = Mask::empty(512, 256);
        big.data[0] = true;
        let lb = letterbox(&big);
        assert_eq!((lb.width, lb.height), (1024, 1024));
        assert_eq!(lb.count(), 4);
        assert!(lb.data[0] && lb.data[1] && lb.data[1024] && lb.data[1025]);
    }
}
