//! The basic types everything else builds on: raster windows, boxes, RGB
//! images, what a question is for, and the one panic guard. Nothing here
//! depends on another module of the engine except [`crate::error`].

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A pixel rectangle in full-resolution raster coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    pub x: u64,
    pub y: u64,
    pub width: u64,
    pub height: u64,
}

impl Window {
    /// The whole raster.
    pub fn full(width: u64, height: u64) -> Self {
        Self { x: 0, y: 0, width, height }
    }

    /// True when the window is non-empty and lies inside a `width`×`height` raster.
    pub fn fits(&self, width: u64, height: u64) -> bool {
        self.width > 0
            && self.height > 0
            && self.x.checked_add(self.width).is_some_and(|r| r <= width)
            && self.y.checked_add(self.height).is_some_and(|b| b <= height)
    }
}

/// A box in source-image pixels (continuous coordinates, x right, y down).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

impl PixelBox {
    pub fn width(&self) -> f64 {
        self.x2 - self.x1
    }
    pub fn height(&self) -> f64 {
        self.y2 - self.y1
    }
    pub fn center(&self) -> (f64, f64) {
        ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)
    }
    /// Shifted by (dx, dy), e.g. from a window into the whole raster.
    pub fn offset(&self, dx: f64, dy: f64) -> Self {
        Self { x1: self.x1 + dx, y1: self.y1 + dy, x2: self.x2 + dx, y2: self.y2 + dy }
    }
    /// As `[x1, y1, x2, y2]`.
    pub fn to_array(&self) -> [f64; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 {
            return Err(EngineError::InvalidRequest(format!(
                "RGB image of {width}×{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self { width, height, data })
    }
}

/// What a question is for — the one list every front end (workbench, `ask`,
/// `sweep`, `eval`, provenance) shares. The model is asked with the grounding
/// prompt for the first three; masks and polygons are made from its boxes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Boxes around what the question describes.
    Region,
    /// Boxes → one mask per box (SAM).
    Pixel,
    /// Boxes → masks → polygons with holes.
    #[default]
    Contour,
    /// A free-text answer to a question.
    Vqa,
    /// A description of the image.
    Caption,
}

impl Goal {
    pub const ALL: [Self; 5] = [Self::Region, Self::Pixel, Self::Contour, Self::Vqa, Self::Caption];

    /// The name in files, flags and provenance.
    pub fn name(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Pixel => "pixel",
            Self::Contour => "contour",
            Self::Vqa => "vqa",
            Self::Caption => "caption",
        }
    }

    /// The words a menu shows.
    pub fn label(self) -> &'static str {
        match self {
            Self::Region => "Region (boxes)",
            Self::Pixel => "Pixel (masks)",
            Self::Contour => "Contour (polygons)",
            Self::Vqa => "Question (VQA)",
            Self::Caption => "Caption",
        }
    }

    /// Whether the model answers with boxes (the grounding prompt).
    pub fn grounds(self) -> bool {
        matches!(self, Self::Region | Self::Pixel | Self::Contour)
    }

    /// Whether the boxes go on to SAM.
    pub fn segments(self) -> bool {
        matches!(self, Self::Pixel | Self::Contour)
    }

    /// The goal the model's prompt is for: the grounding goals share one.
    pub fn prompt(self) -> Self {
        if self.grounds() { Self::Region } else { self }
    }

    /// An error unless the goal is one of `allowed` (for front ends that take a subset).
    pub fn expect_one_of(self, allowed: &[Self], what: &str) -> Result<Self> {
        if allowed.contains(&self) {
            return Ok(self);
        }
        let names: Vec<_> = allowed.iter().map(|g| g.name()).collect();
        Err(EngineError::InvalidRequest(format!("{what} takes the task {}, not {}", names.join(", "), self.name())))
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Goal {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown task {s:?} (expected region, pixel, contour, vqa or caption)"))
    }
}

/// Box IoU of [x1, y1, x2, y2] boxes.
pub fn box_iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// A panic's message, for the error that replaces it.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs `f`, turning a panic into [`EngineError::Internal`]: the one guard
/// around every job, so a bug in one job never takes a thread down.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(EngineError::Internal(panic_message(&*p))))
}

/// A binary mask, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<bool>,
}

impl Mask {
    pub fn empty(width: usize, height: usize) -> Self {
        Self { width, height, data: vec![false; width * height] }
    }

    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    /// OR of same-sized masks.
    pub fn union<'a>(width: usize, height: usize, masks: impl IntoIterator<Item = &'a Mask>) -> Self {
        let mut out = Self::empty(width, height);
        for m in masks {
            for (o, &v) in out.data.iter_mut().zip(&m.data) {
                *o |= v;
            }
        }
        out
    }

    /// SHA-256 (hex) of the size and the pixels: masks made in different
    /// processes compared without shipping them (`ask --json` reports it).
    ///
    /// ```
    /// use engine::base::Mask;
    /// let mut m = Mask::empty(3, 2);
    /// let blank = m.digest();
    /// m.data[4] = true;
    /// assert_ne!(m.digest(), blank);
    /// assert_ne!(Mask::empty(2, 3).digest(), blank, "the size counts");
    /// ```
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update((self.width as u64).to_le_bytes());
        h.update((self.height as u64).to_le_bytes());
        h.update(self.data.iter().map(|&v| u8::from(v)).collect::<Vec<u8>>());
        format!("{:x}", h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_round_trip_and_share_the_grounding_prompt() {
        for g in Goal::ALL {
            assert_eq!(g.name().parse::<Goal>(), Ok(g));
            assert_eq!(serde_json::to_value(g).ok(), Some(serde_json::json!(g.name())));
        }
        assert_eq!(Goal::Contour.prompt(), Goal::Region);
        assert_eq!(Goal::Vqa.prompt(), Goal::Vqa);
        assert!("polygons".parse::<Goal>().is_err());
        assert!(Goal::Vqa.expect_one_of(&[Goal::Region], "sweep").is_err());
    }

    #[test]
    fn guard_turns_a_panic_into_an_error() {
        let r: Result<()> = guard(|| panic!("boom"));
        assert!(matches!(r, Err(EngineError::Internal(m)) if m == "boom"));
    }
}
