//! `rr-bench`: the benchmarks of BENCHMARKS.md, a binary of its own so that
//! none of this is in the product's.
//!
//! - `bench viewer`: the raster viewer, side by side with GDAL itself in one run,
//!   reported as Markdown.
//! - `bench reasoner`: one Qwen2.5-VL forward pass (vision, prefill, decode) on
//!   given inputs, reported as JSON; `tools/bench_qwen.py` runs it beside
//!   PyTorch transformers on the same weights and inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod contours;

use anyhow::{Context, bail};
use clap::Args;
use engine::raster::{Raster, RenderParams};
use engine::synthetic::Fill;
use engine::tiles::{Pyramid, TileKey};
use engine::{Engine, EngineConfig, Event, EventKind};

/// The benchmarks of BENCHMARKS.md.
#[derive(Debug, clap::Parser)]
#[command(name = "rr-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

/// The product binary's allocator, so the timings are what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rr_app::alloc::keep_freed_memory();
    let cli = <Cli as clap::Parser>::parse();
    match run(&cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rr-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Time to first frame, tile throughput vs GDAL, memory while panning.
    Viewer(BenchArgs),
    /// Vision tower, prefill and decode timings of a Qwen2.5-VL checkpoint.
    Reasoner(ReasonerBenchArgs),
    /// SAM image-encoder time and decoder time per click (SAM 2.1, SAM v1, MobileSAM).
    Segmenter(SegmenterBenchArgs),
    /// Mask → polygons (vs GDALPolygonize in-process) and 100k polygons → GeoPackage; JSON.
    Contours(contours::ContoursBenchArgs),
    /// SAM 3: image encoding at the model's size, then time per prompt (text, exemplars); JSON.
    Concept(ConceptBenchArgs),
}

#[derive(Debug, Args)]
pub struct ConceptBenchArgs {
    /// SAM 3 checkpoint directory (config.json + safetensors, or sam3.pt; tokenizer.json).
    #[arg(long)]
    pub sam3: PathBuf,
    /// Image (PNG/JPEG/raster); resized to the model's square (1008²) as always.
    #[arg(long)]
    pub image: PathBuf,
    /// Prompts timed after the encoding, alternating text and text + an exemplar box.
    #[arg(long, default_value_t = 6)]
    pub prompts: usize,
    /// Encodings timed (the first one included).
    #[arg(long, default_value_t = 2)]
    pub encodes: usize,
}

/// SAM 3 timings as one JSON object on stdout: the same stages
/// tools/bench_sam3.py times in transformers.
fn concept(args: &ConceptBenchArgs) -> anyhow::Result<()> {
    use engine::base::{PixelBox, Window};
    use engine::segment::ImageKey;
    use engine::segment::concept::{ConceptPrompt, ConceptSegmenter, Exemplar, FindOptions};
    let t = Instant::now();
    let mut seg = ConceptSegmenter::load(&args.sam3, &candle_core::Device::Cpu)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let full = Window::full(info.width, info.height);
    let image = engine::pipeline::read_window(&raster, full, &RenderParams::default_for(&info), 4 << 20)?.image;
    let mut encode_ms = Vec::new();
    for i in 0..args.encodes.max(1) {
        // A new key each time: encoded again, not taken from the cache.
        let key = ImageKey { raster: i as u64, window: Window::full(1, 1), level: 0 };
        let t = Instant::now();
        seg.set_image(Some(key), &image)?;
        encode_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let key = Some(ImageKey { raster: (args.encodes.max(1) - 1) as u64, window: Window::full(1, 1), level: 0 });
    let (w, h) = (image.width as f64, image.height as f64);
    let words = ["ship", "storage tank", "airplane", "harbour crane", "car", "building"];
    let (mut text_ms, mut exemplar_ms) = (Vec::new(), Vec::new());
    for i in 0..args.prompts {
        let f = i as f64 / args.prompts.max(1) as f64;
        let bbox = PixelBox { x1: f * w * 0.5, y1: f * h * 0.5, x2: f * w * 0.5 + w * 0.2, y2: f * h * 0.5 + h * 0.2 };
        let exemplars = if i % 2 == 1 { vec![Exemplar { bbox, positive: true }] } else { vec![] };
        let prompt = ConceptPrompt { text: words[i % words.len()].into(), exemplars };
        let opts = FindOptions { threshold: 0.0, nms_iou: 1.0 };
        let t = Instant::now();
        let (found, encoded) = seg.find(key, &image, &prompt, &opts)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if encoded {
            bail!("the prompt re-encoded the image");
        }
        let _ = found.len();
        if prompt.exemplars.is_empty() { text_ms.push(ms) } else { exemplar_ms.push(ms) }
    }
    // As Python's statistics.median: the mean of the middle two of an even count.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let mut later: Vec<f64> = if encode_ms.len() > 1 { encode_ms[1..].to_vec() } else { encode_ms.clone() };
    let report = serde_json::json!({
        "framework": "candle",
        "model": seg.method().to_string(),
        "threads": rayon_threads(),
        "load_ms": load_ms,
        "image": [image.width, image.height],
        "encode_ms_first": encode_ms[0],
        "encode_ms": median(&mut later),
        "text_prompt_ms": median(&mut text_ms),
        "exemplar_prompt_ms": median(&mut exemplar_ms),
        "peak_rss_mib": proc_status_kib("VmHWM:").unwrap_or(0) / 1024,
    });
    println!("{report}");
    Ok(())
}

#[derive(Debug, Args)]
pub struct SegmenterBenchArgs {
    /// SAM checkpoint (.pt/.pth or safetensors): SAM 2.1, SAM v1 or MobileSAM.
    #[arg(long)]
    pub sam: PathBuf,
    /// Image to encode (PNG/JPEG/raster); resized to 1024² by the model as always.
    #[arg(long)]
    pub image: PathBuf,
    /// Single-prompt decodes timed after the encoding (box + centre point, like a click).
    #[arg(long, default_value_t = 20)]
    pub prompts: usize,
    /// Encodings timed (the first one included).
    #[arg(long, default_value_t = 2)]
    pub encodes: usize,
    /// SAM 2.1's image encoder: auto (bf16 where the CPU has AVX-512 BF16), f32 or bf16.
    #[arg(long, default_value = "auto")]
    pub sam_precision: engine::models::EncoderPrecision,
}

/// Encoder and per-prompt decoder timings as one JSON object on stdout.
fn segmenter(args: &SegmenterBenchArgs) -> anyhow::Result<()> {
    use engine::models::sam2::Prompt;
    use engine::segment::SamModel;
    let device = candle_core::Device::Cpu;
    let t = Instant::now();
    let model = SamModel::load(&args.sam, &device, args.sam_precision)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let view = engine::pipeline::read_window(
        &raster,
        engine::base::Window::full(info.width, info.height),
        &RenderParams::default_for(&info),
        4 << 20,
    )?;
    let mut encode_ms = Vec::new();
    let mut emb = None;
    for _ in 0..args.encodes.max(1) {
        let t = Instant::now();
        emb = Some(model.encode(&view.image)?);
        encode_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let emb = emb.context("no encoding")?;
    let (w, h) = (view.image.width as f32, view.image.height as f32);
    let mut decode_ms = Vec::new();
    for i in 0..args.prompts {
        // Boxes sliding over the image, as successive clicks would.
        let f = i as f32 / args.prompts.max(1) as f32;
        let (x1, y1) = (f * w * 0.5, f * h * 0.5);
        let prompt = Prompt {
            bbox: Some([x1, y1, x1 + w * 0.4, y1 + h * 0.4]),
            points: vec![(x1 + w * 0.2, y1 + h * 0.2, true)],
            mask_input: None,
        };
        let t = Instant::now();
        let pred = model.predict(&emb, std::slice::from_ref(&prompt), false)?;
        let _mask = model.mask(&emb, &pred[0].low_res);
        decode_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let first_encode = encode_ms[0];
    let mut later_encodes: Vec<f64> = if encode_ms.len() > 1 { encode_ms[1..].to_vec() } else { encode_ms.clone() };
    let first_decode = decode_ms.first().copied().unwrap_or(0.0);
    let report = serde_json::json!({
        "framework": "candle",
        "geometry": model.method().to_string(),
        "threads": rayon_threads(),
        "load_ms": load_ms,
        "image": [view.image.width, view.image.height],
        "encode_ms_first": first_encode,
        "encode_ms": median(&mut later_encodes),
        "decode_ms_first": first_decode,
        "decode_ms": median(&mut decode_ms),
        "peak_rss_mib": proc_status_kib("VmHWM:").unwrap_or(0) / 1024,
    });
    println!("{report}");
    Ok(())
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Edge of the synthetic square GeoTIFF, in pixels.
    #[arg(long, default_value_t = 20_000)]
    pub size: usize,
    /// Write only the block diagonals (seconds to make, but reads of empty blocks
    /// cost nothing) instead of every block.
    #[arg(long)]
    pub sparse: bool,
    /// Where the synthetic raster is written (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Windows timed for the tile-throughput comparison.
    #[arg(long, default_value_t = 200)]
    pub windows: usize,
    /// Tile cache cap while panning, MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mib: usize,
    /// Window size the viewer is assumed to have (points at 1 px/pt).
    #[arg(long, default_value = "1280x800")]
    pub viewport: String,
    /// Internal: run only the panning phase on this raster (in a fresh process,
    /// so its peak memory is not inflated by making the raster).
    #[arg(long, hide = true)]
    pub pan_only: Option<PathBuf>,
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the kernel's peak-RSS mark so a phase's peak can be read on its own.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn wait_tiles_done(engine: &Engine, job: u64) -> anyhow::Result<usize> {
    let mut tiles = 0;
    loop {
        match engine.recv_timeout(Duration::from_secs(120)) {
            Some(Event { job: j, kind: EventKind::Tile { .. } }) if j == job => tiles += 1,
            Some(Event { job: j, kind: EventKind::TilesDone }) if j == job => return Ok(tiles),
            Some(Event { job: j, kind: EventKind::Failed { error } }) if j == job => bail!("tile job failed: {error}"),
            Some(_) => {}
            None => bail!("engine did not answer within 120 s"),
        }
    }
}

fn open(engine: &Engine, path: &Path) -> anyhow::Result<(u64, engine::raster::RasterInfo)> {
    let job = engine.open(path);
    match engine.recv_timeout(Duration::from_secs(60)) {
        Some(Event { kind: EventKind::Opened { raster, info }, .. }) => Ok((raster, *info)),
        Some(Event { kind: EventKind::Failed { error }, .. }) => bail!("{error}"),
        other => bail!("unexpected answer to open job {job}: {other:?}"),
    }
}

pub fn run(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Viewer(args) => viewer(args),
        BenchCommand::Reasoner(args) => reasoner(args),
        BenchCommand::Segmenter(args) => segmenter(args),
        BenchCommand::Contours(args) => contours::run(args),
        BenchCommand::Concept(args) => concept(args),
    }
}

#[derive(Debug, Args)]
pub struct ReasonerBenchArgs {
    /// Checkpoint directory (config.json and safetensors; no tokenizer needed).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors with `pixel_values` (patches × patch_dim) and `input_ids` (u32 or i64).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Patch grid t,h,w of the image.
    #[arg(long)]
    pub grid: String,
    /// f32, bf16, f16, q8_0 or q4k.
    #[arg(long, default_value = "f32")]
    pub precision: String,
    /// Tokens to decode after the prefill (greedy, end-of-text ignored).
    #[arg(long, default_value_t = 32)]
    pub decode: usize,
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
}

/// Vision, prefill and decode timings as one JSON object on stdout.
fn reasoner(args: &ReasonerBenchArgs) -> anyhow::Result<()> {
    use candle_core::DType;
    let grid: Vec<usize> =
        args.grid.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>().context("--grid t,h,w")?;
    let grid: [usize; 3] =
        grid.try_into().map_err(|g: Vec<usize>| anyhow::anyhow!("--grid needs three numbers, not {}", g.len()))?;
    let config_path = args.model.join("config.json");
    let config = engine::models::qwen2_5_vl::Config::from_json(&std::fs::read_to_string(&config_path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    let device = args.device.open()?;
    let precision: engine::models::Precision = args.precision.parse().map_err(anyhow::Error::msg)?;
    let inputs = candle_core::safetensors::load(&args.inputs, &device)?;
    let pixels = inputs.get("pixel_values").context("inputs: no pixel_values")?;
    let ids: Vec<u32> = inputs
        .get("input_ids")
        .context("inputs: no input_ids")?
        .flatten_all()?
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let t = Instant::now();
    let (mut model, _) = engine::models::qwen2_5_vl::Qwen25Vl::load(&args.model, config, &device, Some(precision))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let embeds = model.encode_images(pixels, &[grid])?;
    let vision_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut logits = model.prefill(&ids, Some(&embeds), &[grid])?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
    let first: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let t = Instant::now();
    let mut tokens = Vec::new();
    for _ in 0..args.decode {
        let next = logits.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        tokens.push(next);
        logits = model.step(next)?;
    }
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = serde_json::json!({
        "framework": "candle",
        "precision": args.precision,
        "threads": rayon_threads(),
        "load_ms": load_ms,
        "vision_ms": vision_ms,
        "prefill_ms": prefill_ms,
        "prompt_tokens": ids.len(),
        "decode_tokens": args.decode,
        "decode_ms_per_token": decode_ms / args.decode.max(1) as f64,
        "first_logits": first,
        "tokens": tokens,
        "peak_rss_mib": proc_status_kib("VmHWM:").unwrap_or(0) / 1024,
    });
    println!("{report}");
    Ok(())
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

fn viewer(args: &BenchArgs) -> anyhow::Result<()> {
    let (vw, vh) = rr_app::cli::args::parse_size(&args.viewport)?;
    if let Some(path) = &args.pan_only {
        return pan(path, args.cache_mib, (vw, vh));
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
            tmp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let path = dir.join(format!("bench_{}.tif", args.size));
    let t = Instant::now();
    let fill = if args.sparse { Fill::Diagonals } else { Fill::Dense };
    engine::synthetic::geotiff(&path, args.size, 3, fill, true)?;
    let t_make = t.elapsed();

    println!("## Raster viewer benchmark\n");
    println!(
        "Synthetic {0}×{0} 3-band Byte GeoTIFF (tiled 256, DEFLATE, {3}, {4} MB on disk) with {1} overview levels, made in {2:.1} s. Viewport {vw}×{vh}.\n",
        args.size,
        engine::overviews::default_factors(args.size as u64, args.size as u64).len(),
        t_make.as_secs_f64(),
        if args.sparse { "only the block diagonals written" } else { "every block written" },
        std::fs::metadata(&path).map(|m| m.len() >> 20).unwrap_or(0),
    );

    // 1. Time to first frame: open + every tile of the fitted view.
    let engine = Engine::spawn(EngineConfig::default(), Arc::new(|| {}));
    let t = Instant::now();
    let (raster, info) = open(&engine, &path)?;
    let t_open = t.elapsed();
    let pyramid = info.pyramid();
    let zoom = (f64::from(vw) / info.width as f64).min(f64::from(vh) / info.height as f64);
    let level = pyramid.level_for_zoom(zoom);
    let keys = pyramid.tiles_in_rect(level, 0.0, 0.0, info.width as f64, info.height as f64);
    let params = RenderParams::default_for(&info);
    let job = engine.request_tiles(raster, params, keys.clone());
    let n = wait_tiles_done(&engine, job)?;
    let t_first = t.elapsed();
    println!("### Time to first frame\n");
    println!("| step | time |\n|---|---|");
    println!("| open (metadata) | {:.1} ms |", t_open.as_secs_f64() * 1e3);
    println!("| open + all {n} tiles of the fitted view (level {level}) | {:.1} ms |\n", t_first.as_secs_f64() * 1e3);
    drop(engine);

    // 2. Tile throughput: our tile path vs in-process GDAL reads vs gdal_translate.
    // Cold: a freshly opened dataset, so every block is read and inflated once;
    // warm: the same windows again, from GDAL's block cache.
    let windows = bench_windows(&pyramid, args.windows);
    let r = Raster::open(&path)?;
    let t = Instant::now();
    for k in &windows {
        r.render_tile(*k, &params)?;
    }
    let ours_cold = t.elapsed();
    let t = Instant::now();
    for k in &windows {
        r.render_tile(*k, &params)?;
    }
    let ours_warm = t.elapsed();
    drop(r);
    let ds = gdal_open(&path)?;
    let t = Instant::now();
    let raw_bytes = raw_gdal_reads(&ds, &pyramid, &windows)?;
    let raw_cold = t.elapsed();
    let t = Instant::now();
    raw_gdal_reads(&ds, &pyramid, &windows)?;
    let raw_warm = t.elapsed();
    drop(ds);
    let translate = gdal_translate_windows(&path, &pyramid, &windows, &dir);
    let rate = |d: Duration| windows.len() as f64 / d.as_secs_f64();
    println!(
        "### Tile throughput ({} windows, 256×256 output, levels 0–2, 3 bands; {} MB of pixels per pass)\n",
        windows.len(),
        raw_bytes >> 20
    );
    println!("| path | cold tiles/s | warm tiles/s | ours ÷ path, cold | ours ÷ path, warm |\n|---|---|---|---|---|");
    println!(
        "| RemoteReasoner tile path (read + stretch → RGBA) | {:.0} | {:.0} | 1.00 | 1.00 |",
        rate(ours_cold),
        rate(ours_warm)
    );
    println!(
        "| GDAL RasterIO in process (same windows, raw band bytes) | {:.0} | {:.0} | {:.2} | {:.2} |",
        rate(raw_cold),
        rate(raw_warm),
        rate(ours_cold) / rate(raw_cold),
        rate(ours_warm) / rate(raw_warm)
    );
    match translate {
        Ok(d) => println!(
            "| `gdal_translate -srcwin … -outsize 256 256` (a process per window, to /dev/shm) | {:.0} | – | {:.1} | – |\n",
            rate(d),
            rate(ours_cold) / rate(d)
        ),
        Err(e) => println!("| `gdal_translate` | not run: {e:#} | – | – | – |\n"),
    }

    // 3. Peak memory while panning, in a fresh process.
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "viewer",
            "--viewport",
            &args.viewport,
            "--cache-mib",
            &args.cache_mib.to_string(),
            "--pan-only",
        ])
        .arg(&path)
        .output()
        .context("cannot run the panning phase")?;
    if !out.status.success() {
        bail!("panning phase failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if args.dir.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// Pans across the whole raster at 1:1, view by view, through the engine thread
/// with a capped tile cache, and reports peak memory.
fn pan(path: &Path, cache_mib: usize, (vw, vh): (u32, u32)) -> anyhow::Result<()> {
    let cap = cache_mib << 20;
    let engine = Engine::spawn(EngineConfig { tile_cache_bytes: cap, gdal_cache_bytes: 64 << 20 }, Arc::new(|| {}));
    let (raster, info) = open(&engine, path)?;
    let params = RenderParams::default_for(&info);
    let pyramid = info.pyramid();
    let resettable = reset_peak_rss();
    let base = proc_status_kib("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let (mut views, mut tiles, mut quarter_peak) = (0, 0, 0);
    let (step_x, step_y) = (u64::from(vw), u64::from(vh));
    let rows = info.height.div_ceil(step_y);
    let cols = info.width.div_ceil(step_x);
    for row in 0..rows {
        for c in 0..cols {
            let col = if row % 2 == 0 { c } else { cols - 1 - c }; // serpentine, like a hand pan
            let (x0, y0) = ((col * step_x) as f64, (row * step_y) as f64);
            let keys = pyramid.tiles_in_rect(0, x0, y0, x0 + step_x as f64, y0 + step_y as f64);
            let job = engine.request_tiles(raster, params, keys);
            tiles += wait_tiles_done(&engine, job)?;
            views += 1;
            if views == rows * cols / 4 {
                quarter_peak = proc_status_kib("VmHWM:").unwrap_or(0);
            }
        }
    }
    let pan = t.elapsed();
    let peak = proc_status_kib("VmHWM:").unwrap_or(0);
    println!("### Memory while panning the whole raster at 1:1\n");
    println!(
        "{views} views, {tiles} tiles in {:.1} s ({:.0} tiles/s through the engine thread). Tile cache cap {cache_mib} MiB, GDAL block cache 64 MiB.\n",
        pan.as_secs_f64(),
        tiles as f64 / pan.as_secs_f64(),
    );
    println!("| measure | MiB |\n|---|---|");
    println!("| RSS after opening, before panning | {:.0} |", base as f64 / 1024.0);
    println!("| peak RSS after the first quarter of the views | {:.0} |", quarter_peak as f64 / 1024.0);
    println!(
        "| peak RSS while panning{} | {:.0} |",
        if resettable { "" } else { " (peak since process start)" },
        peak as f64 / 1024.0
    );
    println!(
        "| peak − before | {:.0} (caps: tile cache {cache_mib} + GDAL cache 64) |",
        peak.saturating_sub(base) as f64 / 1024.0
    );
    Ok(())
}

/// Tiles spread over levels 0–2, half of them inside written blocks.
fn bench_windows(p: &Pyramid, n: usize) -> Vec<TileKey> {
    let mut keys = Vec::with_capacity(n);
    let mut i = 0u32;
    while keys.len() < n {
        let level = (i % 3) as u8;
        let (cols, rows) = p.tile_counts(level);
        let d = (i / 3) % cols.min(rows);
        let key = if i.is_multiple_of(2) {
            TileKey { level, x: d, y: d } // on the written diagonal
        } else {
            TileKey { level, x: (d * 7 + 3) % cols, y: (d * 13 + 1) % rows }
        };
        keys.push(key);
        i += 1;
    }
    keys
}

fn raw_gdal_reads(ds: &gdal::Dataset, p: &Pyramid, keys: &[TileKey]) -> anyhow::Result<usize> {
    let mut bytes = 0;
    for k in keys {
        let (w, out) = p.tile_window(*k).context("window")?;
        for b in 1..=3 {
            let band = ds.rasterband(b)?;
            let buf = band.read_as::<u8>(
                (w.x as isize, w.y as isize),
                (w.width as usize, w.height as usize),
                (out.0 as usize, out.1 as usize),
                None,
            )?;
            bytes += buf.data().len();
        }
    }
    Ok(bytes)
}

fn gdal_open(path: &Path) -> anyhow::Result<gdal::Dataset> {
    Ok(gdal::Dataset::open(path)?)
}

fn gdal_translate_windows(path: &Path, p: &Pyramid, keys: &[TileKey], dir: &Path) -> anyhow::Result<Duration> {
    let shm = Path::new("/dev/shm");
    let out = if shm.is_dir() {
        shm.join(format!("rr-bench-{}.tif", std::process::id()))
    } else {
        dir.join("rr-bench-out.tif")
    };
    let t = Instant::now();
    for k in keys {
        let (w, o) = p.tile_window(*k).context("window")?;
        let status = std::process::Command::new("gdal_translate")
            .args(["-q", "-of", "GTiff", "-srcwin"])
            .args([w.x, w.y, w.width, w.height].map(|v| v.to_string()))
            .arg("-outsize")
            .args([o.0, o.1].map(|v| v.to_string()))
            .arg(path)
            .arg(&out)
            .status()
            .context("gdal_translate not found (apt install gdal-bin)")?;
        if !status.success() {
            bail!("gdal_translate failed with {status}");
        }
    }
    let d = t.elapsed();
    let _ = std::fs::remove_file(&out);
    Ok(d)
}
