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
    /// SAM 3 checkpoint directory: pixel values, ViT tokens, then per prompt its
    /// token ids, query logits, presence, boxes, mask logits, scores and the
    /// masks at the image's size.
    Sam3(Sam3Args),
}

#[derive(clap::Args, Debug)]
struct Sam3Args {
    /// Checkpoint directory (config.json + safetensors, or sam3.pt; tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    image: PathBuf,
    /// JSON: {"name": {"text": "ship", "exemplars": [[x1, y1, x2, y2, 1|0], ..]}} (image pixels).
    #[arg(long)]
    cases: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Deserialize, Debug)]
struct Sam3Case {
    #[serde(default)]
    text: String,
    #[serde(default)]
    exemplars: Vec<[f64; 5]>,
}

#[derive(clap::Args, Debug)]
struct QwenArgs {
    /// Checkpoint directory (config.json + safetensors, or sam3.pt; tokenizer.json).
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

/// SAM 3 through the product's own pieces: the checkpoint and tokenizer as
/// `ConceptSegmenter` loads them, its preprocessing, each prompt on one encoding,
/// every query's mask brought to the image as the product does.
fn sam3(args: &Sam3Args) -> anyhow::Result<()> {
    use engine::base::PixelBox;
    use engine::models::sam3::processor::{ConceptTokenizer, exemplar_box, mask_on_image, pixel_values};
    use engine::models::sam3::{Checkpoint, Exemplars, Sam3Image};
    use engine::segment::concept::ConceptPrompt;
    let dev = Device::Cpu;
    let img = rgb(&args.image)?;
    let cases: std::collections::BTreeMap<String, Sam3Case> =
        serde_json::from_str(&std::fs::read_to_string(&args.cases)?)?;
    let checkpoint = Checkpoint::open(&args.model)?;
    let size = checkpoint.config.vision_config.backbone_config.image_size;
    let tokenizer = ConceptTokenizer::load(&args.model, checkpoint.config.text_config.max_position_embeddings)?;
    let model = Sam3Image::load(&checkpoint, &dev)?;
    let pixels = Tensor::from_vec(pixel_values(&img, size), (1, 3, size, size), &dev)?;
    let vision = model.vision.forward(&pixels)?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    out.insert("pixel_values".into(), pixels.clone());
    out.insert("vision.tokens".into(), vision.tokens.clone());
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    for (name, case) in &cases {
        let prompt = ConceptPrompt { text: case.text.clone(), exemplars: vec![] };
        let (ids, mask) = tokenizer.encode(prompt.model_text())?;
        let t = ids.len();
        out.insert(format!("{name}.input_ids"), Tensor::from_vec(ids.iter().map(|&v| v as f32).collect(), t, &dev)?);
        let ids = Tensor::from_vec(ids, (1, t), &dev)?;
        let valid = Tensor::from_vec(mask, (1, t), &dev)?;
        let n = case.exemplars.len();
        let boxes: Vec<f32> = case
            .exemplars
            .iter()
            .flat_map(|e| exemplar_box(&PixelBox { x1: e[0], y1: e[1], x2: e[2], y2: e[3] }, (img.width, img.height)))
            .collect();
        let labels: Vec<i64> = case.exemplars.iter().map(|e| e[4] as i64).collect();
        let tensors = (n > 0)
            .then(|| -> candle_core::Result<_> {
                Ok((
                    Tensor::from_vec(boxes, (1, n, 4), &dev)?,
                    Tensor::from_vec(labels, (1, n), &dev)?,
                    Tensor::ones((1, n), DType::F32, &dev)?,
                ))
            })
            .transpose()?;
        let exemplars = tensors.as_ref().map(|(boxes, labels, valid)| Exemplars { boxes, labels, valid });
        let pred = model.predict_encoded(&vision, &ids, &valid, exemplars.as_ref())?;
        let presence = sigmoid(pred.presence.flatten_all()?.to_vec1::<f32>()?[0]);
        let scores: Vec<f32> =
            pred.logits.flatten_all()?.to_vec1::<f32>()?.iter().map(|&l| sigmoid(l) * presence).collect();
        let masks = pred.masks.get(0)?;
        let (q, mh, mw) = masks.dims3()?;
        let mut full = Vec::with_capacity(q * img.width * img.height);
        for i in 0..q {
            let logits: Vec<f32> = masks.get(i)?.flatten_all()?.to_vec1()?;
            full.extend(
                mask_on_image(&logits, (mh, mw), (img.width, img.height), model.flavour)
                    .data
                    .iter()
                    .map(|&v| f32::from(v)),
            );
        }
        out.insert(format!("{name}.pred_logits"), pred.logits);
        out.insert(format!("{name}.presence_logits"), pred.presence);
        out.insert(format!("{name}.pred_boxes"), pred.boxes);
        out.insert(format!("{name}.pred_masks"), pred.masks);
        out.insert(format!("{name}.scores"), Tensor::from_vec(scores, q, &dev)?);
        out.insert(format!("{name}.masks"), Tensor::from_vec(full, (q, img.height, img.width), &dev)?);
    }
    let out: HashMap<String, Tensor> = out
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&out, &args.out)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().model {
        Model::Sam2(a) => sam(&a, true),
        Model::SamV1(a) => sam(&a, false),
        Model::Qwen(a) => qwen(&a),
        Model::Sam3(a) => sam3(&a),
    }
}
