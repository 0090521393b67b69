//! SAM 3's heads: the dot-product scoring of each query against the pooled
//! prompt (transformers' `Sam3DotProductScoring`) and the mask head
//! (`Sam3MaskDecoder`: the fused image attends to the prompt, a pixel decoder
//! climbs the FPN, each query's embedding dotted with the per-pixel projection).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, LayerNorm, Linear, VarBuilder};

use super::config::{MaskConfig, StageConfig};
use super::decoder::HeadMlp;
use super::encoder::{Attention, key_mask};
use crate::models::ops;

/// Scores each query against the prompt: logits (…, Q) clamped to ±12.
#[derive(Debug)]
pub struct Scoring {
    text_mlp: HeadMlp,
    text_norm: LayerNorm,
    text_proj: Linear,
    query_proj: Linear,
    width: usize,
}

impl Scoring {
    pub fn new(cfg: &StageConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            text_mlp: HeadMlp::new(d, cfg.intermediate_size, d, 2, vb.pp("text_mlp"))?,
            text_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("text_mlp_out_norm"))?,
            text_proj: candle_nn::linear(d, d, vb.pp("text_proj"))?,
            query_proj: candle_nn::linear(d, d, vb.pp("query_proj"))?,
            width: d,
        })
    }

    /// `queries` (B, Q, C), `prompt` (B, P, C) with `prompt_valid` (B, P) → (B, Q).
    pub fn forward(&self, queries: &Tensor, prompt: &Tensor, prompt_valid: &Tensor) -> Result<Tensor> {
        let text = self.text_norm.forward(&(self.text_mlp.forward(prompt)? + prompt)?)?;
        let valid = prompt_valid.to_dtype(DType::F32)?.unsqueeze(2)?;
        let count = valid.sum(1)?.clamp(1f32, f32::MAX)?;
        let pooled = text.broadcast_mul(&valid)?.sum(1)?.broadcast_div(&count)?;
        let text = self.text_proj.forward(&pooled)?.unsqueeze(2)?; // (B, C, 1)
        let scores = self.query_proj.forward(queries)?.matmul(&text)?.squeeze(2)?;
        (scores * (1.0 / (self.width as f64).sqrt()))?.clamp(-12f32, 12f32)
    }
}

/// Instance masks and the semantic map.
#[derive(Debug)]
pub struct Masks {
    /// (B, Q, H, W) logits at the finest FPN level.
    pub instances: Tensor,
    /// (B, 1, H, W) logits.
    pub semantic: Tensor,
}

/// The mask head.
#[derive(Debug)]
pub struct MaskDecoder {
    convs: Vec<Conv2d>,
    norms: Vec<GroupNorm>,
    embedder: Vec<Linear>,
    instance_proj: Conv2d,
    semantic_proj: Conv2d,
    prompt_attn: Attention,
    prompt_norm: LayerNorm,
}

impl MaskDecoder {
    pub fn new(cfg: &MaskConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if !d.is_multiple_of(8) || cfg.num_attention_heads == 0 || !d.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "mask_decoder_config: hidden_size {d} must split into 8 groups and {} heads",
                cfg.num_attention_heads
            );
        }
        let pad = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
        let pd = vb.pp("pixel_decoder");
        let convs = (0..cfg.num_upsampling_stages)
            .map(|i| candle_nn::conv2d(d, d, 3, pad, pd.pp(format!("conv_layers.{i}"))))
            .collect::<Result<_>>()?;
        let norms = (0..cfg.num_upsampling_stages)
            .map(|i| candle_nn::group_norm(8, d, 1e-5, pd.pp(format!("norms.{i}"))))
            .collect::<Result<_>>()?;
        let embedder = (0..3)
            .map(|i| candle_nn::linear(d, d, vb.pp(format!("mask_embedder.layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            convs,
            norms,
            embedder,
            instance_proj: candle_nn::conv2d(d, d, 1, Default::default(), vb.pp("instance_projection"))?,
            semantic_proj: candle_nn::conv2d(d, 1, 1, Default::default(), vb.pp("semantic_projection"))?,
            prompt_attn: Attention::new(d, cfg.num_attention_heads, vb.pp("prompt_cross_attn"))?,
            prompt_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("prompt_cross_attn_norm"))?,
        })
    }

    /// `queries` (B, Q, C) — the last decoder layer's —, `levels` the FPN
    /// levels finest first, the coarsest replaced by `image` (B, h·w, C), the
    /// fused tokens, after they attend to `prompt`.
    pub fn forward(
        &self,
        queries: &Tensor,
        levels: &[Tensor],
        image: &Tensor,
        prompt: &Tensor,
        prompt_valid: &Tensor,
    ) -> Result<Masks> {
        let Some((coarsest, finer)) = levels.split_last() else { candle_core::bail!("the mask head needs FPN levels") };
        if finer.len() > self.convs.len() {
            candle_core::bail!("{} FPN levels to climb, {} pixel decoder stages", finer.len(), self.convs.len());
        }
        let normed = self.prompt_norm.forward(image)?;
        let image = (image + self.prompt_attn.forward(&normed, prompt, prompt, Some(&key_mask(prompt_valid)?))?)?;
        let (b, c, h, w) = coarsest.dims4()?;
        let mut x = image.narrow(1, 0, h * w)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        for (i, level) in finer.iter().rev().enumerate() {
            let (_, _, lh, lw) = level.dims4()?;
            x = (x.upsample_nearest2d(lh, lw)? + level)?;
            let conv = &self.convs[i];
            let y = if x.device().is_cpu() {
                ops::conv3x3_same(&x, conv.weight(), conv.bias())?
            } else {
                conv.forward(&x)?
            };
            x = self.norms[i].forward(&y)?.relu()?;
        }
        let mut e = queries.clone();
        for (i, l) in self.embedder.iter().enumerate() {
            e = l.forward(&e)?;
            if i < 2 {
                e = e.relu()?;
            }
        }
        let proj = self.instance_proj.forward(&x)?;
        let (_, _, ph, pw) = proj.dims4()?;
        let instances = e.matmul(&proj.flatten_from(2)?)?.reshape((b, (), ph, pw))?;
        Ok(Masks { instances, semantic: self.semantic_proj.forward(&x)? })
    }
}
