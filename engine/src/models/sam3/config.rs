//! `config.json` of a SAM 3 checkpoint in transformers' layout (`Sam3Config`):
//! the parts the ported stages read. Unknown fields are ignored, so the full
//! hub config and the tiny test configs both parse.

use serde::Deserialize;

/// The whole model's configuration.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    pub detr_encoder_config: StageConfig,
    pub detr_decoder_config: DecoderConfig,
    pub mask_decoder_config: MaskConfig,
    pub geometry_encoder_config: GeometryConfig,
    /// Whose code the checkpoint's layout comes from (not in `config.json`).
    #[serde(skip)]
    pub flavour: Flavour,
}

/// The same weights compute slightly differently in transformers' `Sam3Model`
/// and in Meta's `sam3` package; each layout follows its own reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flavour {
    /// transformers: a text prompt alone skips the exemplar encoder, presence
    /// logits are clamped to ±10, masks are resampled as probabilities.
    #[default]
    Transformers,
    /// Meta: the exemplar encoder always runs (a text prompt alone gets its CLS
    /// token), presence logits are not clamped, the text tower sees only its
    /// causal mask while token id 0 is masked downstream (`ids != 0`), masks are
    /// resampled as logits. (Its ViT LayerNorm eps, 1e-5, is in the config.)
    Meta,
}

/// The CLIP text tower (`CLIPTextConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The context: prompts are padded to it.
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

/// The exemplar encoder (`Sam3GeometryEncoderConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct GeometryConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub roi_size: usize,
}

/// The mask head (`Sam3MaskDecoderConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct MaskConfig {
    pub hidden_size: usize,
    pub num_upsampling_stages: usize,
    pub num_attention_heads: usize,
}

/// The DETR decoder: a stage with learned queries.
#[derive(Clone, Debug, Deserialize)]
pub struct DecoderConfig {
    #[serde(flatten)]
    pub stage: StageConfig,
    pub num_queries: usize,
}

/// A transformer stage of the detector (`Sam3DETREncoderConfig` and kin).
#[derive(Clone, Debug, Deserialize)]
pub struct StageConfig {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_relu")]
    pub hidden_act: String,
}

fn default_relu() -> String {
    "relu".into()
}

impl StageConfig {
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "{what}: hidden_size {} is not split evenly by {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_act != "relu" {
            return Err(format!("{what}: hidden_act {:?} is not supported (SAM 3 uses ReLU)", self.hidden_act));
        }
        Ok(())
    }
}

/// The vision encoder: the Perception Encoder ViT and its FPN neck.
#[derive(Clone, Debug, Deserialize)]
pub struct VisionConfig {
    pub backbone_config: VitConfig,
    pub fpn_hidden_size: usize,
    /// One FPN level per factor (4, 2, 1, 0.5 in the released model).
    pub scale_factors: Vec<f64>,
}

/// The ViT backbone (`Sam3ViTConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub patch_size: usize,
    /// The side images are resized to (1008 for the released model).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    /// The side the position table was trained at (its grid is tiled to the input's).
    pub pretrain_image_size: usize,
    /// Side of the attention windows in patches; 0: every layer global.
    pub window_size: usize,
    /// Layers that attend over the whole image instead of windows.
    #[serde(default)]
    pub global_attn_indexes: Vec<usize>,
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub rope_parameters: RopeParameters,
}

fn default_image_size() -> usize {
    1008
}

fn default_act() -> String {
    "gelu".into()
}

/// The axial rotary embedding's base.
#[derive(Clone, Debug, Deserialize)]
pub struct RopeParameters {
    pub rope_theta: f64,
}

impl Default for RopeParameters {
    fn default() -> Self {
        Self { rope_theta: 10_000.0 }
    }
}

impl VitConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the port relies on, so a bad config is an error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not split evenly by {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(4) {
            return Err(format!("head dimension {} is not a multiple of 4 (axial RoPE)", self.head_dim()));
        }
        if self.patch_size == 0 || self.pretrain_image_size < self.patch_size {
            return Err(format!(
                "patch_size {} does not fit pretrain_image_size {}",
                self.patch_size, self.pretrain_image_size
            ));
        }
        if self.image_size < self.patch_size || self.image_size > 8192 {
            return Err(format!("image_size {} is not between patch_size and 8192", self.image_size));
        }
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} is not supported (SAM 3 uses exact GELU)", self.hidden_act));
        }
        Ok(())
    }
}
