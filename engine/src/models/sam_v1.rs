//! Segment Anything v1 (ViT-B/L/H) and MobileSAM (TinyViT-5M) as an alternative
//! to SAM 2.1: candle-transformers' image encoders (`segment_anything`), with the
//! prompt encoder and mask decoder shared with SAM 2.1 in their v1 form (the
//! candle-transformers versions cannot take box prompts in 0.11 and use the tanh
//! GELU where SAM uses the exact one). Pre- and post-processing are
//! `segment_anything.SamPredictor`'s: longest side resized to 1024 (PIL bilinear,
//! to 8 bits, bit-exact), normalised in 0–255, padded; logits upsampled to 1024², cropped to
//! the resized image, then upsampled to the original size.
//!
//! Official checkpoints (`sam_vit_b_01ec64.pth`, `mobile_sam.pt`) are plain state
//! dicts, read without executing pickle code; safetensors with the same names too.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::segment_anything::image_encoder::ImageEncoderViT;

use crate::base::RgbImage;
use crate::error::{EngineError, Result};
use crate::models::ops;
use crate::models::pil_resize::{self, Filter};
use crate::models::sam2::decoder::{Generation, MaskDecoder, PromptEncoder};
use crate::models::sam2::{Heads, IMAGE_SIZE, ImageEmbedding, LOW_RES, Prediction, Prompt};
use crate::models::tiny_vit::TinyVit;
use crate::models::trace::Trace;

const EMBED_DIM: usize = 256;
const PATCH: usize = 16;
const WINDOW: usize = 14;
/// On the 0–255 scale.
const MEAN: [f32; 3] = [123.675, 116.28, 103.53];
const STD: [f32; 3] = [58.395, 57.12, 57.375];

/// The image encoder a checkpoint carries, read off its tensor shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backbone {
    /// ViT with windowed attention (14×14) except in the `global` blocks.
    Vit { embed_dim: usize, depth: usize, heads: usize, global: Vec<usize> },
    /// MobileSAM's TinyViT-5M.
    TinyVit5m,
}

impl Backbone {
    /// `sam_vit_b` / `_l` / `_h` for the official geometries, `mobile_sam`, or a
    /// description of another ViT.
    pub fn name(&self) -> String {
        match self {
            Self::TinyVit5m => "mobile_sam".into(),
            Self::Vit { embed_dim, depth, .. } => match (embed_dim, depth) {
                (768, 12) => "sam_vit_b".into(),
                (1024, 24) => "sam_vit_l".into(),
                (1280, 32) => "sam_vit_h".into(),
                _ => format!("sam_vit_{embed_dim}x{depth}"),
            },
        }
    }

    /// Whether the tensors look like a SAM v1 / MobileSAM checkpoint at all.
    pub fn is_v1(tensors: &HashMap<String, Tensor>) -> bool {
        tensors.contains_key("mask_decoder.iou_token.weight")
    }

    /// Reads the geometry: width from the patch embedding, depth from the block
    /// count, head width from the relative positions (whose length, 2·14−1 or
    /// 2·64−1, also says which blocks attend globally).
    pub fn detect(tensors: &HashMap<String, Tensor>) -> std::result::Result<Self, String> {
        if tensors.contains_key("image_encoder.patch_embed.seq.0.c.weight") {
            return Ok(Self::TinyVit5m);
        }
        let embed_dim = tensors
            .get("image_encoder.patch_embed.proj.weight")
            .and_then(|t| t.dims().first().copied())
            .ok_or("neither image_encoder.patch_embed.proj.weight (ViT) nor image_encoder.patch_embed.seq.0.c.weight (TinyViT): not a SAM v1 / MobileSAM checkpoint")?;
        let depth =
            (0..).take_while(|i| tensors.contains_key(&format!("image_encoder.blocks.{i}.norm1.weight"))).count();
        if depth == 0 {
            return Err("the ViT image encoder has no blocks".into());
        }
        let mut heads = None;
        let mut global = Vec::new();
        for i in 0..depth {
            let rel = tensors
                .get(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"))
                .ok_or_else(|| format!("block {i} has no relative position table (attn.rel_pos_h)"))?;
            let &[len, head_dim] = rel.dims() else { return Err(format!("block {i}: rel_pos_h is not 2-D")) };
            if len == 2 * (IMAGE_SIZE / PATCH) - 1 {
                global.push(i);
            } else if len != 2 * WINDOW - 1 {
                return Err(format!(
                    "block {i}: relative positions for size {}, expected {WINDOW} or {}",
                    len.div_ceil(2),
                    IMAGE_SIZE / PATCH
                ));
            }
            if head_dim == 0 || embed_dim % head_dim != 0 {
                return Err(format!(
                    "block {i}: head width {head_dim} does not divide the embedding width {embed_dim}"
                ));
            }
            match heads {
                None => heads = Some(embed_dim / head_dim),
                Some(h) if h != embed_dim / head_dim => {
                    return Err(format!("block {i}: head width differs from block 0"));
                }
                Some(_) => {}
            }
        }
        Ok(Self::Vit { embed_dim, depth, heads: heads.unwrap_or(1), global })
    }
}

#[derive(Debug)]
enum Encoder {
    Vit(Box<ImageEncoderViT>),
    Tiny(Box<TinyVit>),
}

/// A loaded SAM v1 or MobileSAM model.
#[derive(Debug)]
pub struct SamV1 {
    pub backbone: Backbone,
    encoder: Encoder,
    prompt_encoder: PromptEncoder,
    decoder: MaskDecoder,
    key_pe: Tensor,
    device: Device,
}

fn model_err(reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: "checkpoint".into(), reason: reason.to_string() }
}

impl SamV1 {
    /// Loads `sam_vit_{b,l,h}_*.pth`, `mobile_sam.pt` or a safetensors file with their names.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let tensors = crate::models::read_checkpoint(path, device)?;
        Self::from_tensors(tensors, device).map_err(|e| crate::models::at_path(e, path))
    }

    /// Builds the model from named tensors (the checkpoint's names).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let backbone = Backbone::detect(&tensors).map_err(model_err)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let shape_err = |e: candle_core::Error| {
            model_err(format!("weights do not match {}: {}", backbone.name(), crate::models::first_line(&e)))
        };
        let encoder = match &backbone {
            Backbone::TinyVit5m => Encoder::Tiny(Box::new(TinyVit::new(vb.pp("image_encoder")).map_err(shape_err)?)),
            Backbone::Vit { embed_dim, depth, heads, global } => Encoder::Vit(Box::new(
                ImageEncoderViT::new(
                    IMAGE_SIZE,
                    PATCH,
                    3,
                    *embed_dim,
                    *depth,
                    *heads,
                    EMBED_DIM,
                    true,
                    true,
                    true,
                    WINDOW,
                    global,
                    vb.pp("image_encoder"),
                )
                .map_err(shape_err)?,
            )),
        };
        let prompt_encoder = PromptEncoder::new(EMBED_DIM, IMAGE_SIZE / PATCH, IMAGE_SIZE, vb.pp("prompt_encoder"))
            .map_err(shape_err)?;
        let decoder = MaskDecoder::new(EMBED_DIM, Generation::V1, vb.pp("mask_decoder")).map_err(shape_err)?;
        let key_pe = prompt_encoder.dense_pe()?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        Ok(Self { backbone, encoder, prompt_encoder, decoder, key_pe, device: device.clone() })
    }

    /// `ResizeLongestSide(1024)`: the (width, height) an image is resized to.
    pub fn input_size(width: usize, height: usize) -> (usize, usize) {
        let scale = IMAGE_SIZE as f64 / width.max(height) as f64;
        let side = |v: usize| ((v as f64 * scale + 0.5) as usize).max(1);
        (side(width), side(height))
    }

    /// The resized image as SamPredictor makes it (Pillow's bilinear resize, to
    /// 8 bits): planar RGB, 0–255.
    pub fn resize(img: &RgbImage) -> (Vec<f32>, (usize, usize)) {
        let (nw, nh) = Self::input_size(img.width, img.height);
        let rgb = pil_resize::resize_rgb8(&img.data, (img.width, img.height), (nw, nh), Filter::Bilinear);
        let mut planes = vec![0f32; 3 * nw * nh];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * nw * nh + i] = f32::from(px[c]);
            }
        }
        (planes, (nw, nh))
    }

    /// The encoder input (1, 3, 1024, 1024): resized, normalised, zero-padded
    /// at the bottom and right.
    pub fn preprocess(&self, img: &RgbImage) -> Result<(Tensor, (usize, usize))> {
        let (resized, (nw, nh)) = Self::resize(img);
        let mut x = vec![0f32; 3 * IMAGE_SIZE * IMAGE_SIZE];
        for c in 0..3 {
            for y in 0..nh {
                let src = &resized[c * nw * nh + y * nw..][..nw];
                let dst = &mut x[c * IMAGE_SIZE * IMAGE_SIZE + y * IMAGE_SIZE..][..nw];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (s - MEAN[c]) / STD[c];
                }
            }
        }
        Ok((Tensor::from_vec(x, (1, 3, IMAGE_SIZE, IMAGE_SIZE), &self.device)?, (nw, nh)))
    }

    /// Runs the image encoder once; every prompt on the image reuses the result.
    pub fn encode(&self, img: &RgbImage) -> Result<ImageEmbedding> {
        self.encode_traced(img, &mut Trace::off())
    }

    /// [`Self::encode`], recording its stages into `trace`.
    pub fn encode_traced(&self, img: &RgbImage, trace: &mut Trace) -> Result<ImageEmbedding> {
        if img.width == 0 || img.height == 0 {
            return Err(EngineError::InvalidRequest("cannot segment an empty image".into()));
        }
        let (x, input_size) = self.preprocess(img)?;
        trace.record("preprocess", &x);
        let image = match &self.encoder {
            Encoder::Vit(e) => e.forward(&x)?,
            Encoder::Tiny(e) => e.forward(&x, trace)?,
        };
        trace.record("image_embed", &image);
        let side = self.decoder.image_side(&image, &self.prompt_encoder.embed_mask(None, 1)?, &self.key_pe)?;
        Ok(ImageEmbedding { image, high_res: None, original: (img.width, img.height), input_size, side: Some(side) })
    }

    /// Masks for prompts on an encoded image, one per prompt (points, then the
    /// box's corners, as SamPredictor orders them). Single-mask output is the
    /// first mask token's, as in SAM v1; `multimask` picks the best of the other three.
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

/// Low-resolution logits → a mask at the original size, as SamPredictor's
/// `postprocess_masks`: bilinear to 1024², crop to the resized image, bilinear to
/// the original size (align_corners=False throughout), then `> 0`.
pub fn upscale_mask(low_res: &[f32], input_size: (usize, usize), (w, h): (usize, usize)) -> Vec<bool> {
    let full = ops::resample_planes(
        low_res,
        1,
        (LOW_RES, LOW_RES),
        &ops::bilinear_weights(LOW_RES, IMAGE_SIZE),
        &ops::bilinear_weights(LOW_RES, IMAGE_SIZE),
    );
    let (nw, nh) = input_size;
    let cropped: Vec<f32> = full.chunks_exact(IMAGE_SIZE).take(nh).flat_map(|row| row[..nw].iter().copied()).collect();
    ops::resample_planes(&cropped, 1, (nh, nw), &ops::bilinear_weights(nh, h), &ops::bilinear_weights(nw, w))
        .into_iter()
        .map(|v| v > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_side_becomes_1024_with_rounding() {
        assert_eq!(SamV1::input_size(500, 340), (1024, 696));
        assert_eq!(SamV1::input_size(340, 500), (696, 1024));
        assert_eq!(SamV1::input_size(2048, 2048), (1024, 1024));
        assert_eq!(SamV1::input_size(5000, 3), (1024, 1));
    }
}
