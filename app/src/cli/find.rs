//! `segment --text "ship" [--exemplar …]`: every instance of a concept in a
//! raster window with SAM 3 — a merged mask, and one feature per instance with
//! its score and provenance (concept, exemplars, SAM 3's weights).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use engine::base::Window;
use engine::contour::ImageFrame;
use engine::features::FeatureSet;
use engine::geo::GeoTransform;
use engine::pipeline::{
    Backend, ConceptQuery, Origin, Progress, Question, Reasoned, Scope, WindowImage, read_window, reason_then_find,
};
use engine::raster::{Raster, RasterInfo, RenderParams};
use engine::segment::concept::{ConceptSegmenter, Exemplar, FindOptions};
use serde_json::json;

use super::ask::AskArgs;
use super::segment::{SEGMENT_PIXEL_BUDGET, SegmentArgs, parse_box, save_mask};

/// `x1,y1,x2,y2` (an example) or `x1,y1,x2,y2,-` (a counter-example).
pub fn parse_exemplar(s: &str) -> anyhow::Result<Exemplar> {
    let (coords, positive) = match s.trim().rsplit_once(',') {
        Some((rest, "-")) => (rest, false),
        Some((rest, "+")) => (rest, true),
        _ => (s, true),
    };
    let bbox = parse_box(coords).with_context(|| format!("--exemplar '{s}'"))?;
    if !(bbox.x2 > bbox.x1 && bbox.y2 > bbox.y1) {
        bail!("--exemplar '{s}' is empty: x2 must exceed x1 and y2 exceed y1");
    }
    Ok(Exemplar { bbox, positive })
}

/// SAM 3's keep rules from the command line, checked.
pub fn find_options(threshold: f32, nms: f64) -> anyhow::Result<FindOptions> {
    if !(0.0..=1.0).contains(&threshold) {
        bail!("--threshold must be between 0 and 1 (it is {threshold})");
    }
    if !(0.0..=1.0).contains(&nms) {
        bail!("--nms must be an IoU between 0 and 1 (it is {nms})");
    }
    Ok(FindOptions { threshold, nms_iou: nms })
}

pub fn run(args: &SegmentArgs) -> anyhow::Result<()> {
    let exemplars = args.exemplars.iter().map(|e| parse_exemplar(e)).collect::<anyhow::Result<Vec<_>>>()?;
    let options = find_options(args.threshold, args.nms)?;
    let cleanup = args.contour.cleanup()?;
    let dir = args.sam3.as_deref().context("--text and --exemplar need SAM 3: --sam3 DIR (or RR_SAM3)")?;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let window = match &args.window {
        Some(w) => super::args::parse_window(w)?,
        None => Window::full(info.width, info.height),
    };
    for (i, e) in exemplars.iter().enumerate() {
        let b = e.bbox;
        let (wx1, wy1) = (window.x as f64, window.y as f64);
        let (wx2, wy2) = (wx1 + window.width as f64, wy1 + window.height as f64);
        if b.x2 <= wx1 || b.y2 <= wy1 || b.x1 >= wx2 || b.y1 >= wy2 {
            bail!("--exemplar {} ({},{},{},{}) lies outside the window", i + 1, b.x1, b.y1, b.x2, b.y2);
        }
    }
    let view = read_window(&raster, window, &RenderParams::default_for(&info), SEGMENT_PIXEL_BUDGET)?;
    drop(raster);
    let t = Instant::now();
    let mut seg = ConceptSegmenter::load(dir, &args.device.open()?)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    // Fingerprinting reads every weight: only when features (which carry it) are written.
    let hash =
        if args.features.is_some() { engine::hub::weights_fingerprint(dir).unwrap_or_default() } else { String::new() };
    let origin =
        Origin { model: dir.display().to_string(), weights_hash: hash, source: args.image.display().to_string() };
    let query = ConceptQuery { text: args.text.clone().unwrap_or_default(), exemplars, options };
    let t = Instant::now();
    let outcome = engine::pipeline::find(&mut seg, &view, None, &query, &origin)?;
    let find_ms = t.elapsed().as_secs_f64() * 1e3;
    let segments = outcome.segments.as_ref().context("SAM 3 returned no segments")?;
    let georeferenced = match &args.out {
        Some(out) => save_mask(out, &segments.merged, &info, &view)?,
        None => false,
    };
    let gt = info.geotransform.map(GeoTransform);
    let frame = ImageFrame { window: segments.window, image_size: segments.image_size };
    let map_pixel = gt.as_ref().map_or(1.0, super::contour::map_pixel);
    let c = engine::contour::contour_task(&segments.per_box, &frame, &cleanup, map_pixel, &outcome.provenance);
    let exported = match &args.features {
        Some(path) => {
            let set =
                FeatureSet { geotransform: gt, crs_wkt: info.crs_wkt.clone(), boxes: c.boxes, polygons: c.polygons };
            Some(
                engine::export::export(path, &set, &args.contour.export_options(true), &mut |_, _| true)
                    .with_context(|| format!("{}: cannot write the features", path.display()))?,
            )
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let instances: Vec<_> = segments
        .per_box
        .iter()
        .map(|(b, s)| {
            json!({"box": [b.x1, b.y1, b.x2, b.y2], "score": s.iou, "pixels": s.mask.count(), "sha256": s.mask.digest()})
        })
        .collect();
    if args.json {
        let report = json!({
            "method": segments.method.to_string(),
            "concept": outcome.provenance.concept,
            "exemplars": outcome.provenance.exemplars,
            "image": args.image,
            "window": [window.x, window.y, window.width, window.height],
            "mask_size": [segments.image_size.0, segments.image_size.1],
            "mask_pixels": segments.merged.count(),
            "out": args.out,
            "georeferenced": georeferenced,
            "threshold": options.threshold,
            "nms_iou": options.nms_iou,
            "instances": instances,
            "features": exported.as_ref().map(|e| json!({"files": e.files, "layers": e.layers, "skipped": e.skipped})),
            "weights_hash": outcome.provenance.segmenter_hash,
            "timings": {"load_ms": load_ms, "find_ms": find_ms},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{}: {} instance(s) of {:?} (score ≥ {}), {} of {}×{} pixels",
        segments.method,
        segments.per_box.len(),
        outcome.answer.query,
        options.threshold,
        segments.merged.count(),
        segments.image_size.0,
        segments.image_size.1
    )?;
    for (i, (b, s)) in segments.per_box.iter().enumerate() {
        let score = s.iou.unwrap_or_default();
        writeln!(
            out,
            "  {}: score {score:.3}, box {:.0},{:.0},{:.0},{:.0}, {} px",
            i + 1,
            b.x1,
            b.y1,
            b.x2,
            b.y2,
            s.mask.count()
        )?;
    }
    if let Some(path) = &args.out {
        writeln!(out, "  mask → {}{}", path.display(), if georeferenced { " (georeferenced)" } else { "" })?;
    }
    for f in exported.iter().flat_map(|e| &e.files) {
        writeln!(out, "  wrote {}", f.display())?;
    }
    Ok(())
}

/// `ask --find-all`: reasoning + concepts.
#[derive(Clone, Debug, clap::Args)]
pub struct FindAllArgs {
    /// Reasoning + concepts: the reasoner's boxes become SAM 3's exemplars and the
    /// concept the question and reasoning name its text, so every such instance
    /// is found, not only those the model listed (needs --sam3; --out takes the
    /// features, one per instance).
    #[arg(long, requires = "sam3")]
    pub find_all: bool,
    /// SAM 3 checkpoint directory, for --find-all.
    #[arg(long, env = "RR_SAM3")]
    pub sam3: Option<PathBuf>,
    /// The concept for SAM 3 (default: the one the question and reasoning name).
    #[arg(long, requires = "find_all")]
    pub concept: Option<String>,
    /// Where instances may lie: answer (around the reasoner's boxes, the part of
    /// the image its reasoning pointed at) or image (anywhere in the window).
    #[arg(long, default_value = "answer")]
    pub scope: Scope,
    /// SAM 3: keep instances scoring at least this (0–1).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// SAM 3: an instance whose box overlaps a better one by more than this IoU is a duplicate.
    #[arg(long, default_value_t = 0.6)]
    pub nms: f64,
}

/// The reasoner answers, then SAM 3 finds every instance; streamed like `ask`.
pub fn ask_find_all(
    args: &AskArgs,
    img: &WindowImage,
    info: &RasterInfo,
    backend: &mut Backend,
    origin: &Origin,
    question: &Question,
) -> anyhow::Result<()> {
    let find = &args.find;
    let options = find_options(find.threshold, find.nms)?;
    let dir = find.sam3.as_deref().context("--find-all needs SAM 3: --sam3 DIR (or RR_SAM3)")?;
    let t = Instant::now();
    let mut seg = ConceptSegmenter::load(dir, &args.backend.device.open()?)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let sam3_hash = engine::hub::weights_fingerprint(dir).unwrap_or_default();
    let how = Reasoned { concept: find.concept.clone(), options, scope: find.scope };
    let (stream, mut out) = (!args.json, std::io::stdout().lock());
    let outcome = reason_then_find(backend, &mut seg, img, None, question, &how, origin, &sam3_hash, |p| {
        if let Progress::Text(t) = p
            && stream
        {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        }
        ControlFlow::Continue(())
    })?;
    let mut features = outcome.features.clone();
    for (i, f) in features.iter_mut().enumerate() {
        f.id = i as u64 + 1;
    }
    let exported = match &args.out {
        Some(path) => {
            let set = engine::edit::feature_set(&features, info.geotransform.map(GeoTransform), info.crs_wkt.clone());
            Some(
                engine::export::export(path, &set, &args.contour.export_options(true), &mut |_, _| true)
                    .with_context(|| format!("{}: cannot write the features", path.display()))?,
            )
        }
        None => None,
    };
    let segments = outcome.segments.as_ref().context("SAM 3 returned no segments")?;
    if let Some(path) = &args.mask_out {
        save_mask(path, &segments.merged, info, img)?;
    }
    let p = &outcome.provenance;
    let instances: Vec<_> = features
        .iter()
        .map(|f| json!({"id": f.id, "box": f.bbox, "score": f.score, "segmented": !f.polygons.0.is_empty()}))
        .collect();
    if args.json {
        let report = json!({
            "query": p.query, "think": outcome.answer.think, "answer": outcome.answer.answer,
            "reasoner_boxes": outcome.boxes.iter().map(|b| [b.x1, b.y1, b.x2, b.y2]).collect::<Vec<_>>(),
            "concept": p.concept, "exemplars": p.exemplars, "scope": format!("{:?}", find.scope).to_lowercase(),
            "segmenter": p.segmenter, "segmenter_hash": p.segmenter_hash, "model": p.model, "weights_hash": p.weights_hash,
            "instances": instances, "found_by_sam3": segments.per_box.len(),
            "features": exported.as_ref().map(|e| json!({"files": e.files, "layers": e.layers})),
            "timings": {"sam3_load_ms": load_ms},
        });
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the report")?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{}: {} instance(s) of {:?} from {} reasoner box(es) (scope {:?}); {} reasoner box(es) SAM 3 did not match kept as boxes",
        p.segmenter,
        segments.per_box.len(),
        p.concept,
        outcome.boxes.len(),
        find.scope,
        features.len() - segments.per_box.len()
    )?;
    for f in exported.iter().flat_map(|e| &e.files) {
        writeln!(out, "  wrote {}", f.display())?;
    }
    Ok(())
}
