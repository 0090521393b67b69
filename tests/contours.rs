//! Contour level: masks → polygons → GDAL rasterises them back to the same mask,
//! every geometry valid for GEOS (north-up and rotated geotransforms); exports
//! read back with GDAL (layers, CRS, attributes, coordinates on pixel corners,
//! non-ASCII text, Shapefile limits) and the atomic-write guarantee.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use engine::base::Window;
use engine::contour::{polygonize_bool, to_map};
use engine::export::{ExportOptions, Format, OutputCrs, export};
use engine::features::{Feature, FeatureSet, Geometry, Provenance};
use engine::geo::GeoTransform;
use engine::segment::Mask;
use gdal::Dataset;
use gdal::spatial_ref::SpatialRef;
use gdal::vector::{Geometry as OgrGeometry, LayerAccess, ToGdal};
use proptest::prelude::*;

#[path = "common/gis.rs"]
mod gis;

/// Paints rectangles in order (later ones over earlier ones, filled or cleared),
/// then flips single pixels: holes, islands in holes, lines, corner contacts,
/// border objects and lone pixels all arise.
fn paint(w: usize, h: usize, rects: &[(usize, usize, usize, usize, bool)], flips: &[(usize, usize)]) -> Mask {
    let mut m = Mask::empty(w, h);
    for &(x, y, rw, rh, v) in rects {
        for yy in y.min(h)..(y + rh).min(h) {
            for xx in x.min(w)..(x + rw).min(w) {
                m.data[yy * w + xx] = v;
            }
        }
    }
    for &(x, y) in flips {
        if x < w && y < h {
            m.data[y * w + x] ^= true;
        }
    }
    m
}

fn round_trip(m: &Mask, gt: &GeoTransform) -> Result<(), TestCaseError> {
    let t = polygonize_bool(m.width, m.height, &m.data);
    let mp = to_map(&t.polygons, gt);
    let all = mp.to_gdal().unwrap();
    prop_assert!(all.is_valid(), "invalid multipolygon: {}", all.wkt().unwrap());
    let geoms: Vec<OgrGeometry> = mp.0.iter().map(|p| p.to_gdal().unwrap()).collect();
    for g in &geoms {
        prop_assert!(g.is_valid(), "invalid polygon {}", g.wkt().unwrap());
    }
    let back = gis::rasterize(m.width, m.height, &gt.0, &geoms);
    prop_assert_eq!(back, m.data.clone(), "rasterised polygons differ from the mask");
    Ok(())
}

fn mask_strategy() -> impl Strategy<Value = Mask> {
    (1usize..40, 1usize..40).prop_flat_map(|(w, h)| {
        (
            prop::collection::vec((0..w, 0..h, 1..w + 1, 1..h + 1, any::<bool>()), 0..10),
            prop::collection::vec((0..w, 0..h), 0..25),
        )
            .prop_map(move |(rects, flips)| paint(w, h, &rects, &flips))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn polygons_rasterise_back_to_the_mask_north_up(m in mask_strategy()) {
        round_trip(&m, &GeoTransform([500_000.0, 0.5, 0.0, 5_700_000.0, 0.0, -0.5]))?;
    }

    #[test]
    fn polygons_rasterise_back_to_the_mask_rotated(m in mask_strategy(), angle in -170f64..170.0) {
        let (s, c) = angle.to_radians().sin_cos();
        round_trip(&m, &GeoTransform([1000.0, 2.0 * c, -2.0 * s, 2000.0, 2.0 * s, 2.0 * c]))?;
    }

    /// Simplified output stays valid: Douglas–Peucker falls back where it would break a polygon.
    #[test]
    fn simplified_polygons_stay_valid(m in mask_strategy(), t in 0.3f64..4.0, dp in any::<bool>()) {
        use engine::contour::{Cleanup, SimplifyMethod, clean};
        let method = if dp { SimplifyMethod::DouglasPeucker } else { SimplifyMethod::VisvalingamPreserve };
        let traced = polygonize_bool(m.width, m.height, &m.data);
        let opts = Cleanup { simplify: Some((method, t)), ..Default::default() };
        let (out, report) = clean(traced.polygons, &opts, 1.0);
        prop_assert!(report.vertices_after <= report.vertices_before);
        let mp = to_map(&out, &GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]));
        for p in &mp.0 {
            let g = p.to_gdal().unwrap();
            prop_assert!(g.is_valid(), "{method} {t}: invalid {}", g.wkt().unwrap());
        }
    }

    #[test]
    fn random_noise_masks_round_trip(w in 1usize..24, h in 1usize..24, bits in prop::collection::vec(any::<bool>(), 576)) {
        let m = Mask { width: w, height: h, data: bits[..w * h].to_vec() };
        round_trip(&m, &GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]))?;
    }
}

/// The structures the issue names, all in one mask, checked once explicitly.
#[test]
fn named_structures_round_trip() {
    let rows = [
        "#########......#",
        "#.......#.....#.",
        "#.#####.#....#..",
        "#.#...#.#.....##",
        "#.#.#.#.#.......",
        "#.#...#.#..#.#..",
        "#.#####.#...#...",
        "#.......#..#.#..",
        "#########.......",
        "................",
        "################",
        "..............#.",
        "#..............#",
    ];
    let w = rows[0].len();
    let m =
        Mask { width: w, height: rows.len(), data: rows.iter().flat_map(|r| r.bytes().map(|b| b == b'#')).collect() };
    round_trip(&m, &GeoTransform([10.0, 1.0, 0.0, 20.0, 0.0, -1.0])).unwrap();
    let t = polygonize_bool(m.width, m.height, &m.data);
    // Nested: frame ⊃ hole ⊃ ring ⊃ hole ⊃ pixel; the diagonal line and the X are
    // corner-touching pixels; a 1-px line across the whole raster; border pixels.
    let holes: usize = t.polygons.iter().map(|p| p.interiors().len()).sum();
    assert_eq!(holes, 2, "{:?}", t.polygons);
    // frame, ring, centre pixel, 3 diagonal pixels, the pair beside them, 5 in the X,
    // the line (with its stub), 2 corner pixels.
    assert_eq!(t.polygons.len(), 3 + 3 + 1 + 5 + 1 + 2);
}

fn sample_set(gt: GeoTransform, crs: Option<String>, reasoning: String) -> (FeatureSet, Mask) {
    let m = paint(
        60,
        40,
        &[(5, 5, 20, 20, true), (10, 10, 8, 8, false), (12, 12, 3, 3, true), (40, 0, 20, 20, true)],
        &[(30, 30), (31, 31)],
    );
    let t = polygonize_bool(m.width, m.height, &m.data);
    let provenance = Arc::new(Provenance {
        task: "contour".into(),
        query: "où les avions décollent-ils ? 飛行機はどこから離陸する？".into(),
        answer: "[[5,5,25,25]]".into(),
        model: "RemoteReasoner-7B".into(),
        weights_hash: "0123456789ab".into(),
        segmenter: "sam2.1_hiera_large".into(),
        reasoning,
        source: "/data/scène.tif".into(),
        window: Some(Window { x: 0, y: 0, width: 60, height: 40 }),
        created_at: "2026-11-26T07:00:00Z".into(),
        concept: "réservoir de stockage".into(),
        exemplars: "+1,2.5,30,40;-5,6,7,8".into(),
        segmenter_hash: "fedcba987654".into(),
    });
    let feature = |id, geometry| Feature {
        id,
        geometry,
        provenance: provenance.clone(),
        score: Some(0.93),
        object_score: Some(7.5),
        edited: id == 2,
        simplify: None,
    };
    let polygons = t
        .polygons
        .into_iter()
        .enumerate()
        .map(|(i, p)| feature(i as i64 + 1, Geometry::Polygons(geo::MultiPolygon::new(vec![p]))))
        .collect();
    let boxes =
        vec![feature(1, Geometry::Box([5.0, 5.0, 25.0, 25.0])), feature(2, Geometry::Box([40.0, 0.0, 60.0, 20.0]))];
    (FeatureSet { geotransform: Some(gt), crs_wkt: crs, boxes, polygons }, m)
}

fn utm31() -> String {
    SpatialRef::from_epsg(32631).unwrap().to_wkt().unwrap()
}

/// Every vertex of every feature of `layer`, in pixels of `gt`, is an integer corner within 1e-6.
fn assert_on_pixel_corners(ds: &Dataset, layer: &str, gt: &GeoTransform) -> usize {
    let inv = gt.inverse().unwrap();
    let mut layer = ds.layer_by_name(layer).unwrap();
    let mut n = 0;
    for f in layer.features() {
        let g = f.geometry().unwrap().to_geo().unwrap();
        use geo::CoordsIter;
        for c in g.coords_iter() {
            let (px, py) = inv.pixel_to_world(c.x, c.y);
            assert!((px - px.round()).abs() < 1e-6 && (py - py.round()).abs() < 1e-6, "({px}, {py}) off a corner");
            n += 1;
        }
    }
    n
}

fn string_field(f: &gdal::vector::Feature, name: &str) -> String {
    f.field_as_string(f.field_index(name).unwrap()).unwrap().unwrap_or_default()
}

#[test]
fn geopackage_geojson_flatgeobuf_read_back_with_gdal() {
    let dir = tempfile::tempdir().unwrap();
    let (s, c) = 20f64.to_radians().sin_cos();
    let rotated = GeoTransform([600_000.0, 0.5 * c, -0.5 * s, 5_750_000.0, -0.5 * s, -0.5 * c]);
    let north_up = GeoTransform([600_000.0, 0.5, 0.0, 5_750_000.0, 0.0, -0.5]);
    let reasoning = "Runways are long straight paved strips. ".repeat(20);
    for gt in [north_up, rotated] {
        let (set, _) = sample_set(gt, Some(utm31()), reasoning.clone());
        for ext in ["gpkg", "geojson", "fgb"] {
            let path = dir.path().join(format!("result.{ext}"));
            let report = export(&path, &set, &ExportOptions::default(), &mut |_, _| true).unwrap();
            let ds = Dataset::open(&path).unwrap();
            let names: Vec<String> = ds.layers().map(|l| l.name()).collect();
            let box_path = if ext == "gpkg" { path.clone() } else { dir.path().join(format!("result_boxes.{ext}")) };
            assert!(report.files.contains(&box_path), "{report:?}");
            let poly_layer = if ext == "gpkg" {
                assert_eq!(names, ["polygons", "boxes"]);
                assert_eq!(report.files.len(), 1);
                "polygons".to_owned()
            } else {
                names[0].clone()
            };
            let box_ds = Dataset::open(&box_path).unwrap();
            let layer = ds.layer_by_name(&poly_layer).unwrap();
            assert_eq!(layer.feature_count(), set.polygons.len() as u64, "{ext}");
            assert_eq!(layer.spatial_ref().unwrap().auth_code().unwrap(), 32631, "{ext}");
            let vertices = assert_on_pixel_corners(&ds, &poly_layer, &gt);
            assert!(vertices > 20);
            let box_layer = if ext == "gpkg" { "boxes".to_owned() } else { box_ds.layer(0).unwrap().name() };
            assert_eq!(box_ds.layer_by_name(&box_layer).unwrap().feature_count(), 2);
            assert_on_pixel_corners(&box_ds, &box_layer, &gt);
            let mut layer = ds.layer_by_name(&poly_layer).unwrap();
            let f = layer.features().next().unwrap();
            assert_eq!(string_field(&f, "query"), set.polygons[0].provenance.query, "{ext}");
            assert_eq!(string_field(&f, "reasoning"), reasoning, "{ext}: reasoning kept whole");
            assert_eq!(string_field(&f, "source"), "/data/scène.tif");
            assert_eq!(string_field(&f, "weights_hash"), "0123456789ab");
            assert_eq!(string_field(&f, "segmenter"), "sam2.1_hiera_large");
            assert_eq!(string_field(&f, "window"), "0,0,60,40");
            assert_eq!(string_field(&f, "concept"), "réservoir de stockage");
            assert_eq!(string_field(&f, "exemplars"), "+1,2.5,30,40;-5,6,7,8");
            assert_eq!(string_field(&f, "segmenter_hash"), "fedcba987654");
            assert_eq!(f.field_as_double(f.field_index("score").unwrap()).unwrap(), Some(0.93));
            assert_eq!(f.field_as_integer(f.field_index("edited").unwrap()).unwrap(), Some(0));
            drop(f);
            // Areas survive (the ring orientation and hole assignment are right).
            let area: f64 = layer.features().map(|f| f.geometry().unwrap().area()).sum();
            let (px, py) = gt.pixel_size();
            let pixels: usize = sample_set(gt, None, String::new()).1.count();
            assert!((area - pixels as f64 * px * py).abs() < 1e-6, "{ext}: {area}");
        }
    }
}

#[test]
fn shapefile_limits_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let gt = GeoTransform([600_000.0, 0.5, 0.0, 5_750_000.0, 0.0, -0.5]);
    let reasoning = "Les pistes sont de longues bandes pavées rectilignes. ".repeat(10);
    let (set, _) = sample_set(gt, Some(utm31()), reasoning.clone());
    let path = dir.path().join("result.shp");
    let report = export(&path, &set, &ExportOptions::default(), &mut |_, _| true).unwrap();
    assert!(report.notes.iter().any(|n| n.contains("truncated")), "{report:?}");
    for ext in ["shp", "shx", "dbf", "prj", "cpg"] {
        assert!(path.with_extension(ext).exists(), ".{ext} written");
        assert!(dir.path().join(format!("result_boxes.{ext}")).exists(), "boxes .{ext} written");
    }
    let ds = Dataset::open(&path).unwrap();
    let mut layer = ds.layer(0).unwrap();
    assert_eq!(layer.spatial_ref().unwrap().auth_code().unwrap(), 32631);
    let names: Vec<String> = layer.defn().fields().map(|f| f.name()).collect();
    assert!(names.iter().all(|n| n.len() <= 10), "{names:?}");
    for n in ["weights", "obj_score", "created", "simp_tol", "truncated"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    let f = layer.features().next().unwrap();
    let cut = string_field(&f, "reasoning");
    assert!(cut.len() <= 254 && reasoning.starts_with(&cut) && cut.len() > 200, "{} bytes", cut.len());
    assert_eq!(string_field(&f, "truncated"), "reasoning");
    assert_eq!(string_field(&f, "query"), set.polygons[0].provenance.query, "UTF-8 query survives");
    drop(f);
    let name = layer.name();
    assert_on_pixel_corners(&ds, &name, &gt);
}

#[test]
fn wgs84_geojson_is_rfc7946() {
    let dir = tempfile::tempdir().unwrap();
    let gt = GeoTransform([600_000.0, 0.5, 0.0, 5_750_000.0, 0.0, -0.5]);
    let (set, _) = sample_set(gt, Some(utm31()), "r".into());
    let path = dir.path().join("wgs84.geojson");
    let opts = ExportOptions { crs: OutputCrs::Wgs84, boxes: false, ..Default::default() };
    export(&path, &set, &opts, &mut |_, _| true).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"crs\""), "RFC 7946 has no crs member");
    let ds = Dataset::open(&path).unwrap();
    let mut layer = ds.layer(0).unwrap();
    // Back to UTM and pixels: on corners within 1e-5 px (11 decimals of a degree ≈ 1 µm).
    let mut utm = SpatialRef::from_epsg(32631).unwrap();
    utm.set_axis_mapping_strategy(gdal::spatial_ref::AxisMappingStrategy::TraditionalGisOrder);
    let inv = gt.inverse().unwrap();
    for f in layer.features() {
        let g = f.geometry().unwrap();
        let env = g.envelope();
        assert!(env.MinX > 4.0 && env.MaxX < 5.0 && env.MinY > 51.0 && env.MaxY < 52.0, "lon/lat order: {env:?}");
        let back = g.transform_to(&utm).unwrap().to_geo().unwrap();
        use geo::CoordsIter;
        for c in back.coords_iter() {
            let (px, py) = inv.pixel_to_world(c.x, c.y);
            assert!((px - px.round()).abs() < 1e-5 && (py - py.round()).abs() < 1e-5, "({px}, {py})");
        }
    }
    // Without a CRS there is no way to 4326.
    let (bare, _) = sample_set(gt, None, String::new());
    let err = export(&dir.path().join("x.geojson"), &bare, &opts, &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("x.geojson") && err.to_string().contains("CRS"), "{err}");
}

#[test]
fn a_failed_export_leaves_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let gt = GeoTransform([600_000.0, 0.5, 0.0, 5_750_000.0, 0.0, -0.5]);
    let (mut set, _) = sample_set(gt, Some(utm31()), String::new());
    for format in ["gpkg", "shp", "geojson", "fgb"] {
        let path = dir.path().join(format!("keep.{format}"));
        export(&path, &set, &ExportOptions::default(), &mut |_, _| true).unwrap();
        let before = std::fs::read(&path).unwrap();
        // A bigger export, cancelled midway through its features.
        let mut big = set.clone();
        for i in 0..3000 {
            let mut f = set.polygons[0].clone();
            f.id = 100 + i;
            big.polygons.push(f);
        }
        let mut calls = 0;
        let err = export(&path, &big, &ExportOptions::default(), &mut |done, _| {
            calls += 1;
            done < 1500
        })
        .unwrap_err();
        assert!(matches!(err, engine::EngineError::Cancelled), "{err}");
        assert!(calls > 2, "cancelled midway, not before starting");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{format}: previous file intact");
        let ds = Dataset::open(&path).unwrap();
        assert_eq!(ds.layer(0).unwrap().feature_count(), set.polygons.len() as u64);
    }
    // Nothing left behind but the four exports (and their sidecars).
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A failure reported by GDAL names the file: a directory that does not exist.
    let missing = dir.path().join("no/such/dir/out.gpkg");
    let err = export(&missing, &set, &ExportOptions::default(), &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("out.gpkg"), "{err}");
    // An unknown format names the file too.
    set.boxes.clear();
    let err = export(&dir.path().join("out.kml2"), &set, &ExportOptions::default(), &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("out.kml2") && err.to_string().contains(".gpkg"), "{err}");
    let _ = Format::from_path(Path::new("x.gpkg"));
}

/// The paper's line map against OpenCV's own drawing (tools/make_contour_fixtures.py):
/// `findContours(RETR_EXTERNAL, CHAIN_APPROX_SIMPLE)` + `drawContours(thickness=3)`.
#[test]
fn line_map_matches_opencv() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/contours");
    let m = engine::segment::output::read_mask(&dir.join("mask.png")).unwrap();
    let mask = Mask { width: m.width, height: m.height, data: m.data.iter().map(|&v| v != 0).collect() };
    let reference = engine::segment::output::read_mask(&dir.join("line_map.png")).unwrap();
    let ours = engine::contour::line_map(&mask);
    // The reference is black (0) lines on white: a line pixel reads as 0.
    let differ = ours.data.iter().zip(&reference.data).filter(|&(&o, &r)| o != (r == 0)).count();
    assert_eq!(differ, 0, "{differ} of {} pixels differ from OpenCV", ours.data.len());
}

/// Found by the property test: Douglas–Peucker moved a shell edge onto two
/// corners of a hole (interior disconnected). geo's own validity check passes
/// it; GEOS does not, and neither may our output.
#[test]
fn simplification_never_disconnects_an_interior() {
    use engine::contour::{Cleanup, SimplifyMethod, clean};
    let rows = ["....", ".###", ".#.#", ".##.", "..#."];
    let data: Vec<bool> = rows.iter().flat_map(|r| r.bytes().map(|b| b == b'#')).collect();
    let t = polygonize_bool(4, 5, &data);
    let opts = Cleanup { simplify: Some((SimplifyMethod::DouglasPeucker, 3.7230375215712965)), ..Default::default() };
    let (out, _) = clean(t.polygons, &opts, 1.0);
    for p in to_map(&out, &GeoTransform([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])).0 {
        let g = p.to_gdal().unwrap();
        assert!(g.is_valid(), "{}", g.wkt().unwrap());
    }
}
