//! `remote-reasoner segment`: boxes (and clicks) on a raster window → a mask, with
//! SAM 2.1 when a checkpoint is given, the watershed fallback otherwise; or, with
//! `--text` / `--exemplar`, every instance of a concept with SAM 3 (`find`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use engine::base::PixelBox;
use engine::base::Window;
use engine::models::sam2::Prompt;
use engine::pipeline::{WindowImage, read_window};
use engine::raster::{Raster, RenderParams};
use engine::segment::output::{Georef, is_geotiff, write_mask};
use engine::segment::{Mask, Segment, Segmenter, box_prompt, clip_box, load_segmenter};
use serde_json::json;

/// Pixels the segmenter's image is read at, at most: SAM sees 1024² anyway.
pub const SEGMENT_PIXEL_BUDGET: usize = 1024 * 1024;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("text_or_exemplars").args(["text", "exemplars"]).multiple(true)))]
pub struct SegmentArgs {
    /// SAM checkpoint: SAM 2.1 (`sam2.1_hiera_*.pt`), SAM v1 (`sam_vit_{b,l,h}_*.pth`)
    /// or MobileSAM (`mobile_sam.pt`), or safetensors of them; without one, the
    /// watershed fallback segments inside each box.
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
    /// SAM 2.1's image encoder: auto (bf16 products on CPUs with AVX-512 BF16, else
    /// f32), f32 (as the reference computes) or bf16.
    #[arg(long, env = "RR_SAM_PRECISION", default_value = "auto")]
    pub sam_precision: engine::models::EncoderPrecision,
    /// Raster (any GDAL format).
    #[arg(long)]
    pub image: PathBuf,
    /// Window of the raster in pixels: x,y,width,height (default: all of it).
    #[arg(long)]
    pub window: Option<String>,
    /// A box in pixels of the raster: x1,y1,x2,y2. Repeat for several objects.
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2", required_unless_present_any = ["text", "exemplars"],
          conflicts_with_all = ["text", "exemplars"])]
    pub boxes: Vec<String>,
    /// A click x,y,+ (object) or x,y,- (not object), for the --box it follows. A box
    /// with no --point gets a positive point at its centre (RemoteReasoner's prompt);
    /// a box with points gets exactly those, as SAM2ImagePredictor.predict does.
    #[arg(long = "point", value_name = "X,Y,+|-", allow_hyphen_values = true)]
    pub points: Vec<String>,
    /// Mask to write: .png, or .tif (georeferenced like the raster); with SAM 3 the
    /// instances' masks merged.
    #[arg(long, required_unless_present = "features")]
    pub out: Option<PathBuf>,
    /// SAM 3 checkpoint directory (tokenizer.json and transformers' config.json +
    /// safetensors, or Meta's sam3.pt), for --text and --exemplar.
    #[arg(long, env = "RR_SAM3")]
    pub sam3: Option<PathBuf>,
    /// Find every instance of this concept with SAM 3: a short noun phrase
    /// ("ship", "storage tank").
    #[arg(long)]
    pub text: Option<String>,
    /// An example of the concept for SAM 3 in pixels of the raster, x1,y1,x2,y2;
    /// append ,- for a counter-example. Repeat for several.
    #[arg(long = "exemplar", value_name = "X1,Y1,X2,Y2[,-]", allow_hyphen_values = true)]
    pub exemplars: Vec<String>,
    /// SAM 3: keep instances scoring at least this (σ(logit)·σ(presence), 0–1).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// SAM 3: an instance whose box overlaps a better one by more than this IoU is a duplicate.
    #[arg(long, default_value_t = 0.6)]
    pub nms: f64,
    /// SAM 3: one feature per instance, with its score and provenance: .gpkg, .shp,
    /// .geojson or .fgb (boxes beside the polygons).
    #[arg(long, value_name = "FEATURES", requires = "text_or_exemplars")]
    pub features: Option<PathBuf>,
    #[command(flatten)]
    pub contour: super::contour::ContourArgs,
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// Position of each --box and --point on the command line (filled from clap's
    /// matches, so that a point belongs to the box before it).
    #[arg(skip)]
    pub order: Option<(Vec<usize>, Vec<usize>)>,
}

fn numbers(s: &str, what: &str) -> anyhow::Result<Vec<f64>> {
    s.split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} '{s}' must be numbers separated by commas"))
}

pub fn parse_box(s: &str) -> anyhow::Result<PixelBox> {
    match numbers(s, "--box")?.as_slice() {
        &[x1, y1, x2, y2] => Ok(PixelBox { x1, y1, x2, y2 }),
        v => bail!("--box '{s}' needs 4 numbers x1,y1,x2,y2, it has {}", v.len()),
    }
}

fn parse_point(s: &str) -> anyhow::Result<Click> {
    let (xy, sign) = s.rsplit_once(',').with_context(|| format!("--point '{s}' must be x,y,+ or x,y,-"))?;
    let positive = match sign.trim() {
        "+" | "1" | "pos" => true,
        "-" | "0" | "neg" => false,
        other => bail!("--point '{s}': '{other}' must be + or -"),
    };
    match numbers(xy, "--point")?.as_slice() {
        &[x, y] => Ok((x, y, positive)),
        _ => bail!("--point '{s}' must be x,y,+ or x,y,-"),
    }
}

/// A click: (x, y, positive).
type Click = (f64, f64, bool);

/// Boxes with the points that follow each of them on the command line.
fn prompts(args: &SegmentArgs) -> anyhow::Result<Vec<(PixelBox, Vec<Click>)>> {
    let mut out: Vec<(PixelBox, Vec<Click>)> =
        args.boxes.iter().map(|b| parse_box(b).map(|b| (b, Vec::new()))).collect::<anyhow::Result<_>>()?;
    let (box_pos, point_pos) = args.order.clone().unwrap_or_default();
    for (i, p) in args.points.iter().enumerate() {
        let at = point_pos.get(i).copied().unwrap_or(usize::MAX);
        let owner =
            box_pos.iter().rposition(|&b| b < at).or(if box_pos.is_empty() { Some(out.len() - 1) } else { None });
        let owner =
            owner.with_context(|| format!("--point {p} comes before any --box: put it after the box it refines"))?;
        out[owner].1.push(parse_point(p)?);
    }
    Ok(out)
}

/// A raster-pixel box in pixels of the image read for `view`.
pub fn to_image(view: &WindowImage, b: PixelBox) -> PixelBox {
    let sx = view.image.width as f64 / view.window.width as f64;
    let sy = view.image.height as f64 / view.window.height as f64;
    let (x, y) = (view.window.x as f64, view.window.y as f64);
    PixelBox { x1: (b.x1 - x) * sx, y1: (b.y1 - y) * sy, x2: (b.x2 - x) * sx, y2: (b.y2 - y) * sy }
}

/// Writes a merged mask, georeferenced when the raster is and the file is a GeoTIFF.
pub fn save_mask(
    out: &Path,
    mask: &Mask,
    info: &engine::raster::RasterInfo,
    view: &WindowImage,
) -> anyhow::Result<bool> {
    let georef = info
        .geotransform
        .filter(|_| is_geotiff(out))
        .map(|gt| Georef::for_window(gt, info.crs_wkt.clone(), view.window, (mask.width, mask.height)));
    write_mask(out, mask, georef.as_ref())?;
    Ok(georef.is_some())
}

/// One JSON entry per mask; `b` in raster pixels.
pub fn segment_json(b: &PixelBox, s: &Segment) -> serde_json::Value {
    json!({
        "box": [b.x1, b.y1, b.x2, b.y2],
        "iou": s.iou,
        "object_score": s.object_score,
        "pixels": s.mask.count(),
        "sha256": s.mask.digest(),
    })
}

pub fn run(args: &SegmentArgs) -> anyhow::Result<()> {
    if args.text.is_some() || !args.exemplars.is_empty() {
        return super::find::run(args);
    }
    let out_path = args.out.as_deref().context("--out names the mask to write")?;
    let prompts_in = prompts(args)?;
    let raster = Raster::open(&args.image)?;
    let info = raster.info().clone();
    let window = match &args.window {
        Some(w) => super::args::parse_window(w)?,
        None => Window::full(info.width, info.height),
    };
    let view = read_window(&raster, window, &RenderParams::default_for(&info), SEGMENT_PIXEL_BUDGET)?;
    drop(raster);
    let (w, h) = (view.image.width, view.image.height);
    let mut image_prompts = Vec::with_capacity(prompts_in.len());
    for (i, (b, points)) in prompts_in.iter().enumerate() {
        let clipped = clip_box(to_image(&view, *b), w, h)
            .map_err(|e| anyhow::anyhow!("--box {} ({},{},{},{}) {e} of the window", i + 1, b.x1, b.y1, b.x2, b.y2))?;
        let pts: Vec<(f32, f32, bool)> = points
            .iter()
            .map(|&(x, y, positive)| {
                let p = to_image(&view, PixelBox { x1: x, y1: y, x2: x, y2: y });
                (p.x1 as f32, p.y1 as f32, positive)
            })
            .collect();
        image_prompts.push((clipped, box_prompt(clipped, &pts)));
    }
    let t = Instant::now();
    let device = args.device.open()?;
    let mut seg: Box<dyn Segmenter> = load_segmenter(args.sam.as_deref(), &device, args.sam_precision)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    seg.set_image(None, &view.image)?;
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let prompts: Vec<Prompt> = image_prompts.iter().map(|(_, p)| p.clone()).collect();
    let segments = seg.segment(&prompts)?;
    let decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let merged = Mask::union(w, h, segments.iter().map(|s| &s.mask));
    let georeferenced = save_mask(out_path, &merged, &info, &view)?;
    let method = seg.method();
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = json!({
            "method": method.to_string(),
            "image": args.image,
            "window": [window.x, window.y, window.width, window.height],
            "mask_size": [w, h],
            "mask_pixels": merged.count(),
            "out": out_path,
            "georeferenced": georeferenced,
            "masks": image_prompts
                .iter()
                .zip(&segments)
                .map(|((b, _), s)| segment_json(&view.to_raster(b), s))
                .collect::<Vec<_>>(),
            "timings": {"load_ms": load_ms, "encode_ms": encode_ms, "decode_ms": decode_ms},
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "{}: {} mask(s), {} of {}×{} pixels → {}{}",
            method,
            segments.len(),
            merged.count(),
            w,
            h,
            out_path.display(),
            if georeferenced { " (georeferenced)" } else { "" }
        )?;
        for (i, s) in segments.iter().enumerate() {
            let score = match (s.iou, s.object_score) {
                (Some(iou), Some(obj)) => format!("predicted IoU {iou:.3}, object score {obj:.2}"),
                _ => "no scores (fallback)".to_owned(),
            };
            writeln!(out, "  box {}: {} px, {score}", i + 1, s.mask.count())?;
        }
    }
    Ok(())
}
