//! `remote-reasoner ask`: one question to a RemoteReasoner checkpoint about a
//! window of a raster, the reasoning streamed to the terminal or a JSON report.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use engine::geo::GeoTransform;
use engine::raster::{Raster, RenderParams};
use engine::reasoner::generate::Decoding;
use engine::reasoner::{AskEvent, AskOptions, LoadOptions, Reasoner, Task, WindowImage};
use engine::tiles::Window;
use serde_json::json;

#[derive(Debug, Args)]
pub struct AskArgs {
    /// Checkpoint directory (config.json, tokenizer.json, safetensors, …), or the
    /// repository id of one pulled with `models pull`.
    #[arg(long, env = "RR_MODEL")]
    pub model: PathBuf,
    /// Raster (any GDAL format, PNG and JPEG included).
    #[arg(long)]
    pub image: PathBuf,
    /// Window of the raster in pixels: x,y,width,height (default: all of it).
    #[arg(long)]
    pub window: Option<String>,
    /// region (boxes), pixel (boxes → masks), vqa or caption.
    #[arg(long, value_enum, default_value = "region")]
    pub task: AskTask,
    /// SAM checkpoint for --task pixel: SAM 2.1 (`sam2.1_hiera_*.pt`), or SAM v1 /
    /// MobileSAM (`sam_vit_*.pth`, `mobile_sam.pt`); without one, the watershed fallback.
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
    /// Mask to write for --task pixel: .png, or .tif georeferenced like the raster.
    #[arg(long)]
    pub out: Option<PathBuf>,
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
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
    /// f32, bf16, f16, q8_0 or q4k (the language model's projections quantized).
    /// Default: f32 on CPU when it fits in memory, else q8_0; bf16 on GPUs.
    #[arg(long)]
    pub precision: Option<String>,
    /// Print one JSON object instead of streaming the reasoning.
    #[arg(long)]
    pub json: bool,
    /// What to ask (ignored by --task caption).
    #[arg(default_value = "")]
    pub query: String,
}

/// What `ask` does: the model's tasks, plus `pixel` = region then segmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AskTask {
    Region,
    Pixel,
    Vqa,
    Caption,
}

impl AskTask {
    fn model_task(self) -> Task {
        match self {
            Self::Region | Self::Pixel => Task::Region,
            Self::Vqa => Task::Vqa,
            Self::Caption => Task::Caption,
        }
    }
}

impl AskArgs {
    /// The decoding settings the flags ask for, if any differ from the checkpoint's.
    fn decoding(&self, reasoner: &Reasoner) -> Option<Decoding> {
        let custom = self.greedy
            || self.temperature.is_some()
            || self.top_p.is_some()
            || self.top_k.is_some()
            || self.repetition_penalty.is_some();
        if !custom {
            return None;
        }
        let mut d = reasoner.decoding_for(&AskOptions { max_new_tokens: self.max_new_tokens, ..Default::default() });
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

    let model = engine::hub::resolve_model(&args.model, &engine::hub::default_cache_dir());
    let mut reasoner = Reasoner::load(&model, &LoadOptions { device: args.device, precision: args.precision.clone() })?;
    let opts = AskOptions {
        max_pixels: Some(max_pixels),
        decoding: args.decoding(&reasoner),
        max_new_tokens: args.max_new_tokens,
    };
    let stream = !args.json;
    let mut out = std::io::stdout().lock();
    if args.out.is_some() && args.task != AskTask::Pixel {
        bail!("--out writes the mask of --task pixel");
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
    let pixel = if args.task == AskTask::Pixel {
        let t = std::time::Instant::now();
        let mut seg = engine::segment::load_segmenter(args.sam.as_deref(), &args.device.open()?)?;
        let result = engine::segment::pixel_task(seg.as_mut(), None, &img.image, &answer.boxes)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let georeferenced = match &args.out {
            Some(out) => crate::segment::save_mask(out, &result.merged, &info, &img)?,
            None => false,
        };
        Some((result, georeferenced, ms))
    } else {
        None
    };
    let gt = info.geotransform.map(GeoTransform);
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
            "model": reasoner.dir,
            "precision": reasoner.precision.to_string(),
            "device": args.device.to_string(),
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
            "timings": {
                "load_ms": reasoner.load_ms,
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
    writeln!(
        out,
        "\n— {} tokens in {:.0} ms ({:.1} ms/token); image {}×{} → {}×{}",
        answer.generated_token_ids.len(),
        answer.timings.decode_ms,
        answer.timings.ms_per_token,
        answer.original.0,
        answer.original.1,
        answer.resized.0,
        answer.resized.1
    )?;
    if matches!(args.task, AskTask::Region | AskTask::Pixel) {
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
            match &args.out {
                Some(o) => format!(" → {}{}", o.display(), if *georeferenced { " (georeferenced)" } else { "" }),
                None => String::new(),
            }
        )?;
    }
    for r in &answer.repairs {
        writeln!(out, "  note: {r:?}")?;
    }
    Ok(())
}
