//! SAM 3 ("Segment Anything with Concepts") image model in candle: the vision
//! encoder (Perception Encoder ViT + FPN neck), the CLIP text encoder and its
//! tokenizer, the fusion encoder, the DETR decoder with its presence head, the
//! scoring, the mask head and the exemplar (box) encoder, with transformers'
//! pre- and post-processing ([`processor`]); checked against transformers'
//! `Sam3Model` stage by stage and end to end (text, exemplar boxes, both).
//! Image model only: no video tracker.
//!
//! Checkpoints in transformers' layout: `config.json` + safetensors +
//! `tokenizer.json`, tensor names as `Sam3Model` saves them, or prefixed
//! `detector_model.` as in `facebook/sam3`'s `model.safetensors` (which also
//! holds the video tracker's, ignored here). Meta's own `sam3.pt` layout is not
//! read: its names differ throughout (transformers' conversion script maps them).

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod geometry;
pub mod heads;
pub mod post;
pub mod processor;
pub mod text;
pub mod vision;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};
use crate::models;
use crate::models::quant::linear::SharedFiles;
pub use config::Config;
pub use decoder::{Decoder, DecoderOutput};
pub use encoder::FusionEncoder;
pub use geometry::GeometryEncoder;
pub use heads::{MaskDecoder, Masks, Scoring};
pub use post::{Instance, select};
pub use text::TextEncoder;
pub use vision::{VisionEncoder, VisionOutput};

/// The image model's stages, built from one checkpoint.
#[derive(Debug)]
pub struct Sam3Image {
    pub vision: VisionEncoder,
    pub text: TextEncoder,
    pub encoder: FusionEncoder,
    pub decoder: Decoder,
    pub scoring: Scoring,
    pub masks: MaskDecoder,
    pub geometry: GeometryEncoder,
}

/// Exemplar boxes for a prompt: (B, N, 4) cx cy w h in [0, 1] of the model
/// input, labels (B, N) 1 positive / 0 negative, validity (B, N) (right-padded).
#[derive(Debug)]
pub struct Exemplars<'a> {
    pub boxes: &'a Tensor,
    pub labels: &'a Tensor,
    pub valid: &'a Tensor,
}

/// What the model finds for a prompt: one entry per query.
#[derive(Debug)]
pub struct Prediction {
    /// (B, Q) query logits; the score is sigmoid(logit) × sigmoid(presence).
    pub logits: Tensor,
    /// (B, 1) the concept's presence logit.
    pub presence: Tensor,
    /// (B, Q, 4) x1 y1 x2 y2 in [0, 1] of the model input.
    pub boxes: Tensor,
    /// (B, Q, H, W) mask logits at the finest FPN level.
    pub masks: Tensor,
    /// (B, 1, H, W) semantic logits.
    pub semantic: Tensor,
}

impl Sam3Image {
    pub fn load(checkpoint: &Checkpoint, device: &Device) -> Result<Self> {
        Ok(Self {
            vision: checkpoint.vision(device)?,
            text: checkpoint.text(device)?,
            encoder: checkpoint.fusion_encoder(device)?,
            decoder: checkpoint.decoder(device)?,
            scoring: checkpoint.scoring(device)?,
            masks: checkpoint.mask_decoder(device)?,
            geometry: checkpoint.geometry(device)?,
        })
    }

    /// A prompt of text and, optionally, exemplar boxes: `pixels` (B, 3, S, S)
    /// normalised, `ids`/`text_valid` (B, T) (boxes alone: the text "visual").
    pub fn predict(
        &self,
        pixels: &Tensor,
        ids: &Tensor,
        text_valid: &Tensor,
        exemplars: Option<&Exemplars>,
    ) -> candle_core::Result<Prediction> {
        self.predict_encoded(&self.vision.forward(pixels)?, ids, text_valid, exemplars)
    }

    /// [`Self::predict`] on an image already encoded (the vision encoder is most
    /// of the work: one encoding serves every prompt on the image).
    pub fn predict_encoded(
        &self,
        vision: &VisionOutput,
        ids: &Tensor,
        text_valid: &Tensor,
        exemplars: Option<&Exemplars>,
    ) -> candle_core::Result<Prediction> {
        let text = self.text.forward(ids, text_valid)?;
        // The released model drops the coarsest (0.5×) level; the fusion runs on the 1× one.
        let used = vision.levels.len().saturating_sub(1);
        if used == 0 {
            candle_core::bail!("SAM 3 needs at least two FPN levels");
        }
        let (image, pos) = (&vision.levels[used - 1], &vision.positions[used - 1]);
        let (_, _, h, w) = image.dims4()?;
        let (prompt, valid) = match exemplars {
            None => (text, text_valid.to_dtype(DType::F32)?),
            Some(ex) => {
                let (tokens, keep) = self.geometry.forward(ex.boxes, ex.labels, ex.valid, image, pos)?;
                (Tensor::cat(&[text, tokens], 1)?, Tensor::cat(&[text_valid.to_dtype(DType::F32)?, keep], 1)?)
            }
        };
        let (prompt, valid) = (&prompt, &valid);
        let fused = self.encoder.forward(image, pos, prompt, valid)?;
        let pos_tokens = pos.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let dec = self.decoder.forward(&fused, &pos_tokens, (h, w), prompt, valid)?;
        let last = dec.queries.dim(0)? - 1;
        let queries = dec.queries.get(last)?;
        let logits = self.scoring.forward(&queries, prompt, valid)?;
        let masks = self.masks.forward(&queries, &vision.levels[..used], &fused, prompt, valid)?;
        Ok(Prediction {
            logits,
            presence: dec.presence_logits.get(last)?,
            boxes: dec.boxes,
            masks: masks.instances,
            semantic: masks.semantic,
        })
    }
}

/// A SAM 3 checkpoint directory, mapped once; each stage is built from it.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    mapped: Arc<MmapedSafetensors>,
    /// `detector_model.` in the hub's video-model layout, else empty.
    prefix: &'static str,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("dir", &self.dir).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Reads `config.json` and maps the safetensors of `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config: Config = models::read_json(&dir.join("config.json"))?;
        config
            .vision_config
            .backbone_config
            .validate()
            .map_err(|reason| EngineError::Model { path: dir.join("config.json"), reason })?;
        let files = models::safetensors_files(dir)?;
        let names = models::tensor_names(&files)?;
        let prefix = if names.iter().any(|n| n.starts_with("detector_model.")) { "detector_model." } else { "" };
        // SAFETY: the files are mapped read-only; they must not change while loaded.
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::Model { path: dir.to_owned(), reason: e.to_string() })?;
        Ok(Self { dir: dir.to_owned(), config, mapped: Arc::new(mapped), prefix })
    }

    fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let prefix = self.prefix;
        VarBuilder::from_backend(Box::new(SharedFiles(self.mapped.clone())), DType::F32, device.clone())
            .rename_f(move |name: &str| format!("{prefix}{name}"))
    }

    /// The text encoder and its projection (f32).
    pub fn text(&self, device: &Device) -> Result<TextEncoder> {
        let width = self.config.detr_encoder_config.hidden_size;
        TextEncoder::new(&self.config.text_config, width, self.var_builder(device)).map_err(|e| EngineError::Model {
            path: self.dir.clone(),
            reason: format!("weights do not match config.json: {e}"),
        })
    }

    /// The fusion encoder (f32).
    pub fn fusion_encoder(&self, device: &Device) -> Result<FusionEncoder> {
        FusionEncoder::new(&self.config.detr_encoder_config, self.var_builder(device).pp("detr_encoder")).map_err(|e| {
            EngineError::Model { path: self.dir.clone(), reason: format!("weights do not match config.json: {e}") }
        })
    }

    /// The DETR decoder (f32).
    pub fn decoder(&self, device: &Device) -> Result<Decoder> {
        let cfg = &self.config.detr_decoder_config;
        Decoder::new(&cfg.stage, cfg.num_queries, self.var_builder(device).pp("detr_decoder")).map_err(|e| {
            EngineError::Model { path: self.dir.clone(), reason: format!("weights do not match config.json: {e}") }
        })
    }

    /// The exemplar (box) encoder (f32).
    pub fn geometry(&self, device: &Device) -> Result<GeometryEncoder> {
        GeometryEncoder::new(&self.config.geometry_encoder_config, self.var_builder(device).pp("geometry_encoder"))
            .map_err(|e| self.mismatch(&e))
    }

    /// The query scoring (f32).
    pub fn scoring(&self, device: &Device) -> Result<Scoring> {
        let cfg = &self.config.detr_decoder_config.stage;
        Scoring::new(cfg, self.var_builder(device).pp("dot_product_scoring")).map_err(|e| self.mismatch(&e))
    }

    /// The mask head (f32).
    pub fn mask_decoder(&self, device: &Device) -> Result<MaskDecoder> {
        MaskDecoder::new(&self.config.mask_decoder_config, self.var_builder(device).pp("mask_decoder"))
            .map_err(|e| self.mismatch(&e))
    }

    fn mismatch(&self, e: &candle_core::Error) -> EngineError {
        EngineError::Model { path: self.dir.clone(), reason: format!("weights do not match config.json: {e}") }
    }

    /// The vision encoder (f32).
    pub fn vision(&self, device: &Device) -> Result<VisionEncoder> {
        VisionEncoder::new(&self.config.vision_config, self.var_builder(device).pp("vision_encoder")).map_err(|e| {
            EngineError::Model { path: self.dir.clone(), reason: format!("weights do not match config.json: {e}") }
        })
    }
}
