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
//! holds the video tracker's, ignored here); or in Meta's layout ([`meta`]):
//! `sam3.pt` (read without running pickle code) or safetensors with Meta's
//! names, beside `tokenizer.json`. Each layout computes as its own reference
//! does ([`Flavour`]).

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod geometry;
pub mod heads;
pub mod meta;
pub mod post;
pub mod processor;
pub mod text;
pub mod vision;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{EngineError, Result};
use crate::models;
use crate::models::quant::linear::SharedFiles;
pub use config::{Config, Flavour};
pub use decoder::{Decoder, DecoderOutput};
pub use encoder::FusionEncoder;
pub use geometry::GeometryEncoder;
pub use heads::{MaskDecoder, Masks, Scoring};
pub use post::{Instance, select};
pub use text::TextEncoder;
pub use vision::{VisionEncoder, VisionOutput};

/// Meta's weights file in `dir`: `sam3.pt`, else the only `*.pt`, `*.pth` or
/// `*.safetensors` there.
fn meta_file(dir: &Path) -> Result<PathBuf> {
    let named = dir.join("sam3.pt");
    if named.is_file() {
        return Ok(named);
    }
    let bad = |reason: String| EngineError::Model { path: dir.to_owned(), reason };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "pt" | "pth" | "safetensors"))
        })
        .collect();
    match found.len() {
        0 => Err(bad("no model.safetensors (transformers' layout) or sam3.pt (Meta's) here".into())),
        1 => Ok(found.remove(0)),
        _ => {
            let names: Vec<String> =
                found.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
            Err(bad(format!("several weights files ({}): keep one, or name Meta's sam3.pt", names.join(", "))))
        }
    }
}

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
    pub flavour: Flavour,
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
            flavour: checkpoint.config.flavour,
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
        // Meta's text tower runs on its causal mask alone; its prompt mask is `ids != 0`.
        let (text, text_valid) = match self.flavour {
            Flavour::Transformers => (self.text.forward(ids, text_valid)?, text_valid.to_dtype(DType::F32)?),
            Flavour::Meta => (
                self.text.forward(ids, &text_valid.ones_like()?)?,
                (text_valid.to_dtype(DType::F32)? * ids.ne(&ids.zeros_like()?)?.to_dtype(DType::F32)?)?,
            ),
        };
        // The released model drops the coarsest (0.5×) level; the fusion runs on the 1× one.
        let used = vision.levels.len().saturating_sub(1);
        if used == 0 {
            candle_core::bail!("SAM 3 needs at least two FPN levels");
        }
        let (image, pos) = (&vision.levels[used - 1], &vision.positions[used - 1]);
        let (_, _, h, w) = image.dims4()?;
        let boxes = match (exemplars, self.flavour) {
            (Some(ex), _) => Some(self.geometry.forward(ex.boxes, ex.labels, ex.valid, image, pos)?),
            (None, Flavour::Meta) => Some(self.geometry.forward_empty(image, pos)?),
            (None, Flavour::Transformers) => None,
        };
        let (prompt, valid) = match boxes {
            None => (text, text_valid),
            Some((tokens, keep)) => (Tensor::cat(&[text, tokens], 1)?, Tensor::cat(&[text_valid, keep], 1)?),
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

/// A SAM 3 checkpoint directory, mapped (or, in Meta's layout, read) once;
/// each stage is built from it.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Config,
    weights: Weights,
}

enum Weights {
    /// transformers' safetensors, mapped; names prefixed `detector_model.` in
    /// the hub's video-model layout, else bare.
    Mapped(Arc<MmapedSafetensors>, &'static str),
    /// Meta's tensors renamed to transformers' (in memory: they are reshaped).
    Renamed(HashMap<String, Tensor>),
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("flavour", &self.config.flavour)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens `dir`: `config.json` + `model.safetensors` (or its shards) in
    /// transformers' layout, else Meta's weights (`model.safetensors` with Meta's
    /// names, or a single `sam3.pt` / `*.pt` / `*.safetensors`).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("model.safetensors").is_file() && !dir.join("model.safetensors.index.json").is_file() {
            return Self::open_meta(dir, &meta_file(dir)?);
        }
        let files = models::safetensors_files(dir)?;
        let names = models::tensor_names(&files)?;
        if meta::is_meta(names.iter().map(String::as_str)) {
            if files.len() > 1 {
                let reason = "Meta's layout is read from one file, not shards".into();
                return Err(EngineError::Model { path: dir.to_owned(), reason });
            }
            return Self::open_meta(dir, &files[0]);
        }
        let config: Config = models::read_json(&dir.join("config.json"))?;
        config
            .vision_config
            .backbone_config
            .validate()
            .map_err(|reason| EngineError::Model { path: dir.join("config.json"), reason })?;
        let prefix = if names.iter().any(|n| n.starts_with("detector_model.")) { "detector_model." } else { "" };
        // SAFETY: the files are mapped read-only; they must not change while loaded.
        let mapped = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| EngineError::Model { path: dir.to_owned(), reason: e.to_string() })?;
        Ok(Self { dir: dir.to_owned(), config, weights: Weights::Mapped(Arc::new(mapped), prefix) })
    }

    /// Meta's layout from `file`: the image model's tensors only, renamed; the
    /// configuration from their shapes.
    fn open_meta(dir: &Path, file: &Path) -> Result<Self> {
        let bad = |reason: String| EngineError::Model { path: file.to_owned(), reason };
        let tensors = models::read_checkpoint_where(file, &Device::Cpu, meta::wanted)?;
        if !meta::is_meta(tensors.keys().map(String::as_str)) {
            return Err(bad("not a SAM 3 checkpoint: no image-model weights in Meta's or transformers' names".into()));
        }
        let tensors = meta::to_transformers(tensors).map_err(bad)?;
        let config = meta::config(&tensors).map_err(|e| bad(format!("not SAM 3's image model: {e}")))?;
        config.vision_config.backbone_config.validate().map_err(bad)?;
        Ok(Self { dir: dir.to_owned(), config, weights: Weights::Renamed(tensors) })
    }

    fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        match &self.weights {
            Weights::Mapped(mapped, prefix) => {
                let prefix = *prefix;
                VarBuilder::from_backend(Box::new(SharedFiles(mapped.clone())), DType::F32, device.clone())
                    .rename_f(move |name: &str| format!("{prefix}{name}"))
            }
            Weights::Renamed(tensors) => VarBuilder::from_tensors(tensors.clone(), DType::F32, device),
        }
    }

    /// The text encoder and its projection (f32).
    pub fn text(&self, device: &Device) -> Result<TextEncoder> {
        let width = self.config.detr_encoder_config.hidden_size;
        TextEncoder::new(&self.config.text_config, width, self.var_builder(device)).map_err(|e| self.mismatch(&e))
    }

    /// The fusion encoder (f32).
    pub fn fusion_encoder(&self, device: &Device) -> Result<FusionEncoder> {
        FusionEncoder::new(&self.config.detr_encoder_config, self.var_builder(device).pp("detr_encoder"))
            .map_err(|e| self.mismatch(&e))
    }

    /// The DETR decoder (f32).
    pub fn decoder(&self, device: &Device) -> Result<Decoder> {
        let cfg = &self.config.detr_decoder_config;
        let decoder = Decoder::new(&cfg.stage, cfg.num_queries, self.var_builder(device).pp("detr_decoder"))
            .map_err(|e| self.mismatch(&e))?;
        Ok(match self.config.flavour {
            Flavour::Transformers => decoder,
            Flavour::Meta => decoder.without_presence_clamp(),
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
        let sizes = match self.config.flavour {
            Flavour::Transformers => "config.json",
            Flavour::Meta => "the sizes Meta's builder implies",
        };
        EngineError::Model { path: self.dir.clone(), reason: format!("weights do not match {sizes}: {e}") }
    }

    /// The vision encoder (f32).
    pub fn vision(&self, device: &Device) -> Result<VisionEncoder> {
        VisionEncoder::new(&self.config.vision_config, self.var_builder(device).pp("vision_encoder"))
            .map_err(|e| self.mismatch(&e))
    }
}
