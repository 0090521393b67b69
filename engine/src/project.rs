//! Projects are GeoPackages that GIS tools open as they are: the `polygons` and
//! `boxes` layers of an export (map coordinates, provenance attributes), plus a
//! `remote_reasoner_project` table holding the raster, the view, and the
//! georeferencing the features were written with, so loading maps them back to
//! raster pixels exactly. Written atomically like every export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gdal::vector::{LayerAccess, ToGdal};
use geo::{BoundingRect, MapCoords, MultiPolygon};
use serde::{Deserialize, Serialize};

use crate::base::Window;
use crate::contour::SimplifyMethod;
use crate::edit::WorkFeature;
use crate::error::{EngineError, Result};
use crate::export::{ExportOptions, ExportReport, Format, export_with};
use crate::features::{FeatureSet, Provenance};
use crate::geo::GeoTransform;
use crate::raster::gdal_reason;

/// Name of the settings table inside the GeoPackage.
pub const TABLE: &str = "remote_reasoner_project";
const VERSION: u32 = 1;

/// Everything about a project that is not a feature.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectMeta {
    pub version: u32,
    #[serde(default, with = "crate::path_serde::option")]
    pub raster: Option<PathBuf>,
    /// Map view: centre x, y (raster pixels) and zoom (screen points per pixel).
    pub view: Option<[f64; 3]>,
    /// The raster's geotransform the features were written with (`None`: pixels).
    pub geotransform: Option<[f64; 6]>,
    pub crs_wkt: Option<String>,
    pub saved_at: String,
}

/// A loaded project.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Project {
    pub meta: ProjectMeta,
    pub features: Vec<WorkFeature>,
}

fn feature_set(features: &[WorkFeature], meta: &ProjectMeta) -> FeatureSet {
    crate::edit::feature_set(features, meta.geotransform.map(GeoTransform), meta.crs_wkt.clone())
}

/// Saves `features` and `meta` to the GeoPackage `path` (replaced atomically).
pub fn save(path: &Path, meta: &ProjectMeta, features: &[WorkFeature]) -> Result<ExportReport> {
    let meta = ProjectMeta { version: VERSION, saved_at: Provenance::now(), ..meta.clone() };
    let json = serde_json::to_string(&meta).map_err(|e| EngineError::Internal(e.to_string()))?;
    let mut rows = vec![("meta".to_owned(), json)];
    // Simplified features keep their exact geometry (pixels, WKT), so the slider can go back.
    for f in features.iter().filter(|f| f.simplify.is_some() && f.exact != f.polygons) {
        let wkt = f.exact.to_gdal().and_then(|g| g.wkt()).map_err(|e| EngineError::Internal(gdal_reason(&e)))?;
        rows.push((format!("exact:{}", f.id), wkt));
    }
    let opts = ExportOptions { format: Some(Format::GeoPackage), ..Default::default() };
    export_with(path, &feature_set(features, &meta), &opts, &mut |_, _| true, &[(TABLE, &rows)])
}

/// Whether `path` is a GeoPackage holding a project table (cheap: reads the
/// layer list only).
pub fn is_project(path: &Path) -> bool {
    crate::gdal_init();
    let flags = gdal::GdalOpenFlags::GDAL_OF_VECTOR | gdal::GdalOpenFlags::GDAL_OF_READONLY;
    crate::raster::source::open(path, &flags).is_ok_and(|ds| ds.layer_by_name(TABLE).is_ok())
}

/// Why a GeoPackage that is not a project cannot be opened as a raster either,
/// told the way an analyst needs it (`None` when it does hold a raster).
pub fn not_a_project(path: &Path) -> Option<EngineError> {
    let flags = gdal::GdalOpenFlags::GDAL_OF_VECTOR
        | gdal::GdalOpenFlags::GDAL_OF_RASTER
        | gdal::GdalOpenFlags::GDAL_OF_READONLY;
    let ds = crate::raster::source::open(path, &flags).ok()?;
    if ds.raster_count() > 0 {
        return None;
    }
    let layers: Vec<String> = ds.layers().map(|l| l.name()).collect();
    let reason = if layers.is_empty() {
        format!("a GeoPackage with neither a {TABLE} table nor a raster")
    } else {
        format!(
            "a GeoPackage of vector layers ({}) without the {TABLE} table, and no raster; open the raster its features belong to, or the project saved from it",
            layers.join(", ")
        )
    };
    Some(EngineError::NotAProject { path: path.to_owned(), reason })
}

/// Loads a project saved by [`save`].
pub fn load(path: &Path) -> Result<Project> {
    crate::gdal_init();
    if !path.exists() {
        return Err(EngineError::NotFound { path: path.to_owned() });
    }
    let bad = |reason: String| EngineError::Read { path: path.to_owned(), reason };
    let flags = gdal::GdalOpenFlags::GDAL_OF_VECTOR | gdal::GdalOpenFlags::GDAL_OF_READONLY;
    let ds = crate::raster::source::open(path, &flags).map_err(|e| bad(gdal_reason(&e)))?;
    let mut table =
        ds.layer_by_name(TABLE).map_err(|_missing| bad(format!("not a RemoteReasoner project (no {TABLE} table)")))?;
    let mut meta: Option<ProjectMeta> = None;
    let mut exact: HashMap<u64, MultiPolygon<f64>> = HashMap::new();
    for row in table.features() {
        let (Ok(Some(k)), Ok(Some(v))) = (row.field_as_string(0), row.field_as_string(1)) else { continue };
        if k == "meta" {
            meta = Some(serde_json::from_str(&v).map_err(|e| bad(format!("bad project settings: {e}")))?);
        } else if let Some(id) = k.strip_prefix("exact:").and_then(|i| i.parse().ok()) {
            let g = gdal::vector::Geometry::from_wkt(&v).and_then(|g| g.to_geo()).map_err(|e| bad(gdal_reason(&e)))?;
            exact.insert(id, multi(g));
        }
    }
    let meta = meta.ok_or_else(|| bad("the project table has no settings row".into()))?;
    let to_pixels = meta
        .geotransform
        .map(|gt| GeoTransform(gt).inverse().ok_or_else(|| bad("singular geotransform".into())))
        .transpose()?
        .unwrap_or(GeoTransform::IDENTITY);
    let mut features: HashMap<u64, WorkFeature> = HashMap::new();
    let mut provenances: HashMap<Vec<String>, Arc<Provenance>> = HashMap::new();
    for (layer_name, is_box) in [("polygons", false), ("boxes", true)] {
        let Ok(mut layer) = ds.layer_by_name(layer_name) else { continue };
        for f in layer.features() {
            let text = |name: &str| {
                f.field_index(name).ok().and_then(|i| f.field_as_string(i).ok().flatten()).unwrap_or_default()
            };
            let real = |name: &str| f.field_index(name).ok().and_then(|i| f.field_as_double(i).ok().flatten());
            let id = f.field_index("id").ok().and_then(|i| f.field_as_integer64(i).ok().flatten()).unwrap_or(0) as u64;
            let Some(geometry) = f.geometry() else { continue };
            let geo = multi(geometry.to_geo().map_err(|e| bad(gdal_reason(&e)))?).map_coords(|c| {
                let (x, y) = to_pixels.pixel_to_world(c.x, c.y);
                geo::Coord { x: snap(x), y: snap(y) }
            });
            let keys = [
                "task",
                "query",
                "answer",
                "model",
                "weights_hash",
                "segmenter",
                "reasoning",
                "source",
                "window",
                "created_at",
                "concept",
                "exemplars",
                "segmenter_hash",
            ];
            let values: Vec<String> = keys.iter().map(|k| text(k)).collect();
            let provenance = provenances
                .entry(values.clone())
                .or_insert_with(|| {
                    Arc::new(Provenance {
                        task: values[0].clone(),
                        query: values[1].clone(),
                        answer: values[2].clone(),
                        model: values[3].clone(),
                        weights_hash: values[4].clone(),
                        segmenter: values[5].clone(),
                        reasoning: values[6].clone(),
                        source: values[7].clone(),
                        window: parse_window(&values[8]),
                        created_at: values[9].clone(),
                        concept: values[10].clone(),
                        exemplars: values[11].clone(),
                        segmenter_hash: values[12].clone(),
                    })
                })
                .clone();
            let simplify = text("simplify_method").parse::<SimplifyMethod>().ok().zip(real("simplify_tol"));
            let entry = features.entry(id).or_insert_with(|| {
                let mut w = WorkFeature::new(None, MultiPolygon::new(vec![]), provenance);
                w.id = id;
                w
            });
            entry.score = real("score");
            entry.object_score = real("object_score");
            entry.edited = f.field_index("edited").ok().and_then(|i| f.field_as_integer(i).ok().flatten()) == Some(1);
            entry.simplify = simplify;
            if is_box {
                entry.bbox = geo.bounding_rect().map(|r| [r.min().x, r.min().y, r.max().x, r.max().y]);
            } else {
                entry.exact = exact.remove(&id).unwrap_or_else(|| geo.clone());
                entry.polygons = geo;
            }
        }
    }
    // Exact geometry of a feature whose shown polygons were empty (simplified away).
    for (id, mp) in exact {
        if let Some(f) = features.get_mut(&id) {
            f.exact = mp;
        }
    }
    let mut features: Vec<WorkFeature> = features.into_values().collect();
    features.sort_by_key(|f| f.id);
    Ok(Project { meta, features })
}

/// Back through the inverse geotransform a pixel corner is off by ~1e-10:
/// put it back on the corner (nothing the analyst made is that close otherwise).
fn snap(v: f64) -> f64 {
    let r = v.round();
    if (v - r).abs() < 1e-7 { r } else { v }
}

fn multi(g: geo::Geometry<f64>) -> MultiPolygon<f64> {
    match g {
        geo::Geometry::Polygon(p) => MultiPolygon::new(vec![p]),
        geo::Geometry::MultiPolygon(mp) => mp,
        _ => MultiPolygon::new(vec![]),
    }
}

fn parse_window(s: &str) -> Option<Window> {
    let v: Vec<u64> = s.split(',').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    match v[..] {
        [x, y, width, height] => Some(Window { x, y, width, height }),
        _ => None,
    }
}

/// Where the workbench keeps its recovery file (autosave): the user's state
/// directory, e.g. `~/.local/state/remote-reasoner/recovery.gpkg`.
pub fn recovery_path() -> PathBuf {
    crate::state_dir().join("recovery.gpkg")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::FeatureStore;
    use geo::Polygon;

    #[cfg(unix)]
    #[test]
    fn a_raster_path_that_is_not_utf8_survives_save_and_load() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(std::ffi::OsStr::from_bytes(b"proj\xe9t.gpkg"));
        let raster = PathBuf::from(std::ffi::OsStr::from_bytes(b"/data/sc\xe8ne.tif"));
        let meta = ProjectMeta { raster: Some(raster.clone()), ..Default::default() };
        save(&path, &meta, &[]).unwrap();
        assert!(is_project(&path));
        assert_eq!(load(&path).unwrap().meta.raster, Some(raster));
    }

    #[test]
    fn save_load_round_trip_keeps_pixels_attributes_and_exact_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.gpkg");
        let (s, c) = 25f64.to_radians().sin_cos();
        let gt = [600_000.0, 0.5 * c, -0.5 * s, 5_750_000.0, -0.5 * s, -0.5 * c];
        let provenance = Arc::new(Provenance {
            task: "contour".into(),
            query: "où sont les navires ?".into(),
            reasoning: "Long hulls along the quay.".into(),
            window: Some(Window { x: 1, y: 2, width: 30, height: 40 }),
            concept: "navire".into(),
            exemplars: "+1,2,3,4".into(),
            segmenter_hash: "abcdef012345".into(),
            ..Default::default()
        });
        let mut stairs: Vec<(f64, f64)> =
            (0..6).flat_map(|i: i32| [(f64::from(i), f64::from(i)), (f64::from(i) + 1.0, f64::from(i))]).collect();
        stairs.extend([(6.0, 6.0), (0.0, 6.0), (0.0, 0.0)]);
        let poly = MultiPolygon::new(vec![Polygon::new(stairs.into(), vec![])]);
        let mut store = FeatureStore::new();
        let mut a = WorkFeature::new(Some([0.0, 0.0, 6.0, 6.0]), poly, provenance.clone());
        a.score = Some(0.875);
        let b = WorkFeature::new(Some([10.0, 10.0, 20.0, 14.5]), MultiPolygon::new(vec![]), provenance);
        let ids = store.add("test", vec![a, b]);
        let simplified = store.get(ids[0]).unwrap().with_simplify(Some((SimplifyMethod::DouglasPeucker, 1.0)));
        store.replace("simplify", simplified).unwrap();
        let features: Vec<WorkFeature> = store.iter().cloned().collect();
        let meta = ProjectMeta {
            raster: Some("/data/scène.tif".into()),
            view: Some([12.0, 8.0, 3.5]),
            geotransform: Some(gt),
            ..Default::default()
        };
        save(&path, &meta, &features).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.meta.raster, meta.raster);
        assert_eq!(loaded.meta.view, meta.view);
        assert_eq!(loaded.features.len(), 2);
        let close = |a: &MultiPolygon<f64>, b: &MultiPolygon<f64>| {
            use geo::CoordsIter;
            let (a, b): (Vec<_>, Vec<_>) = (a.coords_iter().collect(), b.coords_iter().collect());
            a.len() == b.len() && a.iter().zip(&b).all(|(p, q)| (p.x - q.x).abs() < 1e-6 && (p.y - q.y).abs() < 1e-6)
        };
        let (orig, back) = (&features[0], &loaded.features[0]);
        assert_eq!(back.id, orig.id);
        // Shown polygons come back through the map (rings re-oriented there): same vertices, same area.
        use geo::Area;
        assert_eq!(back.polygons.0[0].exterior().0.len(), orig.polygons.0[0].exterior().0.len());
        assert!((back.polygons.unsigned_area() - orig.polygons.unsigned_area()).abs() < 1e-6);
        assert!(orig.exact != orig.polygons && close(&back.exact, &orig.exact), "exact geometry kept");
        assert_eq!(back.simplify, orig.simplify);
        assert_eq!(back.score, Some(0.875));
        assert_eq!(back.provenance.query, "où sont les navires ?");
        assert_eq!(back.provenance.window, Some(Window { x: 1, y: 2, width: 30, height: 40 }));
        assert_eq!(
            (back.provenance.concept.as_str(), back.provenance.exemplars.as_str()),
            ("navire", "+1,2,3,4"),
            "SAM 3's provenance survives a save"
        );
        assert_eq!(back.provenance.segmenter_hash, "abcdef012345");
        let bb = loaded.features[1].bbox.unwrap();
        for (x, y) in bb.iter().zip([10.0, 10.0, 20.0, 14.5]) {
            assert!((x - y).abs() < 1e-6, "{bb:?}");
        }
        assert!(loaded.features[1].polygons.0.is_empty());
        // Not a project: a plain export.
        let plain = dir.path().join("plain.gpkg");
        crate::export::export(&plain, &feature_set(&features, &meta), &ExportOptions::default(), &mut |_, _| true)
            .unwrap();
        let err = load(&plain).unwrap_err().to_string();
        assert!(err.contains("plain.gpkg") && err.contains("not a RemoteReasoner project"), "{err}");
    }
}
