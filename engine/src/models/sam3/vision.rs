//! SAM 3's vision encoder: the Perception Encoder ViT (patch embedding without
//! bias, a position table tiled — not interpolated — to the input's grid, a
//! LayerNorm before the blocks, windowed and global pre-norm blocks with axial
//! 2-D RoPE over interleaved pairs) and the SimpleFPN neck that makes four levels
//! from its last output, each with a sine position encoding.
//! Tensor names follow transformers' `Sam3VisionModel` (`backbone.*`, `neck.*`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, ConvTranspose2d, LayerNorm, Linear, VarBuilder};

use super::config::{VisionConfig, VitConfig};
use crate::models::ops;

/// cos/sin tables (positions × head_dim / 2) of the axial RoPE on a `h × w`
/// grid whose positions are scaled by `scale`: the first quarter of the pairs
/// turn with the column, the second with the row (transformers'
/// `Sam3ViTRotaryEmbedding`, positions `[x, y]`).
fn axial_rope(cfg: &VitConfig, h: usize, w: usize, scale: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let dim = cfg.head_dim();
    let freqs = dim / 4;
    let inv: Vec<f32> = (0..freqs)
        .map(|k| 1.0 / (cfg.rope_parameters.rope_theta as f32).powf((2 * k) as f32 / (dim / 2) as f32))
        .collect();
    let mut angles = Vec::with_capacity(h * w * freqs * 2);
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32 * scale, y as f32 * scale);
            angles.extend(inv.iter().map(|f| px * f));
            angles.extend(inv.iter().map(|f| py * f));
        }
    }
    let t = Tensor::from_vec(angles, (h * w, freqs * 2), device)?;
    Ok((t.cos()?, t.sin()?))
}

/// Self-attention with axial RoPE on q and k.
#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let lin = |name: &str| candle_nn::linear(d, d, vb.pp(name));
        Ok(Self {
            q: lin("q_proj")?,
            k: lin("k_proj")?,
            v: lin("v_proj")?,
            o: lin("o_proj")?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x`: (B, h, w, C) → the same shape; `rope`: tables for the h·w positions.
    fn forward(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let d = c / self.heads;
        let split = |l: &Linear| -> Result<Tensor> {
            l.forward(x)?.reshape((b, h * w, self.heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = candle_nn::rotary_emb::rope_i(&split(&self.q)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&split(&self.k)?, cos, sin)?;
        let v = split(&self.v)?;
        let out = ops::sdpa(&q, &k, &v, (d as f64).powf(-0.5))?;
        self.o.forward(&out.transpose(1, 2)?.reshape((b, h, w, c))?)
    }
}

/// One pre-norm block; `window` 0: global attention.
#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    window: usize,
}

impl Block {
    fn new(cfg: &VitConfig, window: usize, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            norm1: candle_nn::layer_norm(d, eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(cfg, vb.pp("attention"))?,
            norm2: candle_nn::layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(cfg.intermediate_size, d, vb.pp("mlp.fc2"))?,
            window,
        })
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor)) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let y = self.norm1.forward(x)?;
        let y = if self.window > 0 {
            let (windows, padded) = ops::window_partition(&y, self.window)?;
            ops::window_unpartition(&self.attn.forward(&windows, rope)?, self.window, padded, (h, w))?
        } else {
            self.attn.forward(&y, rope)?
        };
        let x = (x + y)?;
        let y = self.fc2.forward(&ops::gelu_erf(&self.fc1.forward(&self.norm2.forward(&x)?)?)?)?;
        x + y
    }
}

/// The ViT backbone.
#[derive(Debug)]
pub struct Vit {
    patch: Conv2d,
    /// The trained position table (P·P, C), P = pretrain side / patch.
    positions: Tensor,
    norm: LayerNorm,
    blocks: Vec<Block>,
    cfg: VitConfig,
}

impl Vit {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let d = cfg.hidden_size;
        let conv = candle_nn::Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        let patch =
            candle_nn::conv2d_no_bias(3, d, cfg.patch_size, conv, vb.pp("embeddings.patch_embeddings.projection"))?;
        let side = cfg.pretrain_image_size / cfg.patch_size;
        let positions = vb.get((1, side * side, d), "embeddings.position_embeddings")?.reshape((side * side, d))?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let window = if cfg.global_attn_indexes.contains(&i) { 0 } else { cfg.window_size };
                Block::new(cfg, window, vb.pp(format!("layers.{i}")))
            })
            .collect::<Result<_>>()?;
        let norm = candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("layer_norm"))?;
        Ok(Self { patch, positions, norm, blocks, cfg: cfg.clone() })
    }

    /// The position table tiled over an `h × w` grid (row `i`, column `j` take
    /// entry `(i mod P, j mod P)`), (h·w, C).
    fn tiled_positions(&self, h: usize, w: usize) -> Result<Tensor> {
        let side = self.cfg.pretrain_image_size / self.cfg.patch_size;
        let idx: Vec<u32> = (0..h).flat_map(|i| (0..w).map(move |j| ((i % side) * side + j % side) as u32)).collect();
        self.positions.index_select(&Tensor::new(idx, self.positions.device())?, 0)
    }

    /// `pixels` (B, 3, H, W) → tokens (B, h·w, C) and the grid (h, w).
    pub fn forward(&self, pixels: &Tensor) -> Result<(Tensor, (usize, usize))> {
        let x = self.patch.forward(pixels)?;
        let (b, c, h, w) = x.dims4()?;
        let x = x.flatten_from(2)?.transpose(1, 2)?.broadcast_add(&self.tiled_positions(h, w)?)?;
        let mut x = self.norm.forward(&x.reshape((b, h, w, c))?)?;
        let ws = self.cfg.window_size;
        // Windowed layers count positions within a window; global ones over the
        // grid, scaled so the grid spans one window's range (transformers scales by
        // window / grid width on both axes; no windows: every position 0).
        let window_rope = if ws > 0 { Some(axial_rope(&self.cfg, ws, ws, 1.0, x.device())?) } else { None };
        let global_rope = axial_rope(&self.cfg, h, w, ws as f32 / w as f32, x.device())?;
        for block in &self.blocks {
            let rope = match (&window_rope, block.window) {
                (Some(r), n) if n > 0 => r,
                _ => &global_rope,
            };
            x = block.forward(&x, rope)?;
        }
        Ok((x.reshape((b, h * w, c))?, (h, w)))
    }
}

/// One FPN level: resampled from the ViT's grid by its scale, then 1×1 and 3×3 convolutions.
#[derive(Debug)]
struct FpnLevel {
    up: Vec<ConvTranspose2d>,
    pool: bool,
    proj1: Conv2d,
    proj2: Conv2d,
}

impl FpnLevel {
    fn new(c: usize, dim: usize, scale: f64, vb: VarBuilder) -> Result<Self> {
        let convt = candle_nn::ConvTranspose2dConfig { stride: 2, ..Default::default() };
        let t = |i: usize, o: usize, n: usize| {
            candle_nn::conv_transpose2d(i, o, 2, convt, vb.pp(format!("scale_layers.{n}")))
        };
        let (up, pool, mid) = match scale {
            4.0 => (vec![t(c, c / 2, 0)?, t(c / 2, c / 4, 2)?], false, c / 4),
            2.0 => (vec![t(c, c / 2, 0)?], false, c / 2),
            1.0 => (Vec::new(), false, c),
            0.5 => (Vec::new(), true, c),
            s => candle_core::bail!("FPN scale factor {s} is not one of 4, 2, 1, 0.5"),
        };
        let pad = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
        Ok(Self {
            up,
            pool,
            proj1: candle_nn::conv2d(mid, dim, 1, Default::default(), vb.pp("proj1"))?,
            proj2: candle_nn::conv2d(dim, dim, 3, pad, vb.pp("proj2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, up) in self.up.iter().enumerate() {
            if i > 0 {
                x = ops::gelu_erf(&x)?;
            }
            x = up.forward(&x)?;
        }
        if self.pool {
            x = x.max_pool2d(2)?;
        }
        self.proj2.forward(&self.proj1.forward(&x)?)
    }
}

/// The sine position encoding of an `h × w` level with `channels` channels
/// (normalised to 2π, temperature 10000; rows' half first, sin/cos interleaved),
/// (channels, h, w).
pub fn sine_positions(channels: usize, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let half = channels / 2;
    let tau = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..half).map(|j| 10_000f32.powf((2 * (j / 2)) as f32 / half as f32)).collect();
    let encode = |pos: usize, n: usize, j: usize| {
        let e = pos as f32 / (n as f32 + 1e-6) * tau / dim_t[j];
        if j.is_multiple_of(2) { e.sin() } else { e.cos() }
    };
    let mut out = vec![0f32; channels * h * w];
    for j in 0..half {
        for y in 0..h {
            for x in 0..w {
                out[(j * h + y) * w + x] = encode(y + 1, h, j);
                out[((half + j) * h + y) * w + x] = encode(x + 1, w, j);
            }
        }
    }
    Tensor::from_vec(out, (channels, h, w), device)
}

/// The vision encoder: ViT + FPN neck.
#[derive(Debug)]
pub struct VisionEncoder {
    pub vit: Vit,
    levels: Vec<FpnLevel>,
    fpn_dim: usize,
}

/// What the vision encoder hands the rest of the model.
#[derive(Debug)]
pub struct VisionOutput {
    /// The ViT's tokens (B, h·w, C).
    pub tokens: Tensor,
    /// One feature map per FPN level (B, D, h_i, w_i), largest first.
    pub levels: Vec<Tensor>,
    /// Their sine position encodings (B, D, h_i, w_i).
    pub positions: Vec<Tensor>,
}

impl VisionEncoder {
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let vit = Vit::new(&cfg.backbone_config, vb.pp("backbone"))?;
        let c = cfg.backbone_config.hidden_size;
        let levels = cfg
            .scale_factors
            .iter()
            .enumerate()
            .map(|(i, s)| FpnLevel::new(c, cfg.fpn_hidden_size, *s, vb.pp(format!("neck.fpn_layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { vit, levels, fpn_dim: cfg.fpn_hidden_size })
    }

    pub fn forward(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let (tokens, (h, w)) = self.vit.forward(pixels)?;
        let b = tokens.dim(0)?;
        let grid = tokens.transpose(1, 2)?.reshape((b, (), h, w))?.contiguous()?;
        let mut levels = Vec::with_capacity(self.levels.len());
        let mut positions = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let f = level.forward(&grid)?;
            let (_, _, lh, lw) = f.dims4()?;
            positions.push(sine_positions(self.fpn_dim, lh, lw, f.device())?.unsqueeze(0)?.repeat((b, 1, 1, 1))?);
            levels.push(f);
        }
        Ok(VisionOutput { tokens, levels, positions })
    }

    pub fn dtype(&self) -> DType {
        self.vit.positions.dtype()
    }
}
