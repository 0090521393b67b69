//! SAM 3 ("Segment Anything with Concepts") image model in candle — in progress
//! (issue 16): the vision encoder (Perception Encoder ViT + FPN neck), the text
//! encoder, the fusion encoder and the DETR decoder with its presence head are
//! ported and checked against transformers' `Sam3Model`; the exemplar (box) encoder
//! and the mask head follow.
//!
//! Checkpoints in transformers' layout: `config.json` + safetensors, tensor
//! names as `Sam3Model` saves them, or prefixed `detector_model.` as in
//! `facebook/sam3` (which also holds the video tracker's, ignored here).

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod heads;
pub mod text;
pub mod vision;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};
use crate::models;
use crate::models::quant::linear::SharedFiles;
pub use config::Config;
pub use decoder::{Decoder, DecoderOutput};
pub use encoder::FusionEncoder;
pub use heads::{MaskDecoder, Masks, Scoring};
pub use text::TextEncoder;
pub use vision::{VisionEncoder, VisionOutput};

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
