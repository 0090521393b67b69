//! `config.json` of a Qwen2.5-VL checkpoint. Two layouts exist: the published one
//! (text settings at the top level, `rope_scaling.mrope_section`, as written by
//! transformers 4.4x–4.5x) and transformers 5's (`text_config`, `rope_parameters`).
//! Both are read into the same [`Config`].

use serde::Deserialize;
use serde_json::Value;

use crate::models::Quantizable;

/// The language model's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Split of the rotary half-dimension into (temporal, height, width) sections.
    #[serde(skip)]
    pub mrope_section: Vec<usize>,
}

/// The vision tower's settings.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "default_in_channels", alias = "in_chans")]
    pub in_channels: usize,
    pub out_hidden_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_merge_size")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    #[serde(default)]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_vision_rope_theta")]
    pub rope_theta: f64,
}

/// A whole Qwen2.5-VL checkpoint configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_vision_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    128_000
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_in_channels() -> usize {
    3
}
fn default_patch_size() -> usize {
    14
}
fn default_merge_size() -> usize {
    2
}
fn default_temporal_patch_size() -> usize {
    2
}
fn default_window_size() -> usize {
    112
}

/// `Some(ids)` for a number or a list of numbers.
fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
        _ => Vec::new(),
    }
}

impl Config {
    /// Parses `config.json`. Errors name the missing or malformed field.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "qwen2_5_vl" {
            return Err(format!(
                "model_type is {model_type:?}, expected \"qwen2_5_vl\" (a Qwen2.5-VL checkpoint such as RemoteReasoner-7B)"
            ));
        }
        // transformers 5 nests the language model's settings; older files keep them at the top.
        let text_value = root.get("text_config").filter(|v| v.is_object()).unwrap_or(&root);
        let mut text: TextConfig =
            serde_json::from_value(text_value.clone()).map_err(|e| format!("language model settings: {e}"))?;
        let rope = ["rope_scaling", "rope_parameters"]
            .iter()
            .find_map(|k| text_value.get(k).or_else(|| root.get(k)).filter(|v| v.is_object()));
        if let Some(theta) = rope.and_then(|r| r.get("rope_theta")).and_then(Value::as_f64) {
            text.rope_theta = theta;
        }
        text.mrope_section = rope
            .and_then(|r| r.get("mrope_section"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_u64().map(|n| n as usize)).collect())
            .unwrap_or_else(|| vec![16, 24, 24]);
        // Sizes past any real model are a broken file: refuse them before arithmetic overflows on them.
        let dims = [text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads];
        if text.vocab_size > 1 << 24 || text.num_hidden_layers > 4096 || dims.iter().any(|&d| d > 1 << 20) {
            return Err(format!(
                "language model sizes out of range (vocab {}, layers {}, hidden {}, intermediate {}, heads {}/{})",
                text.vocab_size,
                text.num_hidden_layers,
                text.hidden_size,
                text.intermediate_size,
                text.num_attention_heads,
                text.num_key_value_heads
            ));
        }
        let head_dim = text.hidden_size / text.num_attention_heads.max(1);
        let half: Option<usize> = text.mrope_section.iter().try_fold(0usize, |a, &b| a.checked_add(b));
        if text.mrope_section.len() != 3 || half.and_then(|h| h.checked_mul(2)) != Some(head_dim) {
            return Err(format!(
                "mrope_section {:?} must have 3 parts summing to half the head dimension ({})",
                text.mrope_section,
                head_dim / 2
            ));
        }
        if text.num_attention_heads == 0
            || text.num_key_value_heads == 0
            || !text.hidden_size.is_multiple_of(text.num_attention_heads)
            || !text.num_attention_heads.is_multiple_of(text.num_key_value_heads)
        {
            return Err("attention heads do not divide the hidden size / each other".into());
        }
        let vision_value = root.get("vision_config").ok_or("no vision_config")?;
        let mut vision: VisionConfig =
            serde_json::from_value(vision_value.clone()).map_err(|e| format!("vision_config: {e}"))?;
        if let Some(theta) = vision_value.pointer("/rope_parameters/rope_theta").and_then(Value::as_f64) {
            vision.rope_theta = theta;
        }
        let v = &vision;
        let vdims = [v.depth, v.hidden_size, v.intermediate_size, v.in_channels, v.out_hidden_size, v.patch_size];
        let small = [v.spatial_merge_size, v.temporal_patch_size];
        if vdims.iter().any(|&d| d > 1 << 20) || small.iter().any(|&d| d > 64) {
            return Err("vision_config: sizes out of range".into());
        }
        if vision.num_heads == 0 || !vision.hidden_size.is_multiple_of(vision.num_heads) {
            return Err("vision_config: num_heads does not divide hidden_size".into());
        }
        let id = |key: &str, default: u32| {
            root.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or(default)
        };
        let mut eos_token_ids = token_ids(root.get("eos_token_id"));
        if eos_token_ids.is_empty() {
            eos_token_ids = token_ids(text_value.get("eos_token_id"));
        }
        let bos = token_ids(root.get("bos_token_id").or_else(|| text_value.get("bos_token_id")));
        Ok(Self {
            text,
            vision,
            image_token_id: id("image_token_id", 151_655),
            video_token_id: id("video_token_id", 151_656),
            vision_start_token_id: id("vision_start_token_id", 151_652),
            vision_end_token_id: id("vision_end_token_id", 151_653),
            bos_token_id: bos.first().copied(),
            eos_token_ids,
        })
    }

    /// Parameters that a quantized precision quantizes: the language model's
    /// projections, head and (untied) embedding table; the vision tower's projections.
    pub fn quantizable(&self) -> Quantizable {
        let t = &self.text;
        let (h, i, v) = (t.hidden_size as u64, t.intermediate_size as u64, t.vocab_size as u64);
        let kv = (t.hidden_size / t.num_attention_heads * t.num_key_value_heads) as u64;
        let layer = h * h + 2 * h * kv + h * h + 3 * h * i;
        let text = t.num_hidden_layers as u64 * layer + if t.tie_word_embeddings { 0 } else { 2 * v * h };
        let vc = &self.vision;
        let (d, vi) = (vc.hidden_size as u64, vc.intermediate_size as u64);
        let merged = d * (vc.spatial_merge_size * vc.spatial_merge_size) as u64;
        let vision = vc.depth as u64 * (4 * d * d + 3 * d * vi) + merged * merged + merged * vc.out_hidden_size as u64;
        Quantizable { text, vision }
    }

    /// Parameters of the whole model, from the configuration alone (for the
    /// memory check before loading).
    pub fn parameter_count(&self) -> u64 {
        let t = &self.text;
        let (h, i, v) = (t.hidden_size as u64, t.intermediate_size as u64, t.vocab_size as u64);
        let kv = (t.hidden_size / t.num_attention_heads * t.num_key_value_heads) as u64;
        let layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h;
        let head = if t.tie_word_embeddings { 0 } else { v * h };
        let text = v * h + t.num_hidden_layers as u64 * layer + h + head;
        let vc = &self.vision;
        let (d, vi) = (vc.hidden_size as u64, vc.intermediate_size as u64);
        let patch = d * (vc.in_channels * vc.temporal_patch_size * vc.patch_size * vc.patch_size) as u64;
        let block = 2 * d + 3 * d * d + 3 * d + d * d + d + 3 * d * vi + 2 * vi + d;
        let merged = d * (vc.spatial_merge_size * vc.spatial_merge_size) as u64;
        let merger = d + merged * merged + merged + merged * vc.out_hidden_size as u64 + vc.out_hidden_size as u64;
        text + patch + vc.depth as u64 * block + merger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Qwen2.5-VL-7B-Instruct `config.json` (RemoteReasoner keeps it).
    const PUBLISHED_7B: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
      "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
      "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
      "intermediate_size": 18944, "max_position_embeddings": 128000, "max_window_layers": 28,
      "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
      "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
      "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
        "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2},
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064}"#;

    #[test]
    fn absurd_sizes_are_refused_not_overflowed() {
        let mut v: Value = serde_json::from_str(PUBLISHED_7B).unwrap();
        v["rope_scaling"]["mrope_section"] = serde_json::json!([u64::MAX, u64::MAX, 2]);
        assert!(Config::from_json(&v.to_string()).is_err());
        let mut v: Value = serde_json::from_str(PUBLISHED_7B).unwrap();
        v["hidden_size"] = serde_json::json!(1u64 << 40);
        assert!(Config::from_json(&v.to_string()).unwrap_err().contains("out of range"));
        let mut v: Value = serde_json::from_str(PUBLISHED_7B).unwrap();
        v["vision_config"]["depth"] = serde_json::json!(1u64 << 40);
        assert!(Config::from_json(&v.to_string()).is_err());
        assert!(Config::from_json(PUBLISHED_7B).is_ok());
    }

    #[test]
    fn published_7b_config_parses_and_counts_8_3b_parameters() {
        let c = Config::from_json(PUBLISHED_7B).unwrap();
        assert_eq!(c.text.mrope_section, [16, 24, 24]);
        assert_eq!(c.vision.fullatt_block_indexes, [7, 15, 23, 31]);
        assert_eq!((c.image_token_id, c.eos_token_ids.as_slice()), (151_655, &[151_645][..]));
        assert_eq!(c.vision.in_channels, 3);
        // Qwen2.5-VL-7B has 8 292 166 656 parameters.
        assert_eq!(c.parameter_count(), 8_292_166_656);
        assert_eq!(c.quantizable(), Quantizable { text: 7_615_283_200, vision: 674_529_280 });
    }

    #[test]
    fn transformers_5_nested_layout_parses_the_same() {
        let v5 = r#"{"model_type": "qwen2_5_vl", "image_token_id": 7, "video_token_id": 8,
          "vision_start_token_id": 5, "vision_end_token_id": 6, "eos_token_id": [2, 3],
          "text_config": {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 5000.0}},
          "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 64, "fullatt_block_indexes": [1], "rope_parameters": {"rope_theta": 100.0}}}"#;
        let c = Config::from_json(v5).unwrap();
        assert_eq!(c.text.rope_theta, 5000.0);
        assert_eq!(c.text.mrope_section, [2, 3, 3]);
        assert_eq!(c.vision.rope_theta, 100.0);
        assert_eq!(c.eos_token_ids, [2, 3]);
    }

    #[test]
    fn wrong_model_type_and_bad_sections_are_named() {
        let e = Config::from_json(r#"{"model_type": "llama"}"#).unwrap_err();
        assert!(e.contains("\"llama\"") && e.contains("qwen2_5_vl"), "{e}");
        let bad = PUBLISHED_7B.replace("[16, 24, 24]", "[16, 24, 20]");
        assert!(Config::from_json(&bad).unwrap_err().contains("mrope_section"));
    }
}
