//! `remote-reasoner eval`: EarthReason-layout evaluation, resumable; one JSON
//! line per sample, `summary.json`, and a printed table.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use engine::base::Goal;
use engine::base::Window;
use engine::eval::{
    Protocol, SampleResult, box_iou, intersection_union, iou, letterbox, mask_box, read_results, samples, summarize,
};
use engine::pipeline::{Origin, Progress, Question};
use engine::raster::{Raster, RenderParams};
use engine::reasoner::AskOptions;
use engine::segment::Mask;

use super::args::{BackendArgs, open_backend};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The dataset root: {split}/images, {split}/labels, {split}/QAs.
    #[arg(long)]
    pub dataset: PathBuf,
    #[arg(long, default_value = "val")]
    pub split: String,
    /// pixel: masks (boxes → SAM or the watershed fallback) against the labels; region: the
    /// first box against the label's bounding box (Acc@0.5), and the box as a mask.
    #[arg(long, default_value = "pixel")]
    pub task: Goal,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// SAM checkpoint for --task pixel (default: the watershed fallback).
    #[arg(long, env = "RR_SAM")]
    pub sam: Option<PathBuf>,
    /// SAM 2.1's image encoder: auto (bf16 products on CPUs with AVX-512 BF16, else
    /// f32), f32 (as the reference computes) or bf16.
    #[arg(long, env = "RR_SAM_PRECISION", default_value = "auto")]
    pub sam_precision: engine::models::EncoderPrecision,
    /// Score at most this many samples (in id order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// segearth: masks letterboxed to 1024, first question per image (SegEarth-R1);
    /// full: full resolution, every question.
    #[arg(long, default_value = "segearth")]
    pub protocol: Protocol,
    /// Pixel budget of the model's image (default 802816, as in training).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Output directory: results.jsonl (appended: a rerun resumes) and summary.json.
    #[arg(long)]
    pub out: PathBuf,
}

fn load_label(path: &std::path::Path) -> anyhow::Result<Mask> {
    let m = engine::segment::output::read_mask(path)?;
    Ok(Mask { width: m.width, height: m.height, data: m.data.iter().map(|&v| v != 0).collect() })
}

/// Nearest-neighbour resize of a mask (when the model's image was decimated).
fn resize_mask(m: &Mask, w: usize, h: usize) -> Mask {
    if (m.width, m.height) == (w, h) {
        return m.clone();
    }
    let mut out = Mask::empty(w, h);
    for y in 0..h {
        let sy = (y * m.height / h).min(m.height - 1);
        for x in 0..w {
            out.data[y * w + x] = m.data[sy * m.width + (x * m.width / w).min(m.width - 1)];
        }
    }
    out
}

/// A sample's image as the model sees it, and its label (same size as the image).
fn read_sample(s: &engine::eval::Sample, max_pixels: usize) -> anyhow::Result<(engine::pipeline::WindowImage, Mask)> {
    let raster = Raster::open(&s.image)?;
    let info = raster.info().clone();
    let view = engine::pipeline::read_window(
        &raster,
        Window::full(info.width, info.height),
        &RenderParams::default_for(&info),
        max_pixels,
    )?;
    let truth = load_label(&s.label)?;
    if (truth.width as u64, truth.height as u64) != (info.width, info.height) {
        bail!("{}: label is {}×{}, image {}×{}", s.label.display(), truth.width, truth.height, info.width, info.height);
    }
    Ok((view, truth))
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    args.task.expect_one_of(&[Goal::Region, Goal::Pixel], "eval")?;
    let mut all = samples(&args.dataset, &args.split, args.protocol)?;
    if let Some(n) = args.limit {
        all.truncate(n);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let results_path = args.out.join("results.jsonl");
    let mut done = read_results(&results_path);
    done.retain(|r| all.iter().any(|s| s.id == r.id));
    let todo: Vec<_> = all.iter().filter(|s| !done.iter().any(|r| r.id == s.id)).cloned().collect();
    eprintln!(
        "{} sample(s): {} already scored in {}, {} to go",
        all.len(),
        done.len(),
        results_path.display(),
        todo.len()
    );
    if !todo.is_empty() {
        let (mut backend, _, _) = open_backend(&args.backend)?;
        let sam = args.sam.as_deref().filter(|_| args.task == Goal::Pixel);
        let mut segmenter = engine::segment::load_segmenter(sam, &args.backend.device.open()?, args.sam_precision)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results_path)
            .with_context(|| format!("{}: cannot write", results_path.display()))?;
        let max_pixels = args.max_pixels.unwrap_or(engine::reasoner::processor::TRAINING_MAX_PIXELS);
        let started = Instant::now();
        // Questions about the same image are consecutive (ids sort by image): read each image once.
        let mut current: Option<(PathBuf, engine::pipeline::WindowImage, Mask)> = None;
        for (k, s) in todo.iter().enumerate() {
            if current.as_ref().is_none_or(|(p, _, _)| p != &s.image) {
                let (view, truth) = read_sample(s, max_pixels)?;
                current = Some((s.image.clone(), view, truth));
            }
            let Some((_, view, truth)) = current.as_ref() else { continue };
            let t = Instant::now();
            let options = AskOptions { max_pixels: Some(max_pixels), ..Default::default() };
            let question = Question { goal: args.task, query: s.question.clone(), options };
            let mut segmenting = None;
            let o = engine::pipeline::run(
                &mut backend,
                segmenter.as_mut(),
                view,
                None,
                &question,
                &Origin::default(),
                |p| {
                    if p == Progress::Segmenting {
                        segmenting = Some(Instant::now());
                    }
                    std::ops::ControlFlow::Continue(())
                },
            )?;
            let ask_ms = segmenting.unwrap_or_else(Instant::now).duration_since(t).as_secs_f64() * 1e3;
            let answer = o.answer;
            let boxes: Vec<[f64; 4]> = o.boxes.iter().map(engine::base::PixelBox::to_array).collect();
            let t = segmenting.unwrap_or_else(Instant::now);
            let pred = match (&o.segments, args.task) {
                (Some(seg), _) => resize_mask(&seg.merged, truth.width, truth.height),
                (None, Goal::Pixel) => Mask::empty(truth.width, truth.height),
                (None, _) => {
                    // Region task: the boxes as a mask (pixel centres inside).
                    let mut m = Mask::empty(truth.width, truth.height);
                    for b in &boxes {
                        for y in 0..m.height {
                            for x in 0..m.width {
                                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                                if cx > b[0] && cx < b[2] && cy > b[1] && cy < b[3] {
                                    m.data[y * m.width + x] = true;
                                }
                            }
                        }
                    }
                    m
                }
            };
            let segment_ms = t.elapsed().as_secs_f64() * 1e3;
            let (p, g) = match args.protocol {
                Protocol::Segearth => (letterbox(&pred), letterbox(truth)),
                Protocol::Full => (pred, truth.clone()),
            };
            let (i, u) = intersection_union(&p, &g);
            let box_iou = (args.task == Goal::Region).then(|| match (boxes.first(), mask_box(truth)) {
                (Some(&b), Some(t)) => box_iou(b, t),
                (None, None) => 1.0,
                _ => 0.0,
            });
            let r = SampleResult {
                id: s.id.clone(),
                question: s.question.clone(),
                iou: iou(i, u),
                intersection: i,
                union: u,
                n_boxes: boxes.len(),
                boxes,
                parse_ok: answer.format_ok,
                box_iou,
                ask_ms,
                segment_ms,
            };
            writeln!(file, "{}", serde_json::to_string(&r)?)?;
            file.flush()?;
            let per = started.elapsed().as_secs_f64() / (k + 1) as f64;
            eprintln!(
                "[{}/{}] {} IoU {:.3}  (ETA {:.0} s)",
                k + 1,
                todo.len(),
                r.id,
                r.iou,
                per * (todo.len() - k - 1) as f64
            );
            done.push(r);
        }
    }
    done.sort_by(|a, b| a.id.cmp(&b.id));
    let summary = summarize(&done);
    let summary_path = args.out.join("summary.json");
    let tmp = args.out.join(".summary.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(&serde_json::json!({
            "dataset": args.dataset,
            "split": args.split,
            "task": format!("{:?}", args.task).to_lowercase(),
            "protocol": args.protocol,
            "model": args.backend.model.as_ref().map_or_else(|| args.backend.endpoint.clone().unwrap_or_default(), |m| m.display().to_string()),
            "summary": summary,
        }))?,
    )?;
    std::fs::rename(&tmp, &summary_path)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "| samples | gIoU | cIoU | Pr@0.5 | Pr@0.6 | Pr@0.7 | Pr@0.8 | Pr@0.9 | Acc@0.5 |")?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let pr: Vec<String> = summary.pr.iter().map(|(_, v)| format!("{:.2}", v * 100.0)).collect();
    writeln!(
        out,
        "| {} | {:.2} | {:.2} | {} | {} |",
        summary.samples,
        summary.giou * 100.0,
        summary.ciou * 100.0,
        pr.join(" | "),
        summary.acc_05.map_or_else(|| "–".into(), |a| format!("{:.2}", a * 100.0))
    )?;
    writeln!(out, "wrote {} and {}", results_path.display(), summary_path.display())?;
    Ok(())
}
