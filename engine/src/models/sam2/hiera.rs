//! SAM 2.1's image encoder: the Hiera trunk (multi-scale windowed attention with
//! query pooling between stages) and the FPN neck. Tensor names follow the
//! checkpoint (`image_encoder.trunk.blocks.N.attn.qkv`, `image_encoder.neck.convs.N.conv`).

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder, conv2d, layer_norm, linear};

use crate::models::ops;
use crate::models::quant::bf16::{self, Bf16Linear};
use crate::models::trace::Trace;

/// The shape of a Hiera trunk, as in the official `sam2.1_hiera_*.yaml` configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HieraConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    pub stages: Vec<usize>,
    pub global_att_blocks: Vec<usize>,
    pub window_spec: Vec<usize>,
    pub window_pos_embed_bkg: (usize, usize),
}

impl HieraConfig {
    pub fn tiny() -> Self {
        Self {
            embed_dim: 96,
            num_heads: 1,
            stages: vec![1, 2, 7, 2],
            global_att_blocks: vec![5, 7, 9],
            window_spec: vec![8, 4, 14, 7],
            window_pos_embed_bkg: (7, 7),
        }
    }
    pub fn small() -> Self {
        Self { stages: vec![1, 2, 11, 2], global_att_blocks: vec![7, 10, 13], ..Self::tiny() }
    }
    pub fn base_plus() -> Self {
        Self {
            embed_dim: 112,
            num_heads: 2,
            stages: vec![2, 3, 16, 3],
            global_att_blocks: vec![12, 16, 20],
            window_spec: vec![8, 4, 14, 7],
            window_pos_embed_bkg: (14, 14),
        }
    }
    pub fn large() -> Self {
        Self {
            embed_dim: 144,
            num_heads: 2,
            stages: vec![2, 6, 36, 4],
            global_att_blocks: vec![23, 33, 43],
            window_spec: vec![8, 4, 16, 8],
            window_pos_embed_bkg: (7, 7),
        }
    }

    /// Channels of the four stage outputs, coarsest first (the neck's order).
    pub fn channel_list(&self) -> Vec<usize> {
        (0..self.stages.len()).rev().map(|s| self.embed_dim << s).collect()
    }

    pub fn depth(&self) -> usize {
        self.stages.iter().sum()
    }
}

fn ln(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(dim, 1e-6, vb)
}

/// A projection of the trunk, optionally followed by GELU: candle's f32 linear,
/// or bf16 products with bias and GELU applied as each tile is stored.
#[derive(Debug, Clone)]
enum Dense {
    F32 { linear: Linear, gelu: bool },
    Bf16(Arc<Bf16Linear>),
}

impl Dense {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder, bf16: bool, gelu: bool) -> Result<Self> {
        let linear = linear(in_dim, out_dim, vb)?;
        Ok(if bf16 {
            Self::Bf16(Arc::new(Bf16Linear::from_linear(&linear, gelu)?))
        } else {
            Self::F32 { linear, gelu }
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::F32 { linear, gelu: false } => linear.forward(x),
            Self::F32 { linear, gelu: true } => ops::gelu_erf(&linear.forward(x)?),
            Self::Bf16(l) => l.forward(x),
        }
    }
}

/// 2×2 max pooling of (B, H, W, C).
fn pool(x: &Tensor) -> Result<Tensor> {
    ops::max_pool_2x2_nhwc(x)
}

#[derive(Debug, Clone)]
struct MultiScaleBlock {
    norm1: LayerNorm,
    qkv: Dense,
    attn_proj: Dense,
    norm2: LayerNorm,
    /// The hidden layer (with GELU) and the output layer.
    mlp: (Dense, Dense),
    /// Present when the block widens the channels (first block of a stage).
    proj: Option<Dense>,
    q_pool: bool,
    /// Attention with bf16 products ([`bf16::sdpa`]).
    bf16: bool,
    num_heads: usize,
    dim_out: usize,
    window_size: usize,
}

impl MultiScaleBlock {
    fn new(
        dim: usize,
        dim_out: usize,
        num_heads: usize,
        q_pool: bool,
        window_size: usize,
        vb: VarBuilder,
        bf16: bool,
    ) -> Result<Self> {
        let dense = |i, o, name: &str, gelu| Dense::new(i, o, vb.pp(name), bf16, gelu);
        Ok(Self {
            norm1: ln(dim, vb.pp("norm1"))?,
            qkv: dense(dim, dim_out * 3, "attn.qkv", false)?,
            attn_proj: dense(dim_out, dim_out, "attn.proj", false)?,
            norm2: ln(dim_out, vb.pp("norm2"))?,
            mlp: (
                dense(dim_out, dim_out * 4, "mlp.layers.0", true)?,
                dense(dim_out * 4, dim_out, "mlp.layers.1", false)?,
            ),
            proj: if dim != dim_out { Some(dense(dim, dim_out, "proj", false)?) } else { None },
            q_pool,
            bf16,
            num_heads,
            dim_out,
            window_size,
        })
    }

    /// Attention over (B, H, W, C) windows; queries pooled 2×2 when `q_pool`.
    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        if self.bf16 {
            return self.attention_bf16(x);
        }
        let (b, h, w, _) = x.dims4()?;
        let hd = self.dim_out / self.num_heads;
        let qkv = self.qkv.forward(x)?.reshape((b, h * w, 3, self.num_heads, hd))?;
        let (mut q, k, v) = (qkv.narrow(2, 0, 1)?, qkv.narrow(2, 1, 1)?, qkv.narrow(2, 2, 1)?);
        let (mut qh, mut qw) = (h, w);
        if self.q_pool {
            q = pool(&q.reshape((b, h, w, self.dim_out))?)?;
            (qh, qw) = (h / 2, w / 2);
        }
        let heads = |t: Tensor, n: usize| t.reshape((b, n, self.num_heads, hd))?.transpose(1, 2)?.contiguous();
        let (q, k, v) = (heads(q, qh * qw)?, heads(k, h * w)?, heads(v, h * w)?);
        let o = ops::sdpa(&q, &k, &v, 1.0 / (hd as f64).sqrt())?;
        let o = o.transpose(1, 2)?.reshape((b, qh, qw, self.dim_out))?;
        self.attn_proj.forward(&o)
    }

    /// [`Self::attention`] with bf16 products, reading the heads straight out of
    /// the `qkv` projection (or the pooled queries) and writing them side by side.
    fn attention_bf16(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let (dim, heads) = (self.dim_out, self.num_heads);
        let hd = dim / heads;
        let qkv = self.qkv.forward(x)?;
        let pooled = if self.q_pool { Some(pool(&qkv.narrow(3, 0, dim)?)?) } else { None };
        let (qh, qw) = pooled.as_ref().map_or(Ok((h, w)), |p| Ok::<_, candle_core::Error>((p.dim(1)?, p.dim(2)?)))?;
        let scale = 1.0 / (hd as f32).sqrt();
        let o = ops::with_f32(&qkv, |qkv| {
            let at = |offset: usize| bf16::HeadRows {
                data: &qkv[offset..],
                rows: h * w,
                ld: 3 * dim,
                batch_stride: h * w * 3 * dim,
            };
            match &pooled {
                None => bf16::sdpa_heads(at(0), at(dim), at(2 * dim), b, heads, (hd, hd), scale),
                Some(p) => ops::with_f32(p, |p| {
                    let q = bf16::HeadRows { data: p, rows: qh * qw, ld: dim, batch_stride: qh * qw * dim };
                    bf16::sdpa_heads(q, at(dim), at(2 * dim), b, heads, (hd, hd), scale)
                })?,
            }
        })??;
        self.attn_proj.forward(&Tensor::from_vec(o, (b, qh, qw, dim), x.device())?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let normed = self.norm1.forward(x)?;
        let shortcut = match &self.proj {
            Some(proj) => pool(&proj.forward(&normed)?)?,
            None => x.clone(),
        };
        let mut ws = self.window_size;
        let (mut y, mut pad_hw) = if ws > 0 { ops::window_partition(&normed, ws)? } else { (normed, (h, w)) };
        y = self.attention(&y)?;
        let (sh, sw) = (shortcut.dim(1)?, shortcut.dim(2)?);
        if self.q_pool {
            ws /= 2;
            pad_hw = (sh + (ws - sh % ws.max(1)) % ws.max(1), sw + (ws - sw % ws.max(1)) % ws.max(1));
        }
        if self.window_size > 0 {
            y = ops::window_unpartition(&y, ws, pad_hw, (sh, sw))?;
        }
        let x = (shortcut + y)?;
        let m = self.mlp(&self.norm2.forward(&x)?)?;
        x + m
    }

    /// The MLP over row blocks: the 4×-wide hidden layer of a 256×256 stage is
    /// 100 MB at once, and fresh buffers that large cost page faults on every call.
    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        const ROWS: usize = 4096;
        if let (Dense::Bf16(fc1), Dense::Bf16(fc2)) = &self.mlp {
            return fc1.then(fc2, x);
        }
        let dims = x.dims().to_vec();
        let c = dims[dims.len() - 1];
        let flat = x.reshape(((), c))?;
        let n = flat.dim(0)?;
        let parts = (0..n)
            .step_by(ROWS)
            .map(|start| {
                let rows = flat.narrow(0, start, ROWS.min(n - start))?;
                self.mlp.1.forward(&self.mlp.0.forward(&rows)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)?.reshape(dims)
    }
}

/// Bicubic-resized background position embedding plus the tiled window one,
/// (1, H, W, C) for the patch grid of a 1024² image, computed once at load.
fn position_embedding(bkg: &Tensor, window: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (_, c, bh, bw) = bkg.dims4()?;
    let data: Vec<f32> = bkg.flatten_all()?.to_vec1()?;
    let rows = ops::bicubic_taps(bh, h);
    let cols = ops::bicubic_taps(bw, w);
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        let src = &data[ch * bh * bw..(ch + 1) * bh * bw];
        for (y, ry) in rows.iter().enumerate() {
            for (x, cx) in cols.iter().enumerate() {
                let mut acc = 0f32;
                for &(sy, wy) in ry {
                    let row: f32 = cx.iter().map(|&(sx, wx)| wx * src[sy * bw + sx]).sum();
                    acc += wy * row;
                }
                out[ch * h * w + y * w + x] = acc;
            }
        }
    }
    let pos = Tensor::from_vec(out, (1, c, h, w), bkg.device())?;
    let (_, _, wh, ww) = window.dims4()?;
    let tiled = window.repeat((1, 1, h / wh, w / ww))?;
    (pos + tiled)?.permute((0, 2, 3, 1))?.contiguous()
}

/// The Hiera trunk.
#[derive(Debug, Clone)]
pub struct Hiera {
    patch_embed: Conv2d,
    pos_embed: Tensor,
    blocks: Vec<MultiScaleBlock>,
    stage_ends: Vec<usize>,
}

impl Hiera {
    /// `vb` at `image_encoder.trunk`; `grid` is the patch grid (256×256 for 1024²);
    /// `bf16`: projections and attention with bf16 products.
    pub fn new(cfg: &HieraConfig, grid: (usize, usize), vb: VarBuilder, bf16: bool) -> Result<Self> {
        let patch_cfg = Conv2dConfig { stride: 4, padding: 3, ..Default::default() };
        let patch_embed = conv2d(3, cfg.embed_dim, 7, patch_cfg, vb.pp("patch_embed.proj"))?;
        let (bh, bw) = cfg.window_pos_embed_bkg;
        let bkg = vb.get((1, cfg.embed_dim, bh, bw), "pos_embed")?;
        let ws0 = cfg.window_spec[0];
        let window = vb.get((1, cfg.embed_dim, ws0, ws0), "pos_embed_window")?;
        let pos_embed = position_embedding(
            &bkg.to_dtype(candle_core::DType::F32)?,
            &window.to_dtype(candle_core::DType::F32)?,
            grid,
        )?
        .to_dtype(bkg.dtype())?;
        let stage_ends: Vec<usize> =
            (1..=cfg.stages.len()).map(|i| cfg.stages[..i].iter().sum::<usize>() - 1).collect();
        let q_pool_blocks: Vec<usize> = stage_ends[..stage_ends.len() - 1].iter().map(|e| e + 1).collect();
        let (mut dim, mut heads, mut stage) = (cfg.embed_dim, cfg.num_heads, 1);
        let mut blocks = Vec::with_capacity(cfg.depth());
        for i in 0..cfg.depth() {
            let mut dim_out = dim;
            let mut window = cfg.window_spec[stage - 1];
            if cfg.global_att_blocks.contains(&i) {
                window = 0;
            }
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = dim * 2;
                heads *= 2;
                stage += 1;
            }
            let block = MultiScaleBlock::new(
                dim,
                dim_out,
                heads,
                q_pool_blocks.contains(&i),
                window,
                vb.pp(format!("blocks.{i}")),
                bf16,
            )?;
            blocks.push(block);
            dim = dim_out;
        }
        Ok(Self { patch_embed, pos_embed, blocks, stage_ends })
    }

    /// (1, 3, 1024, 1024) → the four stage outputs, finest first, each (1, C, H, W).
    pub fn forward(&self, x: &Tensor, trace: &mut Trace) -> Result<Vec<Tensor>> {
        let mut x = self.patch_embed.forward(x)?.permute((0, 2, 3, 1))?;
        trace.record("trunk.patch_embed", &x);
        x = x.broadcast_add(&self.pos_embed)?;
        trace.record("trunk.pos_embed", &self.pos_embed);
        let mut outs = Vec::with_capacity(self.stage_ends.len());
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if trace.is_on() {
                trace.record(format!("trunk.block{i}"), &x);
            }
            if self.stage_ends.contains(&i) {
                let out = x.permute((0, 3, 1, 2))?.contiguous()?;
                trace.record(format!("trunk.stage{}", outs.len()), &out);
                outs.push(out);
            }
        }
        Ok(outs)
    }
}

/// The FPN neck: 1×1 convs to `d_model`, nearest ×2 top-down fusion into the
/// levels of `fpn_top_down_levels` (2 and 3), and the coarsest level dropped (scalp 1).
#[derive(Debug, Clone)]
pub struct FpnNeck {
    convs: Vec<Conv2d>,
}

impl FpnNeck {
    /// `vb` at `image_encoder.neck`.
    pub fn new(channel_list: &[usize], d_model: usize, vb: VarBuilder) -> Result<Self> {
        let convs = channel_list
            .iter()
            .enumerate()
            .map(|(i, &c)| conv2d(c, d_model, 1, Default::default(), vb.pp(format!("convs.{i}.conv"))))
            .collect::<Result<_>>()?;
        Ok(Self { convs })
    }

    /// Stage outputs (finest first) → the three finest fused levels, finest first.
    pub fn forward(&self, xs: &[Tensor], trace: &mut Trace) -> Result<Vec<Tensor>> {
        let n = self.convs.len() - 1;
        let mut out: Vec<Option<Tensor>> = vec![None; xs.len()];
        let mut prev: Option<Tensor> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(&xs[i])?;
            let fused = match (&prev, i >= 2) {
                (Some(p), true) => {
                    let (_, _, h, w) = p.dims4()?;
                    (lateral + p.upsample_nearest2d(h * 2, w * 2)?)?
                }
                _ => lateral,
            };
            trace.record(format!("neck.level{i}"), &fused);
            out[i] = Some(fused.clone());
            prev = Some(fused);
        }
        // scalp = 1: the coarsest level is not used.
        out.into_iter().take(n).map(|t| t.ok_or_else(|| candle_core::Error::msg("missing FPN level"))).collect()
    }
}
