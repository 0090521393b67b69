//! The OpenAI chat-completions wire format, as far as a vision reasoner needs
//! it: requests with text and `image_url` parts (data URLs), replies whole or
//! streamed as server-sent events. Shared by the remote backend (client) and
//! `serve` (server), so both speak exactly the same dialect.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::base::RgbImage;
use crate::error::{EngineError, Result};
use crate::reasoner::prompt::IMAGE_PLACEHOLDER;

/// `POST /v1/chat/completions` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// vLLM's extension: generate `max_tokens` whatever the model says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    /// Number of choices; only 1 is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// A message's content: plain text, or parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

/// A whole reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    pub message: ReplyMessage,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// One server-sent event of a streamed reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// What a streamed reply says, event by event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    /// The first chunk arrived (the prompt is read).
    Opened,
    Text(String),
    /// A finish reason (`stop`, `length` …).
    Finish(String),
}

/// How a streamed reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// `data: [DONE]` or a finish reason: the whole reply.
    Complete,
    /// The connection ended first (proxy timeout, server crash).
    CutOff,
    /// The reader's callback asked to stop.
    Stopped,
}

/// Longest line a streamed reply may send: one event is one line, and a
/// server that never ends a line must not fill our memory.
pub const MAX_EVENT_LINE: usize = 8 << 20;

/// Reads a chat-completions event stream (`data: {chunk}` lines, `data: [DONE]`
/// at the end; comments and other fields ignored), handing each piece to
/// `on_item`. An error event, a malformed chunk or an over-long line is an error.
pub fn read_event_stream(
    mut reader: impl std::io::BufRead,
    mut on_item: impl FnMut(StreamItem) -> std::ops::ControlFlow<()>,
) -> std::result::Result<StreamEnd, String> {
    let mut line = Vec::new();
    let mut opened = false;
    let mut finished = false;
    loop {
        line.clear();
        let n = std::io::BufRead::read_until(
            &mut std::io::Read::take(&mut reader, MAX_EVENT_LINE as u64 + 1),
            b'\n',
            &mut line,
        )
        .map_err(|e| format!("reply cut off: {e}"))?;
        if n == 0 {
            return Ok(if finished { StreamEnd::Complete } else { StreamEnd::CutOff });
        }
        if line.len() > MAX_EVENT_LINE {
            return Err(format!("an event line over {MAX_EVENT_LINE} bytes"));
        }
        let text = std::str::from_utf8(&line).map_err(|e| format!("an event that is not UTF-8: {e}"))?;
        let Some(data) = text.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            return Ok(StreamEnd::Complete);
        }
        let value: serde_json::Value = serde_json::from_str(data).map_err(|e| format!("bad event {data:.200}: {e}"))?;
        if let Some(err) = value.get("error") {
            let message = err.get("message").and_then(|m| m.as_str()).unwrap_or("(no message)");
            return Err(format!("the server reported an error: {message:.500}"));
        }
        let chunk: ChatChunk = serde_json::from_value(value).map_err(|e| format!("bad event {data:.200}: {e}"))?;
        let mut items = Vec::new();
        if !opened {
            opened = true;
            items.push(StreamItem::Opened);
        }
        for c in chunk.choices {
            items.extend(c.delta.content.filter(|p| !p.is_empty()).map(StreamItem::Text));
            if let Some(reason) = c.finish_reason {
                finished = true;
                items.push(StreamItem::Finish(reason));
            }
        }
        for item in items {
            if on_item(item).is_break() {
                return Ok(StreamEnd::Stopped);
            }
        }
    }
}

/// Seconds since the epoch, for `created`.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A PNG data URL of `image`.
pub fn data_url(image: &RgbImage) -> Result<String> {
    let mut png = Vec::new();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut png),
        &image.data,
        image.width as u32,
        image.height as u32,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| EngineError::Internal(format!("cannot encode the image: {e}")))?;
    Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
}

/// The bytes of a `data:image/...;base64,` URL, not yet decoded to pixels.
pub fn data_url_bytes(url: &str) -> Result<Vec<u8>> {
    let bad = |why: &str| EngineError::InvalidRequest(format!("image_url: {why}"));
    let rest = url.strip_prefix("data:").ok_or_else(|| bad("only data: URLs are accepted (no remote fetching)"))?;
    let (meta, payload) = rest.split_once(',').ok_or_else(|| bad("malformed data URL"))?;
    if !meta.ends_with(";base64") {
        return Err(bad("the data URL must be base64"));
    }
    base64::engine::general_purpose::STANDARD.decode(payload.trim()).map_err(|e| bad(&e.to_string()))
}

/// The (width, height) an encoded PNG or JPEG declares, read from its header
/// alone: a server checks this before it spends memory on the pixels.
pub fn image_size(bytes: &[u8]) -> Result<(u32, u32)> {
    let bad =
        |e: &dyn std::fmt::Display| EngineError::InvalidRequest(format!("image_url: not a PNG or JPEG image ({e})"));
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(&e))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => reader.into_dimensions().map_err(|e| bad(&e)),
        _ => Err(bad(&"unknown format")),
    }
}

/// Decodes an encoded PNG or JPEG of at most `max_pixels` pixels to RGB.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let bad =
        |e: &dyn std::fmt::Display| EngineError::InvalidRequest(format!("image_url: not a PNG or JPEG image ({e})"));
    let (w, h) = image_size(bytes)?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(EngineError::InvalidRequest(format!(
            "image_url: the image is {w}×{h}, over the limit of {max_pixels} pixels"
        )));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(&e))?;
    let mut limits = image::Limits::default();
    // RGBA at 16 bits is the largest a decoder buffers per pixel.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(|e| bad(&e))?.to_rgb8();
    RgbImage::new(img.width() as usize, img.height() as usize, img.into_raw())
}

/// Decodes a `data:image/...;base64,` URL (PNG or JPEG).
pub fn decode_data_url(url: &str) -> Result<RgbImage> {
    decode_image(&data_url_bytes(url)?, u64::MAX)
}

/// The ChatML text of a conversation and its one image (still encoded):
/// `system` applies when the messages have none; the image goes where its part stands.
pub fn to_chatml(messages: &[Message], default_system: &str) -> Result<(String, Vec<u8>)> {
    let mut system = default_system.to_owned();
    let mut turns = String::new();
    let mut image = None;
    for m in messages {
        let mut text = String::new();
        match &m.content {
            Content::Text(t) => text.push_str(t),
            Content::Parts(parts) => {
                for p in parts {
                    match p {
                        Part::Text { text: t } => text.push_str(t),
                        Part::ImageUrl { image_url } => {
                            if image.is_some() {
                                return Err(EngineError::InvalidRequest(
                                    "one image per conversation is supported".into(),
                                ));
                            }
                            image = Some(data_url_bytes(&image_url.url)?);
                            text.push_str(IMAGE_PLACEHOLDER);
                        }
                    }
                }
            }
        }
        match m.role.as_str() {
            "system" | "developer" => system = text,
            "user" | "assistant" => {
                turns.push_str(&format!("<|im_start|>{}\n{text}<|im_end|>\n", m.role));
            }
            other => return Err(EngineError::InvalidRequest(format!("unknown role {other:?}"))),
        }
    }
    let image = image.ok_or_else(|| EngineError::InvalidRequest("the conversation has no image_url part".into()))?;
    Ok((format!("<|im_start|>system\n{system}<|im_end|>\n{turns}<|im_start|>assistant\n"), image))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Goal;
    use crate::reasoner::prompt::{chat, user_content};

    /// The parts a client sends for a task: the prompt text around the image, in order.
    fn parts(task: Goal, query: &str, url: &str) -> Vec<Part> {
        let content = user_content(task, query);
        let (before, after) = content.split_once("<image>").unwrap_or((&content, ""));
        let mut out = Vec::new();
        if !before.is_empty() {
            out.push(Part::Text { text: before.into() });
        }
        out.push(Part::ImageUrl { image_url: ImageUrl { url: url.into() } });
        if !after.is_empty() {
            out.push(Part::Text { text: after.into() });
        }
        out
    }

    #[test]
    fn chatml_of_a_request_is_the_trained_prompt() {
        let img = RgbImage::new(2, 1, vec![255, 0, 0, 0, 255, 0]).unwrap();
        let url = data_url(&img).unwrap();
        assert_eq!(decode_data_url(&url).unwrap(), img);
        for task in [Goal::Region, Goal::Vqa, Goal::Caption] {
            let msgs = vec![Message { role: "user".into(), content: Content::Parts(parts(task, "where?", &url)) }];
            let (text, back) = to_chatml(&msgs, "SYS").unwrap();
            assert_eq!(text, chat("SYS", task, "where?"), "{task:?}");
            assert_eq!(image_size(&back).unwrap(), (2, 1));
            assert_eq!(decode_image(&back, 2).unwrap(), img);
            assert!(decode_image(&back, 1).is_err(), "over the pixel limit");
        }
        let json = r#"{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"URL"}}]}],"stream":true}"#;
        let req: ChatRequest = serde_json::from_str(&json.replace("URL", &url)).unwrap();
        let (text, _) = to_chatml(&req.messages, "unused").unwrap();
        assert!(text.starts_with("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|vision_start|>"));
        assert!(to_chatml(&[Message { role: "user".into(), content: Content::Text("hi".into()) }], "S").is_err());
        assert!(decode_data_url("https://example.com/x.png").is_err());
    }
}
