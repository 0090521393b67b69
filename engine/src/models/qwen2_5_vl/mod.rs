//! Qwen2.5-VL (the architecture of RemoteReasoner-7B) in candle: vision tower,
//! language model with M-RoPE, and transformers' `get_rope_index`.

pub mod config;
mod layers;
pub mod text;
pub mod vision;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use candle_core::quantized::GgmlDType;
use candle_core::safetensors::MmapedSafetensors;

use crate::error::EngineError;
use crate::models::{self, Precision};

pub use config::Config;
use layers::{Quantize, Raw, SharedFiles};
use text::{MropePositions, TextModel};
use vision::VisionModel;

/// transformers' `get_rope_index` for a prompt holding images: text tokens count
/// up on all three axes; an image's tokens get (t, row, column) offsets from
/// the position where the image starts, and the text after it resumes at that
/// start plus the larger side of the merged grid.
///
/// Returns the positions and the next text position (prefill end + rope delta).
pub fn rope_index(
    input_ids: &[u32],
    image_token_id: u32,
    grids: &[[usize; 3]],
    merge: usize,
) -> std::result::Result<(MropePositions, i64), String> {
    let mut pos: MropePositions = [Vec::new(), Vec::new(), Vec::new()];
    let mut current = 0i64;
    let mut grids = grids.iter();
    let mut i = 0;
    while i < input_ids.len() {
        if input_ids[i] != image_token_id {
            for axis in &mut pos {
                axis.push(current);
            }
            current += 1;
            i += 1;
            continue;
        }
        let run = input_ids[i..].iter().take_while(|&&t| t == image_token_id).count();
        let &[t, h, w] = grids.next().ok_or("more image placeholders in the prompt than images")?;
        let (lh, lw) = (h / merge, w / merge);
        if run != t * lh * lw {
            return Err(format!("an image of {t}×{lh}×{lw} merged patches has {run} placeholder tokens"));
        }
        for ti in 0..t {
            for y in 0..lh {
                for x in 0..lw {
                    pos[0].push(current + ti as i64);
                    pos[1].push(current + y as i64);
                    pos[2].push(current + x as i64);
                }
            }
        }
        current += lh.max(lw) as i64;
        i += run;
    }
    if grids.next().is_some() {
        return Err("fewer image placeholders in the prompt than images".into());
    }
    Ok((pos, current))
}

/// Qwen2.5-VL for conditional generation.
#[derive(Debug, Clone)]
pub struct Qwen25Vl {
    pub config: Config,
    vision: VisionModel,
    text: TextModel,
    /// Position id of the next decoded token.
    next_position: i64,
}

impl Qwen25Vl {
    /// `vb` at the checkpoint root, in the published tensor layout (`visual.*`,
    /// `model.*`, `lm_head.*`).
    /// With `quantize`, the language model's projections, head and embedding table
    /// are quantized as they load, and the vision tower's projections to bf16
    /// where the CPU multiplies it natively (AVX-512 BF16), else to Q8_0 —
    /// whatever the language model's format: its features feed every token.
    pub(crate) fn new(config: Config, vb: VarBuilder, quantize: Option<&Quantize>) -> Result<Self> {
        let native_bf16 = vb.device().is_cpu() && models::quant::bf16::has_bf16();
        let vision_q = quantize.map(|q| q.with_dtype(if native_bf16 { GgmlDType::BF16 } else { GgmlDType::Q8_0 }));
        let vision = VisionModel::new(&config.vision, vb.pp("visual"), vision_q.as_ref())?;
        let text = TextModel::new(&config.text, vb.clone(), quantize)?;
        Ok(Self { config, vision, text, next_position: 0 })
    }

    pub fn dtype(&self) -> DType {
        self.vision.dtype()
    }

    /// Loads the weights of a checkpoint directory (single or sharded safetensors,
    /// published or transformers 5 tensor names) for `config`, checking first that
    /// they fit in memory. `precision` `None` picks one for the device (see
    /// [`models::default_precision`]); the precision used is returned.
    pub fn load(
        dir: &Path,
        config: Config,
        device: &Device,
        precision: Option<Precision>,
    ) -> crate::Result<(Self, Precision)> {
        let model_err = |e: &dyn std::fmt::Display| EngineError::Model { path: dir.to_owned(), reason: e.to_string() };
        let files = models::safetensors_files(dir)?;
        let (params, quantizable) = (config.parameter_count(), config.quantizable());
        let precision = precision.unwrap_or_else(|| models::default_precision(device, params, quantizable));
        if device.is_cpu() {
            models::check_memory(dir, precision.bytes_needed(params, quantizable), &precision.to_string())?;
        }
        let dtype = precision.dtype();
        let names = models::tensor_names(&files)?;
        // transformers 5 saves `model.visual.*` / `model.language_model.*`; the
        // published checkpoints use `visual.*` / `model.*`.
        let transformers5 = names.iter().any(|n| n.starts_with("model.language_model."));
        let rename = move |name: &str| {
            if !transformers5 {
                name.to_owned()
            } else if let Some(rest) = name.strip_prefix("visual.") {
                format!("model.visual.{rest}")
            } else if let Some(rest) = name.strip_prefix("model.") {
                format!("model.language_model.{rest}")
            } else {
                name.to_owned()
            }
        };
        // SAFETY: the files are mapped read-only; they must not change while loaded.
        let mapped = Arc::new(unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| model_err(&e))?);
        let vb =
            VarBuilder::from_backend(Box::new(SharedFiles(mapped.clone())), dtype, device.clone()).rename_f(rename);
        let quantize =
            precision.quantized().map(|q| Quantize::new(q, Some(Raw { files: mapped, rename: Box::new(rename) })));
        let model = Self::new(config, vb, quantize.as_ref())
            .map_err(|e| model_err(&format!("weights do not match config.json: {e}")))?;
        Ok((model, precision))
    }

    /// Image embeddings, one row per merged 2×2 patch (for parity checks and
    /// for reuse across questions on the same image).
    pub fn encode_images(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grids)
    }

    /// Runs the whole prompt (image placeholders filled with `image_embeds`) from
    /// an empty cache; returns the logits of its last token (1, vocab), `f32`.
    pub fn prefill(
        &mut self,
        input_ids: &[u32],
        image_embeds: Option<&Tensor>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor> {
        self.text.clear_kv_cache();
        let device = self.device();
        let (positions, next) =
            rope_index(input_ids, self.config.image_token_id, grids, self.config.vision.spatial_merge_size)
                .map_err(candle_core::Error::msg)?;
        let ids = Tensor::new(input_ids, &device)?;
        let mut embeds = self.text.embed(&ids)?; // (l, hidden)
        let slots: Vec<u32> =
            (0..input_ids.len() as u32).filter(|&i| input_ids[i as usize] == self.config.image_token_id).collect();
        if !slots.is_empty() {
            let feats = image_embeds.ok_or_else(|| candle_core::Error::msg("image placeholders but no image"))?;
            if feats.dim(0)? != slots.len() {
                candle_core::bail!("{} image features for {} placeholders", feats.dim(0)?, slots.len());
            }
            let slots = Tensor::new(slots.as_slice(), &device)?;
            embeds =
                embeds.index_add(&slots, &(feats.to_dtype(embeds.dtype())? - embeds.index_select(&slots, 0)?)?, 0)?;
        }
        let logits = self.text.forward(&embeds.unsqueeze(0)?, &positions)?;
        self.next_position = next;
        Ok(logits)
    }

    /// Feeds one generated token; returns the logits for the next (1, vocab), `f32`.
    pub fn step(&mut self, token: u32) -> Result<Tensor> {
        let device = self.device();
        let embeds = self.text.embed(&Tensor::new(&[token], &device)?)?.unsqueeze(0)?;
        let p = self.next_position;
        let logits = self.text.forward(&embeds, &[vec![p], vec![p], vec![p]])?;
        self.next_position += 1;
        Ok(logits)
    }

    /// The device every weight lives on.
    pub fn device(&self) -> Device {
        self.text.device()
    }

    /// Tokens held in the KV cache.
    pub fn cached_len(&self) -> usize {
        self.text.cached_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_matches_transformers_for_text_image_text() {
        // 3 text tokens, an image of 1×4×6 patches (2×3 merged), 2 text tokens.
        let ids = [1, 2, 9, 5, 5, 5, 5, 5, 5, 3, 4];
        let (pos, next) = rope_index(&ids, 5, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(pos[0], [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7]);
        assert_eq!(pos[1], [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7]);
        assert_eq!(pos[2], [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]);
        assert_eq!(next, 8);
        assert!(rope_index(&ids, 5, &[[1, 4, 4]], 2).unwrap_err().contains("placeholder"));
        assert!(rope_index(&ids, 5, &[], 2).is_err());
        assert!(rope_index(&[1, 2], 5, &[[1, 2, 2]], 2).is_err());
    }
}
