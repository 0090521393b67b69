//! SAM 3's exemplar encoder (transformers' `Sam3GeometryEncoder`): each box
//! prompt becomes a token — a projection of its coordinates, plus the image
//! features pooled inside it (ROI-Align with torchvision's semantics, on the
//! LayerNorm'ed 1× level), plus an encoding of its centre and size, plus a
//! positive/negative label embedding —; a CLS token follows the valid boxes;
//! pre-norm layers attend among the tokens and to the image.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Embedding, LayerNorm, Linear, VarBuilder};

use super::config::GeometryConfig;
use super::decoder::cxcywh_to_xyxy;
use super::encoder::{LayerInputs, PreNormLayer, key_mask};

/// torchvision's `roi_align` (aligned=False, adaptive sampling) of one box
/// (x1, y1, x2, y2 in feature pixels) on `feat` (C, H, W) into (C, size, size).
fn roi_align(feat: &[f32], (c, h, w): (usize, usize, usize), roi: [f32; 4], size: usize) -> Vec<f32> {
    let (x1, y1) = (roi[0], roi[1]);
    let (rw, rh) = ((roi[2] - x1).max(1.0), (roi[3] - y1).max(1.0));
    let (bw, bh) = (rw / size as f32, rh / size as f32);
    let (gw, gh) = ((rw / size as f32).ceil().max(1.0) as usize, (rh / size as f32).ceil().max(1.0) as usize);
    let count = (gw * gh).max(1) as f32;
    let mut out = vec![0f32; c * size * size];
    for ph in 0..size {
        for pw in 0..size {
            let mut taps: Vec<(usize, f32)> = Vec::new();
            for iy in 0..gh {
                let y = y1 + ph as f32 * bh + (iy as f32 + 0.5) * bh / gh as f32;
                for ix in 0..gw {
                    let x = x1 + pw as f32 * bw + (ix as f32 + 0.5) * bw / gw as f32;
                    bilinear_taps(y, x, h, w, &mut taps);
                }
            }
            for ch in 0..c {
                let plane = &feat[ch * h * w..(ch + 1) * h * w];
                let sum: f32 = taps.iter().map(|(i, wt)| plane[*i] * wt).sum();
                out[(ch * size + ph) * size + pw] = sum / count;
            }
        }
    }
    out
}

/// torchvision's bilinear sample at (y, x): nothing outside [-1, H] × [-1, W],
/// edges clamped.
fn bilinear_taps(y: f32, x: f32, h: usize, w: usize, taps: &mut Vec<(usize, f32)>) {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return;
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y0, mut x0) = (y as usize, x as usize);
    let (y1, x1);
    if y0 >= h - 1 {
        (y0, y1) = (h - 1, h - 1);
        y = y0 as f32;
    } else {
        y1 = y0 + 1;
    }
    if x0 >= w - 1 {
        (x0, x1) = (w - 1, w - 1);
        x = x0 as f32;
    } else {
        x1 = x0 + 1;
    }
    let (ly, lx) = (y - y0 as f32, x - x0 as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    taps.extend([(y0 * w + x0, hy * hx), (y0 * w + x1, hy * lx), (y1 * w + x0, ly * hx), (y1 * w + x1, ly * lx)]);
}

/// The exemplar encoder.
#[derive(Debug)]
pub struct GeometryEncoder {
    label_embed: Embedding,
    cls: Tensor,
    direct: Linear,
    pool: Conv2d,
    pos_proj: Linear,
    image_norm: LayerNorm,
    final_proj: Linear,
    prompt_norm: LayerNorm,
    layers: Vec<PreNormLayer>,
    out_norm: LayerNorm,
    roi: usize,
    width: usize,
}

impl GeometryEncoder {
    pub fn new(cfg: &GeometryConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        if cfg.num_attention_heads == 0 || !d.is_multiple_of(cfg.num_attention_heads) || cfg.roi_size == 0 {
            candle_core::bail!(
                "geometry_encoder_config: hidden_size {d}, {} heads, roi_size {}",
                cfg.num_attention_heads,
                cfg.roi_size
            );
        }
        let ln = |name: &str| candle_nn::layer_norm(d, 1e-5, vb.pp(name));
        let layers = (0..cfg.num_layers)
            .map(|i| PreNormLayer::new(d, cfg.num_attention_heads, cfg.intermediate_size, vb.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            label_embed: candle_nn::embedding(2, d, vb.pp("label_embed"))?,
            cls: vb.get((1, d), "cls_embed.weight")?,
            direct: candle_nn::linear(4, d, vb.pp("boxes_direct_project"))?,
            pool: candle_nn::conv2d(d, d, cfg.roi_size, Default::default(), vb.pp("boxes_pool_project"))?,
            pos_proj: candle_nn::linear(d + 2, d, vb.pp("boxes_pos_enc_project"))?,
            image_norm: ln("vision_layer_norm")?,
            final_proj: candle_nn::linear(d, d, vb.pp("final_proj"))?,
            prompt_norm: ln("prompt_layer_norm")?,
            layers,
            out_norm: ln("output_layer_norm")?,
            roi: cfg.roi_size,
            width: d,
        })
    }

    /// Sine encoding of the boxes' centres (rows then columns) followed by
    /// their height and width: (B, N, C + 2).
    fn centre_encoding(&self, boxes: &[f32], n: usize) -> Vec<f32> {
        let f = self.width / 2;
        let dim_t: Vec<f32> = (0..f).map(|j| 10_000f32.powf((2 * (j / 2)) as f32 / f as f32)).collect();
        let tau = 2.0 * std::f32::consts::PI;
        let enc = |v: f32| {
            dim_t
                .iter()
                .enumerate()
                .map(move |(j, t)| if j.is_multiple_of(2) { (v * tau / t).sin() } else { (v * tau / t).cos() })
        };
        let mut out = Vec::with_capacity(n * (self.width + 2));
        for b in boxes.chunks(4) {
            out.extend(enc(b[1]));
            out.extend(enc(b[0]));
            out.extend([b[3], b[2]]);
        }
        out
    }

    /// `boxes` (B, N, 4) cx cy w h in [0, 1], `labels` (B, N) 1 positive / 0
    /// negative, `valid` (B, N); `image` and `pos` the 1× level (B, C, h, w).
    /// Returns the tokens (B, N + 1, C) — CLS right after each row's valid
    /// boxes — and their validity (B, N + 1).
    pub fn forward(
        &self,
        boxes: &Tensor,
        labels: &Tensor,
        valid: &Tensor,
        image: &Tensor,
        pos: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, n, _) = boxes.dims3()?;
        let (_, c, h, w) = image.dims4()?;
        let normed = self.image_norm.forward(&image.permute((0, 2, 3, 1))?)?.permute((0, 3, 1, 2))?.contiguous()?;
        let xyxy = cxcywh_to_xyxy(boxes)?
            .broadcast_mul(&Tensor::new(&[w as f32, h as f32, w as f32, h as f32], boxes.device())?)?;
        let (feat, rois) = (normed.flatten_all()?.to_vec1::<f32>()?, xyxy.flatten_all()?.to_vec1::<f32>()?);
        let mut pooled = Vec::with_capacity(b * n * c * self.roi * self.roi);
        for (i, roi) in rois.chunks(4).enumerate() {
            let plane = &feat[(i / n) * c * h * w..(i / n + 1) * c * h * w];
            pooled.extend(roi_align(plane, (c, h, w), [roi[0], roi[1], roi[2], roi[3]], self.roi));
        }
        let pooled = Tensor::from_vec(pooled, (b * n, c, self.roi, self.roi), boxes.device())?;
        let pooled = self.pool.forward(&pooled)?.reshape((b, n, c))?;
        let centres = Tensor::from_vec(
            self.centre_encoding(&boxes.flatten_all()?.to_vec1::<f32>()?, b * n),
            (b, n, c + 2),
            boxes.device(),
        )?;
        let labels = labels.to_dtype(DType::U32)?;
        let tokens = (self.direct.forward(boxes)?
            + pooled
            + self.pos_proj.forward(&centres)?
            + self.label_embed.forward(&labels)?)?;
        // CLS goes right after the valid boxes of each row (they are right-padded).
        let counts: Vec<f32> = valid.to_dtype(DType::F32)?.sum(1)?.to_vec1()?;
        let mut rows = Vec::with_capacity(b);
        let mut keep = Vec::with_capacity(b * (n + 1));
        for (row, count) in counts.iter().enumerate() {
            let k = *count as usize;
            let t = tokens.get(row)?;
            // As transformers' `concat_padded_sequences`: CLS overwrites the first
            // padded slot and the extra last slot stays zero.
            let row_tokens = if k < n {
                let zero = Tensor::zeros((1, c), DType::F32, boxes.device())?;
                Tensor::cat(&[t.narrow(0, 0, k)?, self.cls.clone(), t.narrow(0, k + 1, n - k - 1)?, zero], 0)?
            } else {
                Tensor::cat(&[t, self.cls.clone()], 0)?
            };
            rows.push(row_tokens);
            keep.extend((0..=n).map(|i| if i <= k { 1f32 } else { 0f32 }));
        }
        let keep = Tensor::from_vec(keep, (b, n + 1), boxes.device())?;
        self.encode(&Tensor::stack(&rows, 0)?, keep, image, pos)
    }

    /// The CLS token alone, as Meta's code encodes a prompt without boxes:
    /// (B, 1, C) and its validity (B, 1).
    pub fn forward_empty(&self, image: &Tensor, pos: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = image.dim(0)?;
        let cls = self.cls.unsqueeze(0)?.repeat((b, 1, 1))?;
        self.encode(&cls, Tensor::ones((b, 1), DType::F32, image.device())?, image, pos)
    }

    /// Projects the prompt tokens and runs the layers over them and the image.
    fn encode(&self, tokens: &Tensor, keep: Tensor, image: &Tensor, pos: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.prompt_norm.forward(&self.final_proj.forward(tokens)?)?;
        let mask = key_mask(&keep)?;
        let flat = |t: &Tensor| -> Result<Tensor> { t.flatten_from(2)?.transpose(1, 2)?.contiguous() };
        let image_tokens = flat(image)?;
        let image_keys = (&image_tokens + flat(pos)?)?;
        let inputs = LayerInputs {
            self_pos: None,
            self_mask: Some(&mask),
            keys: &image_keys,
            values: &image_tokens,
            cross_mask: None,
        };
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(&x, &inputs)?;
        }
        Ok((self.out_norm.forward(&x)?, keep))
    }
}
