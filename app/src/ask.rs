//! `remote-reasoner ask`: one question to a RemoteReasoner checkpoint about a
//! window of a raster, the reasoning streamed to the terminal or a JSON report.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use engine::contour::ImageFrame;
use engine::features::{FeatureSet, Provenance};
use engine::geo::GeoTransform;
use engine::raster::{Raster, RenderParams};
use engine::reasoner::generate::Decoding;
use engine::reasoner::remote::{RemoteBackend, RemoteOptions, api_key_from_env};
use engine::reasoner::{AskEvent, AskOptions, Backend, LoadOptions, Reasoner, Task, WindowImage};
use engine::segment::output::Georef;
use engine::tiles::Window;
use serde_json::json;
use std::sync::Arc;

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
    #[arg(long, value_enum, default_value = "region")]
    pub task: AskTask,
    /// SAM checkpoint for --task pixel and contour: SAM 2.1 (`sam2.1_hiera_*.pt`), or SAM v1 /
    /// MobileSAM (`sam_vit_*.pth`, `mobile_sam.pt`); without one, the watershed fallback.
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
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
    pub contour: crate::contour::ContourArgs,
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

/// Who answers: a local checkpoint or an OpenAI-compatible endpoint (shared by
/// `ask`, `eval` and `sweep`).
#[derive(Clone, Debug, Args)]
pub struct BackendArgs {
    /// Checkpoint directory (config.json, tokenizer.json, safetensors, …), or the
    /// repository id of one pulled with `models pull`.
    #[arg(long, env = "RR_MODEL", required_unless_present = "endpoint", conflicts_with = "endpoint")]
    pub model: Option<PathBuf>,
    /// An OpenAI-compatible chat-completions server instead of a local checkpoint
    /// (vLLM, SGLang, llama.cpp, `remote-reasoner serve`), e.g. http://gpu:8000.
    /// Its API key comes from RR_API_KEY or OPENAI_API_KEY.
    #[arg(long, env = "RR_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The model name on the endpoint (default: the first it lists).
    #[arg(long, requires = "endpoint")]
    pub api_model: Option<String>,
    /// cpu, cuda[:N] or metal[:N] (for a local checkpoint and SAM).
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
    /// f32, bf16, f16, q8_0 or q4k (the language model's projections quantized).
    /// Default: f32 on CPU when it fits in memory, else q8_0; bf16 on GPUs.
    #[arg(long)]
    pub precision: Option<String>,
}

/// What `ask` does: the model's tasks, plus `pixel` = region then segmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AskTask {
    Region,
    Pixel,
    Contour,
    Vqa,
    Caption,
}

impl AskTask {
    fn model_task(self) -> Task {
        match self {
            Self::Region | Self::Pixel | Self::Contour => Task::Region,
            Self::Vqa => Task::Vqa,
            Self::Caption => Task::Caption,
        }
    }
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

pub fn run(args: &AskArgs) -> anyhow::Result<()> {
    if args.task != AskTask::Caption && args.query.trim().is_empty() {
        bail!("a query is needed for --task {:?} (e.g. \"where can planes take off?\")", args.task);
    }
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let window = match &args.window {
        Some(w) => crate::cli::parse_window(w)?,
        None => Window::full(info.width, info.height),
    };
    let max_pixels = args.max_pixels.unwrap_or(engine::reasoner::processor::TRAINING_MAX_PIXELS);
    let img: WindowImage =
        engine::reasoner::read_window(&raster, window, &RenderParams::default_for(&info), max_pixels)?;
    drop(raster);

    let (mut reasoner, load_ms, precision) = open_backend(&args.backend)?;
    let opts = AskOptions {
        max_pixels: Some(max_pixels),
        decoding: args.decoding(&reasoner),
        max_new_tokens: args.max_new_tokens,
    };
    let stream = !args.json;
    let mut out = std::io::stdout().lock();
    if args.out.is_some() && !matches!(args.task, AskTask::Pixel | AskTask::Contour) {
        bail!("--out writes the mask of --task pixel or the features of --task contour");
    }
    if (args.contour.line_map.is_some() || args.mask_out.is_some()) && args.task != AskTask::Contour {
        bail!("--line-map and --mask-out are written by --task contour");
    }
    let cleanup = args.contour.cleanup()?;
    if args.task == AskTask::Contour && cleanup.units == engine::contour::Units::Map && info.geotransform.is_none() {
        bail!("{}: --units map needs a georeferenced raster; this one has no geotransform", args.image.display());
    }
    let answer = reasoner.ask(&img.image, args.task.model_task(), &args.query, &opts, |event| {
        if let (true, AskEvent::Text(t)) = (stream, &event) {
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
        }
        ControlFlow::Continue(())
    })?;
    let boxes: Vec<_> = answer.boxes.iter().map(|b| img.to_raster(b)).collect();
    // Pixel level: each box to a mask, on the same image the model saw.
    let pixel = if matches!(args.task, AskTask::Pixel | AskTask::Contour) {
        let t = std::time::Instant::now();
        let mut seg = engine::segment::load_segmenter(args.sam.as_deref(), &args.backend.device.open()?)?;
        let result = engine::segment::pixel_task(seg.as_mut(), None, &img.image, &answer.boxes)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let georeferenced = match &args.out {
            Some(out) if args.task == AskTask::Pixel => crate::segment::save_mask(out, &result.merged, &info, &img)?,
            _ => false,
        };
        Some((result, georeferenced, ms))
    } else {
        None
    };
    let gt = info.geotransform.map(GeoTransform);
    // Provenance of the features, made once (fingerprinting local weights reads them) and only when kept.
    let provenance = (args.task == AskTask::Contour || args.save_project.is_some()).then(|| {
        let segmenter = pixel.as_ref().map(|p| p.0.method.to_string());
        result_provenance(args, &reasoner, &answer, window, segmenter)
    });
    // Contour level: each box's mask traced into polygons, exported with provenance.
    let contour = match (&pixel, args.task, &provenance) {
        (Some((result, _, _)), AskTask::Contour, Some(provenance)) => {
            let t = std::time::Instant::now();
            let frame = ImageFrame { window, image_size: (img.image.width, img.image.height) };
            let map_pixel = gt.as_ref().map_or(1.0, crate::contour::map_pixel);
            let c = engine::contour::contour_task(&result.per_box, &frame, &cleanup, map_pixel, provenance);
            let written = match &args.out {
                Some(out) => {
                    let set = FeatureSet {
                        geotransform: gt,
                        crs_wkt: info.crs_wkt.clone(),
                        boxes: c.boxes.clone(),
                        polygons: c.polygons.clone(),
                    };
                    Some(engine::export::export(out, &set, &args.contour.export_options(true), &mut |_, _| true)?)
                }
                None => None,
            };
            if let Some(path) = &args.mask_out {
                crate::segment::save_mask(path, &result.merged, &info, &img)?;
            }
            if let Some(path) = &args.contour.line_map {
                let georef = info.geotransform.map(|g| {
                    Georef::for_window(g, info.crs_wkt.clone(), window, (result.merged.width, result.merged.height))
                });
                crate::contour::write_line_map(path, &result.merged, georef.as_ref())?;
            }
            Some((c, written, t.elapsed().as_secs_f64() * 1e3))
        }
        _ => None,
    };
    if let Some(path) = &args.save_project {
        if !matches!(args.task, AskTask::Region | AskTask::Pixel | AskTask::Contour) {
            bail!("--save-project keeps boxes and polygons: use --task region, pixel or contour");
        }
        let provenance = provenance.clone().unwrap_or_default();
        let features = project_features(&boxes, pixel.as_ref().map(|p| &p.0), window, &img, &provenance);
        let meta = engine::project::ProjectMeta {
            raster: Some(std::path::absolute(&args.image).unwrap_or_else(|_| args.image.clone())),
            geotransform: info.geotransform,
            crs_wkt: info.crs_wkt.clone(),
            ..Default::default()
        };
        engine::project::save(path, &meta, &features)?;
    }
    let corners = |b: &engine::reasoner::parse::PixelBox, gt: &GeoTransform| {
        [(b.x1, b.y1), (b.x2, b.y1), (b.x2, b.y2), (b.x1, b.y2)].map(|(c, r)| gt.pixel_to_world(c, r))
    };
    if args.json {
        let boxes_world = gt.map(|gt| {
            boxes
                .iter()
                .map(|b| {
                    let c = corners(b, &gt);
                    let xs = c.map(|p| p.0);
                    let ys = c.map(|p| p.1);
                    json!({
                        "bounds": [xs.iter().copied().fold(f64::INFINITY, f64::min), ys.iter().copied().fold(f64::INFINITY, f64::min),
                                   xs.iter().copied().fold(f64::NEG_INFINITY, f64::max), ys.iter().copied().fold(f64::NEG_INFINITY, f64::max)],
                        "corners": c.map(|p| [p.0, p.1]),
                    })
                })
                .collect::<Vec<_>>()
        });
        let report = json!({
            "model": reasoner.model_id(),
            "precision": precision,
            "device": args.backend.device.to_string(),
            "image": args.image,
            "window": [window.x, window.y, window.width, window.height],
            "task": answer.task,
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
            "boxes": boxes.iter().map(|b| [b.x1, b.y1, b.x2, b.y2]).collect::<Vec<_>>(),
            "boxes_world": boxes_world,
            "crs": info.crs_label(),
            "epsg": info.epsg,
            "resized": [answer.resized.0, answer.resized.1],
            "model_input": [answer.original.0, answer.original.1],
            "stop": answer.stop,
            "pixel": pixel.as_ref().map(|(r, georeferenced, ms)| json!({
                "method": r.method.to_string(),
                "mask_size": [r.merged.width, r.merged.height],
                "mask_pixels": r.merged.count(),
                "out": args.out,
                "georeferenced": georeferenced,
                "masks": r.per_box.iter().map(|(b, s)| crate::segment::segment_json(&img.to_raster(b), s)).collect::<Vec<_>>(),
                "segment_ms": ms,
            })),
            "contour": contour.as_ref().map(|(c, written, ms)| {
                let mut r = crate::contour::report_json(&c.report, &written.clone().unwrap_or_default());
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
        });
        serde_json::to_writer_pretty(&mut out, &report).context("cannot write the report")?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out)?;
    let speed = if answer.generated_token_ids.is_empty() {
        format!("reply streamed in {:.0} ms", answer.timings.prefill_ms + answer.timings.decode_ms)
    } else {
        format!(
            "{} tokens in {:.0} ms ({:.1} ms/token)",
            answer.generated_token_ids.len(),
            answer.timings.decode_ms,
            answer.timings.ms_per_token
        )
    };
    writeln!(
        out,
        "\n— {speed}; image {}×{} → {}×{}",
        answer.original.0, answer.original.1, answer.resized.0, answer.resized.1
    )?;
    if matches!(args.task, AskTask::Region | AskTask::Pixel | AskTask::Contour) {
        writeln!(out, "{} box(es) in pixels of {}:", boxes.len(), args.image.display())?;
        for b in &boxes {
            write!(out, "  [{:.1}, {:.1}, {:.1}, {:.1}]", b.x1, b.y1, b.x2, b.y2)?;
            if let Some(gt) = &gt {
                let c = corners(b, gt);
                write!(out, "   {} corners {:?}", info.crs_label(), c.map(|p| (p.0.round(), p.1.round())))?;
            }
            writeln!(out)?;
        }
    } else {
        writeln!(out, "Answer: {}", answer.answer)?;
    }
    if let Some((r, georeferenced, _)) = &pixel {
        writeln!(
            out,
            "{}: {} mask(s), {} px{}",
            r.method,
            r.per_box.len(),
            r.merged.count(),
            match args.out.as_ref().filter(|_| args.task == AskTask::Pixel) {
                Some(o) => format!(" → {}{}", o.display(), if *georeferenced { " (georeferenced)" } else { "" }),
                None => String::new(),
            }
        )?;
    }
    if let Some((c, written, _)) = &contour {
        crate::contour::print_report(&mut out, &c.report, &written.clone().unwrap_or_default())?;
    }
    for r in &answer.repairs {
        writeln!(out, "  note: {r:?}")?;
    }
    Ok(())
}

/// Provenance of this run's features.
fn result_provenance(
    args: &AskArgs,
    reasoner: &Backend,
    answer: &engine::reasoner::Answer,
    window: Window,
    segmenter: Option<String>,
) -> Arc<Provenance> {
    Arc::new(Provenance {
        task: format!("{:?}", args.task).to_lowercase(),
        query: answer.query.clone(),
        answer: answer.answer.clone(),
        model: model_label(&args.backend),
        weights_hash: reasoner.weights_hash(),
        segmenter: segmenter.unwrap_or_default(),
        reasoning: answer.think.clone(),
        source: args.image.display().to_string(),
        window: Some(window),
        created_at: Provenance::now(),
    })
}

/// One workbench feature per box: the box, and its mask traced exactly when
/// there is one (raster pixels).
fn project_features(
    boxes: &[engine::reasoner::parse::PixelBox],
    pixel: Option<&engine::segment::PixelResult>,
    window: Window,
    img: &WindowImage,
    provenance: &Arc<Provenance>,
) -> Vec<engine::edit::WorkFeature> {
    let frame = ImageFrame { window, image_size: (img.image.width, img.image.height) };
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let polygons = pixel.and_then(|p| p.per_box.get(i)).map_or_else(
                || geo::MultiPolygon::new(vec![]),
                |(_, s)| engine::contour::trace_to_raster(&s.mask, &frame),
            );
            let mut f = engine::edit::WorkFeature::new(Some([b.x1, b.y1, b.x2, b.y2]), polygons, provenance.clone());
            if let Some((_, s)) = pixel.and_then(|p| p.per_box.get(i)) {
                f.score = s.iou.map(f64::from);
                f.object_score = s.object_score.map(f64::from);
            }
            f.id = i as u64 + 1;
            f
        })
        .collect()
}

/// The model as the user named it: a directory, a repository id, or `name@endpoint`.
pub fn model_label(args: &BackendArgs) -> String {
    match (&args.model, &args.endpoint) {
        (Some(m), _) => m.display().to_string(),
        (None, Some(e)) => format!("{}@{e}", args.api_model.clone().unwrap_or_default()),
        (None, None) => String::new(),
    }
}

/// The local checkpoint or the endpoint the flags name: the backend, its load
/// time (ms) and how its weights are held.
pub fn open_backend(args: &BackendArgs) -> anyhow::Result<(Backend, f64, String)> {
    if let Some(endpoint) = &args.endpoint {
        let t = std::time::Instant::now();
        let remote = RemoteBackend::new(RemoteOptions {
            endpoint: endpoint.clone(),
            model: args.api_model.clone().unwrap_or_default(),
            api_key: api_key_from_env(),
            ..Default::default()
        })?;
        let model = remote.options.model.clone();
        return Ok((Backend::Remote(remote), t.elapsed().as_secs_f64() * 1e3, format!("remote ({model})")));
    }
    let model = args.model.as_ref().context("--model or --endpoint is needed")?;
    let dir = engine::hub::resolve_model(model, &engine::hub::default_cache_dir());
    let r = Reasoner::load(&dir, &LoadOptions { device: args.device, precision: args.precision.clone() })?;
    let (load_ms, precision) = (r.load_ms, r.precision.to_string());
    Ok((Backend::Local(Box::new(r)), load_ms, precision))
}
