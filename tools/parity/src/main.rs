//! `rr-parity`: runs one of our model ports on a checkpoint and an input, and
//! writes the tensors of every stage (safetensors, names as in the port's
//! [`engine::models::trace::Trace`]) for `tools/parity_report.py` to compare with
//! the reference implementation's. Development tool only: not shipped.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};
use engine::base::RgbImage;
use engine::models::sam2::Prompt;
use engine::models::trace::Trace;
use engine::segment::SamModel;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(about = "Dump every stage of a model port for parity reports")]
struct Cli {
    #[command(subcommand)]
    model: Model,
}

#[derive(Subcommand, Debug)]
enum Model {
    /// SAM 2.1 (`.pt` or safetensors): encoder stages, then each prompt set.
    Sam2(SamArgs),
    /// SAM v1 / MobileSAM (`.pth` or safetensors).
    SamV1(SamArgs),
    /// Qwen2.5-VL checkpoint directory: pixel values, prompt ids, vision tower,
    /// first logits, greedy tokens and the logits after them.
    Qwen(QwenArgs),
}

#[derive(clap::Args, Debug)]
struct QwenArgs {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    query: String,
    /// Greedy tokens to decode.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct SamArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    image: PathBuf,
    /// JSON: {"cases": {"name": {"prompts": [{"box": [..], "points": [[x, y, 1|0], ..],
    /// "mask_input": "other_case"?}], "multimask": false}}}.
    #[arg(long)]
    cases: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Deserialize, Debug)]
struct Cases {
    cases: std::collections::BTreeMap<String, Case>,
}

#[derive(Deserialize, Debug)]
struct Case {
    prompts: Vec<PromptSpec>,
    #[serde(default)]
    multimask: bool,
    /// The case whose low-res logits feed this one's mask input (refinement).
    #[serde(default)]
    mask_from: Option<String>,
}

#[derive(Deserialize, Debug)]
struct PromptSpec {
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
    #[serde(default)]
    points: Vec<(f32, f32, u8)>,
}

fn rgb(path: &PathBuf) -> anyhow::Result<RgbImage> {
    let img = image::open(path).with_context(|| format!("reading {}", path.display()))?.to_rgb8();
    Ok(RgbImage::new(img.width() as usize, img.height() as usize, img.into_raw())?)
}

/// Encodes once, then runs every case (in name order; a refinement case after
/// the case it refines), all stages prefixed by the case name.
fn sam(args: &SamArgs, v2: bool) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let img = rgb(&args.image)?;
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(&args.cases)?)?;
    let mut trace = Trace::recording();
    // The family is read off the tensors, as the product's `--sam` does.
    // f32: what the reference computes.
    let model = SamModel::load(&args.checkpoint, &dev, engine::models::EncoderPrecision::F32)?;
    if matches!(model, SamModel::V2(_)) != v2 {
        bail!("{} is not a {} checkpoint", args.checkpoint.display(), if v2 { "SAM 2" } else { "SAM v1 / MobileSAM" });
    }
    let emb = model.encode_traced(&img, &mut trace)?;
    let mut out: HashMap<String, Tensor> = trace.into_stages().into_iter().collect();
    let mut low_res: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
    let mut order: Vec<&String> = cases.cases.keys().collect();
    order.sort_by_key(|k| cases.cases[*k].mask_from.is_some());
    for name in order {
        let case = &cases.cases[name];
        let mut prompts: Vec<Prompt> = case
            .prompts
            .iter()
            .map(|p| Prompt {
                bbox: p.bbox,
                points: p.points.iter().map(|&(x, y, l)| (x, y, l == 1)).collect(),
                mask_input: None,
            })
            .collect();
        if let Some(from) = &case.mask_from {
            let Some(prev) = low_res.get(from) else { bail!("case {name}: no case {from} to refine") };
            for (p, m) in prompts.iter_mut().zip(prev) {
                p.mask_input = Some(m.clone());
            }
        }
        let mut t = Trace::recording();
        let preds = model.predict_traced(&emb, &prompts, case.multimask, &mut t)?;
        for (stage, tensor) in t.into_stages() {
            out.insert(format!("{name}.{stage}"), tensor);
        }
        let (w, h) = emb.original;
        let masks: Vec<f32> =
            preds.iter().flat_map(|p| model.mask(&emb, &p.low_res).data.into_iter().map(f32::from)).collect();
        out.insert(format!("{name}.mask"), Tensor::from_vec(masks, (preds.len(), h, w), &dev)?);
        low_res.insert(name.clone(), preds.into_iter().map(|p| p.low_res).collect());
    }
    let out: HashMap<String, Tensor> = out
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&out, &args.out)?;
    Ok(())
}

/// The reasoner's stages on one image and question, f32, through `Reasoner::load`.
fn qwen(args: &QwenArgs) -> anyhow::Result<()> {
    use engine::base::Goal;
    use engine::reasoner::generate::{Decoding, Sampler};
    use engine::reasoner::{AskOptions, LoadOptions, Reasoner, processor, prompt};
    let dev = Device::Cpu;
    let mut r = Reasoner::load(&args.model, &LoadOptions { precision: Some("f32".into()), ..Default::default() })?;
    let pre = r.preprocessor_for(&AskOptions::default());
    let p = processor::preprocess(&rgb(&args.image)?, &pre)?;
    let grid = [p.grid_thw];
    let pixels = Tensor::from_vec(p.pixel_values.clone(), (p.pixel_values.len() / p.patch_dim, p.patch_dim), &dev)?;
    let merge = r.config().vision.spatial_merge_size;
    let image_tokens = grid[0].iter().product::<usize>() / (merge * merge);
    let chat = prompt::chat(&r.system_prompt, Goal::Region, &args.query);
    let ids = r.prompt_ids(&chat, image_tokens)?;
    let model = r.model_mut();
    let embeds = model.encode_images(&pixels, &grid)?;
    let mut logits = model.prefill(&ids, Some(&embeds), &grid)?;
    let first = logits.flatten_all()?;
    let mut sampler =
        Sampler::new(&Decoding { repetition_penalty: args.repetition_penalty, ..Decoding::greedy(args.steps) });
    let mut context = ids.clone();
    let mut tokens = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = sampler.next(&logits, &context)?;
        tokens.push(t);
        context.push(t);
        logits = model.step(t)?;
    }
    let as_f32 = |v: &[u32]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("pixel_values".into(), pixels);
    out.insert("grid_thw".into(), Tensor::from_vec(as_f32(&grid[0].map(|g| g as u32)), 3, &dev)?);
    out.insert("input_ids".into(), Tensor::from_vec(as_f32(&ids), ids.len(), &dev)?);
    out.insert("image_embeds".into(), embeds.to_dtype(DType::F32)?);
    out.insert("first_logits".into(), first.to_dtype(DType::F32)?);
    out.insert("greedy_tokens".into(), Tensor::from_vec(as_f32(&tokens), tokens.len(), &dev)?);
    out.insert("last_logits".into(), logits.flatten_all()?.to_dtype(DType::F32)?);
    candle_core::safetensors::save(&out, &args.out)?;
    std::fs::write(args.out.with_extension("chat.txt"), chat)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().model {
        Model::Sam2(a) => sam(&a, true),
        Model::SamV1(a) => sam(&a, false),
        Model::Qwen(a) => qwen(&a),
    }
}
