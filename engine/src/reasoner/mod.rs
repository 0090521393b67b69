//! Region-level reasoning: a RemoteReasoner (Qwen2.5-VL) checkpoint asked about
//! an image — prompt, preprocessing, prefill, streamed decoding, parsing.

pub mod generate;
pub mod parse;
pub mod processor;
pub mod prompt;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::base::Goal;
use crate::base::{PixelBox, RgbImage};
use crate::error::{EngineError, Result};
use crate::models::qwen2_5_vl::{Config, Qwen25Vl};
use crate::models::{self, DeviceChoice};
use generate::{Decoding, GenerationConfig, Sampler, TextStream};
use parse::{Completion, Repair};
use processor::{PreprocessorConfig, ProcessedImage};

/// How to load a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    pub device: DeviceChoice,
    /// f32, bf16, f16, q8_0 or q4k; `None`: chosen per device (see
    /// [`models::default_precision`]).
    pub precision: Option<String>,
}

/// A loaded checkpoint, ready to answer.
#[derive(Debug)]
pub struct Reasoner {
    model: Qwen25Vl,
    tokenizer: Tokenizer,
    pub preprocessor: PreprocessorConfig,
    pub generation: GenerationConfig,
    pub system_prompt: String,
    pub dir: PathBuf,
    pub precision: models::Precision,
    pub load_ms: f64,
}

/// What one question takes besides the image and the query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AskOptions {
    /// Pixel budget of the resized image; `None`: the training value (802 816).
    pub max_pixels: Option<usize>,
    /// `None`: the checkpoint's `generation_config.json`.
    pub decoding: Option<Decoding>,
    /// Cap on generated tokens when `decoding` is `None`.
    pub max_new_tokens: Option<usize>,
}

/// Progress of a question, reported as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum AskEvent {
    /// The image went through the vision tower (`tokens` visual tokens).
    ImageEncoded { tokens: usize },
    /// The prompt was read; decoding starts.
    PromptRead { tokens: usize },
    /// New text of the completion.
    Text(String),
}

/// Where the time went, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub ms_per_token: f64,
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    #[default]
    Eos,
    MaxNewTokens,
}

impl StopReason {
    /// From an OpenAI `finish_reason` ("length" = the token cap).
    pub fn from_finish_reason(reason: &str) -> Self {
        if reason == "length" { Self::MaxNewTokens } else { Self::Eos }
    }

    /// As an OpenAI `finish_reason`.
    pub fn finish_reason(self) -> &'static str {
        match self {
            Self::Eos => "stop",
            Self::MaxNewTokens => "length",
        }
    }
}

/// Everything one question produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub task: Goal,
    pub query: String,
    /// The chat text given to the tokenizer (image placeholder not expanded).
    pub prompt: String,
    pub prompt_tokens: usize,
    pub generated_token_ids: Vec<u32>,
    pub raw_text: String,
    pub think: String,
    pub answer: String,
    pub format_ok: bool,
    /// Boxes as written by the model, in the resized frame.
    pub boxes_resized: Vec<[f64; 4]>,
    /// Boxes in pixels of the image given, cleaned (region task only).
    pub boxes: Vec<PixelBox>,
    pub repairs: Vec<Repair>,
    /// (width, height) the model saw.
    pub resized: (usize, usize),
    /// (width, height) of the image given.
    pub original: (usize, usize),
    pub stop: StopReason,
    pub timings: Timings,
}

fn model_err(dir: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: dir.to_owned(), reason: e.to_string() }
}

/// `preprocessor_config.json`: `min_pixels`/`max_pixels`, or transformers 5's
/// `size.shortest_edge`/`size.longest_edge`.
fn read_preprocessor(dir: &Path) -> Result<PreprocessorConfig> {
    let path = dir.join("preprocessor_config.json");
    if !path.is_file() {
        return Ok(PreprocessorConfig::default());
    }
    let v: serde_json::Value = models::read_json(&path)?;
    let mut cfg: PreprocessorConfig = serde_json::from_value(v.clone()).map_err(|e| model_err(&path, e))?;
    if v.get("min_pixels").is_none()
        && let Some(n) = v.pointer("/size/shortest_edge").and_then(serde_json::Value::as_u64)
    {
        cfg.min_pixels = n as usize;
    }
    if v.get("max_pixels").is_none()
        && let Some(n) = v.pointer("/size/longest_edge").and_then(serde_json::Value::as_u64)
    {
        cfg.max_pixels = n as usize;
    }
    Ok(cfg)
}

impl Reasoner {
    /// Loads a Hugging Face checkpoint directory (`config.json`, `tokenizer.json`,
    /// safetensors, optional `generation_config.json`, `preprocessor_config.json`,
    /// `args.json`). Every failure names the file and the problem.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let t0 = Instant::now();
        if !dir.is_dir() {
            return Err(EngineError::NotFound { path: dir.to_owned() });
        }
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path).map_err(|e| {
            model_err(
                &config_path,
                if e.kind() == std::io::ErrorKind::NotFound { "missing".into() } else { e.to_string() },
            )
        })?;
        let config = Config::from_json(&config_text).map_err(|e| model_err(&config_path, e))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(model_err(&tokenizer_path, "missing"));
        }
        let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| model_err(&tokenizer_path, e))?;
        let generation = match dir.join("generation_config.json") {
            p if p.is_file() => models::read_json(&p)?,
            _ => GenerationConfig::default(),
        };
        let preprocessor = read_preprocessor(dir)?;
        let device = opts.device.open()?;
        let precision = opts
            .precision
            .as_deref()
            .map(str::parse::<models::Precision>)
            .transpose()
            .map_err(EngineError::InvalidRequest)?;
        let (model, precision) = Qwen25Vl::load(dir, config, &device, precision)?;
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            generation,
            system_prompt: prompt::system_prompt(dir),
            dir: dir.to_owned(),
            precision,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model_mut(&mut self) -> &mut Qwen25Vl {
        &mut self.model
    }

    /// The preprocessor settings a question uses (the pixel budget applied).
    pub fn preprocessor_for(&self, opts: &AskOptions) -> PreprocessorConfig {
        PreprocessorConfig {
            max_pixels: opts.max_pixels.unwrap_or(processor::TRAINING_MAX_PIXELS),
            ..self.preprocessor.clone()
        }
    }

    /// The prompt tokens with the image placeholder expanded to `image_tokens` pads.
    pub fn prompt_ids(&self, chat: &str, image_tokens: usize) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(chat, false).map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))?;
        let pad = self.model.config.image_token_id;
        let mut ids = Vec::with_capacity(enc.len() + image_tokens);
        let mut expanded = false;
        for &id in enc.get_ids() {
            if id == pad && !expanded {
                ids.extend(std::iter::repeat_n(pad, image_tokens));
                expanded = true;
            } else {
                ids.push(id);
            }
        }
        if !expanded {
            return Err(EngineError::Model {
                path: self.dir.join("tokenizer.json"),
                reason: format!("the tokenizer does not map <|image_pad|> to image_token_id {pad}"),
            });
        }
        Ok(ids)
    }

    /// The decoding settings a question uses.
    pub fn decoding_for(&self, opts: &AskOptions) -> Decoding {
        opts.decoding.clone().unwrap_or_else(|| {
            let mut d = Decoding::from_config(&self.generation);
            if let Some(n) = opts.max_new_tokens {
                d.max_new_tokens = n;
            }
            d
        })
    }

    /// Asks one question about `image`. `on_event` sees progress and each new
    /// piece of text; returning `Break` cancels (checked between tokens).
    pub fn ask(
        &mut self,
        image: &RgbImage,
        task: Goal,
        query: &str,
        opts: &AskOptions,
        on_event: impl FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<Answer> {
        let chat = prompt::chat(&self.system_prompt, task, query);
        let c = self.complete(image, &chat, opts, on_event)?;
        Ok(Answer::from_completion(task, query, chat, c))
    }

    /// Generates the assistant's reply to a ChatML conversation `chat` whose one
    /// image placeholder stands for `image` (what `ask` and the server share).
    pub fn complete(
        &mut self,
        image: &RgbImage,
        chat: &str,
        opts: &AskOptions,
        mut on_event: impl FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<RawCompletion> {
        let cancelled = |flow: ControlFlow<()>| if flow.is_break() { Err(EngineError::Cancelled) } else { Ok(()) };
        let mut timings = Timings::default();
        let t = Instant::now();
        let pre = self.preprocessor_for(opts);
        let processed: ProcessedImage = processor::preprocess(image, &pre)?;
        let merge = pre.merge_size;
        let ids = self.prompt_ids(chat, processed.num_tokens(merge))?;
        let context = self.model.config.text.max_position_embeddings;
        if ids.len() >= context {
            return Err(EngineError::InvalidRequest(context_exceeded(ids.len(), context)));
        }
        timings.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;

        let t = Instant::now();
        let device = self.model.device();
        let n = processed.grid_thw.iter().product::<usize>();
        let pixels = Tensor::from_vec(processed.pixel_values.clone(), (n, processed.patch_dim), &device)?;
        let embeds = self.model.encode_images(&pixels, &[processed.grid_thw])?;
        timings.vision_ms = t.elapsed().as_secs_f64() * 1e3;
        cancelled(on_event(AskEvent::ImageEncoded { tokens: processed.num_tokens(merge) }))?;

        let t = Instant::now();
        let mut logits = self.model.prefill(&ids, Some(&embeds), &[processed.grid_thw])?;
        timings.prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        cancelled(on_event(AskEvent::PromptRead { tokens: ids.len() }))?;

        let mut decoding = self.decoding_for(opts);
        // Positions past the model's context are not defined: stop there.
        decoding.max_new_tokens = decoding.max_new_tokens.min(context - ids.len());
        let mut sampler = Sampler::new(&decoding);
        let mut eos = self.model.config.eos_token_ids.clone();
        eos.extend(&self.generation.eos_token_id);
        let mut context = ids.clone();
        let mut generated = Vec::new();
        let mut stream = TextStream::default();
        let mut stop = StopReason::MaxNewTokens;
        let t = Instant::now();
        for _ in 0..decoding.max_new_tokens {
            let token = sampler.next(&logits, &context)?;
            if eos.contains(&token) && !decoding.ignore_eos {
                stop = StopReason::Eos;
                break;
            }
            generated.push(token);
            context.push(token);
            if let Some(piece) = stream.push(&self.tokenizer, token).map_err(EngineError::Internal)? {
                cancelled(on_event(AskEvent::Text(piece)))?;
            }
            if generated.len() < decoding.max_new_tokens {
                logits = self.model.step(token)?;
            }
        }
        timings.decode_ms = t.elapsed().as_secs_f64() * 1e3;
        timings.ms_per_token = if generated.is_empty() { 0.0 } else { timings.decode_ms / generated.len() as f64 };
        let raw_text = stream.text(&self.tokenizer).map_err(EngineError::Internal)?;
        Ok(RawCompletion {
            raw_text,
            prompt_tokens: ids.len(),
            generated_token_ids: generated,
            resized: processed.resized,
            original: processed.original,
            stop,
            timings,
        })
    }
}

/// The message for a prompt longer than the model reads.
fn context_exceeded(tokens: usize, context: usize) -> String {
    format!("the prompt is {tokens} tokens; this model reads at most {context} (max_position_embeddings)")
}

/// Counts a conversation's prompt tokens without the model, so a server can
/// refuse an over-long prompt before it queues for the model thread.
#[derive(Clone, Debug)]
pub struct PromptGauge {
    tokenizer: Tokenizer,
    preprocessor: PreprocessorConfig,
    /// The model's context (`max_position_embeddings`).
    pub context: usize,
    /// The longest token in bytes: a text over `context × this` bytes cannot fit.
    longest_token: usize,
}

impl PromptGauge {
    /// The `<|image_pad|>` tokens an image of `width`×`height` takes (an error
    /// for sizes Qwen2.5-VL cannot take, such as an aspect ratio over 200).
    pub fn image_tokens(&self, width: usize, height: usize) -> Result<usize> {
        let pre = &self.preprocessor;
        let (h, w) = processor::smart_resize(height, width, pre.factor(), pre.min_pixels, pre.max_pixels)?;
        Ok((h / pre.patch_size) * (w / pre.patch_size) / (pre.merge_size * pre.merge_size))
    }

    /// The prompt tokens of `chat` with an image of `width`×`height` in it
    /// (errors are the client's: an impossible image, or a prompt over the context).
    pub fn count(&self, chat: &str, width: usize, height: usize) -> Result<usize> {
        let image_tokens = self.image_tokens(width, height)?;
        if chat.len() > self.context.saturating_mul(self.longest_token) {
            return Err(EngineError::InvalidRequest(format!(
                "the prompt is {} bytes of text; this model reads at most {} tokens (max_position_embeddings)",
                chat.len(),
                self.context
            )));
        }
        let enc = self.tokenizer.encode(chat, false).map_err(|e| EngineError::Internal(format!("tokenizer: {e}")))?;
        // The one `<|image_pad|>` in the text stands for `image_tokens` of them.
        let tokens = enc.len().saturating_sub(1) + image_tokens;
        if tokens >= self.context {
            return Err(EngineError::InvalidRequest(context_exceeded(tokens, self.context)));
        }
        Ok(tokens)
    }
}

impl Reasoner {
    /// A gauge for prompts at the pixel budget of `opts`.
    pub fn prompt_gauge(&self, opts: &AskOptions) -> PromptGauge {
        let longest_token = self.tokenizer.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        PromptGauge {
            tokenizer: self.tokenizer.clone(),
            preprocessor: self.preprocessor_for(opts),
            context: self.model.config.text.max_position_embeddings,
            longest_token,
        }
    }
}

/// A generated reply before parsing.
#[derive(Clone, Debug, PartialEq)]
pub struct RawCompletion {
    pub raw_text: String,
    pub prompt_tokens: usize,
    pub generated_token_ids: Vec<u32>,
    /// (width, height) the model saw.
    pub resized: (usize, usize),
    /// (width, height) of the image given.
    pub original: (usize, usize),
    pub stop: StopReason,
    pub timings: Timings,
}

impl Answer {
    /// Parses a reply to the `task` prompt: think/answer, and for the region
    /// task the boxes, mapped from the resized frame to the image given.
    pub fn from_completion(task: Goal, query: &str, prompt: String, c: RawCompletion) -> Self {
        let Completion { think, answer, format_ok, mut repairs } = parse::split(&c.raw_text);
        let (boxes_resized, boxes) = if task.grounds() {
            let (raw, r) = parse::parse_boxes(&answer);
            repairs.extend(r);
            let (mapped, r) = parse::to_source(&raw, c.resized, c.original);
            repairs.extend(r);
            (raw, mapped)
        } else {
            (Vec::new(), Vec::new())
        };
        Self {
            task,
            query: query.to_owned(),
            prompt,
            prompt_tokens: c.prompt_tokens,
            generated_token_ids: c.generated_token_ids,
            raw_text: c.raw_text,
            think,
            answer,
            format_ok,
            boxes_resized,
            boxes,
            repairs,
            resized: c.resized,
            original: c.original,
            stop: c.stop,
            timings: c.timings,
        }
    }
}
