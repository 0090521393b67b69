//! SAM 3's DETR decoder (transformers' `Sam3DetrDecoder`): learned queries and
//! reference boxes, a presence token in front, post-norm layers (self-attention,
//! cross-attention to the prompt, cross-attention to the fused image with a
//! box-relative position bias), each layer refining the boxes and scoring the
//! presence of the concept.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::config::StageConfig;
use super::encoder::{Attention, Mlp, key_mask};

/// `Sam3DecoderMLP`: 2 or 3 linear layers with ReLU between them.
#[derive(Debug)]
pub struct HeadMlp {
    layers: Vec<Linear>,
}

impl HeadMlp {
    pub fn new(input: usize, hidden: usize, output: usize, n: usize, vb: VarBuilder) -> Result<Self> {
        let dims: Vec<(usize, usize)> = match n {
            2 => vec![(input, hidden), (hidden, output)],
            3 => vec![(input, hidden), (hidden, hidden), (hidden, output)],
            n => candle_core::bail!("a decoder MLP has 2 or 3 layers, not {n}"),
        };
        let layers = dims
            .iter()
            .enumerate()
            .map(|(i, (a, b))| candle_nn::linear(*a, *b, vb.pp(format!("layer{}", i + 1))))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }
}

impl Module for HeadMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// `log(x / (1 − x))` with both clamped to at least 1e-3, as transformers.
fn inverse_sigmoid(x: &Tensor) -> Result<Tensor> {
    let x = x.clamp(0f32, 1f32)?;
    let x1 = x.clamp(1e-3f32, f32::MAX)?;
    let x2 = x.affine(-1.0, 1.0)?.clamp(1e-3f32, f32::MAX)?;
    (x1 / x2)?.log()
}

/// (cx, cy, w, h) → (x1, y1, x2, y2) along the last axis.
pub fn cxcywh_to_xyxy(b: &Tensor) -> Result<Tensor> {
    let c = |i: usize| b.narrow(D::Minus1, i, 1);
    let (cx, cy, w, h) = (c(0)?, c(1)?, c(2)?, c(3)?);
    let (hw, hh) = ((&w * 0.5)?, (&h * 0.5)?);
    Tensor::cat(&[(&cx - &hw)?, (&cy - &hh)?, (&cx + &hw)?, (&cy + &hh)?], D::Minus1)
}

/// Sine encoding of boxes (B, Q, 4) as (cx, cy, w, h) → (B, Q, 4·F), each
/// coordinate in F features (sin/cos interleaved), in the order y, x, w, h.
fn encode_boxes(boxes: &Tensor, features: usize) -> Result<Tensor> {
    let (b, q, _) = boxes.dims3()?;
    let values = boxes.flatten_all()?.to_vec1::<f32>()?;
    let dim_t: Vec<f32> = (0..features).map(|j| 10_000f32.powf((2 * (j / 2)) as f32 / features as f32)).collect();
    let tau = 2.0 * std::f32::consts::PI;
    let mut out = Vec::with_capacity(b * q * 4 * features);
    for bq in 0..b * q {
        for coord in [1, 0, 2, 3] {
            let e = values[bq * 4 + coord] * tau;
            out.extend(
                dim_t.iter().enumerate().map(|(j, t)| if j.is_multiple_of(2) { (e / t).sin() } else { (e / t).cos() }),
            );
        }
    }
    Tensor::from_vec(out, (b, q, 4 * features), boxes.device())
}

#[derive(Debug)]
struct Layer {
    self_attn: Attention,
    self_norm: LayerNorm,
    text_attn: Attention,
    text_norm: LayerNorm,
    image_attn: Attention,
    image_norm: LayerNorm,
    mlp: Mlp,
    mlp_norm: LayerNorm,
}

impl Layer {
    fn new(cfg: &StageConfig, vb: VarBuilder) -> Result<Self> {
        let (d, h) = (cfg.hidden_size, cfg.num_attention_heads);
        let ln = |name: &str| candle_nn::layer_norm(d, 1e-5, vb.pp(name));
        Ok(Self {
            self_attn: Attention::new(d, h, vb.pp("self_attn"))?,
            self_norm: ln("self_attn_layer_norm")?,
            text_attn: Attention::new(d, h, vb.pp("text_cross_attn"))?,
            text_norm: ln("text_cross_attn_layer_norm")?,
            image_attn: Attention::new(d, h, vb.pp("vision_cross_attn"))?,
            image_norm: ln("vision_cross_attn_layer_norm")?,
            mlp: Mlp::new(d, cfg.intermediate_size, vb.pp("mlp"))?,
            mlp_norm: ln("mlp_layer_norm")?,
        })
    }

    /// `x` (B, 1+Q, C) with the presence token first; `pos` (B, 1+Q, C).
    fn forward(&self, x: &Tensor, pos: &Tensor, ctx: &Context, rpb: &Tensor) -> Result<Tensor> {
        let q = (x + pos)?;
        let x = self.self_norm.forward(&(x + self.self_attn.forward(&q, &q, x, None)?)?)?;
        let q = (&x + pos)?;
        let x = self
            .text_norm
            .forward(&(&x + self.text_attn.forward(&q, ctx.prompt, ctx.prompt, Some(&ctx.prompt_mask))?)?)?;
        let q = (&x + pos)?;
        let x =
            self.image_norm.forward(&(&x + self.image_attn.forward(&q, &ctx.image_keys, ctx.image, Some(rpb))?)?)?;
        self.mlp_norm.forward(&(&x + self.mlp.forward(&x)?)?)
    }
}

/// What every layer attends to.
struct Context<'a> {
    prompt: &'a Tensor,
    prompt_mask: Tensor,
    image: &'a Tensor,
    /// Image tokens plus their positions.
    image_keys: Tensor,
}

/// Per layer: the normed query states, the boxes the layer started from and the presence logit.
#[derive(Debug)]
pub struct DecoderOutput {
    /// (L, B, Q, C)
    pub queries: Tensor,
    /// (L, B, Q, 4), cx cy w h in [0, 1]: each layer's input boxes.
    pub reference_boxes: Tensor,
    /// (L, B, 1), clamped to ±10.
    pub presence_logits: Tensor,
    /// (B, Q, 4): the last layer's refined boxes, x1 y1 x2 y2 in [0, 1].
    pub boxes: Tensor,
}

/// The decoder.
#[derive(Debug)]
pub struct Decoder {
    layers: Vec<Layer>,
    out_norm: LayerNorm,
    box_head: HeadMlp,
    queries: Tensor,
    reference_points: Tensor,
    presence_token: Tensor,
    presence_head: HeadMlp,
    presence_norm: LayerNorm,
    ref_point_head: HeadMlp,
    rpb_x: HeadMlp,
    rpb_y: HeadMlp,
    width: usize,
    /// transformers clamps presence logits to ±10; Meta's code does not.
    clamp_presence: bool,
}

impl Decoder {
    pub fn new(cfg: &StageConfig, num_queries: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate("detr_decoder_config").map_err(candle_core::Error::msg)?;
        let (d, h) = (cfg.hidden_size, cfg.num_attention_heads);
        let layers =
            (0..cfg.num_layers).map(|i| Layer::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self {
            layers,
            out_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("output_layer_norm"))?,
            box_head: HeadMlp::new(d, d, 4, 3, vb.pp("box_head"))?,
            queries: vb.get((num_queries, d), "query_embed.weight")?,
            reference_points: vb.get((num_queries, 4), "reference_points.weight")?,
            presence_token: vb.get((1, d), "presence_token.weight")?,
            presence_head: HeadMlp::new(d, d, 1, 3, vb.pp("presence_head"))?,
            presence_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("presence_layer_norm"))?,
            ref_point_head: HeadMlp::new(2 * d, d, d, 2, vb.pp("ref_point_head"))?,
            rpb_x: HeadMlp::new(2, d, h, 2, vb.pp("box_rpb_embed_x"))?,
            rpb_y: HeadMlp::new(2, d, h, 2, vb.pp("box_rpb_embed_y"))?,
            width: d,
            clamp_presence: true,
        })
    }

    /// Presence logits as Meta's code returns them (not clamped).
    pub fn without_presence_clamp(mut self) -> Self {
        self.clamp_presence = false;
        self
    }

    /// The box-relative position bias (B, heads, 1+Q, h·w): per query, an MLP of
    /// the log-scaled distances of each row and column to the box's edges; the
    /// presence token's row is zero.
    fn rpb(&self, boxes: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let (b, q, _) = boxes.dims3()?;
        let xyxy = cxcywh_to_xyxy(boxes)?;
        let axis = |n: usize, lo: usize, mlp: &HeadMlp| -> Result<Tensor> {
            let coords =
                Tensor::arange(0u32, n as u32, boxes.device())?.to_dtype(boxes.dtype())?.affine(1.0 / n as f64, 0.0)?;
            let edges = Tensor::cat(&[xyxy.narrow(2, lo, 1)?, xyxy.narrow(2, lo + 2, 1)?], 2)?; // (B, Q, 2)
            let deltas = (coords.reshape((1, 1, n, 1))?.broadcast_sub(&edges.unsqueeze(2)?)? * 8.0)?;
            let log =
                (deltas.sign()? * (deltas.abs()? + 1.0)?.log()?.affine(1.0 / (std::f64::consts::LN_2 * 3.0), 0.0)?)?;
            mlp.forward(&log) // (B, Q, n, heads)
        };
        let (dy, dx) = (axis(h, 1, &self.rpb_y)?, axis(w, 0, &self.rpb_x)?);
        let heads = dy.dim(3)?;
        let m = dy.unsqueeze(3)?.broadcast_add(&dx.unsqueeze(2)?)?.reshape((b, q, h * w, heads))?;
        m.permute((0, 3, 1, 2))?.pad_with_zeros(2, 1, 0)?.contiguous()
    }

    /// `image` (B, h·w, C) — the fused tokens — with `image_pos`, on an `h × w`
    /// grid; `prompt` (B, P, C) with `prompt_valid` (B, P).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pos: &Tensor,
        grid: (usize, usize),
        prompt: &Tensor,
        prompt_valid: &Tensor,
    ) -> Result<DecoderOutput> {
        let b = image.dim(0)?;
        let ctx = Context { prompt, prompt_mask: key_mask(prompt_valid)?, image, image_keys: (image + image_pos)? };
        let expand = |t: &Tensor| -> Result<Tensor> { t.unsqueeze(0)?.repeat((b, 1, 1)) };
        let mut x = Tensor::cat(&[expand(&self.presence_token)?, expand(&self.queries)?], 1)?;
        let mut boxes = candle_nn::ops::sigmoid(&expand(&self.reference_points)?)?;
        let (mut queries, mut refs, mut presence) = (Vec::new(), Vec::new(), Vec::new());
        for layer in &self.layers {
            let pos = self.ref_point_head.forward(&encode_boxes(&boxes, self.width / 2)?)?.pad_with_zeros(1, 1, 0)?;
            x = layer.forward(&x, &pos, &ctx, &self.rpb(&boxes, grid)?)?;
            let q = self.out_norm.forward(&x.narrow(1, 1, x.dim(1)? - 1)?)?;
            let refined = candle_nn::ops::sigmoid(&(self.box_head.forward(&q)? + inverse_sigmoid(&boxes)?)?)?;
            refs.push(boxes);
            boxes = refined;
            queries.push(q);
            let p = self.presence_head.forward(&self.presence_norm.forward(&x.narrow(1, 0, 1)?)?)?.squeeze(2)?;
            presence.push(if self.clamp_presence { p.clamp(-10f32, 10f32)? } else { p });
        }
        Ok(DecoderOutput {
            boxes: cxcywh_to_xyxy(&boxes)?,
            queries: Tensor::stack(&queries, 0)?,
            reference_boxes: Tensor::stack(&refs, 0)?,
            presence_logits: Tensor::stack(&presence, 0)?,
        })
    }
}
