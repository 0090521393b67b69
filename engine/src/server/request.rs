//! A chat-completions request checked before it may queue for the model:
//! no I/O, no model, so it can be fuzzed and every refusal is a typed error in
//! the OpenAI format.

use serde::Serialize;

use crate::openai::{ChatRequest, image_size, to_chatml};

/// An OpenAI-format error reply: status, `type`, message and the parameter at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None }
    }

    /// 400: the request is well-formed JSON but asks for something impossible.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body OpenAI clients parse: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> String {
        let body = ErrorBody {
            error: ErrorFields { message: &self.message, kind: self.kind, param: self.param, code: self.code },
        };
        serde_json::to_string(&body).unwrap_or_default()
    }
}

/// What a request may ask for.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Largest image (decoded pixels) accepted; checked from the image header.
    pub max_image_pixels: u64,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
}

/// A request that passed every check that needs no model.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub chat: String,
    /// The encoded image (PNG or JPEG); decoded on the model thread, in turn.
    pub image: Vec<u8>,
    /// (width, height) from the image header.
    pub image_size: (u32, u32),
    pub stream: bool,
    pub model: String,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    pub ignore_eos: bool,
}

/// True when `content_type` is JSON (`application/json`, any parameters).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses and checks a body: 400 for malformed JSON or impossible values, 422
/// for JSON of the wrong shape.
pub fn parse(body: &[u8], system: &str, limits: &RequestLimits) -> Result<ValidRequest, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            422,
            "invalid_request_error",
            format!("the request does not fit the chat-completions schema: {e}"),
        ),
        _ => ApiError::invalid(format!("the body is not valid JSON: {e}")),
    })?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages is empty").with_param("messages"));
    }
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid(format!("temperature {t} is outside [0, 2]")).with_param("temperature"));
    }
    if let Some(p) = req.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid(format!("top_p {p} is outside (0, 1]")).with_param("top_p"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("only n = 1 is served").with_param("n"));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if let Some(n) = max_tokens
        && !(1..=limits.max_tokens).contains(&n)
    {
        return Err(
            ApiError::invalid(format!("max_tokens {n} is outside [1, {}]", limits.max_tokens)).with_param("max_tokens")
        );
    }
    let (chat, image) = to_chatml(&req.messages, system).map_err(|e| ApiError::invalid(e.to_string()))?;
    let (w, h) = image_size(&image).map_err(|e| ApiError::invalid(e.to_string()).with_param("messages"))?;
    if u64::from(w) * u64::from(h) > limits.max_image_pixels {
        return Err(ApiError::invalid(format!(
            "the image is {w}×{h} ({} pixels), over this server's limit of {}",
            u64::from(w) * u64::from(h),
            limits.max_image_pixels
        ))
        .with_param("messages"));
    }
    Ok(ValidRequest {
        chat,
        image,
        image_size: (w, h),
        stream: req.stream.unwrap_or(false),
        model: req.model,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        max_tokens,
        ignore_eos: req.ignore_eos.unwrap_or(false),
    })
}

/// The token an `Authorization` header carries, whatever the case of its
/// `Bearer` scheme (RFC 9110: schemes are case-insensitive).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(|c: char| c.is_ascii_whitespace())?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::RgbImage;
    use crate::openai::data_url;

    fn limits() -> RequestLimits {
        RequestLimits { max_image_pixels: 100, max_tokens: 64 }
    }

    fn body(extra: &str, w: usize, h: usize) -> String {
        let url = data_url(&RgbImage::new(w, h, vec![7; w * h * 3]).unwrap()).unwrap();
        format!(
            r#"{{"messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{url}"}}}},{{"type":"text","text":"hi"}}]}}]{extra}}}"#
        )
    }

    #[test]
    fn checks_each_field_with_the_right_status() {
        let ok = parse(body("", 5, 4).as_bytes(), "S", &limits()).unwrap();
        assert_eq!(ok.image_size, (5, 4));
        let status = |b: &str| parse(b.as_bytes(), "S", &limits()).unwrap_err().status;
        assert_eq!(status("{"), 400);
        assert_eq!(status(r#"{"messages": 3}"#), 422);
        assert_eq!(status(r#"{"messages": []}"#), 400);
        assert_eq!(status(&body(r#","temperature":5"#, 5, 4)), 400);
        assert_eq!(status(&body(r#","top_p":0"#, 5, 4)), 400);
        assert_eq!(status(&body(r#","max_tokens":65"#, 5, 4)), 400);
        assert_eq!(status(&body(r#","max_tokens":0"#, 5, 4)), 400);
        assert_eq!(status(&body(r#","n":2"#, 5, 4)), 400);
        assert_eq!(status(&body("", 11, 10)), 400, "over the pixel limit");
        assert!(parse(body(r#","max_tokens":64,"temperature":0"#, 5, 4).as_bytes(), "S", &limits()).is_ok());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("Application/JSON")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }
}
