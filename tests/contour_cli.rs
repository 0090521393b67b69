//! `remote-reasoner polygonize` and `ask --task contour` as a user runs them:
//! masks → georeferenced polygons read back with GDAL, the full chain with the
//! tiny trained model, simplification reported, and bad input in one line.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

#[path = "common/cli.rs"]
mod cli;
#[path = "common/gis.rs"]
mod gis;
use cli::{ok_json, root, rr, shared};

use engine::segment::Mask;
use engine::segment::output::{Georef, read_mask, write_mask};
use gdal::Dataset;
use gdal::vector::LayerAccess;

/// A mask with a ring (hole + island), a staircase blob and corner-touching pixels, on a rotated UTM grid.
fn write_test_mask(path: &Path) -> (Mask, Georef) {
    let (w, h) = (64, 48);
    let mut m = Mask::empty(w, h);
    for y in 4..30 {
        for x in 4..30 {
            let ring = (x - 4).min(29 - x).min(y - 4).min(29 - y);
            m.data[y * w + x] = ring < 5 || (15..19).contains(&x) && (15..19).contains(&y);
        }
    }
    for y in 10..40 {
        for x in 36..(50 + y % 5) {
            m.data[y * w + x] = true;
        }
    }
    for i in 0..6 {
        m.data[(42 + i % 2) * w + 2 + i] = true;
    }
    let (s, c) = 15f64.to_radians().sin_cos();
    let georef = Georef {
        geotransform: [592_000.0, 4.5 * c, 4.5 * s, 5_750_000.0, 4.5 * s, -4.5 * c],
        crs_wkt: Some(gdal::spatial_ref::SpatialRef::from_epsg(32631).unwrap().to_wkt().unwrap()),
    };
    write_mask(path, &m, Some(&georef)).unwrap();
    (m, georef)
}

#[test]
fn polygonize_writes_georeferenced_polygons_that_rasterise_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mask_path = tmp.path().join("mask.tif");
    let (m, georef) = write_test_mask(&mask_path);
    let out = tmp.path().join("polys.gpkg");
    let lines = tmp.path().join("lines.tif");
    let v = ok_json(&[
        "polygonize",
        "--mask",
        mask_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--line-map",
        lines.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["georeferenced"], true);
    // Ring, island, blob, and the 6 zig-zag pixels that touch only at corners: 6 polygons.
    assert_eq!(v["polygons"], 2 + 1 + 6);
    assert_eq!(v["polygons"], v["polygons_traced"]);
    let ds = Dataset::open(&out).unwrap();
    let mut layer = ds.layer(0).unwrap();
    assert_eq!(layer.name(), "polygons");
    assert_eq!(layer.spatial_ref().unwrap().auth_code().unwrap(), 32631);
    let geoms: Vec<gdal::vector::Geometry> = layer.features().map(|f| f.geometry().unwrap().clone()).collect();
    assert!(geoms.iter().all(gdal::vector::Geometry::is_valid));
    let f = layer.features().next().unwrap();
    assert_eq!(f.field_as_string(f.field_index("task").unwrap()).unwrap().as_deref(), Some("polygonize"));
    drop(f);
    // GDAL rasterises the written polygons back to the mask.
    assert_eq!(gis::rasterize(m.width, m.height, &georef.geotransform, &geoms), m.data, "rasterised polygons = mask");
    // The line map: black (0) on white (255), georeferenced like the mask, holes not drawn.
    let l = read_mask(&lines).unwrap();
    assert_eq!(l.georef.as_ref().unwrap().geotransform, georef.geotransform);
    assert_eq!(l.data[17 * m.width + 17], 1, "the island inside the hole is not outlined");
    assert_eq!(l.data[4 * m.width + 10], 0, "outer border drawn black");

    // Simplified, in map units, to Shapefile: fewer vertices, reported.
    let shp = tmp.path().join("simple.shp");
    let v2 = ok_json(&[
        "polygonize",
        "--mask",
        mask_path.to_str().unwrap(),
        "--out",
        shp.to_str().unwrap(),
        "--simplify",
        "9",
        "--units",
        "map",
        "--simplify-method",
        "dp",
        "--min-area",
        "100",
        "--fill-holes",
        "--json",
    ]);
    assert!(v2["vertices"].as_u64().unwrap() < v2["vertices_traced"].as_u64().unwrap(), "{v2}");
    assert_eq!(v2["holes_filled"], 1);
    assert_eq!(v2["polygons_dropped"], 6, "the zig-zag pixels (20.25 m² each) go");
    let ds = Dataset::open(&shp).unwrap();
    let mut layer = ds.layer(0).unwrap();
    let f = layer.features().next().unwrap();
    assert_eq!(f.field_as_string(f.field_index("simp_meth").unwrap()).unwrap().as_deref(), Some("douglas-peucker"));
    assert_eq!(f.field_as_double(f.field_index("simp_tol").unwrap()).unwrap(), Some(2.0), "9 m = 2 px");
}

#[test]
fn polygonize_reports_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let not_raster = tmp.path().join("notes.txt");
    std::fs::write(&not_raster, "not a raster").unwrap();
    let out = tmp.path().join("o.gpkg");
    for (args, expect) in [
        (vec!["--mask", not_raster.to_str().unwrap()], "notes.txt"),
        (vec!["--mask", "/no/such/mask.tif"], "mask.tif: file not found"),
    ] {
        let mut all = vec!["polygonize"];
        all.extend(args);
        all.extend(["--out", out.to_str().unwrap()]);
        let o = rr(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(expect) && err.lines().count() == 1, "{err}");
    }
    // --units map needs a georeferenced mask; a PNG has none.
    let png = tmp.path().join("m.png");
    write_mask(&png, &Mask { width: 2, height: 2, data: vec![true, false, false, true] }, None).unwrap();
    let o = rr(&["polygonize", "--mask", png.to_str().unwrap(), "--out", out.to_str().unwrap(), "--units", "map"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("m.png") && err.contains("georeferenced"), "{err}");
    let o = rr(&["polygonize", "--mask", png.to_str().unwrap(), "--out", tmp.path().join("o.kml").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("o.kml"), "{err}");
    assert!(!out.exists());
}

#[test]
fn ask_contour_runs_the_whole_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    let image = shared("rotterdam_port_rgb_4p5m_spacenet6.tif");
    let mask = tmp.path().join("mask.tif");
    let common = ["--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--window", "10,20,180,170"];
    let query = "where are the ships?";
    let mut args = vec!["ask", "--task", "pixel", "--json", "--out", mask.to_str().unwrap()];
    args.extend(common);
    args.push(query);
    let pixel = ok_json(&args);
    let gpkg = tmp.path().join("result.gpkg");
    let mask2 = tmp.path().join("mask2.tif");
    let mut args = vec![
        "ask",
        "--task",
        "contour",
        "--json",
        "--out",
        gpkg.to_str().unwrap(),
        "--mask-out",
        mask2.to_str().unwrap(),
    ];
    args.extend(common);
    args.push(query);
    let v = ok_json(&args);
    assert_eq!(v["contour"]["layers"], serde_json::json!([["polygons", 2], ["boxes", 2]]), "{v}");
    let ds = Dataset::open(&gpkg).unwrap();
    let mut polys = ds.layer_by_name("polygons").unwrap();
    assert_eq!(polys.spatial_ref().unwrap().auth_code().unwrap(), 32631);
    let area: f64 = polys.features().map(|f| f.geometry().unwrap().area()).sum();
    let px = 4.499968286507262f64;
    let mask_pixels = pixel["pixel"]["mask_pixels"].as_f64().unwrap();
    assert!((area - mask_pixels * px * px).abs() < 1e-3, "polygons cover the mask: {area} vs {mask_pixels} px");
    let f = polys.features().next().unwrap();
    let s = |name: &str| f.field_as_string(f.field_index(name).unwrap()).unwrap().unwrap_or_default();
    assert_eq!(s("task"), "contour");
    assert_eq!(s("query"), query);
    assert_eq!(s("reasoning"), v["think"].as_str().unwrap());
    assert_eq!(s("segmenter"), "watershed fallback (no SAM checkpoint)");
    assert_eq!(s("window"), "10,20,180,170");
    assert_eq!(s("weights_hash").len(), 12);
    assert!(s("model").contains("qwen2_5_vl_tiny_trained"));
    drop(f);
    // The boxes layer holds the boxes the model gave, in map coordinates.
    let mut boxes = ds.layer_by_name("boxes").unwrap();
    let env = boxes.features().next().unwrap().geometry().unwrap().envelope();
    let world = &v["boxes_world"][0]["bounds"];
    assert!(
        (env.MinX - world[0].as_f64().unwrap()).abs() < 1e-6 && (env.MaxY - world[3].as_f64().unwrap()).abs() < 1e-6
    );
    // The polygons rasterise back to the mask `ask --task pixel` wrote (same window, same frame).
    let m = read_mask(&mask).unwrap();
    let georef = m.georef.clone().unwrap();
    let geoms: Vec<gdal::vector::Geometry> = polys.features().map(|f| f.geometry().unwrap().clone()).collect();
    let back = gis::rasterize(m.width, m.height, &georef.geotransform, &geoms);
    assert_eq!(back.iter().map(|&v| u8::from(v)).collect::<Vec<_>>(), m.data);
    // --mask-out wrote the same mask, georeferenced the same way.
    assert_eq!(read_mask(&mask2).unwrap(), m);
}
