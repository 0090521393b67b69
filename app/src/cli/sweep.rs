//! `remote-reasoner sweep`: a question over a whole scene, tile by tile, with
//! bounded parallel requests, merged across seams, resumable; written to GIS.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use engine::base::Goal;
use engine::export::{ExportOptions, export};
use engine::features::{Feature, FeatureSet, Geometry};
use engine::geo::GeoTransform;
use engine::pipeline::Backend;
use engine::raster::{Raster, RenderParams};
use engine::sweep::{SweepOptions, sweep};
use serde_json::json;

use super::args::{BackendArgs, open_backend};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The scene (any GDAL raster).
    #[arg(long)]
    pub image: PathBuf,
    /// What to look for.
    #[arg(long)]
    pub query: String,
    #[arg(long, default_value = "contour")]
    pub task: Goal,
    /// Tile side in pixels of the level read.
    #[arg(long, default_value_t = 1024)]
    pub tile: u64,
    /// Overlap between tiles in pixels of the level read (objects on a seam are seen whole by one tile).
    #[arg(long, default_value_t = 128)]
    pub overlap: u64,
    /// Overview level: 0 = full resolution, L = 1/2^L (tiles then cover 2^L × more ground).
    #[arg(long, default_value_t = 0)]
    pub level: u32,
    /// Only this full-resolution window: x,y,width,height.
    #[arg(long)]
    pub aoi: Option<String>,
    /// Requests at a time (an endpoint serves several; a local checkpoint answers one).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// SAM checkpoint for --task pixel/contour (default: the watershed fallback).
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
    /// SAM 2.1's image encoder: auto (bf16 products on CPUs with AVX-512 BF16, else
    /// f32), f32 (as the reference computes) or bf16.
    #[arg(long, env = "RR_SAM_PRECISION", default_value = "auto")]
    pub sam_precision: engine::models::EncoderPrecision,
    /// Pixel budget of the model's image per tile (default 802816, as in training).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Output: .gpkg, .shp, .geojson or .fgb (boxes and polygons). Progress is kept
    /// beside it in OUT.sweep.jsonl: rerunning the same sweep resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    drop(raster);
    let opts = SweepOptions {
        query: args.query.clone(),
        task: args.task.expect_one_of(&[Goal::Region, Goal::Pixel, Goal::Contour], "sweep")?,
        tile: args.tile,
        overlap: args.overlap,
        level: args.level,
        aoi: args.aoi.as_deref().map(super::args::parse_window).transpose()?,
        max_pixels: args.max_pixels.unwrap_or(engine::reasoner::processor::TRAINING_MAX_PIXELS),
    };
    let (first, _, _) = open_backend(&args.backend)?;
    let mut backends: Vec<Backend> = match first {
        Backend::Remote(r) => (0..args.concurrency.max(1)).map(|_| Backend::Remote(r.clone())).collect(),
        local => {
            if args.concurrency > 1 {
                eprintln!("note: a local checkpoint answers one tile at a time (--concurrency applies to --endpoint)");
            }
            vec![local]
        }
    };
    let device = args.backend.device.open()?;
    let sam = args.sam.clone();
    let make_segmenter = || engine::segment::load_segmenter(sam.as_deref(), &device, args.sam_precision);
    let params = RenderParams::default_for(&info);
    let mut last = 0;
    let mut progress = |done: usize, total: usize, eta: f64| {
        let pct = done * 100 / total.max(1);
        if pct >= last + 5 || done == total {
            last = pct;
            eprintln!("{done}/{total} tiles, ETA {eta:.0} s");
        }
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let result = sweep(&args.image, &params, &opts, &mut backends, &make_segmenter, &args.out, &cancel, &mut progress)?;
    let origin = engine::pipeline::Origin {
        model: super::args::model_label(&args.backend, &backends[0]),
        weights_hash: String::new(),
        source: args.image.display().to_string(),
    };
    let provenance = result.provenance(&opts, &origin);
    let feature = |i: usize, g| Feature::new(i as i64 + 1, g, provenance.clone());
    let boxes: Vec<Feature> = result.boxes.iter().enumerate().map(|(i, b)| feature(i, Geometry::Box(*b))).collect();
    let polygons: Vec<Feature> = result
        .polygons
        .iter()
        .enumerate()
        .map(|(i, p)| feature(i, Geometry::Polygons(geo::MultiPolygon::new(vec![p.clone()]))))
        .collect();
    let set = FeatureSet {
        geotransform: info.geotransform.map(GeoTransform),
        crs_wkt: info.crs_wkt.clone(),
        boxes,
        polygons,
    };
    let written = export(
        &args.out,
        &set,
        &ExportOptions { boxes: true, polygons: opts.task != Goal::Region, ..Default::default() },
        &mut |_, _| true,
    )
    .with_context(|| format!("{}: cannot write the result", args.out.display()))?;
    let raw_boxes: usize = result.tiles.iter().map(|t| t.boxes.len()).sum();
    let raw_polygons: usize = result.tiles.iter().map(|t| t.polygons.len()).sum();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "tiles": result.tiles.len(),
                "processed": result.processed,
                "resumed": result.tiles.len() - result.processed,
                "boxes_raw": raw_boxes,
                "boxes": result.boxes.len(),
                "polygons_raw": raw_polygons,
                "polygons": result.polygons.len(),
                "layers": written.layers,
                "files": written.files,
                "progress": engine::sweep::progress_path(&args.out),
            }))?
        );
    } else {
        println!(
            "{} tiles ({} this run, {} from the progress file): {} boxes → {} after merging seams; {} polygon parts → {}",
            result.tiles.len(),
            result.processed,
            result.tiles.len() - result.processed,
            raw_boxes,
            result.boxes.len(),
            raw_polygons,
            result.polygons.len()
        );
        for f in &written.files {
            println!("  wrote {}", f.display());
        }
    }
    Ok(())
}
