//! SAM 3's fusion encoder (transformers' `Sam3DetrEncoder`): the image tokens
//! of the coarsest FPN level attend to each other (with their sine positions
//! on queries and keys) and then to the prompt (text tokens, and exemplar
//! tokens when boxes are given), pre-norm, ReLU MLP. Also the multi-head
//! attention the detector's stages share.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::StageConfig;

/// Multi-head attention with separate q/k/v/o projections (`Sam3Attention`).
#[derive(Debug)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    pub fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let lin = |name: &str| candle_nn::linear(width, width, vb.pp(name));
        Ok(Self { q: lin("q_proj")?, k: lin("k_proj")?, v: lin("v_proj")?, o: lin("o_proj")?, heads })
    }

    /// `query` (B, Q, C), `key`/`value` (B, K, C); `bias` additive, broadcast
    /// to (B, heads, Q, K) (padding masks, position biases).
    pub fn forward(&self, query: &Tensor, key: &Tensor, value: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, nq, c) = query.dims3()?;
        let nk = key.dim(1)?;
        let d = c / self.heads;
        let split = |l: &Linear, x: &Tensor, n: usize| -> Result<Tensor> {
            l.forward(x)?.reshape((b, n, self.heads, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (split(&self.q, query, nq)?, split(&self.k, key, nk)?, split(&self.v, value, nk)?);
        let out = match bias {
            // The image attending to itself (5184² scores a head at 1008²): fused, in blocks.
            None => crate::models::ops::sdpa(&q, &k, &v, (d as f64).powf(-0.5))?,
            Some(bias) => {
                let scores = (q.matmul(&k.t()?)? * (d as f64).powf(-0.5))?.broadcast_add(bias)?;
                candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?
            }
        };
        self.o.forward(&out.transpose(1, 2)?.reshape((b, nq, c))?)
    }
}

/// Additive key mask (B, 1, 1, K) from `valid` (B, K), 1 = attend: the
/// dtype's lowest value on the rest, as transformers' masks.
pub fn key_mask(valid: &Tensor) -> Result<Tensor> {
    let (b, k) = valid.dims2()?;
    let keep = valid.to_dtype(DType::F32)?.ne(0f32)?;
    let zeros = Tensor::zeros((b, k), DType::F32, valid.device())?;
    let low = Tensor::full(f32::MIN, (b, k), valid.device())?;
    keep.where_cond(&zeros, &low)?.reshape((b, 1, 1, k))
}

/// A two-layer ReLU MLP (`Sam3MLP` with `relu`).
#[derive(Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: candle_nn::linear(width, hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(hidden, width, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// A pre-norm layer: self-attention (positions on queries and keys, if any;
/// a key mask, if any), cross-attention to `keys`/`values`, ReLU MLP. The
/// fusion encoder and the exemplar encoder differ only in what they pass.
#[derive(Debug)]
pub struct PreNormLayer {
    norm1: LayerNorm,
    self_attn: Attention,
    norm2: LayerNorm,
    cross_attn: Attention,
    norm3: LayerNorm,
    mlp: Mlp,
}

/// What a [`PreNormLayer`] attends with and to.
#[derive(Debug)]
pub struct LayerInputs<'a> {
    pub self_pos: Option<&'a Tensor>,
    pub self_mask: Option<&'a Tensor>,
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub cross_mask: Option<&'a Tensor>,
}

impl PreNormLayer {
    pub fn new(width: usize, heads: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(width, 1e-5, vb.pp(name));
        Ok(Self {
            norm1: ln("layer_norm1")?,
            self_attn: Attention::new(width, heads, vb.pp("self_attn"))?,
            norm2: ln("layer_norm2")?,
            cross_attn: Attention::new(width, heads, vb.pp("cross_attn"))?,
            norm3: ln("layer_norm3")?,
            mlp: Mlp::new(width, hidden, vb.pp("mlp"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, inputs: &LayerInputs) -> Result<Tensor> {
        let y = self.norm1.forward(x)?;
        let q = match inputs.self_pos {
            Some(pos) => (&y + pos)?,
            None => y.clone(),
        };
        let x = (x + self.self_attn.forward(&q, &q, &y, inputs.self_mask)?)?;
        let y = self.norm2.forward(&x)?;
        let x = (&x + self.cross_attn.forward(&y, inputs.keys, inputs.values, inputs.cross_mask)?)?;
        &x + self.mlp.forward(&self.norm3.forward(&x)?)?
    }
}

/// The fusion encoder.
#[derive(Debug)]
pub struct FusionEncoder {
    layers: Vec<PreNormLayer>,
}

impl FusionEncoder {
    pub fn new(cfg: &StageConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate("detr_encoder_config").map_err(candle_core::Error::msg)?;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                PreNormLayer::new(
                    cfg.hidden_size,
                    cfg.num_attention_heads,
                    cfg.intermediate_size,
                    vb.pp(format!("layers.{i}")),
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// `image` and `pos` (B, C, h, w) — the coarsest FPN level used and its
    /// position encoding —, `prompt` (B, P, C) with `prompt_valid` (B, P) →
    /// fused image tokens (B, h·w, C).
    pub fn forward(&self, image: &Tensor, pos: &Tensor, prompt: &Tensor, prompt_valid: &Tensor) -> Result<Tensor> {
        let tokens = |t: &Tensor| -> Result<Tensor> { t.flatten_from(2)?.transpose(1, 2)?.contiguous() };
        let (mut x, pos) = (tokens(image)?, tokens(pos)?);
        let mask = key_mask(prompt_valid)?;
        let inputs = LayerInputs {
            self_pos: Some(&pos),
            self_mask: None,
            keys: prompt,
            values: prompt,
            cross_mask: Some(&mask),
        };
        for layer in &self.layers {
            x = layer.forward(&x, &inputs)?;
        }
        Ok(x)
    }
}
