//! SAM 3's text encoder: a CLIP text transformer (causal, pre-norm, exact GELU,
//! a final LayerNorm) whose every token state — not a pooled one — is projected
//! to the detector's width. Tensor names follow transformers' `Sam3Model`
//! (`text_encoder.text_model.*`, `text_projection`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

use super::config::TextConfig;
use crate::models::ops;

#[derive(Debug)]
struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Layer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let lin = |name: &str| candle_nn::linear(d, d, vb.pp("self_attn").pp(name));
        Ok(Self {
            norm1: candle_nn::layer_norm(d, eps, vb.pp("layer_norm1"))?,
            q: lin("q_proj")?,
            k: lin("k_proj")?,
            v: lin("v_proj")?,
            out: lin("out_proj")?,
            norm2: candle_nn::layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x` (B, T, C); `mask` (B, 1, T, T) additive: causal and padding.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let d = c / self.heads;
        let y = self.norm1.forward(x)?;
        let split = |l: &Linear| -> Result<Tensor> { l.forward(&y)?.reshape((b, t, self.heads, d))?.transpose(1, 2) };
        let (q, k, v) = (split(&self.q)?, split(&self.k)?, split(&self.v)?);
        let scores = (q.contiguous()?.matmul(&k.contiguous()?.t()?)? * (d as f64).powf(-0.5))?.broadcast_add(mask)?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v.contiguous()?)?;
        let x = (x + self.out.forward(&attn.transpose(1, 2)?.reshape((b, t, c))?)?)?;
        let y = self.fc2.forward(&ops::gelu_erf(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        x + y
    }
}

/// The text encoder with its projection to the detector's width.
#[derive(Debug)]
pub struct TextEncoder {
    tokens: Embedding,
    positions: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Linear,
}

impl TextEncoder {
    /// `vb` at the model's root (the projection sits beside `text_encoder`).
    pub fn new(cfg: &TextConfig, width: usize, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden_act != "gelu" {
            candle_core::bail!("text hidden_act {:?} is not supported (SAM 3 uses exact GELU)", cfg.hidden_act);
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "text hidden_size {} is not split evenly by {} heads",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        let tm = vb.pp("text_encoder.text_model");
        let d = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, tm.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            tokens: candle_nn::embedding(cfg.vocab_size, d, tm.pp("embeddings.token_embedding"))?,
            positions: tm.get((cfg.max_position_embeddings, d), "embeddings.position_embedding.weight")?,
            layers,
            final_norm: candle_nn::layer_norm(d, cfg.layer_norm_eps, tm.pp("final_layer_norm"))?,
            projection: candle_nn::linear(d, width, vb.pp("text_projection"))?,
        })
    }

    /// `ids` (B, T) u32/i64 and `valid` (B, T) 1 for tokens, 0 for padding →
    /// projected token states (B, T, width).
    pub fn forward(&self, ids: &Tensor, valid: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if valid.dims2()? != (b, t) {
            candle_core::bail!("text mask {:?} does not match the ids {:?}", valid.dims(), ids.dims());
        }
        if t > self.positions.dim(0)? {
            candle_core::bail!("{t} text tokens exceed the context of {}", self.positions.dim(0)?);
        }
        let x = self.tokens.forward(ids)?.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        let mask = attention_mask(valid, t)?.to_dtype(x.dtype())?;
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.projection.forward(&self.final_norm.forward(&x)?)
    }
}

/// Additive mask (B, 1, T, T): query `i` sees key `j` when `j ≤ i` and `j` is
/// not padding (a large negative otherwise, as transformers' `finfo.min`).
fn attention_mask(valid: &Tensor, t: usize) -> Result<Tensor> {
    let device = valid.device();
    let b = valid.dim(0)?;
    let valid = valid.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut m = vec![0f32; b * t * t];
    for (bi, row) in valid.iter().enumerate() {
        for i in 0..t {
            for (j, keep) in row.iter().enumerate().take(t) {
                if j > i || *keep == 0.0 {
                    m[(bi * t + i) * t + j] = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, t), device)
}
