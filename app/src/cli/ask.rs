//! `remote-reasoner ask`: one question to a RemoteReasoner checkpoint about a
//! window of a raster, the reasoning streamed to the terminal or a JSON report.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use engine::base::{Goal, PixelBox, Window};
use engine::contour::ImageFrame;
use engine::export::ExportReport;
use engine::features::FeatureSet;
use engine::geo::GeoTransform;
use engine::pipeline::{Backend, Origin, Outcome, Progress, Question, WindowImage};
use engine::raster::{Raster, RasterInfo, RenderParams};
use engine::reasoner::AskOptions;
use engine::reasoner::generate::Decoding;
use engine::segment::output::Georef;
use serde_json::json;

use super::args::{BackendArgs, model_label, open_backend};

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Raster (any GDAL format, PNG and JPEG included).
    #[arg(long)]
    pub image: PathBuf,
    /// Window of the raster in pixels: x,y,width,height (default: all of it).
    #[arg(long)]
    pub window: Option<String>,
    /// region (boxes), pixel (boxes → masks), contour (boxes → masks → polygons), vqa or caption.
    #[arg(long, default_value = "region")]
    pub task: Goal,
    /// SAM checkpoint for --task pixel and contour: SAM 2.1 (`sam2.1_hiera_*.pt`), or SAM v1 /
    /// MobileSAM (`sam_vit_*.pth`, `mobile_sam.pt`); without one, the watershed fallback.
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
    /// SAM 2.1's image encoder: auto (bf16 products on CPUs with AVX-512 BF16, else
    /// f32), f32 (as the reference computes) or bf16.
    #[arg(long, env = "RR_SAM_PRECISION", default_value = "auto")]
    pub sam_precision: engine::models::EncoderPrecision,
    /// --task pixel: the mask (.png, or .tif georeferenced like the raster);
    /// --task contour: the features (.gpkg, .shp, .geojson or .fgb; boxes and polygons).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// --task region, pixel or contour: also save the results as a workbench
    /// project (GeoPackage) that `remote-reasoner PROJECT.gpkg` opens for editing.
    #[arg(long, value_name = "PROJECT.gpkg")]
    pub save_project: Option<PathBuf>,
    /// --task contour: also write the merged mask (.tif georeferenced like the raster, or .png).
    #[arg(long, value_name = "MASK")]
    pub mask_out: Option<PathBuf>,
    #[command(flatten)]
    pub contour: super::contour::ContourArgs,
    #[command(flatten)]
    pub find: super::find::FindAllArgs,
    /// Pixel budget of the image the model sees (default 802816, as in training).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Cap on generated tokens (default: generation_config.json, else 1024).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Greedy decoding (overrides the checkpoint's settings).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sample with this temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Print one JSON object instead of streaming the reasoning.
    #[arg(long)]
    pub json: bool,
    /// What to ask (ignored by --task caption).
    #[arg(default_value = "")]
    pub query: String,
}

impl AskArgs {
    /// The decoding settings the flags ask for, if any differ from the checkpoint's.
    fn decoding(&self, backend: &Backend) -> Option<Decoding> {
        let custom = self.greedy
            || self.temperature.is_some()
            || self.top_p.is_some()
            || self.top_k.is_some()
            || self.repetition_penalty.is_some();
        if !custom {
            return None;
        }
        let mut d = match backend {
            Backend::Local(r) => {
                r.decoding_for(&AskOptions { max_new_tokens: self.max_new_tokens, ..Default::default() })
            }
            // The server's defaults are not known here: greedy unless the flags say otherwise.
            Backend::Remote(_) => Decoding::greedy(self.max_new_tokens.unwrap_or(1024)),
        };
        if self.greedy {
            (d.temperature, d.top_p, d.top_k) = (None, None, None);
        }
        if let Some(t) = self.temperature {
            d.temperature = Some(t);
        }
        d.top_p = self.top_p.or(d.top_p);
        d.top_k = self.top_k.or(d.top_k);
        d.repetition_penalty = self.repetition_penalty.unwrap_or(d.repetition_penalty);
        d.seed = self.seed;
        Some(d)
    }
}

/// What the pixel and contour levels wrote or measured, for the report.
#[derive(Default)]
struct Written {
    /// The mask file was georeferenced.
    georeferenced: bool,
    segment_ms: f64,
    contour: Option<(engine::contour::CleanupReport, ExportReport, f64)>,
}

pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    check(args)?;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let window = match &args.window {
        Some(w) => super::args::parse_window(w)?,
        None => Window::full(info.width, info.height),
    };
    let cleanup = args.contour.cleanup()?;
    if args.task == Goal::Contour && cleanup.units == engine::contour::Units::Map && info.geotransform.is_none() {
        bail!("{}: --units map needs a georeferenced raster; this one has no geotransform", args.image.display());
    }
    let max_pixels = args.max_pixels.unwrap_or(engine::reasoner::processor::TRAINING_MAX_PIXELS);
    // One read, at the model's budget: SAM segments the image the model saw.
    let img = engine::pipeline::read_window(&raster, window, &RenderParams::default_for(&info), max_pixels)?;
    drop(raster);

    let (mut backend, load_ms, precision) = open_backend(&args.backend)?;
    let mut segmenter = engine::segment::load_segmenter(
        args.sam.as_deref().filter(|_| args.task.segments()),
        &args.backend.device.open()?,
        args.sam_precision,
    )?;
    let options = AskOptions {
        max_pixels: Some(max_pixels),
        decoding: args.decoding(&backend),
        max_new_tokens: args.max_new_tokens,
    };
    let question = Question { goal: args.task, query: args.query.clone(), options };
    // Fingerprinting local weights reads them: only when the features are kept.
    let kept = args.task == Goal::Contour || args.save_project.is_some() || args.find.find_all;
    let origin = Origin {
        model: model_label(&args.backend, &backend),
        weights_hash: if kept { backend.weights_hash() } else { String::new() },
        source: args.image.display().to_string(),
    };
    if args.find.find_all {
        return super::find::ask_find_all(args, &img, &info, &mut backend, &origin, &question);
    }
    let (stream, mut out) = (!args.json, std::io::stdout().lock());
    let mut segmenting = None;
    let outcome = engine::pipeline::run(&mut backend, segmenter.as_mut(), &img, None, &question, &origin, |p| {
        match p {
            Progress::Text(t) if stream => {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
            Progress::Segmenting => segmenting = Some(Instant::now()),
            _ => {}
        }
        ControlFlow::Continue(())
    })?;
    let mut written = write_outputs(args, &outcome, &info, &img, &cleanup)?;
    written.segment_ms = segmenting.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
    if args.json {
        let report = report_json(args, &outcome, &info, &written, (&backend, load_ms, &precision));
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the report")?;
        writeln!(out)?;
        return Ok(());
    }
    print_text(&mut out, args, &outcome, &info, &written)
}

/// The flag combinations that cannot work, refused before anything is loaded.
fn check(args: &AskArgs) -> anyhow::Result<()> {
    if args.task != Goal::Caption && args.query.trim().is_empty() {
        bail!("a query is needed for --task {} (e.g. \"where can planes take off?\")", args.task);
    }
    if args.find.find_all {
        if args.task != Goal::Region {
            bail!("--find-all takes the reasoner's boxes (--task region), not --task {}", args.task);
        }
        if args.save_project.is_some() || args.contour.line_map.is_some() {
            bail!("--find-all writes its features to --out and its mask to --mask-out");
        }
        return Ok(());
    }
    if args.out.is_some() && !args.task.segments() {
        bail!("--out writes the mask of --task pixel or the features of --task contour");
    }
    if (args.contour.line_map.is_some() || args.mask_out.is_some()) && args.task != Goal::Contour {
        bail!("--line-map and --mask-out are written by --task contour");
    }
    if args.save_project.is_some() && !args.task.grounds() {
        bail!("--save-project keeps boxes and polygons: use --task region, pixel or contour");
    }
    Ok(())
}

/// The mask (pixel), the cleaned and exported polygons, line map and mask (contour), the project.
fn write_outputs(
    args: &AskArgs,
    outcome: &Outcome,
    info: &RasterInfo,
    img: &WindowImage,
    cleanup: &engine::contour::Cleanup,
) -> anyhow::Result<Written> {
    let mut written = Written::default();
    let gt = info.geotransform.map(GeoTransform);
    if let Some(seg) = &outcome.segments {
        if let (Some(out), Goal::Pixel) = (&args.out, args.task) {
            written.georeferenced = super::segment::save_mask(out, &seg.merged, info, img)?;
        }
        if args.task == Goal::Contour {
            let t = Instant::now();
            let frame = ImageFrame { window: seg.window, image_size: seg.image_size };
            let map_pixel = gt.as_ref().map_or(1.0, super::contour::map_pixel);
            let c = engine::contour::contour_task(&seg.per_box, &frame, cleanup, map_pixel, &outcome.provenance);
            let report = match &args.out {
                Some(out) => {
                    let set = FeatureSet {
                        geotransform: gt,
                        crs_wkt: info.crs_wkt.clone(),
                        boxes: c.boxes,
                        polygons: c.polygons,
                    };
                    engine::export::export(out, &set, &args.contour.export_options(true), &mut |_, _| true)?
                }
                None => ExportReport::default(),
            };
            if let Some(path) = &args.mask_out {
                super::segment::save_mask(path, &seg.merged, info, img)?;
            }
            if let Some(path) = &args.contour.line_map {
                let size = (seg.merged.width, seg.merged.height);
                let georef = info.geotransform.map(|g| Georef::for_window(g, info.crs_wkt.clone(), seg.window, size));
                super::contour::write_line_map(path, &seg.merged, georef.as_ref())?;
            }
            written.contour = Some((c.report, report, t.elapsed().as_secs_f64() * 1e3));
        }
    }
    if let Some(path) = &args.save_project {
        let mut features = outcome.features.clone();
        for (i, f) in features.iter_mut().enumerate() {
            f.id = i as u64 + 1;
        }
        let meta = engine::project::ProjectMeta {
            raster: Some(std::path::absolute(&args.image).unwrap_or_else(|_| args.image.clone())),
            geotransform: info.geotransform,
            crs_wkt: info.crs_wkt.clone(),
            ..Default::default()
        };
        engine::project::save(path, &meta, &features)?;
    }
    Ok(written)
}

/// A box's four corners in map coordinates.
fn corners(b: &PixelBox, gt: &GeoTransform) -> [(f64, f64); 4] {
    [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)].map(|(c, r)| gt.pixel_to_world(c, r))
}

/// `--json`: everything about the run in one object.
fn report_json(
    args: &AskArgs,
    o: &Outcome,
    info: &RasterInfo,
    written: &Written,
    (backend, load_ms, precision): (&Backend, f64, &str),
) -> serde_json::Value {
    let answer = &o.answer;
    let boxes_world = info.geotransform.map(GeoTransform).map(|gt| {
        let world = |b: &PixelBox| {
            let c = corners(b, &gt);
            let (xs, ys) = (c.map(|p| p.0), c.map(|p| p.1));
            let (min, max) = (
                |v: [f64; 4]| v.into_iter().fold(f64::INFINITY, f64::min),
                |v: [f64; 4]| v.into_iter().fold(f64::NEG_INFINITY, f64::max),
            );
            json!({ "bounds": [min(xs), min(ys), max(xs), max(ys)], "corners": c.map(|p| [p.0, p.1]) })
        };
        o.boxes.iter().map(world).collect::<Vec<_>>()
    });
    let window = o.window;
    json!({
        "model": backend.model_id(),
        "precision": precision,
        "device": args.backend.device.to_string(),
        "image": args.image,
        "window": [window.x, window.y, window.width, window.height],
        "task": args.task,
        "query": answer.query,
        "prompt": answer.prompt,
        "prompt_tokens": answer.prompt_tokens,
        "generated_token_ids": answer.generated_token_ids,
        "raw_text": answer.raw_text,
        "think": answer.think,
        "answer": answer.answer,
        "format_ok": answer.format_ok,
        "repairs": answer.repairs,
        "boxes_resized": answer.boxes_resized,
        "boxes": o.boxes.iter().map(PixelBox::to_array).collect::<Vec<_>>(),
        "boxes_world": boxes_world,
        "crs": info.crs_label(),
        "epsg": info.epsg,
        "resized": [answer.resized.0, answer.resized.1],
        "model_input": [answer.original.0, answer.original.1],
        "stop": answer.stop,
        "pixel": o.segments.as_ref().map(|r| json!({
            "method": r.method.to_string(),
            "mask_size": [r.merged.width, r.merged.height],
            "mask_pixels": r.merged.count(),
            "mask_sha256": r.merged.digest(),
            "out": args.out,
            "georeferenced": written.georeferenced,
            "masks": r.per_box.iter().map(|(b, s)| super::segment::segment_json(b, s)).collect::<Vec<_>>(),
            "segment_ms": written.segment_ms,
        })),
        "contour": written.contour.as_ref().map(|(c, report, ms)| {
            let mut r = super::contour::report_json(c, report);
            r["out"] = json!(args.out);
            r["line_map"] = json!(args.contour.line_map);
            r["contour_ms"] = json!(ms);
            r
        }),
        "timings": {
            "load_ms": load_ms,
            "preprocess_ms": answer.timings.preprocess_ms,
            "vision_ms": answer.timings.vision_ms,
            "prefill_ms": answer.timings.prefill_ms,
            "decode_ms": answer.timings.decode_ms,
            "ms_per_token": answer.timings.ms_per_token,
            "generated_tokens": answer.generated_token_ids.len(),
        },
    })
}

/// The report after the streamed reasoning.
fn print_text(
    out: &mut impl Write,
    args: &AskArgs,
    o: &Outcome,
    info: &RasterInfo,
    written: &Written,
) -> anyhow::Result<()> {
    let answer = &o.answer;
    writeln!(out)?;
    let speed = if answer.generated_token_ids.is_empty() {
        format!("reply streamed in {:.0} ms", answer.timings.prefill_ms + answer.timings.decode_ms)
    } else {
        let n = answer.generated_token_ids.len();
        format!("{n} tokens in {:.0} ms ({:.1} ms/token)", answer.timings.decode_ms, answer.timings.ms_per_token)
    };
    let (w, h, rw, rh) = (answer.original.0, answer.original.1, answer.resized.0, answer.resized.1);
    writeln!(out, "\n— {speed}; image {w}×{h} → {rw}×{rh}")?;
    if args.task.grounds() {
        writeln!(out, "{} box(es) in pixels of {}:", o.boxes.len(), args.image.display())?;
        for b in &o.boxes {
            write!(out, "  [{:.1}, {:.1}, {:.1}, {:.1}]", b.x1, b.y1, b.x2, b.y2)?;
            if let Some(gt) = info.geotransform.map(GeoTransform) {
                let c = corners(b, &gt);
                write!(out, "   {} corners {:?}", info.crs_label(), c.map(|p| (p.0.round(), p.1.round())))?;
            }
            writeln!(out)?;
        }
    } else {
        writeln!(out, "Answer: {}", answer.answer)?;
    }
    if let Some(r) = &o.segments {
        let to = match args.out.as_ref().filter(|_| args.task == Goal::Pixel) {
            Some(p) => format!(" → {}{}", p.display(), if written.georeferenced { " (georeferenced)" } else { "" }),
            None => String::new(),
        };
        writeln!(out, "{}: {} mask(s), {} px{to}", r.method, r.per_box.len(), r.merged.count())?;
    }
    if let Some((c, report, _)) = &written.contour {
        super::contour::print_report(out, c, report)?;
    }
    for r in &answer.repairs {
        writeln!(out, "  note: {r:?}")?;
    }
    Ok(())
}
