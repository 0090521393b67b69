//! Results as GIS features: boxes and polygons in the source raster's pixel
//! coordinates (what the analyst edits), with the provenance every export
//! carries. Map coordinates are applied only when writing ([`crate::export`]).

use std::sync::Arc;

use geo::{MultiPolygon, Polygon};

use crate::base::Window;
use crate::geo::GeoTransform;
use serde::{Deserialize, Serialize};

/// How to simplify rings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimplifyMethod {
    /// Douglas–Peucker: no vertex moves more than the tolerance. Where it would
    /// make a polygon invalid (self-intersections on thin parts), that polygon
    /// is simplified with the topology-preserving method instead (reported).
    DouglasPeucker,
    /// Visvalingam–Whyatt, topology-preserving: removes vertices whose triangle
    /// is smaller than tolerance² without making rings cross.
    #[default]
    VisvalingamPreserve,
}

impl std::fmt::Display for SimplifyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DouglasPeucker => "douglas-peucker",
            Self::VisvalingamPreserve => "visvalingam-preserve",
        })
    }
}

impl std::str::FromStr for SimplifyMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dp" | "douglas-peucker" => Ok(Self::DouglasPeucker),
            "vw" | "visvalingam" | "visvalingam-preserve" => Ok(Self::VisvalingamPreserve),
            _ => Err(format!("unknown simplification '{s}' (dp or vw)")),
        }
    }
}

/// Where a result came from; shared by every feature of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    /// region, pixel, contour, vqa, caption, polygonize, manual …
    pub task: String,
    pub query: String,
    /// The model's answer text (for region tasks, the box list it emitted).
    pub answer: String,
    /// Model id: checkpoint directory name or hub repository.
    pub model: String,
    /// Prefix of [`crate::hub::weights_fingerprint`].
    pub weights_hash: String,
    /// SAM variant or the watershed fallback ([`crate::segment::Method`]).
    pub segmenter: String,
    /// Prefix of the segmenter's weights fingerprint (SAM 3: the instances' model).
    pub segmenter_hash: String,
    /// The noun phrase SAM 3 was asked to find (concept segmentation).
    pub concept: String,
    /// SAM 3's exemplar boxes in raster pixels: `+x1,y1,x2,y2` (like this) or
    /// `-x1,y1,x2,y2` (not like this), `;`-separated.
    pub exemplars: String,
    /// The model's `<think>` text.
    pub reasoning: String,
    /// The raster the features were made on.
    pub source: String,
    /// The raster window the model saw (full-resolution pixels).
    pub window: Option<Window>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl Provenance {
    /// For results not asked of the model: a box drawn by hand and segmented,
    /// a mask polygonized; `task` says which.
    pub fn manual(task: &str, source: &str, window: Option<Window>, segmenter: &impl std::fmt::Display) -> Arc<Self> {
        Arc::new(Self {
            task: task.into(),
            segmenter: segmenter.to_string(),
            source: source.into(),
            window,
            created_at: Self::now(),
            ..Default::default()
        })
    }

    /// The current time as RFC 3339 (seconds, UTC).
    pub fn now() -> String {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    }
}

/// A box or polygon result.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    pub id: i64,
    pub geometry: Geometry,
    pub provenance: Arc<Provenance>,
    /// Predicted IoU of the mask (SAM 1/2), or the instance score σ(logit)·σ(presence) (SAM 3).
    pub score: Option<f64>,
    /// SAM 2.1's object score (logit), when there is one.
    pub object_score: Option<f64>,
    /// Changed by hand since the model produced it.
    pub edited: bool,
    /// Simplification applied: method and tolerance in pixels.
    pub simplify: Option<(SimplifyMethod, f64)>,
}

impl Feature {
    /// A feature as the model (or tracer) made it: no scores, not edited, not simplified.
    pub fn new(id: i64, geometry: Geometry, provenance: Arc<Provenance>) -> Self {
        Self { id, geometry, provenance, score: None, object_score: None, edited: false, simplify: None }
    }
}

/// Geometry in source-raster pixel coordinates (corners; y down).
#[derive(Clone, Debug, PartialEq)]
pub enum Geometry {
    /// x1, y1, x2, y2.
    Box([f64; 4]),
    Polygons(MultiPolygon<f64>),
}

impl Geometry {
    /// The geometry as polygons in pixel coordinates (a box is a rectangle).
    pub fn to_polygons(&self) -> MultiPolygon<f64> {
        match self {
            Self::Box([x1, y1, x2, y2]) => MultiPolygon::new(vec![Polygon::new(
                vec![(*x1, *y1), (*x2, *y1), (*x2, *y2), (*x1, *y2), (*x1, *y1)].into(),
                vec![],
            )]),
            Self::Polygons(mp) => mp.clone(),
        }
    }
}

/// Everything one export writes: features and the georeferencing of their pixel frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureSet {
    /// Pixel → map transform of the source raster; `None`: not georeferenced
    /// (coordinates are written as pixels, y down).
    pub geotransform: Option<GeoTransform>,
    /// The source raster's CRS as WKT.
    pub crs_wkt: Option<String>,
    pub boxes: Vec<Feature>,
    pub polygons: Vec<Feature>,
}
