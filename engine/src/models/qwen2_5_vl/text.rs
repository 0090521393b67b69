//! The Qwen2 language model inside Qwen2.5-VL: GQA attention with q/k/v biases,
//! multimodal rotary embeddings (M-RoPE: the rotary frequencies are split into
//! temporal, height and width sections, each driven by its own position id),
//! RMSNorm, gated SiLU MLP, and a KV cache.
//!
//! Tensor names follow the checkpoint (`model.layers.N.self_attn.q_proj`, …).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, RmsNorm, VarBuilder};

use super::config::TextConfig;
use super::layers::{GatedMlp, Proj, QuantTable, Quantize};

/// Initial KV-cache length; it grows as needed.
const KV_CACHE_START: usize = 2048;

/// Three position ids (temporal, height, width) per token.
pub type MropePositions = [Vec<i64>; 3];

/// Rotary tables for M-RoPE.
#[derive(Debug, Clone)]
pub struct MropeRotary {
    inv_freq: Vec<f32>,
    /// For each frequency index: 0 (temporal), 1 (height) or 2 (width).
    section_of: Vec<usize>,
}

impl MropeRotary {
    pub fn new(cfg: &TextConfig) -> Self {
        let dim = cfg.hidden_size / cfg.num_attention_heads;
        let inv_freq: Vec<f32> =
            (0..dim).step_by(2).map(|i| 1.0 / cfg.rope_theta.powf(i as f64 / dim as f64) as f32).collect();
        let section_of = cfg.mrope_section.iter().enumerate().flat_map(|(s, &n)| std::iter::repeat_n(s, n)).collect();
        Self { inv_freq, section_of }
    }

    /// (cos, sin), each (seq, head_dim / 2), in `dtype`.
    pub fn tables(&self, pos: &MropePositions, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = pos[0].len();
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for ((&pt, &ph), &pw) in pos[0].iter().zip(&pos[1]).zip(&pos[2]) {
            let p = [pt, ph, pw];
            for (&f, &section) in self.inv_freq.iter().zip(&self.section_of) {
                // transformers multiplies in f32: float(position) * inv_freq.
                let a = p[section] as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        ))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    cache: KvCache,
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder, q: Option<&Quantize>) -> Result<Self> {
        let (h, nh, nkv) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
        let hd = h / nh;
        Ok(Self {
            q_proj: Proj::new(h, nh * hd, true, vb.pp("q_proj"), q)?,
            k_proj: Proj::new(h, nkv * hd, true, vb.pp("k_proj"), q)?,
            v_proj: Proj::new(h, nkv * hd, true, vb.pp("v_proj"), q)?,
            o_proj: Proj::new(nh * hd, h, false, vb.pp("o_proj"), q)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            cache: KvCache::new(2, KV_CACHE_START),
        })
    }

    fn forward(&mut self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let shape = |t: Tensor, heads| t.reshape((b, l, heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = shape(self.q_proj.forward(xs)?, self.num_heads)?;
        let k = shape(self.k_proj.forward(xs)?, self.num_kv_heads)?;
        let v = shape(self.v_proj.forward(xs)?, self.num_kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = self.cache.append(&k, &v)?;
        // GQA without copying the cache: the query heads sharing a KV head are
        // stacked along the sequence axis, (b, kv, rep·l, hd).
        let rep = self.num_heads / self.num_kv_heads;
        let q = q.reshape((b, self.num_kv_heads, rep * l, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = if q.device().is_cpu() && q.dtype() == DType::F32 {
            // Fused, causal by position (the cache held `past` tokens before these
            // `l`): no (rep·l × keys) score, mask or softmax tensors.
            let past = k.dim(2)? - l;
            crate::models::ops::sdpa_f32(&q, &k.contiguous()?, &v.contiguous()?, scale as f32, Some((past, l)))?
        } else {
            let mut w = (q.matmul(&k.t()?)? * scale)?;
            if let Some(mask) = mask {
                w = w.broadcast_add(mask)?;
            }
            let w = candle_nn::ops::softmax_last_dim(&w.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
            w.matmul(&v.contiguous()?)?
        }; // (b, kv, rep·l, hd)
        let o = o.reshape((b, self.num_heads, l, self.head_dim))?.transpose(1, 2)?.reshape((b, l, ()))?;
        self.o_proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: GatedMlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder, q: Option<&Quantize>) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"), q)?,
            mlp: GatedMlp::new(cfg.hidden_size, cfg.intermediate_size, false, &cfg.hidden_act, vb.pp("mlp"), q)?,
            input_layernorm: candle_nn::rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: candle_nn::rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn forward(&mut self, xs: &Tensor, cos: &Tensor, sin: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.input_layernorm.forward(xs)?, cos, sin, mask)?;
        let xs = (xs + h)?;
        &xs + self.mlp.forward(&self.post_attention_layernorm.forward(&xs)?)?
    }
}

/// The token-embedding table: float, or quantised by rows (quantized models).
#[derive(Debug, Clone)]
enum Embed {
    Float(Embedding),
    Quant(QuantTable),
}

/// The language model and its head.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embed,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Proj,
    rotary: MropeRotary,
    rep: usize,
    hidden: usize,
    device: Device,
    /// The dtype the layers compute in (the embedding table may be stored narrower).
    compute: DType,
}

impl TextModel {
    /// `vb` at the checkpoint root: reads `model.*` and `lm_head.*`. With
    /// `quantize`, every projection, the head and the embedding table are
    /// quantized as they load.
    pub(crate) fn new(cfg: &TextConfig, vb: VarBuilder, quantize: Option<&Quantize>) -> Result<Self> {
        let m = vb.pp("model");
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let tied = cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight");
        // Quantized: the table (vocab × hidden, 2.2 GB in f32 for the 7B) is only
        // looked up, row by row; quantised by rows as llama.cpp's GGUFs keep it.
        let table = match quantize {
            Some(q) if !tied && vb.device().is_cpu() => QuantTable::new(vocab, hidden, &m.pp("embed_tokens"), q)?,
            _ => None,
        };
        let embed_tokens = match table {
            Some(t) => Embed::Quant(t),
            None => Embed::Float(candle_nn::embedding(vocab, hidden, m.pp("embed_tokens"))?),
        };
        let compute = vb.dtype();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, m.pp(format!("layers.{i}")), quantize))
            .collect::<Result<_>>()?;
        let norm = candle_nn::rms_norm(hidden, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = match &embed_tokens {
            Embed::Float(e) if tied => Proj::Float(candle_nn::Linear::new(e.embeddings().clone(), None)),
            _ => Proj::new(hidden, vocab, false, vb.pp("lm_head"), quantize)?,
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: MropeRotary::new(cfg),
            rep: cfg.num_attention_heads / cfg.num_key_value_heads,
            hidden,
            device: vb.device().clone(),
            compute,
        })
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.embed_tokens {
            Embed::Float(e) => e.forward(ids)?.to_dtype(self.compute),
            Embed::Quant(t) => t.forward(ids)?.to_dtype(self.compute),
        }
    }

    /// Runs `embeds` (1, l, hidden) at `positions` after whatever the cache holds,
    /// and returns the logits of the last position (1, vocab), in `f32`.
    pub fn forward(&mut self, embeds: &Tensor, positions: &MropePositions) -> Result<Tensor> {
        let (_, l, _) = embeds.dims3()?;
        let (cos, sin) = self.rotary.tables(positions, embeds.dtype(), embeds.device())?;
        let past = self.layers.first().map_or(0, |x| x.self_attn.cache.current_seq_len());
        // The fused CPU attention masks by position itself.
        let fused = embeds.device().is_cpu() && embeds.dtype() == DType::F32;
        let mask =
            if l > 1 && !fused { Some(self.causal_mask(l, past, embeds.dtype(), embeds.device())?) } else { None };
        let mut xs = embeds.clone();
        for layer in &mut self.layers {
            xs = layer.forward(&xs, &cos, &sin, mask.as_ref())?;
        }
        let last = xs.narrow(1, l - 1, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        logits.squeeze(1)?.to_dtype(DType::F32)
    }

    /// Additive mask (rep·l, past + l): query i sees keys ≤ past + i. Rows are
    /// repeated `rep` times to match the stacked GQA layout.
    fn causal_mask(&self, l: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let s = past + l;
        let row: Vec<f32> =
            (0..l).flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(row, (l, s), device)?;
        let mask = Tensor::cat(&vec![&mask; self.rep], 0)?;
        mask.to_dtype(dtype)?.unsqueeze(0)?.unsqueeze(0)
    }

    pub fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.self_attn.cache.reset();
        }
    }

    /// Tokens held in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.layers.first().map_or(0, |x| x.self_attn.cache.current_seq_len())
    }

    pub fn device(&self) -> Device {
        self.device.clone()
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }
}
