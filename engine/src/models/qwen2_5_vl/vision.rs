//! The Qwen2.5-VL vision tower: 14-px patch embedding over 2 frames, 2-D rotary
//! embeddings, window attention (full attention in `fullatt_block_indexes`),
//! RMSNorm, gated SiLU MLP, and the 2×2 patch merger into the language model's width.
//!
//! Tensor names follow the checkpoint (`visual.blocks.N.attn.qkv`, …).

use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{RmsNorm, VarBuilder};

use super::config::VisionConfig;
use super::layers::{GatedMlp, Proj, Quantize};

/// `(x · cos) + (rotate_half(x) · sin)` over the last dimension, for `x` of
/// shape `(b, heads, seq, head_dim)` and `cos`/`sin` of `(seq, head_dim / 2)`.
/// Computed in `f32`, as transformers does for the vision tower.
fn rope_f32(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    candle_nn::rotary_emb::rope(&x.to_dtype(DType::F32)?.contiguous()?, cos, sin)?.to_dtype(dtype)
}

#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: Proj,
    proj: Proj,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: Option<&Quantize>) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            qkv: Proj::new(d, 3 * d, true, vb.pp("qkv"), q)?,
            proj: Proj::new(d, d, true, vb.pp("proj"), q)?,
            num_heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
        })
    }

    /// Attention within each `[cu[i], cu[i+1])` segment of the sequence. Runs of
    /// equally long segments (most windows) go through one batched matmul.
    fn forward(&self, xs: &Tensor, cu_seqlens: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, d) = xs.dims2()?;
        let qkv = self.qkv.forward(xs)?.reshape((n, 3, self.num_heads, self.head_dim))?;
        // (3, heads, n, head_dim)
        let qkv = qkv.permute((1, 2, 0, 3))?;
        let q = rope_f32(&qkv.i(0)?.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        let k = rope_f32(&qkv.i(1)?.unsqueeze(0)?, cos, sin)?.squeeze(0)?;
        let v = qkv.i(2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut outs = Vec::new();
        let mut i = 0;
        while i + 1 < cu_seqlens.len() {
            let len = cu_seqlens[i + 1] - cu_seqlens[i];
            let mut j = i + 1;
            while j + 1 < cu_seqlens.len() && cu_seqlens[j + 1] - cu_seqlens[j] == len {
                j += 1;
            }
            let count = j - i;
            if len > 0 {
                let start = cu_seqlens[i];
                // (heads, count·len, hd) → (count, heads, len, hd)
                let split = |t: &Tensor| -> Result<Tensor> {
                    t.narrow(1, start, count * len)?
                        .reshape((self.num_heads, count, len, self.head_dim))?
                        .transpose(0, 1)?
                        .contiguous()
                };
                let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
                // A tower in bf16 (its projections are) multiplies attention in bf16 too.
                let o = if matches!(self.qkv, Proj::Bf16(_)) {
                    crate::models::quant::bf16::sdpa(&q, &k, &v, scale as f32)?
                } else {
                    crate::models::ops::sdpa(&q, &k, &v, scale)?
                };
                outs.push(o.transpose(0, 1)?.reshape((self.num_heads, count * len, self.head_dim))?);
            }
            i = j;
        }
        let o = Tensor::cat(&outs, 1)?; // (heads, n, hd)
        let o = o.transpose(0, 1)?.reshape((n, d))?;
        self.proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: GatedMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: Option<&Quantize>) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::rms_norm(cfg.hidden_size, 1e-6, vb.pp("norm1"))?,
            norm2: candle_nn::rms_norm(cfg.hidden_size, 1e-6, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"), q)?,
            mlp: GatedMlp::new(cfg.hidden_size, cfg.intermediate_size, true, &cfg.hidden_act, vb.pp("mlp"), q)?,
        })
    }

    fn forward(&self, xs: &Tensor, cu_seqlens: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, cu_seqlens, cos, sin)?)?;
        &xs + self.mlp.forward(&self.norm2.forward(&xs)?)?
    }
}

#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Proj,
    fc2: Proj,
    merged: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder, q: Option<&Quantize>) -> Result<Self> {
        let merged = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: candle_nn::rms_norm(cfg.hidden_size, 1e-6, vb.pp("ln_q"))?,
            fc1: Proj::new(merged, merged, true, vb.pp("mlp.0"), q)?,
            fc2: Proj::new(merged, cfg.out_hidden_size, true, vb.pp("mlp.2"), q)?,
            merged,
        })
    }
}

impl Module for PatchMerger {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.ln_q.forward(xs)?.reshape(((), self.merged))?;
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}

/// Where the patches of a set of images go, in the order the tower processes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLayout {
    /// Merged-token order: position k of the windowed sequence holds merged token `index[k]`.
    pub index: Vec<usize>,
    /// Cumulative patch counts of the windows (starts with 0, no repeats).
    pub cu_window_seqlens: Vec<usize>,
    /// Cumulative patch counts of the images (full attention).
    pub cu_seqlens: Vec<usize>,
}

/// transformers' `get_vision_window_index` and `cu_seqlens` for images of
/// `grids` (t, h, w) patches.
pub fn window_layout(grids: &[[usize; 3]], cfg: &VisionConfig) -> WindowLayout {
    let m = cfg.spatial_merge_size;
    let unit = m * m;
    let ws = cfg.window_size / m / cfg.patch_size;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut cu_full = vec![0usize];
    let mut base = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / m, w / m);
        let (nwh, nww) = ((lh + ws - lh % ws) / ws, (lw + ws - lw % ws) / ws);
        for ti in 0..t {
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for y in wy * ws..((wy + 1) * ws).min(lh) {
                        for x in wx * ws..((wx + 1) * ws).min(lw) {
                            index.push(base + ti * lh * lw + y * lw + x);
                            count += 1;
                        }
                    }
                    let last = *cu.last().unwrap_or(&0);
                    if count > 0 {
                        cu.push(last + count * unit);
                    }
                }
            }
            let last = *cu_full.last().unwrap_or(&0);
            cu_full.push(last + h * w);
        }
        base += t * lh * lw;
    }
    WindowLayout { index, cu_window_seqlens: cu, cu_seqlens: cu_full }
}

/// The vision tower.
#[derive(Debug, Clone)]
pub struct VisionModel {
    patch_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    inv_freq: Vec<f32>,
    cfg: VisionConfig,
}

impl VisionModel {
    /// With `quantize`, every projection of the blocks and the merger is quantized
    /// as it loads (the patch embedding and the norms stay float).
    pub(crate) fn new(cfg: &VisionConfig, vb: VarBuilder, quantize: Option<&Quantize>) -> Result<Self> {
        let patch_dim = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
        let patch_embed = vb
            .pp("patch_embed.proj")
            .get((cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size), "weight")?
            .reshape((cfg.hidden_size, patch_dim))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}")), quantize))
            .collect::<Result<_>>()?;
        let head_dim = cfg.hidden_size / cfg.num_heads;
        let spatial = head_dim / 2;
        let inv_freq =
            (0..spatial).step_by(2).map(|i| 1.0 / cfg.rope_theta.powf(i as f64 / spatial as f64) as f32).collect();
        Ok(Self {
            patch_embed,
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"), quantize)?,
            inv_freq,
            cfg: cfg.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.patch_embed.dtype()
    }

    /// (cos, sin) of shape (patches, head_dim / 2), patches in windowed order.
    fn rotary(&self, grids: &[[usize; 3]], layout: &WindowLayout, device: &Device) -> Result<(Tensor, Tensor)> {
        let m = self.cfg.spatial_merge_size;
        // (h, w) of every patch, block-major (merge windows of m×m contiguous).
        let mut pos = Vec::new();
        for &[t, h, w] in grids {
            for _ in 0..t {
                for bh in 0..h / m {
                    for bw in 0..w / m {
                        for mh in 0..m {
                            for mw in 0..m {
                                pos.push(((bh * m + mh) as f32, (bw * m + mw) as f32));
                            }
                        }
                    }
                }
            }
        }
        let unit = m * m;
        let half = self.inv_freq.len() * 2;
        let mut cos = Vec::with_capacity(pos.len() * half);
        let mut sin = Vec::with_capacity(pos.len() * half);
        for &merged in &layout.index {
            for &(h, w) in &pos[merged * unit..(merged + 1) * unit] {
                for p in [h, w] {
                    for &f in &self.inv_freq {
                        let a = p * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
        let n = pos.len();
        Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
    }

    /// Patches (rows of `channels·temporal·patch²` values) → one embedding per 2×2
    /// merged patch, in raster order, `out_hidden_size` wide.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let device = pixel_values.device();
        let n = pixel_values.dim(0)?;
        let expected: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
        if n != expected {
            candle_core::bail!("{n} patches given for grids {grids:?} ({expected} expected)");
        }
        let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        let layout = window_layout(grids, &self.cfg);
        let xs = pixel_values.to_dtype(self.dtype())?.matmul(&self.patch_embed.t()?)?;
        let order = Tensor::from_vec(layout.index.iter().map(|&i| i as u32).collect::<Vec<_>>(), n / unit, device)?;
        let xs = xs.reshape((n / unit, unit, ()))?.index_select(&order, 0)?.reshape((n, ()))?;
        let (cos, sin) = self.rotary(grids, &layout, device)?;
        let mut xs = xs;
        for (i, block) in self.blocks.iter().enumerate() {
            let cu = if self.cfg.fullatt_block_indexes.contains(&i) {
                &layout.cu_seqlens
            } else {
                &layout.cu_window_seqlens
            };
            xs = block.forward(&xs, cu, &cos, &sin)?;
        }
        let merged = self.merger.forward(&xs)?;
        let mut reverse = vec![0u32; layout.index.len()];
        for (k, &i) in layout.index.iter().enumerate() {
            reverse[i] = k as u32;
        }
        let reverse = Tensor::from_vec(reverse, n / unit, device)?;
        merged.index_select(&reverse, 0)?.contiguous()
    }

    /// Width of the output embeddings.
    pub fn out_dim(&self) -> usize {
        self.cfg.out_hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VisionConfig {
        serde_json::from_str(
            r#"{"depth": 1, "hidden_size": 8, "intermediate_size": 8, "num_heads": 2, "out_hidden_size": 8,
                "window_size": 112, "patch_size": 14, "spatial_merge_size": 2}"#,
        )
        .unwrap()
    }

    #[test]
    fn window_layout_matches_transformers_for_a_partial_window_grid() {
        // 12×16 patches → 6×8 merged tokens → windows of 4×4: 2×2 windows, the lower ones 2 rows tall.
        let l = window_layout(&[[1, 12, 16]], &cfg());
        // torch: get_vision_window_index(tensor([[1,12,16]]), 2, 112, 14)
        assert_eq!(&l.index[..6], &[0, 1, 2, 3, 8, 9]);
        assert_eq!(l.index.len(), 48);
        assert_eq!(l.cu_window_seqlens, [0, 64, 128, 160, 192]);
        assert_eq!(l.cu_seqlens, [0, 192]);
        let mut sorted = l.index.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..48).collect::<Vec<_>>());
    }

    #[test]
    fn exact_multiple_of_the_window_has_no_empty_windows() {
        // 8×8 merged tokens: transformers pads a full extra row/column of empty
        // windows and removes the repeated boundaries with unique_consecutive.
        let l = window_layout(&[[1, 16, 16]], &cfg());
        assert_eq!(l.cu_window_seqlens, [0, 64, 128, 192, 256]);
    }
}
