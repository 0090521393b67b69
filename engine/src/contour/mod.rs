//! Contour level: masks become polygons with holes (exact to the pixel edges),
//! optionally cleaned (minimum area, hole filling) and simplified, plus the
//! paper's raster line map.
//!
//! Coordinates here are pixel corners of the mask (y down); [`to_map`] applies a
//! geotransform (rotation terms included) and orients rings for GIS output.

pub mod linemap;
pub mod trace;

use geo::{
    Area, MapCoords, MultiPolygon, Orient, Polygon, Simplify, SimplifyVwPreserve, Validation, orient::Direction,
};
use serde::{Deserialize, Serialize};

use crate::features::{Feature, Geometry, Provenance};
use crate::geo::GeoTransform;
pub use linemap::line_map;
pub use trace::{Traced, polygonize_bool, polygonize_u8};

pub use crate::features::SimplifyMethod;

/// Units of tolerances and areas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Units {
    /// Mask pixels (areas in pixels²).
    #[default]
    Pixels,
    /// The CRS's map units (areas in units²).
    Map,
}

/// Optional post-processing of traced polygons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cleanup {
    /// Simplification method and tolerance (a distance in `units`).
    pub simplify: Option<(SimplifyMethod, f64)>,
    /// Polygons smaller than this (holes subtracted) are dropped.
    pub min_area: Option<f64>,
    /// Holes smaller than this are filled; `f64::INFINITY` fills all.
    pub fill_holes: Option<f64>,
    pub units: Units,
}

impl Cleanup {
    pub fn is_noop(&self) -> bool {
        self.simplify.is_none() && self.min_area.is_none() && self.fill_holes.is_none()
    }

    /// The simplification tolerance in mask pixels.
    pub fn tolerance_px(&self, pixel_size: f64) -> Option<f64> {
        self.simplify.map(|(_, t)| self.length_px(t, pixel_size))
    }

    fn length_px(&self, v: f64, pixel_size: f64) -> f64 {
        match self.units {
            Units::Pixels => v,
            Units::Map => v / pixel_size,
        }
    }

    fn area_to_px(&self, v: f64, pixel_size: f64) -> f64 {
        match self.units {
            Units::Pixels => v,
            Units::Map => v / (pixel_size * pixel_size),
        }
    }
}

/// What [`clean`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub polygons_before: usize,
    pub polygons_after: usize,
    pub vertices_before: usize,
    pub vertices_after: usize,
    pub holes_filled: usize,
    /// Polygons below `min_area`.
    pub polygons_dropped: usize,
    /// Rings that simplification collapsed to nothing (removed).
    pub rings_collapsed: usize,
    /// Polygons Douglas–Peucker would have made invalid, simplified with the
    /// topology-preserving method instead.
    pub simplified_otherwise: usize,
    /// Polygons no simplification kept valid: written exactly as traced.
    pub kept_exact: usize,
}

enum Simplified {
    /// The simplified polygon and how many of its holes collapsed.
    Valid(Polygon<f64>, usize),
    /// The exterior collapsed (with this many rings in all).
    Collapsed(usize),
    Invalid,
}

fn simplified(p: &Polygon<f64>, method: SimplifyMethod, t: f64) -> Simplified {
    let s = match method {
        SimplifyMethod::DouglasPeucker => p.simplify(t),
        SimplifyMethod::VisvalingamPreserve => p.simplify_vw_preserve(t * t),
    };
    let (ext, holes) = s.into_inner();
    if !ring_alive(&ext) {
        return Simplified::Collapsed(1 + holes.len());
    }
    let before = holes.len();
    let holes: Vec<_> = holes.into_iter().filter(ring_alive).collect();
    let collapsed = before - holes.len();
    let s = Polygon::new(ext, holes);
    if is_valid_ogc(&s) { Simplified::Valid(s, collapsed) } else { Simplified::Invalid }
}

/// OGC validity as GEOS (and so QGIS, PostGIS, GDAL) judges it. geo's own check
/// is tried first (cheap) but misses some cases, e.g. a hole touching its shell
/// at two points, which disconnects the interior.
pub fn is_valid_ogc<G: Validation + gdal::vector::ToGdal>(g: &G) -> bool {
    crate::gdal_init();
    g.is_valid() && g.to_gdal().is_ok_and(|o| o.is_valid())
}

/// Vertices of a polygon, closing points not counted.
pub fn vertex_count(p: &Polygon<f64>) -> usize {
    std::iter::once(p.exterior()).chain(p.interiors()).map(|r| r.0.len().saturating_sub(1)).sum()
}

fn ring_alive(r: &geo::LineString<f64>) -> bool {
    r.0.len() >= 4 && Polygon::new(r.clone(), vec![]).unsigned_area() > 0.0
}

/// Applies `opts` to polygons in mask-pixel coordinates. `pixel_size` is the
/// map length of one pixel (for map units; the geometric mean of the two sides
/// when pixels are not square).
pub fn clean(polygons: Vec<Polygon<f64>>, opts: &Cleanup, pixel_size: f64) -> (Vec<Polygon<f64>>, CleanupReport) {
    let mut report = CleanupReport {
        polygons_before: polygons.len(),
        vertices_before: polygons.iter().map(vertex_count).sum(),
        ..Default::default()
    };
    let fill = opts.fill_holes.map(|a| opts.area_to_px(a, pixel_size));
    let min_area = opts.min_area.map(|a| opts.area_to_px(a, pixel_size));
    let mut out = Vec::with_capacity(polygons.len());
    for p in polygons {
        let p = match fill {
            Some(limit) => {
                let (ext, holes) = p.into_inner();
                let before = holes.len();
                let holes: Vec<_> =
                    holes.into_iter().filter(|h| Polygon::new(h.clone(), vec![]).unsigned_area() >= limit).collect();
                report.holes_filled += before - holes.len();
                Polygon::new(ext, holes)
            }
            None => p,
        };
        if min_area.is_some_and(|a| p.unsigned_area() < a) {
            report.polygons_dropped += 1;
            continue;
        }
        let p = match opts.simplify {
            None => p,
            Some((method, t)) => {
                let t = opts.length_px(t, pixel_size);
                match simplified(&p, method, t) {
                    // Every ring collapsed: the polygon is gone.
                    Simplified::Collapsed(rings) => {
                        report.rings_collapsed += rings;
                        continue;
                    }
                    Simplified::Valid(s, rings) => {
                        report.rings_collapsed += rings;
                        s
                    }
                    // Douglas–Peucker made it cross itself: the topology-preserving
                    // method instead, or the exact polygon if that fails too.
                    Simplified::Invalid => match simplified(&p, SimplifyMethod::VisvalingamPreserve, t) {
                        Simplified::Valid(s, rings) if method == SimplifyMethod::DouglasPeucker => {
                            report.rings_collapsed += rings;
                            report.simplified_otherwise += 1;
                            s
                        }
                        _ => {
                            report.kept_exact += 1;
                            p
                        }
                    },
                }
            }
        };
        out.push(p);
    }
    report.polygons_after = out.len();
    report.vertices_after = out.iter().map(vertex_count).sum();
    (out, report)
}

/// Pixel → map coordinates through `gt`, exteriors counter-clockwise and holes
/// clockwise in map coordinates (RFC 7946 / OGC), whatever the sign of `gt`.
pub fn to_map(polygons: &[Polygon<f64>], gt: &GeoTransform) -> MultiPolygon<f64> {
    let mp = MultiPolygon::new(polygons.to_vec());
    mp.map_coords(|c| {
        let (x, y) = gt.pixel_to_world(c.x, c.y);
        geo::Coord { x, y }
    })
    .orient(Direction::Default)
}

/// Masks made on an image that shows `window` of a raster, resampled to
/// `image_size`: where its pixel corners fall in the raster's own pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageFrame {
    pub window: crate::base::Window,
    pub image_size: (usize, usize),
}

impl ImageFrame {
    /// Raster pixels per image pixel, along x and y.
    pub fn scale(&self) -> (f64, f64) {
        (self.window.width as f64 / self.image_size.0 as f64, self.window.height as f64 / self.image_size.1 as f64)
    }

    /// Image pixel → raster pixel.
    pub fn to_raster(&self, x: f64, y: f64) -> (f64, f64) {
        let (sx, sy) = self.scale();
        (self.window.x as f64 + x * sx, self.window.y as f64 + y * sy)
    }
}

/// A mask made on `frame`'s image, traced exactly and placed in raster pixels.
pub fn trace_to_raster(mask: &crate::segment::Mask, frame: &ImageFrame) -> MultiPolygon<f64> {
    let traced = polygonize_bool(mask.width, mask.height, &mask.data);
    place(&MultiPolygon::new(traced.polygons), frame)
}

/// Image-pixel polygons → raster pixels.
fn place(mp: &MultiPolygon<f64>, frame: &ImageFrame) -> MultiPolygon<f64> {
    mp.map_coords(|c| {
        let (x, y) = frame.to_raster(c.x, c.y);
        geo::Coord { x, y }
    })
}

/// The contour level of one run: every box's mask traced, cleaned and placed
/// in raster pixel coordinates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContourResult {
    /// One per box, in the order of the boxes; ids from 1.
    pub boxes: Vec<Feature>,
    /// One per box with a non-empty mask, with the id of its box.
    pub polygons: Vec<Feature>,
    pub report: CleanupReport,
}

/// RemoteReasoner's contour task after its pixel task: `segments` are (box in
/// raster pixels, mask on `frame`'s image) pairs. `map_pixel` is the map length of one
/// raster pixel (for tolerances in map units).
pub fn contour_task(
    segments: &[(crate::base::PixelBox, crate::segment::Segment)],
    frame: &ImageFrame,
    cleanup: &Cleanup,
    map_pixel: f64,
    provenance: &std::sync::Arc<Provenance>,
) -> ContourResult {
    let (sx, sy) = frame.scale();
    let image_pixel = map_pixel * (sx * sy).sqrt();
    let mut out = ContourResult::default();
    for (i, (b, seg)) in segments.iter().enumerate() {
        let id = i as i64 + 1;
        let feature = |geometry| Feature {
            id,
            geometry,
            provenance: provenance.clone(),
            score: seg.iou.map(f64::from),
            object_score: seg.object_score.map(f64::from),
            edited: false,
            // Stored in raster pixels (what the feature's coordinates are in), not mask pixels.
            simplify: cleanup
                .simplify
                .map(|(m, _)| (m, cleanup.tolerance_px(image_pixel).unwrap_or_default() * (sx * sy).sqrt())),
        };
        out.boxes.push(feature(Geometry::Box(b.to_array())));
        let traced = polygonize_bool(seg.mask.width, seg.mask.height, &seg.mask.data);
        // Kept only when simplifying: parts of one mask may touch at corners, and
        // if simplified they overlap, the exact parts are used instead.
        let exact = cleanup.simplify.is_some().then(|| traced.polygons.clone());
        let (polygons, mut r) = clean(traced.polygons, cleanup, image_pixel);
        let mut shape = MultiPolygon::new(polygons);
        if let Some(exact) = exact.filter(|_| !is_valid_ogc(&shape)) {
            let (p, r2) = clean(exact, &Cleanup { simplify: None, ..*cleanup }, image_pixel);
            r = CleanupReport { kept_exact: r2.polygons_after, ..r2 };
            shape = MultiPolygon::new(p);
        }
        accumulate(&mut out.report, &r);
        if shape.0.is_empty() {
            continue;
        }
        out.polygons.push(feature(Geometry::Polygons(place(&shape, frame))));
    }
    out
}

fn accumulate(total: &mut CleanupReport, r: &CleanupReport) {
    total.polygons_before += r.polygons_before;
    total.polygons_after += r.polygons_after;
    total.vertices_before += r.vertices_before;
    total.vertices_after += r.vertices_after;
    total.holes_filled += r.holes_filled;
    total.polygons_dropped += r.polygons_dropped;
    total.rings_collapsed += r.rings_collapsed;
    total.simplified_otherwise += r.simplified_otherwise;
    total.kept_exact += r.kept_exact;
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Winding;

    #[test]
    fn map_rings_are_oriented_for_gis() {
        let m = [true, true, true, true, false, true, true, true, true];
        let t = polygonize_bool(3, 3, &m);
        for gt in [GeoTransform([10.0, 2.0, 0.0, 50.0, 0.0, -2.0]), GeoTransform::IDENTITY] {
            let mp = to_map(&t.polygons, &gt);
            assert!(mp.0[0].exterior().is_ccw());
            assert!(mp.0[0].interiors()[0].is_cw());
        }
        let mp = to_map(&t.polygons, &GeoTransform([10.0, 2.0, 0.0, 50.0, 0.0, -2.0]));
        assert_eq!(mp.unsigned_area(), 8.0 * 4.0);
    }

    #[test]
    fn cleanup_fills_drops_and_simplifies() {
        // A 20×20 block with a 1-pixel hole, a staircase edge, and a lone pixel.
        let (w, h) = (30, 24);
        let mut m = vec![false; w * h];
        for y in 2..22 {
            for x in 2..(22 + (y / 2) % 2) {
                m[y * w + x] = true;
            }
        }
        m[10 * w + 10] = false;
        m[w + 27] = true;
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), 2);
        let opts = Cleanup {
            min_area: Some(2.0),
            fill_holes: Some(2.0),
            simplify: Some((SimplifyMethod::DouglasPeucker, 1.5)),
            units: Units::Pixels,
        };
        let (out, r) = clean(t.polygons.clone(), &opts, 1.0);
        assert_eq!((r.polygons_dropped, r.holes_filled, out.len()), (1, 1, 1));
        assert!(out[0].interiors().is_empty());
        assert!(r.vertices_after < r.vertices_before / 4, "{r:?}");
        // Map units: 0.5 m pixels, so 1 m² = 4 px²: the 1-pixel polygon (0.25 m²) goes, with min area 0.3 m².
        let opts = Cleanup { min_area: Some(0.3), units: Units::Map, ..Default::default() };
        let (out, r) = clean(t.polygons, &opts, 0.5);
        assert_eq!((out.len(), r.polygons_dropped), (1, 1));
        let vw: SimplifyMethod = "vw".parse().unwrap();
        assert_eq!(vw, SimplifyMethod::VisvalingamPreserve);
    }
}
