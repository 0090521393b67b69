//! MobileSAM's image encoder, TinyViT-5M, as MobileSAM (and `ultralytics`, whose
//! module and tensor names are the same) defines it: MBConv stages, windowed
//! attention with learned relative biases, patch merging, and SAM's neck. Ours
//! rather than candle-transformers' `tiny_vit`, which uses the tanh approximation
//! of GELU where MobileSAM uses the exact (erf) one: that moved the image
//! embedding by 3e-3 and flipped mask pixels. Batch norms are applied as torch's
//! eval mode does (per-channel scale and shift after the convolution).
//! Tensor names follow the checkpoint (`image_encoder.layers.1.blocks.0.attn.qkv`).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder, conv2d_no_bias, layer_norm, linear};

use crate::models::ops;
use crate::models::sam2::decoder::LayerNorm2d;
use crate::models::trace::Trace;

/// TinyViT-5M's geometry (MobileSAM).
const EMBED_DIMS: [usize; 4] = [64, 128, 160, 320];
const DEPTHS: [usize; 4] = [2, 2, 6, 2];
const HEADS: [usize; 4] = [2, 4, 5, 10];
const WINDOWS: [usize; 4] = [7, 7, 14, 7];
const MLP_RATIO: usize = 4;
const MBCONV_EXPAND: usize = 4;
const BN_EPS: f64 = 1e-5;

/// A bias-free convolution followed by an eval-mode batch norm (`c`, `bn`).
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    /// Per channel, (1, C, 1, 1): `weight / sqrt(var + eps)` and `bias - mean · scale`.
    scale: Tensor,
    shift: Tensor,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, k: usize, stride: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig { padding: k / 2, stride, groups, ..Default::default() };
        let conv = conv2d_no_bias(c_in, c_out, k, cfg, vb.pp("c"))?;
        let bn = vb.pp("bn");
        let (w, b) = (bn.get(c_out, "weight")?, bn.get(c_out, "bias")?);
        let (mean, var) = (bn.get(c_out, "running_mean")?, bn.get(c_out, "running_var")?);
        let scale = (w / (var + BN_EPS)?.sqrt()?)?;
        let shift = (b - (mean * &scale)?)?;
        Ok(Self { conv, scale: scale.reshape((1, c_out, 1, 1))?, shift: shift.reshape((1, c_out, 1, 1))? })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)?.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// Inverted residual block of the first stage, on (B, C, H, W).
#[derive(Debug, Clone)]
struct MbConv {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl MbConv {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = dim * MBCONV_EXPAND;
        Ok(Self {
            conv1: ConvBn::new(dim, hidden, 1, 1, 1, vb.pp("conv1"))?,
            conv2: ConvBn::new(hidden, hidden, 3, 1, hidden, vb.pp("conv2"))?,
            conv3: ConvBn::new(hidden, dim, 1, 1, 1, vb.pp("conv3"))?,
        })
    }
}

impl Module for MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::gelu_erf(&self.conv1.forward(x)?)?;
        let y = ops::gelu_erf(&self.conv2.forward(&y)?)?;
        ops::gelu_erf(&(self.conv3.forward(&y)? + x)?)
    }
}

/// Halves the resolution (except into the 320-wide last stage) and widens:
/// (B, C, H, W) → (B, H'·W', C').
#[derive(Debug, Clone)]
struct PatchMerging {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
}

impl PatchMerging {
    fn new(dim: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let stride = if matches!(out, 320 | 448 | 576) { 1 } else { 2 };
        Ok(Self {
            conv1: ConvBn::new(dim, out, 1, 1, 1, vb.pp("conv1"))?,
            conv2: ConvBn::new(out, out, 3, stride, out, vb.pp("conv2"))?,
            conv3: ConvBn::new(out, out, 1, 1, 1, vb.pp("conv3"))?,
        })
    }
}

impl Module for PatchMerging {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::gelu_erf(&self.conv1.forward(x)?)?;
        let y = ops::gelu_erf(&self.conv2.forward(&y)?)?;
        self.conv3.forward(&y)?.flatten_from(2)?.transpose(1, 2)?.contiguous()
    }
}

/// Window attention with a learned bias per head and |Δrow|, |Δcol| offset.
#[derive(Debug, Clone)]
struct Attention {
    norm: LayerNorm,
    qkv: Linear,
    proj: Linear,
    /// (heads, N, N) for the N = window² positions.
    bias: Tensor,
    heads: usize,
    key_dim: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, window: usize, vb: VarBuilder) -> Result<Self> {
        let key_dim = dim / heads;
        let points: Vec<(usize, usize)> = (0..window).flat_map(|r| (0..window).map(move |c| (r, c))).collect();
        // Offsets numbered in order of first appearance, as the reference does.
        let mut offsets: Vec<(usize, usize)> = Vec::new();
        let mut idxs = Vec::with_capacity(points.len() * points.len());
        for p in &points {
            for q in &points {
                let o = (p.0.abs_diff(q.0), p.1.abs_diff(q.1));
                let i = offsets.iter().position(|x| *x == o).unwrap_or_else(|| {
                    offsets.push(o);
                    offsets.len() - 1
                });
                idxs.push(i as u32);
            }
        }
        let table = vb.get((heads, offsets.len()), "attention_biases")?;
        let n = points.len();
        let idx = Tensor::from_vec(idxs, n * n, table.device())?;
        let bias = table.index_select(&idx, 1)?.reshape((heads, n, n))?;
        Ok(Self {
            norm: layer_norm(dim, 1e-5, vb.pp("norm"))?,
            qkv: linear(dim, 3 * dim, vb.pp("qkv"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
            bias,
            heads,
            key_dim,
        })
    }

    /// (B, N, C) windows → (B, N, C).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let qkv = self.qkv.forward(&self.norm.forward(x)?)?.reshape((b, n, self.heads, 3 * self.key_dim))?;
        let part = |i: usize| qkv.narrow(D::Minus1, i * self.key_dim, self.key_dim)?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scale = 1.0 / (self.key_dim as f64).sqrt();
        let attn = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&self.bias)?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let o = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        self.proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    local_conv: ConvBn,
    mlp: (LayerNorm, Linear, Linear),
    window: usize,
}

impl Block {
    fn new(dim: usize, heads: usize, window: usize, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("mlp");
        Ok(Self {
            attn: Attention::new(dim, heads, window, vb.pp("attn"))?,
            local_conv: ConvBn::new(dim, dim, 3, 1, dim, vb.pp("local_conv"))?,
            mlp: (
                layer_norm(dim, 1e-5, m.pp("norm"))?,
                linear(dim, dim * MLP_RATIO, m.pp("fc1"))?,
                linear(dim * MLP_RATIO, dim, m.pp("fc2"))?,
            ),
            window,
        })
    }

    /// (B, H·W, C) at resolution (h, w).
    fn forward(&self, x: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, hw, c) = x.dims3()?;
        let ws = self.window;
        let y = if h == ws && w == ws {
            self.attn.forward(x)?
        } else {
            let (pb, pr) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
            let mut t = x.reshape((b, h, w, c))?;
            if pb > 0 || pr > 0 {
                t = t.pad_with_zeros(1, 0, pb)?.pad_with_zeros(2, 0, pr)?;
            }
            let (ph, pw) = (h + pb, w + pr);
            let (nh, nw) = (ph / ws, pw / ws);
            let t =
                t.reshape((b, nh, ws, nw, ws, c))?.transpose(2, 3)?.contiguous()?.reshape((b * nh * nw, ws * ws, c))?;
            let t = self.attn.forward(&t)?;
            let t = t.reshape((b, nh, nw, ws, ws, c))?.transpose(2, 3)?.contiguous()?.reshape((b, ph, pw, c))?;
            let t = if pb > 0 || pr > 0 { t.narrow(1, 0, h)?.narrow(2, 0, w)? } else { t };
            t.contiguous()?.reshape((b, hw, c))?
        };
        let x = (x + y)?;
        let x = x.transpose(1, 2)?.reshape((b, c, h, w))?;
        let x = self.local_conv.forward(&x)?.reshape((b, c, hw))?.transpose(1, 2)?.contiguous()?;
        let (norm, fc1, fc2) = &self.mlp;
        let m = fc2.forward(&ops::gelu_erf(&fc1.forward(&norm.forward(&x)?)?)?)?;
        x + m
    }
}

/// TinyViT-5M with SAM's neck: (1, 3, 1024, 1024) → (1, 256, 64, 64).
#[derive(Debug, Clone)]
pub struct TinyVit {
    patch_embed: (ConvBn, ConvBn),
    stage0: (Vec<MbConv>, PatchMerging),
    /// Stages 1–3: blocks, their resolution divisor, and the merging after them.
    stages: Vec<(Vec<Block>, usize, Option<PatchMerging>)>,
    neck: (Conv2d, LayerNorm2d, Conv2d, LayerNorm2d),
}

impl TinyVit {
    /// `vb` at `image_encoder`.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let pe = vb.pp("patch_embed.seq");
        let half = EMBED_DIMS[0] / 2;
        let patch_embed =
            (ConvBn::new(3, half, 3, 2, 1, pe.pp("0"))?, ConvBn::new(half, EMBED_DIMS[0], 3, 2, 1, pe.pp("2"))?);
        let l0 = vb.pp("layers.0");
        let stage0 = (
            (0..DEPTHS[0]).map(|j| MbConv::new(EMBED_DIMS[0], l0.pp(format!("blocks.{j}")))).collect::<Result<_>>()?,
            PatchMerging::new(EMBED_DIMS[0], EMBED_DIMS[1], l0.pp("downsample"))?,
        );
        let mut stages = Vec::with_capacity(3);
        for i in 1..4 {
            let l = vb.pp(format!("layers.{i}"));
            let blocks = (0..DEPTHS[i])
                .map(|j| Block::new(EMBED_DIMS[i], HEADS[i], WINDOWS[i], l.pp(format!("blocks.{j}"))))
                .collect::<Result<_>>()?;
            let merge = if i < 3 {
                Some(PatchMerging::new(EMBED_DIMS[i], EMBED_DIMS[i + 1], l.pp("downsample"))?)
            } else {
                None
            };
            // The reference's resolutions: 1/2, 1/4 and (the last merge keeps it) 1/4 of the patch grid.
            stages.push((blocks, 1 << (if i == 3 { 2 } else { i }), merge));
        }
        let n = vb.pp("neck");
        let c = EMBED_DIMS[3];
        let neck = (
            conv2d_no_bias(c, 256, 1, Conv2dConfig::default(), n.pp("0"))?,
            LayerNorm2d::new(256, n.pp("1"))?,
            conv2d_no_bias(256, 256, 3, Conv2dConfig { padding: 1, ..Default::default() }, n.pp("2"))?,
            LayerNorm2d::new(256, n.pp("3"))?,
        );
        Ok(Self { patch_embed, stage0, stages, neck })
    }

    pub fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let x = self.patch_embed.1.forward(&ops::gelu_erf(&self.patch_embed.0.forward(&x)?)?)?;
        trace.record("encoder.patch_embed", &x);
        let (_, _, gh, gw) = x.dims4()?;
        let mut x = x;
        for b in &self.stage0.0 {
            x = b.forward(&x)?;
        }
        let mut x = self.stage0.1.forward(&x)?; // (B, HW, C)
        trace.record("encoder.layer0", &x);
        for (i, (blocks, div, merge)) in self.stages.iter().enumerate() {
            let res = (gh / div, gw / div);
            for b in blocks {
                x = b.forward(&x, res)?;
            }
            if let Some(m) = merge {
                let (b, _, c) = x.dims3()?;
                x = m.forward(&x.transpose(1, 2)?.reshape((b, c, res.0, res.1))?)?;
            }
            trace.record(format!("encoder.layer{}", i + 1), &x);
        }
        let (b, _, c) = x.dims3()?;
        let x = x.transpose(1, 2)?.reshape((b, c, gh / 4, gw / 4))?;
        let (c1, n1, c2, n2) = &self.neck;
        n2.forward(&c2.forward(&n1.forward(&c1.forward(&x)?)?)?)
    }
}
