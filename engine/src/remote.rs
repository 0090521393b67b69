//! A RemoteReasoner behind any OpenAI-compatible chat-completions endpoint
//! (vLLM, SGLang, llama.cpp's server, or `remote-reasoner serve`).
//!
//! The image is sent already `smart_resize`d (PNG data URL) at our pixel
//! budget, so the coordinate frame of the boxes the model writes is known here
//! and they map back exactly; a server whose own budget is at least ours leaves
//! such an image as it is. The prompt is the trained one, its text parts placed
//! around the image. Replies stream (server-sent events) into the same
//! [`AskEvent`]s as the local model; connection failures, 429 and 5xx are retried
//! with exponential backoff before any text arrived.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use crate::base::Goal;
use crate::base::RgbImage;
use crate::error::{EngineError, Result};
use crate::openai::{
    ChatRequest, Content, ImageUrl, Message, ModelList, Part, StreamEnd, StreamItem, data_url, read_event_stream,
};
use crate::reasoner::processor;
use crate::reasoner::prompt::user_content;
use crate::reasoner::{Answer, AskEvent, AskOptions, RawCompletion, StopReason, Timings};

/// Where and how to reach the endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteOptions {
    /// Base URL, e.g. `http://gpu-server:8000` (with or without `/v1`).
    pub endpoint: String,
    /// Model name the server knows; empty: the first one `GET /v1/models` lists.
    pub model: String,
    /// Bearer token (read from an environment variable by the caller, never stored in projects).
    pub api_key: Option<String>,
    /// Connecting and waiting for each piece of the reply.
    pub timeout: Duration,
    /// Attempts after the first, for connection errors, 429 and 5xx.
    pub retries: u32,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            model: String::new(),
            api_key: None,
            timeout: Duration::from_secs(300),
            retries: 3,
        }
    }
}

/// The environment variables an API key is read from, in order.
pub const API_KEY_VARS: [&str; 2] = ["RR_API_KEY", "OPENAI_API_KEY"];

/// The API key from the environment, if any.
pub fn api_key_from_env() -> Option<String> {
    API_KEY_VARS.iter().find_map(|v| std::env::var(v).ok()).filter(|k| !k.trim().is_empty())
}

/// A reasoner at an OpenAI-compatible endpoint. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct RemoteBackend {
    pub options: RemoteOptions,
    agent: ureq::Agent,
    base: String,
}

fn remote_err(endpoint: &str, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: endpoint.into(), reason: reason.to_string() }
}

impl RemoteBackend {
    /// Connects lazily; resolves the model name now when none is given.
    pub fn new(mut options: RemoteOptions) -> Result<Self> {
        let trimmed = options.endpoint.trim().trim_end_matches('/');
        let base = if trimmed.ends_with("/v1") { trimmed.to_owned() } else { format!("{trimmed}/v1") };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(remote_err(&options.endpoint, "the endpoint must be an http:// or https:// URL"));
        }
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(options.timeout).build();
        let mut backend = Self { options: options.clone(), agent, base };
        if options.model.trim().is_empty() {
            let models = backend.models()?;
            options.model = models
                .into_iter()
                .next()
                .ok_or_else(|| remote_err(&options.endpoint, "the server lists no models; pass --api-model"))?;
            backend.options = options;
        }
        Ok(backend)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self.agent.request(method, &format!("{}{path}", self.base));
        match &self.options.api_key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// Sends with retries and backoff on connection errors, 429 and 5xx.
    fn send(&self, make: impl Fn() -> std::result::Result<ureq::Response, Box<ureq::Error>>) -> Result<ureq::Response> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            let retryable = match make().map_err(|e| *e) {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    let msg = format!("HTTP {code}: {}", body.chars().take(300).collect::<String>());
                    if code != 429 && code < 500 {
                        return Err(remote_err(&self.options.endpoint, msg));
                    }
                    msg
                }
                Err(ureq::Error::Transport(t)) => t.to_string(),
            };
            if attempt >= self.options.retries {
                return Err(remote_err(
                    &self.options.endpoint,
                    format!("{retryable} (after {} attempts)", attempt + 1),
                ));
            }
            tracing::warn!(endpoint = %self.options.endpoint, "{retryable}; retrying in {delay:?}");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(30));
            attempt += 1;
        }
    }

    /// `GET /v1/models`: the model ids the server serves.
    pub fn models(&self) -> Result<Vec<String>> {
        let r = self.send(|| self.request("GET", "/models").call().map_err(Box::new))?;
        let list: ModelList =
            r.into_json().map_err(|e| remote_err(&self.options.endpoint, format!("bad /v1/models reply: {e}")))?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    /// One question, streamed: the same contract as [`crate::reasoner::Reasoner::ask`].
    pub fn ask(
        &self,
        image: &RgbImage,
        task: Goal,
        query: &str,
        opts: &AskOptions,
        mut on_event: impl FnMut(AskEvent) -> ControlFlow<()>,
    ) -> Result<Answer> {
        let t0 = Instant::now();
        let max_pixels = opts.max_pixels.unwrap_or(processor::TRAINING_MAX_PIXELS);
        let (h, w) = processor::smart_resize(image.height, image.width, 28, processor::MIN_PIXELS, max_pixels)?;
        let resized =
            if (w, h) == (image.width, image.height) { image.clone() } else { processor::resize_bicubic(image, w, h)? };
        let url = data_url(&resized)?;
        let content = user_content(task, query);
        let (before, after) = content.split_once("<image>").unwrap_or((content.as_str(), ""));
        let mut parts = Vec::new();
        if !before.is_empty() {
            parts.push(Part::Text { text: before.to_owned() });
        }
        parts.push(Part::ImageUrl { image_url: ImageUrl { url } });
        if !after.is_empty() {
            parts.push(Part::Text { text: after.to_owned() });
        }
        let decoding = opts.decoding.clone();
        let req = ChatRequest {
            model: self.options.model.clone(),
            messages: vec![Message { role: "user".into(), content: Content::Parts(parts) }],
            stream: Some(true),
            max_tokens: decoding.as_ref().map(|d| d.max_new_tokens).or(opts.max_new_tokens),
            temperature: decoding.as_ref().map(|d| d.temperature.unwrap_or(0.0)),
            top_p: decoding.as_ref().and_then(|d| d.top_p),
            seed: decoding.as_ref().map(|d| d.seed),
            ..Default::default()
        };
        let body = serde_json::to_string(&req).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut timings = Timings { preprocess_ms: t0.elapsed().as_secs_f64() * 1e3, ..Default::default() };
        let t1 = Instant::now();
        let response = self.send(|| {
            self.request("POST", "/chat/completions")
                .set("Content-Type", "application/json")
                .send_string(&body)
                .map_err(Box::new)
        })?;
        let mut raw_text = String::new();
        let mut stop = StopReason::Eos;
        let reader = std::io::BufReader::new(response.into_reader());
        let end = read_event_stream(reader, |item| match item {
            StreamItem::Opened => {
                timings.prefill_ms = t1.elapsed().as_secs_f64() * 1e3;
                on_event(AskEvent::PromptRead { tokens: 0 })
            }
            StreamItem::Text(piece) => {
                raw_text.push_str(&piece);
                on_event(AskEvent::Text(piece))
            }
            StreamItem::Finish(reason) => {
                stop = StopReason::from_finish_reason(&reason);
                ControlFlow::Continue(())
            }
        })
        .map_err(|e| remote_err(&self.options.endpoint, e))?;
        match end {
            StreamEnd::Complete => {}
            StreamEnd::Stopped => return Err(EngineError::Cancelled),
            // Without `[DONE]` or a finish reason the reply was cut off (proxy timeout, server crash).
            StreamEnd::CutOff => {
                return Err(remote_err(&self.options.endpoint, "the reply stream ended before it was complete"));
            }
        }
        timings.decode_ms = t1.elapsed().as_secs_f64() * 1e3 - timings.prefill_ms;
        let completion = RawCompletion {
            raw_text,
            prompt_tokens: 0,
            generated_token_ids: Vec::new(),
            resized: (w, h),
            original: (image.width, image.height),
            stop,
            timings,
        };
        Ok(Answer::from_completion(task, query, content.clone(), completion))
    }
}
