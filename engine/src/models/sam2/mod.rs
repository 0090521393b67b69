//! SAM 2.1 image predictor in candle: Hiera encoder + FPN neck with the
//! high-resolution features, the single-image `no_mem_embed` path, the prompt
//! encoder and the mask decoder — what `sam2.SAM2ImagePredictor` runs for one
//! image. Loads the official `sam2.1_hiera_*.pt` checkpoints (read without
//! executing pickle code) and safetensors.

pub mod decoder;
pub mod hiera;
#[cfg(any(test, feature = "synthetic"))]
pub mod synthetic;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::base::RgbImage;
use crate::error::{EngineError, Result};
use crate::models::trace::Trace;
use crate::models::{EncoderPrecision, ops};
use decoder::{Generation, MaskDecoder, PointPrompt, PromptEncoder};
use hiera::{FpnNeck, Hiera, HieraConfig};

/// Side of the square the encoder sees.
pub const IMAGE_SIZE: usize = 1024;
/// Side of the low-resolution mask logits.
pub const LOW_RES: usize = 256;
const EMBED_DIM: usize = 256;
/// The bound `SAM2ImagePredictor` clamps returned low-res logits to.
const MASK_INPUT_CLAMP: f32 = 32.0;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Which official model a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    Tiny,
    Small,
    BasePlus,
    Large,
}

impl Geometry {
    pub fn hiera(self) -> HieraConfig {
        match self {
            Self::Tiny => HieraConfig::tiny(),
            Self::Small => HieraConfig::small(),
            Self::BasePlus => HieraConfig::base_plus(),
            Self::Large => HieraConfig::large(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "sam2.1_hiera_tiny",
            Self::Small => "sam2.1_hiera_small",
            Self::BasePlus => "sam2.1_hiera_base_plus",
            Self::Large => "sam2.1_hiera_large",
        }
    }

    /// Recognises the geometry from the trunk's width and depth.
    fn detect(tensors: &HashMap<String, Tensor>) -> std::result::Result<Self, String> {
        let embed = tensors
            .get("image_encoder.trunk.patch_embed.proj.weight")
            .and_then(|t| t.dims().first().copied())
            .ok_or("no image_encoder.trunk.patch_embed.proj.weight: not a SAM 2 checkpoint")?;
        let depth =
            (0..).take_while(|i| tensors.contains_key(&format!("image_encoder.trunk.blocks.{i}.norm1.weight"))).count();
        [Self::Tiny, Self::Small, Self::BasePlus, Self::Large]
            .into_iter()
            .find(|g| g.hiera().embed_dim == embed && g.hiera().depth() == depth)
            .ok_or_else(|| {
                format!(
                    "unknown SAM 2 geometry: embed_dim {embed}, {depth} blocks (expected tiny, small, base+ or large)"
                )
            })
    }
}

/// An image run through the encoder: what every prompt on it reuses.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// (1, 256, 64, 64); SAM 2: `no_mem_embed` added.
    pub image: Tensor,
    /// SAM 2's projected high-resolution features (1, 32, 256, 256) and (1, 64, 128, 128).
    pub high_res: Option<(Tensor, Tensor)>,
    /// (width, height) of the image given.
    pub original: (usize, usize),
    /// (width, height) it was resized to inside the 1024² encoder frame: SAM 2
    /// stretches to the whole square, SAM v1 keeps the aspect (longest side 1024).
    pub input_size: (usize, usize),
    /// The decoder's prompt-independent first-block work for this image.
    pub side: Option<decoder::ImageSide>,
}

impl crate::cache::ByteSize for ImageEmbedding {
    fn byte_size(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        bytes(&self.image)
            + self.high_res.as_ref().map_or(0, |(a, b)| bytes(a) + bytes(b))
            + self.side.as_ref().map_or(0, decoder::ImageSide::byte_size)
    }
}

/// One prompt, in pixels of the image given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    /// (x1, y1, x2, y2).
    pub bbox: Option<[f32; 4]>,
    /// (x, y, positive).
    pub points: Vec<(f32, f32, bool)>,
    /// Low-resolution logits of a previous prediction (256×256), to refine.
    pub mask_input: Option<Vec<f32>>,
}

/// The decoder's answer to one prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// 256×256 mask logits (row-major).
    pub low_res: Vec<f32>,
    pub iou: f32,
    /// Object-score logit (SAM 2 only).
    pub object_score: Option<f32>,
}

/// A loaded SAM 2.1 model.
#[derive(Debug, Clone)]
pub struct Sam2 {
    pub geometry: Geometry,
    trunk: Hiera,
    neck: FpnNeck,
    prompt_encoder: PromptEncoder,
    decoder: MaskDecoder,
    no_mem_embed: Tensor,
    /// The prompt encoder's positional encoding of the image grid, as (1, g·g, 256).
    key_pe: Tensor,
    device: Device,
}

fn model_err(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: path.to_owned(), reason: reason.to_string() }
}

impl Sam2 {
    /// Loads an official `.pt` checkpoint (`{"model": state_dict}`) or a
    /// safetensors file with the same tensor names.
    pub fn load(path: &Path, device: &Device, precision: EncoderPrecision) -> Result<Self> {
        let tensors = crate::models::read_checkpoint(path, device)?;
        Self::from_tensors(tensors, device, precision).map_err(|e| crate::models::at_path(e, path))
    }

    /// Builds the model from named tensors (the checkpoint's names).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        device: &Device,
        precision: EncoderPrecision,
    ) -> Result<Self> {
        let geometry = Geometry::detect(&tensors).map_err(|e| model_err(Path::new("checkpoint"), e))?;
        let cfg = geometry.hiera();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let shape_err = |e: candle_core::Error| {
            model_err(
                Path::new("checkpoint"),
                format!("weights do not match {}: {}", geometry.name(), crate::models::first_line(&e)),
            )
        };
        let grid = IMAGE_SIZE / 4;
        let bf16 = precision.bf16_on(device);
        let trunk = Hiera::new(&cfg, (grid, grid), vb.pp("image_encoder.trunk"), bf16).map_err(shape_err)?;
        let neck = FpnNeck::new(&cfg.channel_list(), EMBED_DIM, vb.pp("image_encoder.neck")).map_err(shape_err)?;
        let prompt_encoder = PromptEncoder::new(EMBED_DIM, IMAGE_SIZE / 16, IMAGE_SIZE, vb.pp("sam_prompt_encoder"))
            .map_err(shape_err)?;
        let decoder = MaskDecoder::new(EMBED_DIM, Generation::V2, vb.pp("sam_mask_decoder")).map_err(shape_err)?;
        let no_mem_embed =
            vb.get((1, 1, EMBED_DIM), "no_mem_embed").map_err(shape_err)?.reshape((1, EMBED_DIM, 1, 1))?;
        let key_pe = prompt_encoder.dense_pe()?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        Ok(Self { geometry, trunk, neck, prompt_encoder, decoder, no_mem_embed, key_pe, device: device.clone() })
    }

    /// The encoder input: resized to 1024² (antialiased bilinear, aspect not
    /// kept, as torchvision's `Resize`), scaled to [0, 1] and normalised.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let (w, h) = (img.width, img.height);
        let mut planes = vec![0f32; 3 * w * h];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * w * h + i] = f32::from(px[c]) / 255.0;
            }
        }
        let rows = ops::bilinear_aa_weights(h, IMAGE_SIZE);
        let cols = ops::bilinear_aa_weights(w, IMAGE_SIZE);
        let mut resized = ops::resample_planes(&planes, 3, (h, w), &rows, &cols);
        let n = IMAGE_SIZE * IMAGE_SIZE;
        for (c, plane) in resized.chunks_exact_mut(n).enumerate() {
            for v in plane {
                *v = (*v - MEAN[c]) / STD[c];
            }
        }
        Ok(Tensor::from_vec(resized, (1, 3, IMAGE_SIZE, IMAGE_SIZE), &self.device)?)
    }

    /// Runs the image encoder once; every prompt on the image reuses the result.
    pub fn encode(&self, img: &RgbImage) -> Result<ImageEmbedding> {
        self.encode_traced(img, &mut Trace::off())
    }

    /// [`Self::encode`], recording every stage into `trace`.
    pub fn encode_traced(&self, img: &RgbImage, trace: &mut Trace) -> Result<ImageEmbedding> {
        if img.width == 0 || img.height == 0 {
            return Err(EngineError::InvalidRequest("cannot segment an empty image".into()));
        }
        let x = self.preprocess(img)?;
        trace.record("preprocess", &x);
        let stages = self.trunk.forward(&x, trace)?;
        let fpn = self.neck.forward(&stages, trace)?;
        let high_res = match &self.decoder.conv_s {
            Some((c0, c1)) => Some((c0.forward(&fpn[0])?, c1.forward(&fpn[1])?)),
            None => None,
        };
        if let Some((s0, s1)) = &high_res {
            trace.record("conv_s0", s0);
            trace.record("conv_s1", s1);
        }
        let image = fpn[2].broadcast_add(&self.no_mem_embed)?;
        trace.record("image_embed", &image);
        let side = self.decoder.image_side(&image, &self.prompt_encoder.embed_mask(None, 1)?, &self.key_pe)?;
        Ok(ImageEmbedding {
            image,
            high_res,
            original: (img.width, img.height),
            input_size: (IMAGE_SIZE, IMAGE_SIZE),
            side: Some(side),
        })
    }

    /// Masks for prompts on an encoded image, one per prompt. Every prompt must
    /// have the same number of points and the same kind (box or not); the box
    /// goes in as two corner points (labels 2 and 3) before the points, as
    /// `SAM2ImagePredictor` does. `multimask` returns the best of the three
    /// multimask outputs; otherwise one mask with the stability fallback.
    pub fn predict(&self, emb: &ImageEmbedding, prompts: &[Prompt], multimask: bool) -> Result<Vec<Prediction>> {
        self.predict_traced(emb, prompts, multimask, &mut Trace::off())
    }

    /// [`Self::predict`], recording every stage into `trace`.
    pub fn predict_traced(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        multimask: bool,
        trace: &mut Trace,
    ) -> Result<Vec<Prediction>> {
        let heads = Heads { prompt_encoder: &self.prompt_encoder, decoder: &self.decoder, key_pe: &self.key_pe };
        heads.predict(emb, prompts, multimask, trace)
    }
}

/// The prompt side both SAM generations share: prompt encoder, mask decoder and
/// the positional encoding of the image grid.
pub(crate) struct Heads<'a> {
    pub prompt_encoder: &'a PromptEncoder,
    pub decoder: &'a MaskDecoder,
    /// (1, g·g, 256).
    pub key_pe: &'a Tensor,
}

impl Heads<'_> {
    /// Prompts (pixels of the image given) → predictions. SAM 2 puts a box's
    /// corners before the points and always pads; SAM v1 puts them after the
    /// points and pads only without a box.
    pub fn predict(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        multimask: bool,
        trace: &mut Trace,
    ) -> Result<Vec<Prediction>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let generation = self.decoder.generation();
        let device = emb.image.device();
        let (w, h) = emb.original;
        let (sx, sy) = (emb.input_size.0 as f32 / w as f32, emb.input_size.1 as f32 / h as f32);
        let points: Vec<PointPrompt> = prompts
            .iter()
            .map(|p| {
                let mut coords = Vec::new();
                let mut labels = Vec::new();
                let corners = p.bbox.map(|[x1, y1, x2, y2]| [(x1 * sx, y1 * sy), (x2 * sx, y2 * sy)]);
                if generation == Generation::V2
                    && let Some(c) = corners
                {
                    coords.extend(c);
                    labels.extend([2, 3]);
                }
                for &(x, y, positive) in &p.points {
                    coords.push((x * sx, y * sy));
                    labels.push(i32::from(positive));
                }
                if generation == Generation::V1
                    && let Some(c) = corners
                {
                    coords.extend(c);
                    labels.extend([2, 3]);
                }
                PointPrompt { coords, labels }
            })
            .collect();
        let n = points[0].coords.len();
        if points.iter().any(|p| p.coords.len() != n)
            || prompts.iter().any(|p| p.bbox.is_some() != prompts[0].bbox.is_some())
        {
            return Err(EngineError::InvalidRequest(
                "prompts decoded together need the same number of points and all or none with a box".into(),
            ));
        }
        if n == 0 {
            return Err(EngineError::InvalidRequest("a prompt needs a box or at least one point".into()));
        }
        let pad = generation == Generation::V2 || prompts[0].bbox.is_none();
        let sparse = self.prompt_encoder.embed_points(&points, pad, device)?;
        trace.record("sparse", &sparse);
        let masks: Option<Vec<f32>> = if prompts.iter().all(|p| p.mask_input.is_some()) {
            Some(prompts.iter().flat_map(|p| p.mask_input.clone().unwrap_or_default()).collect())
        } else if prompts.iter().any(|p| p.mask_input.is_some()) {
            return Err(EngineError::InvalidRequest("mask inputs must be given for every prompt or none".into()));
        } else {
            None
        };
        let mask_tensor = match masks {
            Some(mut m) if m.len() == prompts.len() * LOW_RES * LOW_RES => {
                // SAM2ImagePredictor hands back low-res logits clamped to ±32, and
                // those are what a refinement feeds in (the mask itself is made
                // from the unclamped ones, as here).
                if generation == Generation::V2 {
                    m.iter_mut().for_each(|v| *v = v.clamp(-MASK_INPUT_CLAMP, MASK_INPUT_CLAMP));
                }
                Some(Tensor::from_vec(m, (prompts.len(), 1, LOW_RES, LOW_RES), device)?)
            }
            Some(_) => {
                return Err(EngineError::InvalidRequest(format!("a mask input must be {LOW_RES}×{LOW_RES} logits")));
            }
            None => None,
        };
        let dense = self.prompt_encoder.embed_mask(mask_tensor.as_ref(), prompts.len())?;
        trace.record("dense", &dense);
        let side = if mask_tensor.is_none() { emb.side.as_ref() } else { None };
        let high_res = emb.high_res.as_ref().map(|(a, b)| (a, b));
        let out =
            self.decoder.forward((&emb.image, self.key_pe), (&sparse, &dense), side, high_res, multimask, trace)?;
        trace.record("low_res", &out.low_res);
        trace.record("iou", &out.iou);
        let ious: Vec<Vec<f32>> = out.iou.to_vec2()?;
        let scores: Option<Vec<Vec<f32>>> = out.object_score.map(|t| t.to_vec2()).transpose()?;
        let mut preds = Vec::with_capacity(prompts.len());
        for (i, iou) in ious.iter().enumerate() {
            // Multimask: the output with the highest predicted IoU.
            let k = (0..iou.len()).fold(0, |best, j| if iou[j] > iou[best] { j } else { best });
            let low_res: Vec<f32> = out.low_res.get(i)?.get(k)?.flatten_all()?.to_vec1()?;
            preds.push(Prediction { low_res, iou: iou[k], object_score: scores.as_ref().map(|s| s[i][0]) });
        }
        Ok(preds)
    }
}

/// Low-resolution logits → a mask at the image's size: bilinear
/// (align_corners=False), then `> 0`, as `SAM2ImagePredictor` does.
pub fn upscale_mask(low_res: &[f32], (w, h): (usize, usize)) -> Vec<bool> {
    let rows = ops::bilinear_weights(LOW_RES, h);
    let cols = ops::bilinear_weights(LOW_RES, w);
    ops::resample_planes(low_res, 1, (LOW_RES, LOW_RES), &rows, &cols).into_iter().map(|v| v > 0.0).collect()
}
