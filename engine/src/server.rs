//! `remote-reasoner serve`: our engine behind the OpenAI chat-completions API,
//! so desktops (ours, or any OpenAI client) share one model on a GPU server.
//!
//! - `GET /v1/models`, `POST /v1/chat/completions` (`image_url` data URLs;
//!   `stream: true` sends server-sent events ending in `data: [DONE]`).
//! - Loopback only by default; bound to any other address it refuses to start
//!   without a bearer token, and with a token every request must carry it.
//! - Bodies over the size limit get 413; requests wait in a queue for the one
//!   model thread (503 when the queue is full), they are never dropped midway.
//! - A client that goes away stops its generation at the next token.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::error::{EngineError, Result};
use crate::openai::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta, ModelCard, ModelList, ReplyMessage, Usage, now,
    to_chatml,
};
use crate::reasoner::processor::RgbImage;
use crate::reasoner::{AskEvent, AskOptions, LoadOptions, RawCompletion, Reasoner};

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model_dir: PathBuf,
    pub load: LoadOptions,
    /// `host:port`; port 0 picks a free one.
    pub addr: String,
    /// Required on every request when set; mandatory off loopback.
    pub token: Option<String>,
    /// The model id `/v1/models` reports (default: the checkpoint directory's name).
    pub model_id: Option<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests waiting for the model at most (more get 503).
    pub max_queue: usize,
    /// Pixel budget of the images, as in training by default.
    pub max_pixels: usize,
}

impl ServeOptions {
    pub fn new(model_dir: PathBuf, addr: impl Into<String>) -> Self {
        Self {
            model_dir,
            load: LoadOptions::default(),
            addr: addr.into(),
            token: None,
            model_id: None,
            max_body_bytes: 32 << 20,
            max_queue: 64,
            max_pixels: crate::reasoner::processor::TRAINING_MAX_PIXELS,
        }
    }
}

/// What the model thread sends back for one request.
enum Piece {
    Text(String),
    Done(Box<RawCompletion>),
    Failed(String),
}

/// One request for the model thread.
struct Job {
    chat: String,
    image: RgbImage,
    options: AskOptions,
    decoding: DecodingRequest,
    reply: mpsc::Sender<Piece>,
}

/// The sampling fields of a request (applied over the checkpoint's defaults).
#[derive(Clone, Copy, Debug, Default)]
struct DecodingRequest {
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    max_tokens: Option<usize>,
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Server {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// True for addresses only this machine reaches.
fn is_local_only(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Loads the checkpoint and starts serving on `opts.addr`.
pub fn serve(opts: &ServeOptions) -> Result<Server> {
    let bad = |reason: String| EngineError::InvalidRequest(reason);
    let addr: SocketAddr = opts
        .addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("--addr {}: {e}", opts.addr)))?
        .next()
        .ok_or_else(|| bad(format!("--addr {}: no address", opts.addr)))?;
    let token = opts.token.clone().filter(|t| !t.trim().is_empty());
    if !is_local_only(addr.ip()) && token.is_none() {
        return Err(bad(format!(
            "serving on {} reaches other machines: a bearer token is required (--token, or RR_SERVE_TOKEN)",
            addr.ip()
        )));
    }
    let mut reasoner = Reasoner::load(&opts.model_dir, &opts.load)?;
    let model_id = opts.model_id.clone().unwrap_or_else(|| {
        opts.model_dir.file_name().map_or_else(|| "remote-reasoner".into(), |n| n.to_string_lossy().into_owned())
    });
    let http = Arc::new(tiny_http::Server::http(addr).map_err(|e| bad(format!("cannot listen on {addr}: {e}")))?);
    let addr = http.server_addr().to_ip().ok_or_else(|| bad("not an IP listener".into()))?;
    let (jobs, inbox) = mpsc::channel::<Job>();
    let queued = Arc::new(AtomicUsize::new(0));
    let model_thread = {
        let queued = queued.clone();
        std::thread::Builder::new()
            .name("serve-model".into())
            .spawn(move || {
                for job in inbox {
                    run_job(&mut reasoner, &job);
                    queued.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| EngineError::Internal(e.to_string()))?
    };
    let accept = {
        let http = http.clone();
        let ctx = Arc::new(Context {
            token,
            model_id,
            max_body: opts.max_body_bytes,
            max_queue: opts.max_queue,
            max_pixels: opts.max_pixels,
            queued,
            jobs: std::sync::Mutex::new(jobs),
        });
        std::thread::Builder::new()
            .name("serve-http".into())
            .spawn(move || {
                for request in http.incoming_requests() {
                    let ctx = ctx.clone();
                    // One thread per connection: a streaming reply must not hold up the others.
                    let _ =
                        std::thread::Builder::new().name("serve-request".into()).spawn(move || handle(&ctx, request));
                }
                // The HTTP side is done: let the model thread finish its queue and stop.
                if let Ok(mut j) = ctx.jobs.lock() {
                    let (dead, _) = mpsc::channel();
                    *j = dead;
                }
            })
            .map_err(|e| EngineError::Internal(e.to_string()))?
    };
    tracing::info!(%addr, "serving");
    Ok(Server { addr, http, threads: vec![accept, model_thread] })
}

fn run_job(reasoner: &mut Reasoner, job: &Job) {
    let mut options = job.options.clone();
    let mut d = reasoner.decoding_for(&options);
    if let Some(t) = job.decoding.temperature {
        d.temperature = (t > 0.0).then_some(t);
    }
    d.top_p = job.decoding.top_p.or(d.top_p);
    if let Some(seed) = job.decoding.seed {
        d.seed = seed;
    }
    if let Some(n) = job.decoding.max_tokens {
        d.max_new_tokens = n;
    }
    options.decoding = Some(d);
    let reply = job.reply.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        reasoner.complete(&job.image, &job.chat, &options, |event| match event {
            AskEvent::Text(t) => {
                // The client is gone: stop generating.
                if reply.send(Piece::Text(t)).is_err() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            }
            _ => std::ops::ControlFlow::Continue(()),
        })
    }));
    let piece = match result {
        Ok(Ok(c)) => Piece::Done(Box::new(c)),
        Ok(Err(EngineError::Cancelled)) => return,
        Ok(Err(e)) => Piece::Failed(e.to_string()),
        Err(_) => Piece::Failed("internal error".into()),
    };
    let _ = job.reply.send(piece);
}

struct Context {
    token: Option<String>,
    model_id: String,
    max_body: usize,
    max_queue: usize,
    max_pixels: usize,
    queued: Arc<AtomicUsize>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

fn json_header() -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("static header")
}

fn error(code: u16, kind: &str, message: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": code } }).to_string();
    tiny_http::Response::from_string(body).with_status_code(code).with_header(json_header())
}

fn handle(ctx: &Context, request: tiny_http::Request) {
    if let Some(token) = &ctx.token {
        let ok = request.headers().iter().any(|h| {
            h.field.equiv("Authorization")
                && h.value.as_str().strip_prefix("Bearer ").is_some_and(|t| t.trim() == token)
        });
        if !ok {
            let _ = request.respond(error(401, "authentication_error", "a valid bearer token is required"));
            return;
        }
    }
    let path = request.url().split('?').next().unwrap_or_default().trim_end_matches('/').to_owned();
    match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/v1/models") => {
            let list = ModelList {
                object: "list".into(),
                data: vec![ModelCard {
                    id: ctx.model_id.clone(),
                    object: "model".into(),
                    created: now(),
                    owned_by: "remote-reasoner".into(),
                }],
            };
            let body = serde_json::to_string(&list).unwrap_or_default();
            let _ = request.respond(tiny_http::Response::from_string(body).with_header(json_header()));
        }
        (tiny_http::Method::Post, "/v1/chat/completions") => chat(ctx, request),
        (method, _) => {
            let message = format!("no route {method} {path}");
            let _ = request.respond(error(404, "not_found", &message));
        }
    }
}

fn chat(ctx: &Context, mut request: tiny_http::Request) {
    // Refuse early when the queue is full: no body read, no work queued.
    if ctx.queued.load(Ordering::SeqCst) >= ctx.max_queue {
        let _ = request.respond(error(503, "overloaded", "too many requests are waiting; try again later"));
        return;
    }
    if request.body_length().is_some_and(|n| n > ctx.max_body) {
        let _ =
            request.respond(error(413, "invalid_request_error", &format!("the body is over {} bytes", ctx.max_body)));
        return;
    }
    let mut body = Vec::new();
    let read = request.as_reader().take(ctx.max_body as u64 + 1).read_to_end(&mut body);
    if read.is_err() || body.len() > ctx.max_body {
        let _ =
            request.respond(error(413, "invalid_request_error", &format!("the body is over {} bytes", ctx.max_body)));
        return;
    }
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let _ = request.respond(error(400, "invalid_request_error", &format!("bad JSON: {e}")));
            return;
        }
    };
    let (chat_text, image) = match to_chatml(&req.messages, crate::reasoner::prompt::DEFAULT_SYSTEM) {
        Ok(x) => x,
        Err(e) => {
            let _ = request.respond(error(400, "invalid_request_error", &e.to_string()));
            return;
        }
    };
    if ctx.queued.fetch_add(1, Ordering::SeqCst) >= ctx.max_queue {
        ctx.queued.fetch_sub(1, Ordering::SeqCst);
        let _ = request.respond(error(503, "overloaded", "too many requests are waiting; try again later"));
        return;
    }
    let (reply, pieces) = mpsc::channel();
    let job = Job {
        chat: chat_text,
        image,
        options: AskOptions { max_pixels: Some(ctx.max_pixels), ..Default::default() },
        decoding: DecodingRequest {
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
        },
        reply,
    };
    let sent = ctx.jobs.lock().map(|j| j.send(job).is_ok()).unwrap_or(false);
    if !sent {
        ctx.queued.fetch_sub(1, Ordering::SeqCst);
        let _ = request.respond(error(503, "unavailable", "the server is shutting down"));
        return;
    }
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    let id = format!("chatcmpl-{:x}-{}", now(), NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let model = if req.model.is_empty() { ctx.model_id.clone() } else { req.model.clone() };
    if req.stream.unwrap_or(false) {
        // Written by hand (chunked, flushed per event): tiny_http's own chunked
        // writer holds 8 KiB back, which would deliver the "stream" in one piece.
        let mut stream = SseStream { pieces, id, model, started: false, finished: false };
        let mut out = request.into_writer();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        if out.write_all(head.as_bytes()).and_then(|()| out.flush()).is_err() {
            return;
        }
        loop {
            let event = stream.refill();
            let chunk = if event.is_empty() {
                b"0\r\n\r\n".to_vec()
            } else {
                let mut c = format!("{:x}\r\n", event.len()).into_bytes();
                c.extend(&event);
                c.extend(b"\r\n");
                c
            };
            // A failed write means the client is gone: dropping `stream` stops the generation.
            if out.write_all(&chunk).and_then(|()| out.flush()).is_err() || event.is_empty() {
                return;
            }
        }
    }
    let mut text = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => text.push_str(&t),
            Piece::Done(c) => {
                let reply = ChatCompletion {
                    id,
                    object: "chat.completion".into(),
                    created: now(),
                    model,
                    choices: vec![Choice {
                        index: 0,
                        message: ReplyMessage { role: "assistant".into(), content: c.raw_text.clone() },
                        finish_reason: Some(c.stop.finish_reason().into()),
                    }],
                    usage: Some(Usage {
                        prompt_tokens: c.prompt_tokens,
                        completion_tokens: c.generated_token_ids.len(),
                        total_tokens: c.prompt_tokens + c.generated_token_ids.len(),
                    }),
                };
                let body = serde_json::to_string(&reply).unwrap_or_default();
                let _ = request.respond(tiny_http::Response::from_string(body).with_header(json_header()));
                return;
            }
            Piece::Failed(e) => {
                let _ = request.respond(error(500, "server_error", &e));
                return;
            }
        }
    }
    let _ = request.respond(error(500, "server_error", "the model stopped without an answer"));
}

/// The streamed reply's events: one per piece of text, a last one with the
/// finish reason, then `data: [DONE]`.
struct SseStream {
    pieces: mpsc::Receiver<Piece>,
    id: String,
    model: String,
    started: bool,
    finished: bool,
}

impl SseStream {
    fn event(&self, delta: Delta, finish: Option<&str>) -> Vec<u8> {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: now(),
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish.map(str::to_owned) }],
        };
        format!("data: {}\n\n", serde_json::to_string(&chunk).unwrap_or_default()).into_bytes()
    }

    /// The next bytes to send; empty when the stream is over.
    fn refill(&mut self) -> Vec<u8> {
        if self.finished {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.extend(self.event(Delta { role: Some("assistant".into()), content: None }, None));
        }
        match self.pieces.recv() {
            Ok(Piece::Text(t)) => out.extend(self.event(Delta { role: None, content: Some(t) }, None)),
            Ok(Piece::Done(c)) => {
                out.extend(self.event(Delta::default(), Some(c.stop.finish_reason())));
                out.extend(b"data: [DONE]\n\n");
                self.finished = true;
            }
            Ok(Piece::Failed(e)) => {
                let err = serde_json::json!({ "error": { "message": e, "type": "server_error" } });
                out.extend(format!("data: {err}\n\n").into_bytes());
                out.extend(b"data: [DONE]\n\n");
                self.finished = true;
            }
            Err(_) => self.finished = true,
        }
        out
    }
}
