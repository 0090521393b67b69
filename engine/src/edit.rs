//! The analyst's working set of results and every edit on it, undoable.
//!
//! Plain data and geometry, no UI: the workbench keeps a [`FeatureStore`],
//! turns gestures into the edits below, and draws what the store holds.
//! Coordinates are source-raster pixels (corners; y down), as everywhere
//! before export.

use std::sync::Arc;

use geo::{Contains, Coord, LineString, MultiPolygon, Point, Polygon};

use crate::base::Window;
use crate::contour::SimplifyMethod;
use crate::features::{Feature, FeatureSet, Geometry, Provenance};
use crate::geo::GeoTransform;
use crate::segment::Segment;

/// What SAM needs to refine a feature's mask with more clicks.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentState {
    /// The raster window the mask was made on.
    pub window: Window,
    pub segment: Segment,
    /// Clicks so far (raster pixels; `true` = object).
    pub clicks: Vec<(f64, f64, bool)>,
}

/// One result the analyst works on: a box and/or polygons, with provenance.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkFeature {
    /// Unique in its store; 0 = not yet added.
    pub id: u64,
    /// x1, y1, x2, y2.
    pub bbox: Option<[f64; 4]>,
    /// The polygons as traced (or as last edited by hand): what simplification starts from.
    pub exact: MultiPolygon<f64>,
    /// What is shown and exported: `exact`, simplified if asked.
    pub polygons: MultiPolygon<f64>,
    pub provenance: Arc<Provenance>,
    pub score: Option<f64>,
    pub object_score: Option<f64>,
    pub edited: bool,
    /// Method and tolerance (raster pixels) of the simplification applied.
    pub simplify: Option<(SimplifyMethod, f64)>,
    pub segment: Option<Arc<SegmentState>>,
}

impl WorkFeature {
    pub fn new(bbox: Option<[f64; 4]>, polygons: MultiPolygon<f64>, provenance: Arc<Provenance>) -> Self {
        Self {
            id: 0,
            bbox,
            exact: polygons.clone(),
            polygons,
            provenance,
            score: None,
            object_score: None,
            edited: false,
            simplify: None,
            segment: None,
        }
    }

    /// Valid OGC geometry, as GEOS judges it (empty counts as valid).
    pub fn is_valid(&self) -> bool {
        self.polygons.0.is_empty() || crate::contour::is_valid_ogc(&self.polygons)
    }

    pub fn vertex_count(&self) -> usize {
        self.polygons.0.iter().map(crate::contour::vertex_count).sum()
    }

    /// Anything to draw or export.
    pub fn is_empty(&self) -> bool {
        self.bbox.is_none() && self.polygons.0.is_empty()
    }
}

/// A vertex of a feature's polygons: part, ring (0 = exterior, k = hole k−1), index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VertexRef {
    pub part: usize,
    pub ring: usize,
    pub index: usize,
}

fn ring(p: &Polygon<f64>, r: usize) -> Option<&LineString<f64>> {
    if r == 0 { Some(p.exterior()) } else { p.interiors().get(r - 1) }
}

/// Rebuilds `mp` with ring `(part, r)` replaced by `f(coords without the closing point)`.
fn with_ring(
    mp: &MultiPolygon<f64>,
    part: usize,
    r: usize,
    f: impl FnOnce(&mut Vec<Coord<f64>>) -> Result<(), EditError>,
) -> Result<MultiPolygon<f64>, EditError> {
    let mut parts = mp.0.clone();
    let p = parts.get_mut(part).ok_or(EditError::NoSuchVertex)?;
    let mut rings: Vec<LineString<f64>> = std::iter::once(p.exterior().clone()).chain(p.interiors().to_vec()).collect();
    let ls = rings.get_mut(r).ok_or(EditError::NoSuchVertex)?;
    let mut coords = ls.0.clone();
    if coords.len() > 1 && coords.first() == coords.last() {
        coords.pop();
    }
    f(&mut coords)?;
    if let Some(&first) = coords.first() {
        coords.push(first);
    }
    *ls = LineString::new(coords);
    let exterior = rings.remove(0);
    *p = Polygon::new(exterior, rings);
    Ok(MultiPolygon::new(parts))
}

/// Why an edit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("no such vertex")]
    NoSuchVertex,
    #[error("a ring needs at least 3 vertices")]
    TooFewVertices,
    #[error("no feature with id {0}")]
    NoSuchFeature(u64),
}

/// Geometry edits: each returns the edited copy, marked as edited.
impl WorkFeature {
    pub fn with_vertex_moved(&self, v: VertexRef, to: Coord<f64>) -> Result<Self, EditError> {
        let polygons = with_ring(&self.polygons, v.part, v.ring, |c| {
            *c.get_mut(v.index).ok_or(EditError::NoSuchVertex)? = to;
            Ok(())
        })?;
        Ok(self.hand_edited(polygons))
    }

    /// Inserts `at` after vertex `v` (on the edge from `v` to the next vertex).
    pub fn with_vertex_inserted(&self, v: VertexRef, at: Coord<f64>) -> Result<Self, EditError> {
        let polygons = with_ring(&self.polygons, v.part, v.ring, |c| {
            if v.index >= c.len() {
                return Err(EditError::NoSuchVertex);
            }
            c.insert(v.index + 1, at);
            Ok(())
        })?;
        Ok(self.hand_edited(polygons))
    }

    /// Deletes vertices; a hole left with fewer than 3 disappears, an exterior refuses.
    pub fn with_vertices_deleted(&self, vs: &[VertexRef]) -> Result<Self, EditError> {
        let mut polygons = self.polygons.clone();
        // Highest index first so earlier indices stay valid.
        let mut vs = vs.to_vec();
        vs.sort_by_key(|v| std::cmp::Reverse((v.part, v.ring, v.index)));
        vs.dedup();
        let mut dropped_holes: Vec<(usize, usize)> = Vec::new();
        for v in vs {
            let p = polygons.0.get(v.part).ok_or(EditError::NoSuchVertex)?;
            let n = ring(p, v.ring).ok_or(EditError::NoSuchVertex)?.0.len().saturating_sub(1);
            if n <= 3 {
                if v.ring == 0 {
                    return Err(EditError::TooFewVertices);
                }
                if !dropped_holes.contains(&(v.part, v.ring)) {
                    dropped_holes.push((v.part, v.ring));
                }
                continue;
            }
            polygons = with_ring(&polygons, v.part, v.ring, |c| {
                if v.index >= c.len() {
                    return Err(EditError::NoSuchVertex);
                }
                c.remove(v.index);
                Ok(())
            })?;
        }
        dropped_holes.sort_by_key(|&(p, r)| std::cmp::Reverse((p, r)));
        for (part, r) in dropped_holes {
            let (ext, mut holes) = polygons.0[part].clone().into_inner();
            holes.remove(r - 1);
            polygons.0[part] = Polygon::new(ext, holes);
        }
        Ok(self.hand_edited(polygons))
    }

    pub fn with_box(&self, bbox: [f64; 4]) -> Self {
        let [x1, y1, x2, y2] = bbox;
        Self { bbox: Some([x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2)]), edited: true, ..self.clone() }
    }

    /// Re-simplifies from the exact polygons (`None`: back to them). A result
    /// that would vanish or make the parts overlap keeps the exact polygons.
    pub fn with_simplify(&self, simplify: Option<(SimplifyMethod, f64)>) -> Self {
        let polygons = match simplify {
            None => self.exact.clone(),
            Some((method, t)) => {
                let opts = crate::contour::Cleanup { simplify: Some((method, t)), ..Default::default() };
                let s = MultiPolygon::new(crate::contour::clean(self.exact.0.clone(), &opts, 1.0).0);
                if s.0.is_empty() || !crate::contour::is_valid_ogc(&s) { self.exact.clone() } else { s }
            }
        };
        Self { polygons, simplify, ..self.clone() }
    }

    /// A new mask for the feature (a refinement click): polygons re-traced.
    pub fn with_segment(&self, state: SegmentState, traced: MultiPolygon<f64>) -> Self {
        let f = Self {
            exact: traced.clone(),
            polygons: traced,
            score: state.segment.iou.map(f64::from),
            object_score: state.segment.object_score.map(f64::from),
            segment: Some(Arc::new(state)),
            edited: true,
            ..self.clone()
        };
        f.with_simplify(self.simplify)
    }

    fn hand_edited(&self, polygons: MultiPolygon<f64>) -> Self {
        // A hand edit is the new exact geometry: simplifying again starts from it.
        Self { exact: polygons.clone(), polygons, edited: true, simplify: None, ..self.clone() }
    }
}

/// One undoable step: the features it touched, before and after (None = absent).
#[derive(Clone, Debug)]
struct Change {
    label: String,
    items: Vec<(u64, Option<WorkFeature>, Option<WorkFeature>)>,
}

/// The features of a session, ordered by id, with undo and redo.
#[derive(Clone, Debug, Default)]
pub struct FeatureStore {
    features: Vec<WorkFeature>,
    next_id: u64,
    undo: Vec<Change>,
    redo: Vec<Change>,
    /// Bumped by every change, undo and redo: what autosave watches.
    revision: u64,
}

impl FeatureStore {
    pub fn new() -> Self {
        Self { next_id: 1, ..Default::default() }
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkFeature> {
        self.features.iter()
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&WorkFeature> {
        self.position(id).map(|i| &self.features[i])
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Labels of the next undo and redo steps.
    pub fn undo_label(&self) -> Option<&str> {
        self.undo.last().map(|c| c.label.as_str())
    }

    pub fn redo_label(&self) -> Option<&str> {
        self.redo.last().map(|c| c.label.as_str())
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.features.binary_search_by_key(&id, |f| f.id).ok()
    }

    fn set(&mut self, id: u64, value: Option<WorkFeature>) {
        match (self.position(id), value) {
            (Some(i), Some(f)) => self.features[i] = f,
            (Some(i), None) => {
                self.features.remove(i);
            }
            (None, Some(f)) => {
                let i = self.features.partition_point(|g| g.id < id);
                self.features.insert(i, f);
            }
            (None, None) => {}
        }
        self.next_id = self.next_id.max(id + 1);
    }

    fn record(&mut self, label: impl Into<String>, items: Vec<(u64, Option<WorkFeature>, Option<WorkFeature>)>) {
        for (id, _, after) in &items {
            self.set(*id, after.clone());
        }
        self.undo.push(Change { label: label.into(), items });
        self.redo.clear();
        self.revision += 1;
    }

    /// Adds features (ids assigned), as one undoable step; returns their ids.
    pub fn add(&mut self, label: &str, features: Vec<WorkFeature>) -> Vec<u64> {
        let mut items = Vec::with_capacity(features.len());
        let mut ids = Vec::with_capacity(features.len());
        for mut f in features {
            f.id = self.next_id;
            self.next_id += 1;
            ids.push(f.id);
            items.push((f.id, None, Some(f)));
        }
        self.record(label, items);
        ids
    }

    /// Replaces a feature by an edited copy (same id), as one undoable step.
    pub fn replace(&mut self, label: &str, after: WorkFeature) -> Result<(), EditError> {
        let before = self.get(after.id).cloned().ok_or(EditError::NoSuchFeature(after.id))?;
        if before == after {
            return Ok(());
        }
        self.record(label, vec![(after.id, Some(before), Some(after))]);
        Ok(())
    }

    /// Deletes features, as one undoable step.
    pub fn remove(&mut self, label: &str, ids: &[u64]) {
        let items: Vec<_> = ids.iter().filter_map(|&id| self.get(id).cloned().map(|f| (id, Some(f), None))).collect();
        if !items.is_empty() {
            self.record(label, items);
        }
    }

    /// Replaces everything (loading a project) and forgets the history.
    pub fn reset(&mut self, mut features: Vec<WorkFeature>) {
        features.sort_by_key(|f| f.id);
        self.next_id = features.last().map_or(1, |f| f.id + 1);
        self.features = features;
        self.undo.clear();
        self.redo.clear();
        self.revision += 1;
    }

    /// Undoes the last step; returns its label.
    pub fn undo(&mut self) -> Option<String> {
        let change = self.undo.pop()?;
        for (id, before, _) in change.items.iter().rev() {
            self.set(*id, before.clone());
        }
        self.revision += 1;
        let label = change.label.clone();
        self.redo.push(change);
        Some(label)
    }

    /// Redoes the last undone step; returns its label.
    pub fn redo(&mut self) -> Option<String> {
        let change = self.redo.pop()?;
        for (id, _, after) in &change.items {
            self.set(*id, after.clone());
        }
        self.revision += 1;
        let label = change.label.clone();
        self.undo.push(change);
        Some(label)
    }

    /// The topmost feature at `p` (inside a polygon, else inside a box), newest first.
    pub fn feature_at(&self, p: Coord<f64>) -> Option<u64> {
        let point = Point::from(p);
        self.features
            .iter()
            .rev()
            .find(|f| f.polygons.contains(&point))
            .or_else(|| {
                self.features
                    .iter()
                    .rev()
                    .find(|f| f.bbox.is_some_and(|[x1, y1, x2, y2]| p.x >= x1 && p.x <= x2 && p.y >= y1 && p.y <= y2))
            })
            .map(|f| f.id)
    }
}

/// Features as an export sees them: a box feature and a polygon feature per
/// work feature that has them, sharing its id.
pub fn feature_set(
    features: &[WorkFeature],
    geotransform: Option<GeoTransform>,
    crs_wkt: Option<String>,
) -> FeatureSet {
    let mut set = FeatureSet { geotransform, crs_wkt, ..Default::default() };
    for f in features {
        let base = |geometry| Feature {
            id: f.id as i64,
            geometry,
            provenance: f.provenance.clone(),
            score: f.score,
            object_score: f.object_score,
            edited: f.edited,
            simplify: f.simplify,
        };
        if let Some(b) = f.bbox {
            set.boxes.push(base(Geometry::Box(b)));
        }
        if !f.polygons.0.is_empty() {
            set.polygons.push(base(Geometry::Polygons(f.polygons.clone())));
        }
    }
    set
}

/// The vertex of `mp` nearest to `p` within `tolerance`, and its distance.
pub fn nearest_vertex(mp: &MultiPolygon<f64>, p: Coord<f64>, tolerance: f64) -> Option<(VertexRef, f64)> {
    let mut best: Option<(VertexRef, f64)> = None;
    for (part, poly) in mp.0.iter().enumerate() {
        for (r, ls) in std::iter::once(poly.exterior()).chain(poly.interiors()).enumerate() {
            let n = ls.0.len().saturating_sub(1);
            for (index, c) in ls.0[..n].iter().enumerate() {
                let d = (c.x - p.x).hypot(c.y - p.y);
                if d <= tolerance && best.is_none_or(|(_, bd)| d < bd) {
                    best = Some((VertexRef { part, ring: r, index }, d));
                }
            }
        }
    }
    best
}

/// The edge of `mp` nearest to `p` within `tolerance`: the vertex it starts at,
/// and the closest point on it (where a new vertex goes).
pub fn nearest_edge(mp: &MultiPolygon<f64>, p: Coord<f64>, tolerance: f64) -> Option<(VertexRef, Coord<f64>)> {
    let mut best: Option<(VertexRef, Coord<f64>, f64)> = None;
    for (part, poly) in mp.0.iter().enumerate() {
        for (r, ls) in std::iter::once(poly.exterior()).chain(poly.interiors()).enumerate() {
            for (index, w) in ls.0.windows(2).enumerate() {
                let (a, b) = (w[0], w[1]);
                let (dx, dy) = (b.x - a.x, b.y - a.y);
                let len2 = dx * dx + dy * dy;
                let t = if len2 > 0.0 { (((p.x - a.x) * dx + (p.y - a.y) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let q = Coord { x: a.x + t * dx, y: a.y + t * dy };
                let d = (q.x - p.x).hypot(q.y - p.y);
                if d <= tolerance && best.is_none_or(|(_, _, bd)| d < bd) {
                    best = Some((VertexRef { part, ring: r, index }, q, d));
                }
            }
        }
    }
    best.map(|(v, q, _)| (v, q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Area;

    fn square(x: f64, y: f64, s: f64) -> Polygon<f64> {
        Polygon::new(vec![(x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y)].into(), vec![])
    }

    fn feature() -> WorkFeature {
        let mut p = square(0.0, 0.0, 10.0);
        p.interiors_push(vec![(4.0, 4.0), (6.0, 4.0), (6.0, 6.0), (4.0, 6.0), (4.0, 4.0)]);
        WorkFeature::new(Some([0.0, 0.0, 10.0, 10.0]), MultiPolygon::new(vec![p]), Arc::new(Provenance::default()))
    }

    #[test]
    fn vertex_edits_keep_rings_closed_and_mark_edited() {
        let f = feature();
        let v0 = VertexRef { part: 0, ring: 0, index: 0 };
        let moved = f.with_vertex_moved(v0, Coord { x: -2.0, y: -2.0 }).unwrap();
        let ext = &moved.polygons.0[0].exterior().0;
        assert_eq!((ext[0], ext[ext.len() - 1]), (Coord { x: -2.0, y: -2.0 }, Coord { x: -2.0, y: -2.0 }));
        assert!(moved.edited && moved.is_valid());
        let inserted = f.with_vertex_inserted(v0, Coord { x: 5.0, y: -3.0 }).unwrap();
        assert_eq!(inserted.vertex_count(), f.vertex_count() + 1);
        assert_eq!(inserted.polygons.unsigned_area(), 100.0 + 15.0 - 4.0);
        // Deleting a hole's vertex below 3 drops the hole; an exterior refuses.
        let hole = VertexRef { part: 0, ring: 1, index: 0 };
        let one = f.with_vertices_deleted(&[hole]).unwrap();
        assert_eq!(one.polygons.0[0].interiors()[0].0.len(), 4);
        let none = one.with_vertices_deleted(&[hole]).unwrap();
        assert!(none.polygons.0[0].interiors().is_empty());
        let tri = f.with_vertices_deleted(&[v0]).unwrap();
        assert_eq!(tri.with_vertices_deleted(&[v0]), Err(EditError::TooFewVertices));
        assert!(f.with_vertex_moved(VertexRef { part: 3, ring: 0, index: 0 }, Coord::zero()).is_err());
    }

    #[test]
    fn undo_redo_every_kind_of_step() {
        let mut s = FeatureStore::new();
        let ids = s.add("segment", vec![feature(), feature()]);
        assert_eq!(ids, [1, 2]);
        let r0 = s.revision();
        let moved =
            s.get(1).unwrap().with_vertex_moved(VertexRef { part: 0, ring: 0, index: 2 }, Coord { x: 12.0, y: 12.0 });
        s.replace("move vertex", moved.unwrap()).unwrap();
        s.remove("delete", &[2]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.undo().as_deref(), Some("delete"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.undo().as_deref(), Some("move vertex"));
        assert!(!s.get(1).unwrap().edited);
        assert_eq!(s.redo().as_deref(), Some("move vertex"));
        assert!(s.get(1).unwrap().edited);
        assert_eq!(s.undo_label(), Some("move vertex"));
        assert_eq!(s.redo_label(), Some("delete"));
        // A new step clears what could be redone.
        s.replace("box", s.get(2).unwrap().with_box([1.0, 1.0, 3.0, 3.0])).unwrap();
        assert_eq!(s.redo(), None);
        assert!(s.revision() > r0);
        s.undo();
        s.undo();
        s.undo();
        assert!(s.is_empty());
        assert_eq!(s.undo(), None);
        // Ids are never reused.
        assert_eq!(s.add("again", vec![feature()]), [3]);
    }

    #[test]
    fn hit_testing_and_simplify_from_exact() {
        let mut s = FeatureStore::new();
        s.add("a", vec![feature()]);
        assert_eq!(s.feature_at(Coord { x: 2.0, y: 2.0 }), Some(1));
        assert_eq!(s.feature_at(Coord { x: 5.0, y: 5.0 }), Some(1), "inside the hole, still inside the box");
        assert_eq!(s.feature_at(Coord { x: 20.0, y: 5.0 }), None);
        let f = s.get(1).unwrap();
        let (v, d) = nearest_vertex(&f.polygons, Coord { x: 9.5, y: 0.4 }, 1.0).unwrap();
        assert_eq!((v, (d * 100.0).round()), (VertexRef { part: 0, ring: 0, index: 1 }, 64.0));
        let (e, at) = nearest_edge(&f.polygons, Coord { x: 5.0, y: 0.5 }, 1.0).unwrap();
        assert_eq!((e.index, at), (0, Coord { x: 5.0, y: 0.0 }));
        assert!(nearest_vertex(&f.polygons, Coord { x: 5.0, y: 2.0 }, 1.0).is_none());
        // A staircase simplifies, and goes back to exact.
        let stairs: Vec<(f64, f64)> =
            (0..10).flat_map(|i: i32| [(f64::from(i), f64::from(i)), (f64::from(i) + 1.0, f64::from(i))]).collect();
        let mut ring = stairs.clone();
        ring.extend([(10.0, 10.0), (0.0, 10.0), (0.0, 0.0)]);
        let f = WorkFeature::new(None, MultiPolygon::new(vec![Polygon::new(ring.into(), vec![])]), Arc::default());
        let s1 = f.with_simplify(Some((SimplifyMethod::DouglasPeucker, 1.0)));
        assert!(s1.vertex_count() < f.vertex_count() / 3);
        assert_eq!(s1.with_simplify(None).polygons, f.polygons);
    }

    #[test]
    fn feature_set_has_boxes_and_polygons() {
        let features =
            [feature(), WorkFeature::new(Some([1.0, 2.0, 3.0, 4.0]), MultiPolygon::new(vec![]), Arc::default())];
        let set = feature_set(&features, None, None);
        assert_eq!((set.boxes.len(), set.polygons.len()), (2, 1));
    }
}
