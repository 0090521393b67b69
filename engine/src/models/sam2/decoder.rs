//! SAM 2.1's prompt encoder (random-Fourier point embeddings, mask downscaling)
//! and mask decoder (two-way transformer, high-resolution skip features, IoU and
//! object-score heads, dynamic multimask via stability). Tensor names follow the
//! checkpoint (`sam_prompt_encoder.*`, `sam_mask_decoder.*`).
//!
//! SAM v1 (and MobileSAM) use the same two modules without SAM 2's additions
//! (no object-score token, no skip features, raw IoU, plain single-mask output),
//! under `prompt_encoder.*` / `mask_decoder.*`: [`Generation::V1`] selects that.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder, conv2d, layer_norm, linear};

use crate::models::ops;
use crate::models::trace::Trace;

/// A 2×2, stride-2 transposed convolution as one matmul (each input pixel
/// scatters to its own 2×2 output block, so no overlap): much faster on CPU than
/// a generic transposed convolution.
#[derive(Debug, Clone)]
struct Upsample2x {
    /// (out·2·2, in): rows ordered (out, dy, dx).
    weight: Tensor,
    bias: Tensor,
    out: usize,
}

impl Upsample2x {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((c_in, c_out, 2, 2), "weight")?;
        let weight = w.reshape((c_in, c_out * 4))?.t()?.contiguous()?;
        Ok(Self { weight, bias: vb.get(c_out, "bias")?, out: c_out })
    }
}

impl Module for Upsample2x {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        // (out·4, in) · (in, hw) per image: the input is used as it lies.
        let y = self.weight.broadcast_left(b)?.matmul(&x.reshape((b, c, h * w))?)?; // (b, out·4, hw)
        let y = y.reshape((b, self.out, 2, 2, h, w))?.permute((0, 1, 4, 2, 5, 3))?; // (b, out, h, 2, w, 2)
        y.reshape((b, self.out, 2 * h, 2 * w))?.broadcast_add(&self.bias.reshape((1, self.out, 1, 1))?)
    }
}

/// Channels-first LayerNorm over (B, C, H, W), eps 1e-6 (SAM's necks and
/// upscaling; MobileSAM's TinyViT neck too).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm2d {
    pub(crate) fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(c, "weight")?, bias: vb.get(c, "bias")? })
    }
}

impl Module for LayerNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm_channels(x, &self.weight, &self.bias, 1e-6)
    }
}

/// `layers.0 … layers.{n-1}` with an activation between them.
#[derive(Debug, Clone)]
struct Mlp {
    layers: Vec<Linear>,
    relu: bool,
    sigmoid: bool,
}

impl Mlp {
    fn new(dims: &[usize], relu: bool, sigmoid: bool, vb: VarBuilder) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| linear(d[0], d[1], vb.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self { layers, relu, sigmoid })
    }

    /// SAM v1's two-layer ReLU `MLPBlock` (`lin1`, `lin2`).
    fn block(dims: [usize; 3], vb: VarBuilder) -> Result<Self> {
        let layers = vec![linear(dims[0], dims[1], vb.pp("lin1"))?, linear(dims[1], dims[2], vb.pp("lin2"))?];
        Ok(Self { layers, relu: true, sigmoid: false })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i < last {
                x = if self.relu { x.relu()? } else { x.gelu_erf()? };
            }
        }
        if self.sigmoid { candle_nn::ops::sigmoid(&x) } else { Ok(x) }
    }
}

/// Point prompts in the 1024 px frame of the encoder input.
#[derive(Clone, Debug, PartialEq)]
pub struct PointPrompt {
    /// (x, y) pixel coordinates in the 1024×1024 frame.
    pub coords: Vec<(f32, f32)>,
    /// 1 positive, 0 negative, 2/3 box corners, −1 padding.
    pub labels: Vec<i32>,
}

/// The prompt encoder.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    gaussian: Tensor,
    point_embeddings: Vec<Tensor>,
    not_a_point: Tensor,
    no_mask: Tensor,
    mask_downscaling: (Conv2d, LayerNorm2d, Conv2d, LayerNorm2d, Conv2d),
    embed_dim: usize,
    grid: usize,
    input_size: f32,
}

impl PromptEncoder {
    /// `vb` at `sam_prompt_encoder`.
    pub fn new(embed_dim: usize, grid: usize, input_size: usize, vb: VarBuilder) -> Result<Self> {
        let k2 = Conv2dConfig { stride: 2, ..Default::default() };
        let md = vb.pp("mask_downscaling");
        Ok(Self {
            gaussian: vb.get((2, embed_dim / 2), "pe_layer.positional_encoding_gaussian_matrix")?,
            point_embeddings: (0..4)
                .map(|i| vb.get((1, embed_dim), &format!("point_embeddings.{i}.weight")))
                .collect::<Result<_>>()?,
            not_a_point: vb.get((1, embed_dim), "not_a_point_embed.weight")?,
            no_mask: vb.get((1, embed_dim), "no_mask_embed.weight")?,
            mask_downscaling: (
                conv2d(1, 4, 2, k2, md.pp("0"))?,
                LayerNorm2d::new(4, md.pp("1"))?,
                conv2d(4, 16, 2, k2, md.pp("3"))?,
                LayerNorm2d::new(16, md.pp("4"))?,
                conv2d(16, embed_dim, 1, Default::default(), md.pp("6"))?,
            ),
            embed_dim,
            grid,
            input_size: input_size as f32,
        })
    }

    /// Random-Fourier features of coordinates in [0, 1], (…, 2) → (…, embed_dim).
    fn pe_encoding(&self, coords: &Tensor) -> Result<Tensor> {
        let c = ((coords * 2.0)? - 1.0)?;
        let c = c.broadcast_matmul(&self.gaussian)?;
        let c = (c * (2.0 * std::f64::consts::PI))?;
        Tensor::cat(&[c.sin()?, c.cos()?], D::Minus1)
    }

    /// Positional encoding of the image embedding grid, (1, embed_dim, g, g).
    pub fn dense_pe(&self) -> Result<Tensor> {
        let g = self.grid;
        let dev = self.gaussian.device();
        let coords: Vec<f32> = (0..g)
            .flat_map(|y| (0..g).flat_map(move |x| [(x as f32 + 0.5) / g as f32, (y as f32 + 0.5) / g as f32]))
            .collect();
        let coords = Tensor::from_vec(coords, (g, g, 2), dev)?.to_dtype(self.gaussian.dtype())?;
        self.pe_encoding(&coords)?.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()
    }

    /// Sparse embeddings (B, N, embed_dim) of point prompts (B of them, same N).
    /// `pad` appends the padding point SAM adds when no separate box is given
    /// (SAM 2's predictor always passes boxes as points, so always; SAM v1 only
    /// without a box).
    pub fn embed_points(&self, prompts: &[PointPrompt], pad: bool, dev: &Device) -> Result<Tensor> {
        let n = prompts[0].coords.len() + usize::from(pad);
        let mut coords = Vec::with_capacity(prompts.len() * n * 2);
        let mut labels = Vec::with_capacity(prompts.len() * n);
        let padding = pad.then_some((&(0.0, 0.0), &-1));
        for p in prompts {
            for (&(x, y), &l) in p.coords.iter().zip(&p.labels).chain(padding) {
                let pad = l == -1;
                // Shift to the pixel centre, then normalise by the input size.
                coords.push(if pad { 0.5 } else { x + 0.5 } / self.input_size);
                coords.push(if pad { 0.5 } else { y + 0.5 } / self.input_size);
                labels.push(l);
            }
        }
        let b = prompts.len();
        let coords = Tensor::from_vec(coords, (b, n, 2), dev)?.to_dtype(self.gaussian.dtype())?;
        let pe = self.pe_encoding(&coords)?; // (b, n, d)
        let mut rows = Vec::with_capacity(b * n);
        for (i, &l) in labels.iter().enumerate() {
            let row = pe.i((i / n, i % n))?.unsqueeze(0)?;
            rows.push(match l {
                -1 => self.not_a_point.clone(),
                0..=3 => (row + &self.point_embeddings[l as usize])?,
                _ => row,
            });
        }
        Tensor::cat(&rows, 0)?.reshape((b, n, self.embed_dim))
    }

    /// Dense embeddings (B, embed_dim, g, g): of a low-res mask (B, 1, 4g, 4g), or
    /// the learned "no mask" embedding.
    pub fn embed_mask(&self, mask: Option<&Tensor>, b: usize) -> Result<Tensor> {
        let g = self.grid;
        match mask {
            Some(m) => {
                let (c1, n1, c2, n2, c3) = &self.mask_downscaling;
                let x = n1.forward(&c1.forward(m)?)?.gelu_erf()?;
                let x = n2.forward(&c2.forward(&x)?)?.gelu_erf()?;
                c3.forward(&x)
            }
            None => {
                self.no_mask.reshape((1, self.embed_dim, 1, 1))?.broadcast_as((b, self.embed_dim, g, g))?.contiguous()
            }
        }
    }
}

/// Attention with the internal width divided by `downsample`.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, downsample: usize, vb: VarBuilder) -> Result<Self> {
        let inner = dim / downsample;
        Ok(Self {
            q: linear(dim, inner, vb.pp("q_proj"))?,
            k: linear(dim, inner, vb.pp("k_proj"))?,
            v: linear(dim, inner, vb.pp("v_proj"))?,
            out: linear(inner, dim, vb.pp("out_proj"))?,
            heads,
        })
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.attend(&self.q.forward(q)?, &self.k.forward(k)?, &self.v.forward(v)?)
    }

    /// Attention over already projected (B, N, inner) queries, keys and values;
    /// a batch of 1 on one side is broadcast to the other's.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = q.dim(0)?.max(k.dim(0)?);
        let split = |x: &Tensor| -> Result<Tensor> {
            let (xb, n, c) = x.dims3()?;
            let x = x.reshape((xb, n, self.heads, c / self.heads))?.transpose(1, 2)?;
            if xb == b { x.contiguous() } else { x.broadcast_as((b, self.heads, n, c / self.heads))?.contiguous() }
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let hd = q.dim(D::Minus1)?;
        let o = ops::sdpa(&q, &k, &v, 1.0 / (hd as f64).sqrt())?;
        let (b, h, n, d) = o.dims4()?;
        self.out.forward(&o.transpose(1, 2)?.reshape((b, n, h * d))?)
    }
}

/// The image-side projections of the first two-way block, which do not depend
/// on the prompt when no mask is given: computed once per image.
#[derive(Debug, Clone)]
pub struct ImageSide {
    /// Image embedding + "no mask" embedding, (1, hw, c).
    keys: Tensor,
    t2i_k: Tensor,
    t2i_v: Tensor,
    i2t_q: Tensor,
}

impl ImageSide {
    pub fn byte_size(&self) -> usize {
        [&self.keys, &self.t2i_k, &self.t2i_v, &self.i2t_q].iter().map(|t| t.elem_count() * 4).sum()
    }
}

#[derive(Debug, Clone)]
struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    token_to_image: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    image_to_token: Attention,
    skip_first_pe: bool,
}

impl TwoWayBlock {
    fn new(dim: usize, mlp_dim: usize, skip_first_pe: bool, generation: Generation, vb: VarBuilder) -> Result<Self> {
        let heads = 8;
        Ok(Self {
            self_attn: Attention::new(dim, heads, 1, vb.pp("self_attn"))?,
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            token_to_image: Attention::new(dim, heads, 2, vb.pp("cross_attn_token_to_image"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            mlp: match generation {
                Generation::V2 => Mlp::new(&[dim, mlp_dim, dim], true, false, vb.pp("mlp"))?,
                Generation::V1 => Mlp::block([dim, mlp_dim, dim], vb.pp("mlp"))?,
            },
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            norm4: layer_norm(dim, 1e-5, vb.pp("norm4"))?,
            image_to_token: Attention::new(dim, heads, 2, vb.pp("cross_attn_image_to_token"))?,
            skip_first_pe,
        })
    }

    /// The first block with the image side precomputed (no mask input).
    fn forward_cached(&self, queries: &Tensor, query_pe: &Tensor, side: &ImageSide) -> Result<(Tensor, Tensor)> {
        let queries = self.norm1.forward(&self.self_attn.forward(queries, queries, queries)?)?;
        let q = (&queries + query_pe)?;
        let t2i = self.token_to_image.attend(&self.token_to_image.q.forward(&q)?, &side.t2i_k, &side.t2i_v)?;
        let queries = self.norm2.forward(&(&queries + t2i)?)?;
        let queries = self.norm3.forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let i2t = self.image_to_token.attend(
            &side.i2t_q,
            &self.image_to_token.k.forward(&q)?,
            &self.image_to_token.v.forward(&queries)?,
        )?;
        let keys = self.norm4.forward(&side.keys.broadcast_add(&i2t)?)?;
        Ok((queries, keys))
    }

    fn forward(&self, queries: &Tensor, keys: &Tensor, query_pe: &Tensor, key_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let k = keys.broadcast_add(key_pe)?;
        let queries = self.norm2.forward(&(&queries + self.token_to_image.forward(&q, &k, keys)?)?)?;
        let queries = self.norm3.forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let keys = self.norm4.forward(&(keys + self.image_to_token.forward(&k, &q, &queries)?)?)?;
        Ok((queries, keys))
    }
}

/// What the decoder returns for a batch of prompts.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// (B, M, 4g, 4g) mask logits.
    pub low_res: Tensor,
    /// (B, M) predicted IoU (SAM 2: through a sigmoid; SAM v1: raw).
    pub iou: Tensor,
    /// (B, 1) object-score logits (SAM 2 only).
    pub object_score: Option<Tensor>,
}

/// Which SAM the decoder belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// SAM v1 / MobileSAM: `mask_decoder.*`.
    V1,
    /// SAM 2 / 2.1: `sam_mask_decoder.*`, object score, skip features, sigmoid IoU.
    V2,
}

/// The mask decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoder {
    generation: Generation,
    blocks: Vec<TwoWayBlock>,
    final_attn: Attention,
    norm_final: LayerNorm,
    /// [object-score (V2)], IoU, 4 mask tokens.
    tokens: Tensor,
    upscale: (Upsample2x, LayerNorm2d, Upsample2x),
    /// Projections of the high-resolution features (V2).
    pub conv_s: Option<(Conv2d, Conv2d)>,
    hyper: Vec<Mlp>,
    iou_head: Mlp,
    obj_head: Option<Mlp>,
    stability_delta: f32,
    stability_thresh: f32,
}

impl MaskDecoder {
    /// `vb` at `sam_mask_decoder` (V2) or `mask_decoder` (V1).
    pub fn new(dim: usize, generation: Generation, vb: VarBuilder) -> Result<Self> {
        let v2 = generation == Generation::V2;
        let t = vb.pp("transformer");
        let blocks = (0..2)
            .map(|i| TwoWayBlock::new(dim, 2048, i == 0, generation, t.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        let mut tokens = Vec::with_capacity(3);
        if v2 {
            tokens.push(vb.get((1, dim), "obj_score_token.weight")?);
        }
        tokens.push(vb.get((1, dim), "iou_token.weight")?);
        tokens.push(vb.get((4, dim), "mask_tokens.weight")?);
        let tokens = Tensor::cat(&tokens, 0)?;
        let u = vb.pp("output_upscaling");
        let conv_s = if v2 {
            Some((
                conv2d(dim, dim / 8, 1, Default::default(), vb.pp("conv_s0"))?,
                conv2d(dim, dim / 4, 1, Default::default(), vb.pp("conv_s1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            generation,
            blocks,
            final_attn: Attention::new(dim, 8, 2, t.pp("final_attn_token_to_image"))?,
            norm_final: layer_norm(dim, 1e-5, t.pp("norm_final_attn"))?,
            tokens,
            upscale: (
                Upsample2x::new(dim, dim / 4, u.pp("0"))?,
                LayerNorm2d::new(dim / 4, u.pp("1"))?,
                Upsample2x::new(dim / 4, dim / 8, u.pp("3"))?,
            ),
            conv_s,
            hyper: (0..4)
                .map(|i| {
                    Mlp::new(&[dim, dim, dim, dim / 8], true, false, vb.pp(format!("output_hypernetworks_mlps.{i}")))
                })
                .collect::<Result<_>>()?,
            iou_head: Mlp::new(&[dim, 256, 256, 4], true, v2, vb.pp("iou_prediction_head"))?,
            obj_head: if v2 {
                Some(Mlp::new(&[dim, dim, dim, 1], true, false, vb.pp("pred_obj_score_head"))?)
            } else {
                None
            },
            stability_delta: 0.05,
            stability_thresh: 0.98,
        })
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The prompt-independent part of the first block for an image: `image`
    /// (1, d, g, g) with the "no mask" `dense` (1, d, g, g) added, `key_pe` (1, g·g, d).
    pub fn image_side(&self, image: &Tensor, dense: &Tensor, key_pe: &Tensor) -> Result<ImageSide> {
        let keys = image.broadcast_add(dense)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let k = (&keys + key_pe)?;
        let b0 = &self.blocks[0];
        Ok(ImageSide {
            t2i_k: b0.token_to_image.k.forward(&k)?,
            t2i_v: b0.token_to_image.v.forward(&keys)?,
            i2t_q: b0.image_to_token.q.forward(&k)?,
            keys,
        })
    }

    /// Masks for `sparse` prompts (B, N, d) on one image: `image` (1, d, g, g)
    /// with `dense` (B, d, g, g) added, `key_pe` (1, g·g, d), and (V2) the projected
    /// high-resolution features `(s0, s1)`. `side`, when the prompts carry no mask,
    /// is the image's precomputed first-block projections (same result, less work).
    /// With `multimask`, the three multimask outputs; otherwise one mask per
    /// prompt (V2: falling back to the best multimask output when the single one
    /// is unstable).
    pub fn forward(
        &self,
        (image, key_pe): (&Tensor, &Tensor),
        (sparse, dense): (&Tensor, &Tensor),
        side: Option<&ImageSide>,
        high_res: Option<(&Tensor, &Tensor)>,
        multimask: bool,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let (b, _, _) = sparse.dims3()?;
        let (_, c, h, w) = image.dims4()?;
        let nt = self.tokens.dim(0)?;
        let first_mask = nt - 4; // index of the first mask token; the IoU token is just before
        let tokens = Tensor::cat(&[self.tokens.unsqueeze(0)?.broadcast_as((b, nt, c))?, sparse.clone()], 1)?;
        let keys0 = match side {
            Some(s) => s.keys.clone(), // unused by the cached first block
            None => image.broadcast_add(dense)?.flatten_from(2)?.transpose(1, 2)?.contiguous()?, // (b, hw, c)
        };
        let (mut queries, mut keys) = (tokens.clone(), keys0);
        for (i, block) in self.blocks.iter().enumerate() {
            (queries, keys) = match (i, side) {
                (0, Some(side)) => block.forward_cached(&queries, &tokens, side)?,
                _ => block.forward(&queries, &keys, &tokens, key_pe)?,
            };
            if trace.is_on() {
                trace.record(format!("decoder.block{i}.queries"), &queries);
                trace.record(format!("decoder.block{i}.keys"), &keys);
            }
        }
        let q = (&queries + &tokens)?;
        let k = keys.broadcast_add(key_pe)?;
        let queries = self.norm_final.forward(&(&queries + self.final_attn.forward(&q, &k, &keys)?)?)?;

        let src = keys.transpose(1, 2)?.reshape((b, c, h, w))?;
        let (dc1, ln1, dc2) = &self.upscale;
        let up = match high_res {
            Some((s0, s1)) => {
                let up = ops::gelu_erf(&ln1.forward(&dc1.forward(&src)?.broadcast_add(s1)?)?)?;
                ops::gelu_erf(&dc2.forward(&up)?.broadcast_add(s0)?)?
            }
            None => ops::gelu_erf(&dc2.forward(&ops::gelu_erf(&ln1.forward(&dc1.forward(&src)?)?)?)?)?,
        }; // (b, c/8, 4h, 4w)
        trace.record("decoder.queries", &queries);
        trace.record("decoder.upscaled", &up);
        let (_, uc, uh, uw) = up.dims4()?;
        let hyper =
            (0..4).map(|i| self.hyper[i].forward(&queries.i((.., first_mask + i, ..))?)).collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::stack(&hyper, 1)?; // (b, 4, c/8)
        let masks = hyper.matmul(&up.reshape((b, uc, uh * uw))?)?.reshape((b, 4, uh, uw))?;
        let iou = self.iou_head.forward(&queries.i((.., first_mask - 1, ..))?)?; // (b, 4)
        let object_score = match &self.obj_head {
            Some(head) => Some(head.forward(&queries.i((.., 0, ..))?)?), // (b, 1)
            None => None,
        };
        trace.record("decoder.masks_all", &masks);
        trace.record("decoder.iou_all", &iou);
        if let Some(s) = &object_score {
            trace.record("decoder.object_score", s);
        }
        let (low_res, iou) = if multimask {
            (masks.narrow(1, 1, 3)?, iou.narrow(1, 1, 3)?)
        } else if self.generation == Generation::V1 {
            (masks.narrow(1, 0, 1)?, iou.narrow(1, 0, 1)?)
        } else {
            self.dynamic_multimask(&masks, &iou)?
        };
        Ok(DecoderOutput { low_res, iou, object_score })
    }

    /// Keeps the single-mask output where it is stable (|logits > δ| / |logits > −δ|
    /// ≥ 0.98), else the multimask output with the highest predicted IoU.
    fn dynamic_multimask(&self, masks: &Tensor, iou: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = masks.dim(0)?;
        let mut out_masks = Vec::with_capacity(b);
        let mut out_iou = Vec::with_capacity(b);
        let ious: Vec<Vec<f32>> = iou.to_dtype(DType::F32)?.to_vec2()?;
        for (i, row) in ious.iter().enumerate() {
            let single = masks.i((i, 0))?;
            let flat: Vec<f32> = single.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let inter = flat.iter().filter(|&&v| v > self.stability_delta).count() as f32;
            let union = flat.iter().filter(|&&v| v > -self.stability_delta).count() as f32;
            let stability = if union > 0.0 { inter / union } else { 1.0 };
            let (k, score) = if stability >= self.stability_thresh {
                (0, row[0])
            } else {
                // torch.argmax: the first of equal maxima.
                let mut best = 1;
                for j in 2..4 {
                    if row[j] > row[best] {
                        best = j;
                    }
                }
                (best, row[best])
            };
            out_masks.push(masks.i((i, k))?.unsqueeze(0)?);
            out_iou.push(score);
        }
        let iou = Tensor::from_vec(out_iou, (b, 1), masks.device())?.to_dtype(iou.dtype())?;
        Ok((Tensor::stack(&out_masks, 0)?, iou))
    }
}
