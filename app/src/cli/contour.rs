//! `remote-reasoner polygonize`: a mask raster → georeferenced polygons with
//! holes (GeoPackage, Shapefile, GeoJSON, FlatGeobuf), and the options shared
//! with `ask --task contour`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use engine::contour::{Cleanup, CleanupReport, SimplifyMethod, Units, clean, line_map, polygonize_u8};
use engine::export::{ExportOptions, ExportReport, OutputCrs, export};
use engine::features::{Feature, FeatureSet, Geometry, Provenance};
use engine::geo::GeoTransform;
use engine::segment::Mask;
use engine::segment::output::{Georef, read_mask, write_mask};
use serde_json::json;

/// Cleanup, CRS and the extra line map: shared by `polygonize` and `ask --task contour`.
#[derive(Clone, Debug, Args)]
pub struct ContourArgs {
    /// Simplify with this tolerance (a distance, see --units). Default: exact pixel edges.
    #[arg(long, value_name = "T")]
    pub simplify: Option<f64>,
    /// vw: topology-preserving Visvalingam–Whyatt (removes vertices whose triangle
    /// is under T²); dp: Douglas–Peucker (no vertex moves more than T).
    #[arg(long, default_value = "vw", value_name = "vw|dp")]
    pub simplify_method: SimplifyMethod,
    /// Drop polygons smaller than this area (units²; holes subtracted).
    #[arg(long, value_name = "A")]
    pub min_area: Option<f64>,
    /// Fill holes smaller than this area (units²); with no value, every hole.
    #[arg(long, value_name = "A", num_args = 0..=1, default_missing_value = "inf")]
    pub fill_holes: Option<f64>,
    /// Units of --simplify, --min-area and --fill-holes: px (pixels of the mask) or map (the CRS's units).
    #[arg(long, value_enum, default_value = "px")]
    pub units: UnitsArg,
    /// CRS of the output: the raster's (raster) or longitude/latitude (epsg:4326;
    /// GeoJSON is then written as RFC 7946).
    #[arg(long, default_value = "raster", value_parser = parse_crs)]
    pub crs: OutputCrs,
    /// Also write the paper's line map (outer contours, 3 px black on white):
    /// .png, or .tif georeferenced like the mask.
    #[arg(long, value_name = "PNG|TIF")]
    pub line_map: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnitsArg {
    Px,
    Map,
}

fn parse_crs(s: &str) -> Result<OutputCrs, String> {
    match s.to_ascii_lowercase().as_str() {
        "raster" => Ok(OutputCrs::Raster),
        "epsg:4326" | "4326" | "wgs84" => Ok(OutputCrs::Wgs84),
        _ => Err(format!("'{s}': use raster or epsg:4326")),
    }
}

impl ContourArgs {
    pub fn cleanup(&self) -> anyhow::Result<Cleanup> {
        for (name, v) in
            [("--simplify", self.simplify), ("--min-area", self.min_area), ("--fill-holes", self.fill_holes)]
        {
            if v.is_some_and(|v| v.is_nan() || v < 0.0) {
                bail!("{name} must be a non-negative number");
            }
        }
        Ok(Cleanup {
            simplify: self.simplify.filter(|&t| t > 0.0).map(|t| (self.simplify_method, t)),
            min_area: self.min_area,
            fill_holes: self.fill_holes,
            units: match self.units {
                UnitsArg::Px => Units::Pixels,
                UnitsArg::Map => Units::Map,
            },
        })
    }

    pub fn export_options(&self, boxes: bool) -> ExportOptions {
        ExportOptions { format: None, crs: self.crs, polygons: true, boxes }
    }
}

#[derive(Debug, Args)]
pub struct PolygonizeArgs {
    /// Mask raster (band 1; non-zero and not nodata = object), e.g. from `segment` or `ask --task pixel`.
    #[arg(long)]
    pub mask: PathBuf,
    /// Output: .gpkg, .shp, .geojson or .fgb (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub contour: ContourArgs,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

/// Map length of one pixel of `gt` (geometric mean of the sides).
pub fn map_pixel(gt: &GeoTransform) -> f64 {
    let g = gt.0;
    (g[1] * g[5] - g[2] * g[4]).abs().sqrt()
}

pub fn report_json(cleanup: &CleanupReport, export: &ExportReport) -> serde_json::Value {
    json!({
        "polygons_traced": cleanup.polygons_before,
        "polygons": cleanup.polygons_after,
        "vertices_traced": cleanup.vertices_before,
        "vertices": cleanup.vertices_after,
        "holes_filled": cleanup.holes_filled,
        "polygons_dropped": cleanup.polygons_dropped,
        "rings_collapsed": cleanup.rings_collapsed,
        "simplified_otherwise": cleanup.simplified_otherwise,
        "kept_exact": cleanup.kept_exact,
        "files": export.files,
        "layers": export.layers,
        "skipped": export.skipped,
        "notes": export.notes,
    })
}

/// One line per fact a user wants after an export.
pub fn print_report(out: &mut impl Write, cleanup: &CleanupReport, export: &ExportReport) -> std::io::Result<()> {
    write!(out, "{} polygon(s), {} vertices", cleanup.polygons_after, cleanup.vertices_after)?;
    if cleanup.vertices_after != cleanup.vertices_before || cleanup.polygons_after != cleanup.polygons_before {
        write!(out, " (traced: {} polygon(s), {} vertices", cleanup.polygons_before, cleanup.vertices_before)?;
        if cleanup.holes_filled > 0 {
            write!(out, "; {} hole(s) filled", cleanup.holes_filled)?;
        }
        if cleanup.polygons_dropped > 0 {
            write!(out, "; {} below the minimum area", cleanup.polygons_dropped)?;
        }
        if cleanup.rings_collapsed > 0 {
            write!(out, "; {} ring(s) collapsed by simplification", cleanup.rings_collapsed)?;
        }
        if cleanup.simplified_otherwise > 0 {
            write!(
                out,
                "; {} simplified topology-preserving, as Douglas–Peucker made them invalid",
                cleanup.simplified_otherwise
            )?;
        }
        if cleanup.kept_exact > 0 {
            write!(out, "; {} kept exact, as no simplification kept them valid", cleanup.kept_exact)?;
        }
        write!(out, ")")?;
    }
    writeln!(out)?;
    for (layer, n) in &export.layers {
        writeln!(out, "  layer {layer}: {n} feature(s)")?;
    }
    for f in &export.files {
        writeln!(out, "  wrote {}", f.display())?;
    }
    for s in &export.skipped {
        writeln!(out, "  skipped: {s}")?;
    }
    for n in &export.notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(())
}

/// Writes the paper's line map of `mask` (georeferenced when `georef` is given and the path is a GeoTIFF).
pub fn write_line_map(path: &Path, mask: &Mask, georef: Option<&Georef>) -> anyhow::Result<()> {
    let lines = line_map(mask);
    // Black lines on white: the line pixels are 0.
    let inverted = Mask { width: lines.width, height: lines.height, data: lines.data.iter().map(|&v| !v).collect() };
    write_mask(path, &inverted, georef.filter(|_| engine::segment::output::is_geotiff(path)))?;
    Ok(())
}

pub fn polygonize(args: &PolygonizeArgs) -> anyhow::Result<()> {
    let cleanup = args.contour.cleanup()?;
    let t0 = Instant::now();
    let mask = read_mask(&args.mask)?;
    let read_ms = t0.elapsed().as_secs_f64() * 1e3;
    let gt = mask.georef.as_ref().map(|g| GeoTransform(g.geotransform));
    if cleanup.units == Units::Map && gt.is_none() {
        bail!("{}: --units map needs a georeferenced mask; this one has no geotransform", args.mask.display());
    }
    let t1 = Instant::now();
    let traced = polygonize_u8(mask.width, mask.height, &mask.data);
    let trace_ms = t1.elapsed().as_secs_f64() * 1e3;
    let (polygons, cleaned) = clean(traced.polygons, &cleanup, gt.as_ref().map_or(1.0, map_pixel));
    let provenance = Provenance::manual("polygonize", &args.mask.display().to_string(), None, &"");
    let simplify = cleanup.tolerance_px(gt.as_ref().map_or(1.0, map_pixel)).map(|t| (args.contour.simplify_method, t));
    let polygons = polygons
        .into_iter()
        .enumerate()
        .map(|(i, p)| Feature {
            simplify,
            ..Feature::new(i as i64 + 1, Geometry::Polygons(geo::MultiPolygon::new(vec![p])), provenance.clone())
        })
        .collect();
    let set = FeatureSet {
        geotransform: gt,
        crs_wkt: mask.georef.as_ref().and_then(|g| g.crs_wkt.clone()),
        boxes: Vec::new(),
        polygons,
    };
    let t2 = Instant::now();
    let written = export(&args.out, &set, &args.contour.export_options(false), &mut |_, _| true)?;
    let export_ms = t2.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = &args.contour.line_map {
        let m = Mask { width: mask.width, height: mask.height, data: mask.data.iter().map(|&v| v != 0).collect() };
        write_line_map(path, &m, mask.georef.as_ref())?;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut report = report_json(&cleaned, &written);
        report["georeferenced"] = json!(gt.is_some());
        report["line_map"] = json!(args.contour.line_map);
        report["timings"] = json!({ "read_ms": read_ms, "trace_ms": trace_ms, "export_ms": export_ms });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_report(&mut out, &cleaned, &written)?;
        if gt.is_none() {
            writeln!(out, "  note: {} is not georeferenced: coordinates are pixels (y down)", args.mask.display())?;
        }
    }
    Ok(())
}
