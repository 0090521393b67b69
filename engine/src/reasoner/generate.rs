//! Decoding settings (`generation_config.json` and the user's overrides), the
//! sampler built on candle-transformers' `LogitsProcessor`, and incremental
//! detokenisation for streaming.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// A checkpoint's `generation_config.json` (fields we use).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub max_new_tokens: Option<usize>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// How tokens are chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decoding {
    /// `None`: greedy.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// 1.0 = off. Applied over the prompt and the generated tokens, as transformers does.
    pub repetition_penalty: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generate `max_new_tokens` whatever the model says (vLLM's `ignore_eos`,
    /// for fixed-length benchmarks and tests).
    pub ignore_eos: bool,
}

/// Temperatures below this are greedy decoding (Qwen ships `1e-6`-style values).
const GREEDY_BELOW: f64 = 1e-5;

impl Decoding {
    /// The checkpoint's defaults: sampling settings when `do_sample`, greedy otherwise.
    pub fn from_config(g: &GenerationConfig) -> Self {
        let sampling = g.do_sample && g.temperature.is_none_or(|t| t >= GREEDY_BELOW) && g.top_k != Some(1);
        Self {
            temperature: sampling.then(|| g.temperature.unwrap_or(1.0)),
            top_p: g.top_p.filter(|p| *p < 1.0),
            top_k: g.top_k.filter(|k| *k > 0),
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0),
            seed: 299_792_458,
            max_new_tokens: g.max_new_tokens.unwrap_or(1024),
            ignore_eos: false,
        }
    }

    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: 1.0,
            seed: 0,
            max_new_tokens,
            ignore_eos: false,
        }
    }

    fn sampling(&self) -> Sampling {
        match self.temperature.filter(|t| *t >= GREEDY_BELOW) {
            None => Sampling::ArgMax,
            Some(temperature) => match (self.top_k, self.top_p) {
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (None, None) => Sampling::All { temperature },
            },
        }
    }
}

/// Picks the next token from logits.
#[derive(Debug)]
pub struct Sampler {
    processor: LogitsProcessorDebug,
    repetition_penalty: f32,
}

/// `LogitsProcessor` has no `Debug`; this wrapper gives it one.
struct LogitsProcessorDebug(LogitsProcessor);

impl std::fmt::Debug for LogitsProcessorDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogitsProcessor")
    }
}

impl Sampler {
    pub fn new(d: &Decoding) -> Self {
        Self {
            processor: LogitsProcessorDebug(LogitsProcessor::from_sampling(d.seed, d.sampling())),
            repetition_penalty: d.repetition_penalty,
        }
    }

    /// `logits` (1, vocab) or (vocab); `context`: every token so far, prompt included.
    pub fn next(&mut self, logits: &Tensor, context: &[u32]) -> candle_core::Result<u32> {
        let logits = logits.flatten_all()?;
        let logits = if (self.repetition_penalty - 1.0).abs() > f32::EPSILON {
            candle_transformers::utils::apply_repeat_penalty(&logits, self.repetition_penalty, context)?
        } else {
            logits
        };
        self.processor.0.sample(&logits)
    }
}

/// Turns a growing token list into text pieces as soon as they decode cleanly
/// (a multi-byte character split over tokens waits for its last byte).
#[derive(Debug, Default)]
pub struct TextStream {
    tokens: Vec<u32>,
    /// Text of `tokens` already emitted.
    emitted: String,
}

impl TextStream {
    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<Option<String>, String> {
        self.tokens.push(token);
        let text = tokenizer.decode(&self.tokens, false).map_err(|e| e.to_string())?;
        if text.len() > self.emitted.len() && text.starts_with(&self.emitted) && !text.ends_with('\u{fffd}') {
            let piece = text[self.emitted.len()..].to_owned();
            self.emitted = text;
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// All text decoded so far.
    pub fn text(&self, tokenizer: &Tokenizer) -> Result<String, String> {
        tokenizer.decode(&self.tokens, false).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_generation_config_is_effectively_greedy_with_penalty() {
        let g: GenerationConfig = serde_json::from_str(
            r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
                "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 1e-6}"#,
        )
        .unwrap();
        assert_eq!(g.eos_token_id, [151_645, 151_643]);
        let d = Decoding::from_config(&g);
        assert_eq!(d.temperature, None);
        assert_eq!(d.repetition_penalty, 1.05);
        assert_eq!(d.sampling(), Sampling::ArgMax);
        let g: GenerationConfig = serde_json::from_str(
            r#"{"do_sample": true, "temperature": 0.9, "top_p": 0.8, "top_k": 20, "eos_token_id": 2}"#,
        )
        .unwrap();
        assert_eq!(Decoding::from_config(&g).sampling(), Sampling::TopKThenTopP { k: 20, p: 0.8, temperature: 0.9 });
        assert_eq!(g.eos_token_id, [2]);
    }

    #[test]
    fn sampler_applies_the_repetition_penalty_like_transformers() {
        let d = Decoding { repetition_penalty: 2.0, ..Decoding::greedy(1) };
        let mut s = Sampler::new(&d);
        // Token 0 leads, but it was seen: 3.0 / 2 = 1.5 < 2.0.
        let logits = Tensor::new(&[3.0f32, 2.0, -1.0], &candle_core::Device::Cpu).unwrap();
        assert_eq!(s.next(&logits, &[0, 0]).unwrap(), 1);
        assert_eq!(s.next(&logits, &[2]).unwrap(), 0);
    }
}
