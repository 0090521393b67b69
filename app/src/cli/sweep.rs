//! `remote-reasoner sweep`: a question over a whole scene, tile by tile, with
//! bounded parallel requests, merged across seams, resumable; written to GIS.
//! `--segmenter sam3 --text "ship"`: every instance of a concept instead (SAM 3
//! alone, no reasoner), one feature per instance with its score.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use engine::base::Goal;
use engine::export::{ExportOptions, export};
use engine::features::{Feature, FeatureSet, Geometry};
use engine::geo::GeoTransform;
use engine::pipeline::{Backend, ConceptQuery};
use engine::raster::{Raster, RenderParams};
use engine::sweep::{SweepOptions, SweepResult, sweep, sweep_concept};
use serde_json::json;

use super::args::{BackendArgs, open_backend};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The scene (any GDAL raster).
    #[arg(long)]
    pub image: PathBuf,
    /// What to look for (the reasoner's question).
    #[arg(long)]
    pub query: Option<String>,
    /// sam (the reasoner's boxes through SAM / the fallback) or sam3 (a concept
    /// sweep: every instance of --text in every tile, no reasoner).
    #[arg(long, default_value = "sam", value_parser = ["sam", "sam3"])]
    pub segmenter: String,
    /// The concept for --segmenter sam3: a short noun phrase ("ship").
    #[arg(long, conflicts_with = "query")]
    pub text: Option<String>,
    /// An example of the concept (raster pixels x1,y1,x2,y2; ,- for a
    /// counter-example), used by the tiles it lies in. Repeat for several.
    #[arg(long = "exemplar", value_name = "X1,Y1,X2,Y2[,-]", allow_hyphen_values = true, requires = "text")]
    pub exemplars: Vec<String>,
    /// SAM 3 checkpoint directory, for --segmenter sam3.
    #[arg(long, env = "RR_SAM3")]
    pub sam3: Option<PathBuf>,
    /// SAM 3: keep instances scoring at least this (0–1).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// SAM 3: within a tile, an instance whose box overlaps a better one by more than this IoU is a duplicate.
    #[arg(long, default_value_t = 0.6)]
    pub nms: f64,
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

/// The concept sweep's query, when --segmenter sam3 asks for one.
fn concept(args: &SweepArgs) -> anyhow::Result<Option<ConceptQuery>> {
    match (args.segmenter.as_str(), &args.text) {
        ("sam3", Some(text)) => Ok(Some(ConceptQuery {
            text: text.trim().to_owned(),
            exemplars: args.exemplars.iter().map(|e| super::find::parse_exemplar(e)).collect::<anyhow::Result<_>>()?,
            options: super::find::find_options(args.threshold, args.nms)?,
        })),
        ("sam3", None) => bail!("--segmenter sam3 sweeps a concept: give it with --text (e.g. --text ship)"),
        (_, Some(_)) => bail!("--text is the concept of a SAM 3 sweep: add --segmenter sam3"),
        _ if args.query.as_deref().is_none_or(|q| q.trim().is_empty()) => {
            bail!("say what to look for: --query \"…\" (the reasoner), or --segmenter sam3 --text ship (SAM 3)")
        }
        _ => Ok(None),
    }
}

pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    let concept = concept(args)?;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    drop(raster);
    let opts = SweepOptions {
        query: concept.as_ref().map(|c| c.text.clone()).or_else(|| args.query.clone()).unwrap_or_default(),
        task: if concept.is_some() {
            Goal::Contour
        } else {
            args.task.expect_one_of(&[Goal::Region, Goal::Pixel, Goal::Contour], "sweep")?
        },
        tile: args.tile,
        overlap: args.overlap,
        level: args.level,
        aoi: args.aoi.as_deref().map(super::args::parse_window).transpose()?,
        max_pixels: args.max_pixels.unwrap_or(engine::reasoner::processor::TRAINING_MAX_PIXELS),
        concept,
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut last = 0;
    let mut progress = |done: usize, total: usize, eta: f64| {
        let pct = done * 100 / total.max(1);
        if pct >= last + 5 || done == total {
            last = pct;
            eprintln!("{done}/{total} tiles, ETA {eta:.0} s");
        }
    };
    let params = RenderParams::default_for(&info);
    let (result, origin) = if opts.concept.is_some() {
        let dir = args.sam3.as_deref().context("--segmenter sam3 needs SAM 3: --sam3 DIR (or RR_SAM3)")?;
        let mut seg = engine::segment::concept::ConceptSegmenter::load(dir, &args.backend.device.open()?)?;
        let result = sweep_concept(&args.image, &params, &opts, &mut seg, &args.out, &cancel, &mut progress)?;
        let origin = engine::pipeline::Origin {
            model: dir.display().to_string(),
            weights_hash: engine::hub::weights_fingerprint(dir).unwrap_or_default(),
            source: args.image.display().to_string(),
        };
        (result, origin)
    } else {
        reasoned(args, &opts, &params, &cancel, &mut progress)?
    };
    write(args, &opts, &info, &result, &origin)
}

/// The reasoner's sweep: one worker per backend (an endpoint serves several).
fn reasoned(
    args: &SweepArgs,
    opts: &SweepOptions,
    params: &RenderParams,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &mut engine::sweep::Progress<'_>,
) -> anyhow::Result<(SweepResult, engine::pipeline::Origin)> {
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
    let result = sweep(&args.image, params, opts, &mut backends, &make_segmenter, &args.out, cancel, progress)?;
    let origin = engine::pipeline::Origin {
        model: super::args::model_label(&args.backend, &backends[0]),
        weights_hash: String::new(),
        source: args.image.display().to_string(),
    };
    Ok((result, origin))
}

/// The merged result, exported, and the report.
fn write(
    args: &SweepArgs,
    opts: &SweepOptions,
    info: &engine::raster::RasterInfo,
    result: &SweepResult,
    origin: &engine::pipeline::Origin,
) -> anyhow::Result<()> {
    let gt = info.geotransform.map(GeoTransform);
    let set = if opts.concept.is_some() {
        let mut features = result.features(opts, origin);
        for (i, f) in features.iter_mut().enumerate() {
            f.id = i as u64 + 1;
        }
        engine::edit::feature_set(&features, gt, info.crs_wkt.clone())
    } else {
        let provenance = result.provenance(opts, origin);
        let feature = |i: usize, g| Feature::new(i as i64 + 1, g, provenance.clone());
        let boxes: Vec<Feature> = result.boxes.iter().enumerate().map(|(i, b)| feature(i, Geometry::Box(*b))).collect();
        let polygons: Vec<Feature> = result
            .polygons
            .iter()
            .enumerate()
            .map(|(i, p)| feature(i, Geometry::Polygons(geo::MultiPolygon::new(vec![p.clone()]))))
            .collect();
        FeatureSet { geotransform: gt, crs_wkt: info.crs_wkt.clone(), boxes, polygons }
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
                "instances": result.instances.len(),
                "segmenter": result.segmenter,
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
