//! `remote-reasoner bench contours`: tracing a large object mask into polygons,
//! side by side with GDAL's own `GDALPolygonize` in the same process, and
//! exporting ~100k polygons to GeoPackage. Writes the mask and a GeoJSON of the
//! exported features into `--work` so that `tools/bench_contours.py` can time
//! OpenCV `findContours`, `gdal_polygonize.py` and `ogr2ogr` on the same data.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use engine::contour::polygonize_u8;
use engine::export::{ExportOptions, export};
use engine::features::{Feature, FeatureSet, Geometry, Provenance};
use engine::geo::GeoTransform;
use engine::synthetic::{GEOTRANSFORM, object_mask, write_mask_geotiff};
use gdal::vector::{FieldDefn, LayerAccess, LayerOptions, OGRFieldType};
use serde_json::json;

#[derive(Debug, Args)]
pub struct ContoursBenchArgs {
    /// Directory for the mask and the exports (created).
    #[arg(long)]
    pub work: PathBuf,
    /// Mask side in pixels.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Objects in the polygonize mask.
    #[arg(long, default_value_t = 1000)]
    pub objects: usize,
    /// Polygons exported to GeoPackage.
    #[arg(long, default_value_t = 100_000)]
    pub features: usize,
    /// Repetitions of each timed step (the minimum is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

fn min_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// `GDALPolygonize` of band 1 of `path`, masked by itself (only objects become
/// polygons, as ours), into an in-memory layer; returns the polygon count.
fn gdal_polygonize(path: &std::path::Path) -> anyhow::Result<u64> {
    let ds = gdal::Dataset::open(path)?;
    let band = ds.rasterband(1)?;
    let mem = gdal::DriverManager::get_driver_by_name("Memory")?;
    let mut out = mem.create_vector_only("")?;
    let layer = out.create_layer(LayerOptions {
        name: "p",
        ty: gdal_sys::OGRwkbGeometryType::wkbPolygon,
        ..Default::default()
    })?;
    FieldDefn::new("v", OGRFieldType::OFTInteger)?.add_to_layer(&layer)?;
    // SAFETY: the band and layer handles stay alive (borrowed above) for the
    // duration of the call; null options/progress are allowed by the C API.
    let rc = unsafe {
        let h = band.c_rasterband();
        gdal_sys::GDALPolygonize(h, h, layer.c_layer(), 0, std::ptr::null_mut(), None, std::ptr::null_mut())
    };
    if rc != gdal_sys::CPLErr::CE_None {
        bail!("GDALPolygonize failed ({rc})");
    }
    Ok(layer.feature_count())
}

pub fn run(args: &ContoursBenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work).with_context(|| format!("cannot create {}", args.work.display()))?;
    let n = args.size;
    let mask_path = args.work.join("mask.tif");
    let mask = object_mask(n, args.objects, 7);
    write_mask_geotiff(&mask_path, n, mask.clone())?;

    // Polygonize: ours in memory, and GDAL in the same process on the same file.
    let traced = polygonize_u8(n, n, &mask);
    let holes: usize = traced.polygons.iter().map(|p| p.interiors().len()).sum();
    let ours_ms = min_ms(args.runs, || {
        std::hint::black_box(polygonize_u8(n, n, &mask));
        Ok(())
    })?;
    let mut gdal_count = 0;
    let gdal_ms = min_ms(args.runs, || {
        gdal_count = gdal_polygonize(&mask_path)?;
        Ok(())
    })?;
    let read_ms = min_ms(args.runs, || {
        std::hint::black_box(engine::segment::output::read_mask(&mask_path)?);
        Ok(())
    })?;

    // Export: ~`features` polygons (many small objects) with provenance.
    let small = object_mask(n, args.features, 11);
    let mut polys = polygonize_u8(n, n, &small).polygons;
    polys.truncate(args.features);
    let provenance = Arc::new(Provenance {
        task: "contour".into(),
        query: "which buildings are storage tanks?".into(),
        answer: "[[10,20,30,40]]".into(),
        model: "RemoteReasoner-7B".into(),
        weights_hash: "0123456789ab".into(),
        segmenter: "sam2.1_hiera_large".into(),
        reasoning: "Storage tanks are round, bright and grouped near the quays; ".repeat(3),
        source: "scene.tif".into(),
        window: None,
        created_at: Provenance::now(),
        ..Provenance::default()
    });
    let features: Vec<Feature> = polys
        .into_iter()
        .enumerate()
        .map(|(i, p)| Feature {
            score: Some(0.9),
            object_score: Some(5.0),
            ..Feature::new(i as i64 + 1, Geometry::Polygons(geo::MultiPolygon::new(vec![p])), provenance.clone())
        })
        .collect();
    let vertices: usize = features
        .iter()
        .map(|f| match &f.geometry {
            Geometry::Polygons(mp) => mp.0.iter().map(engine::contour::vertex_count).sum(),
            Geometry::Box(_) => 4,
        })
        .sum();
    let set = FeatureSet {
        geotransform: Some(GeoTransform(GEOTRANSFORM)),
        crs_wkt: Some(gdal::spatial_ref::SpatialRef::from_epsg(32631)?.to_wkt()?),
        boxes: Vec::new(),
        polygons: features,
    };
    let opts = ExportOptions { boxes: false, ..Default::default() };
    let gpkg = args.work.join("ours.gpkg");
    let export_ms = min_ms(args.runs, || {
        export(&gpkg, &set, &opts, &mut |_, _| true)?;
        Ok(())
    })?;
    let geojson = args.work.join("features.geojson");
    let t = Instant::now();
    export(&geojson, &set, &opts, &mut |_, _| true)?;
    let geojson_ms = t.elapsed().as_secs_f64() * 1e3;

    let report = json!({
        "size": n,
        "objects": args.objects,
        "polygons": traced.polygons.len(),
        "holes": holes,
        "vertices": traced.vertices,
        "gdal_polygons": gdal_count,
        "mask": mask_path,
        "polygonize_ms": ours_ms,
        "gdal_polygonize_ms": gdal_ms,
        "read_mask_ms": read_ms,
        "export_features": set.polygons.len(),
        "export_vertices": vertices,
        "export_gpkg_ms": export_ms,
        "export_geojson_ms": geojson_ms,
        "geojson": geojson,
        "runs": args.runs,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
