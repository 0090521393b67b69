//! SAM 3's inputs and outputs as transformers' `Sam3Processor` makes and reads
//! them: CLIP's BPE tokens padded to the text context, the image resized to the
//! model's square by torchvision's antialiased bilinear resize (its rounding,
//! not Pillow's) and scaled to [−1, 1], exemplar boxes as normalised
//! centre-size boxes, and masks brought back to the image by resampling the
//! probabilities (then > 0.5), as `post_process_instance_segmentation` does
//! (Meta's processor resamples the logits; same inputs otherwise).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::Flavour;
use crate::base::{Mask, PixelBox, RgbImage};
use crate::error::{EngineError, Result};
use crate::models::{ops, pil_resize};

/// The text encoder's tokenizer (`tokenizer.json` beside the weights).
pub struct ConceptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    /// Prompts are padded to this many tokens (the text tower's positions).
    context: usize,
    pad: u32,
}

impl std::fmt::Debug for ConceptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConceptTokenizer").field("path", &self.path).field("context", &self.context).finish()
    }
}

impl ConceptTokenizer {
    /// Reads `dir/tokenizer.json`; the pad token is `tokenizer_config.json`'s
    /// `pad_token` (CLIP's `<|endoftext|>` when there is none).
    pub fn load(dir: &Path, context: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |reason: String| EngineError::Model { path: path.clone(), reason };
        if !path.is_file() {
            return Err(bad("missing: SAM 3 needs its CLIP tokenizer beside the weights".into()));
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| bad(e.to_string()))?;
        let pad_name = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("pad_token").and_then(|p| p.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "<|endoftext|>".to_owned());
        let pad = tokenizer.token_to_id(&pad_name).ok_or_else(|| bad(format!("no pad token {pad_name:?}")))?;
        Ok(Self { tokenizer, path, context, pad })
    }

    /// Token ids and attention mask of `text`, padded to the context.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::InvalidRequest(format!("cannot tokenize {text:?}: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.context {
            return Err(EngineError::InvalidRequest(format!(
                "the concept {text:?} is {} tokens long; SAM 3 reads at most {} (a short noun phrase)",
                ids.len(),
                self.context
            )));
        }
        let mut mask = vec![1; ids.len()];
        ids.resize(self.context, self.pad);
        mask.resize(self.context, 0);
        Ok((ids, mask))
    }
}

/// The image as the model reads it: `size`×`size`, channels first, (v/255 − 0.5)/0.5.
pub fn pixel_values(image: &RgbImage, size: usize) -> Vec<f32> {
    let resized = pil_resize::resize_rgb8_torch(&image.data, (image.width, image.height), (size, size));
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in resized.chunks_exact(3).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + i] = (f32::from(v) / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

/// An exemplar box (image pixels, x1 y1 x2 y2) as the model reads it: cx cy w h
/// divided by the image's size.
pub fn exemplar_box(b: &PixelBox, (width, height): (usize, usize)) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    let (x1, y1, x2, y2) = (b.x1 as f32 / w, b.y1 as f32 / h, b.x2 as f32 / w, b.y2 as f32 / h);
    [(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1]
}

/// A query's mask logits (`mh`×`mw`) as a mask on the image: bilinear
/// resampling to `width`×`height` of the probabilities (transformers) or of the
/// logits (Meta), then probability > 0.5.
pub fn mask_on_image(
    logits: &[f32],
    (mh, mw): (usize, usize),
    (width, height): (usize, usize),
    flavour: Flavour,
) -> Mask {
    let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
    let rows = ops::bilinear_weights(mh, height);
    let cols = ops::bilinear_weights(mw, width);
    let data = match flavour {
        Flavour::Transformers => {
            let probs: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
            ops::resample_planes(&probs, 1, (mh, mw), &rows, &cols).into_iter().map(|p| p > 0.5).collect()
        }
        // σ(v) > 0.5 only for v > 0, and surely beyond 1e-6: exp only near the edge.
        Flavour::Meta => ops::resample_planes(logits, 1, (mh, mw), &rows, &cols)
            .into_iter()
            .map(|v| v > 1e-6 || (v > 0.0 && sigmoid(v) > 0.5))
            .collect(),
    };
    Mask { width, height, data }
}

/// A box in [0, 1] of the model input as image pixels.
pub fn box_on_image(b: [f64; 4], (width, height): (usize, usize)) -> PixelBox {
    let (w, h) = (width as f64, height as f64);
    PixelBox { x1: b[0] * w, y1: b[1] * h, x2: b[2] * w, y2: b[3] * h }
}
