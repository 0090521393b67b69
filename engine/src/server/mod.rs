//! `remote-reasoner serve`: our engine behind the OpenAI chat-completions API,
//! so desktops (ours, or any OpenAI client) share one model on a GPU server.
//!
//! - `GET /v1/models`, `POST /v1/chat/completions` (`image_url` data URLs;
//!   `stream: true` sends server-sent events ending in `data: [DONE]`).
//! - Loopback only by default; bound to any other address it refuses to start
//!   without a bearer token, and with a token every request must carry it.
//! - A client is never trusted: hyper (HTTP/1.1) with a header-read timeout,
//!   a cap on connections and header size; bodies limited while they stream
//!   in, with a deadline, and all bodies in flight share one byte budget;
//!   requests are checked ([`request`]) before they queue — image size from
//!   the header, prompt length against the model's context, `max_tokens`
//!   against the cap — and images are decoded on the model thread, in turn.
//! - Requests wait in a queue for the one model thread (503 when it is full);
//!   a client that goes away, streaming or not, stops its generation.

pub mod queue;
pub mod request;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use crate::error::{EngineError, Result};
use crate::openai::{
    ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta, ModelCard, ModelList, ReplyMessage, Usage, now,
};
use crate::reasoner::{AskOptions, LoadOptions, PromptGauge, Reasoner};
use queue::{AbandonOnDrop, DecodingRequest, Job, Piece};
use request::{ApiError, RequestLimits, ValidRequest};

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
    /// All request bodies held at once (read, or queued as encoded images).
    pub body_budget_bytes: usize,
    /// Requests waiting for the model at most (more get 503).
    pub max_queue: usize,
    /// Pixel budget of the images, as in training by default.
    pub max_pixels: usize,
    /// Largest image accepted, in decoded pixels (checked from its header).
    pub max_image_pixels: u64,
    /// Cap on `max_tokens` (and its default); never past the model's context.
    pub max_tokens: usize,
    /// Cap on a prompt's tokens (image included); `None`: the model's context.
    pub max_prompt_tokens: Option<usize>,
    /// Open connections at most; more wait to be accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also closes idle keep-alive connections).
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body.
    pub body_timeout: Duration,
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
            body_budget_bytes: 256 << 20,
            max_queue: 64,
            max_pixels: crate::reasoner::processor::TRAINING_MAX_PIXELS,
            max_image_pixels: 64 << 20,
            max_tokens: 4096,
            max_prompt_tokens: None,
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    accept: Option<tokio::task::JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
    model_thread: Option<std::thread::JoinHandle<()>>,
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
        if let (Some(rt), Some(accept)) = (&self.runtime, self.accept.take()) {
            let _ = rt.block_on(accept);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        // Dropping the tasks drops the job sender: the model thread ends.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        if let Some(t) = self.model_thread.take() {
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

/// What every request handler shares.
struct Shared {
    token: Option<String>,
    model_id: String,
    system: String,
    limits: RequestLimits,
    max_body: usize,
    body_timeout: Duration,
    max_queue: usize,
    max_pixels: usize,
    /// Longest prompt accepted, in tokens (≤ the model's context).
    max_prompt: usize,
    gauge: PromptGauge,
    queued: Arc<AtomicUsize>,
    /// The body budget in KiB permits.
    bodies: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
}

fn bad(reason: String) -> EngineError {
    EngineError::InvalidRequest(reason)
}

/// Loads the checkpoint and starts serving on `opts.addr`.
pub fn serve(opts: &ServeOptions) -> Result<Server> {
    let addr: SocketAddr = opts
        .addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("--addr {}: {e}", opts.addr)))?
        .next()
        .ok_or_else(|| bad(format!("--addr {}: no address", opts.addr)))?;
    let token = opts.token.clone().filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_owned());
    if !is_local_only(addr.ip()) && token.is_none() {
        return Err(bad(format!(
            "serving on {} reaches other machines: a bearer token is required (--token, or RR_SERVE_TOKEN)",
            addr.ip()
        )));
    }
    if opts.max_connections == 0 || opts.max_body_bytes == 0 || opts.body_budget_bytes < opts.max_body_bytes {
        return Err(bad("--max-connections and --max-body-mib must be over 0, and the body budget ≥ one body".into()));
    }
    let reasoner = Reasoner::load(&opts.model_dir, &opts.load)?;
    let ask = AskOptions { max_pixels: Some(opts.max_pixels), ..Default::default() };
    let gauge = reasoner.prompt_gauge(&ask);
    let model_id = opts.model_id.clone().unwrap_or_else(|| {
        opts.model_dir.file_name().map_or_else(|| "remote-reasoner".into(), |n| n.to_string_lossy().into_owned())
    });
    let listener = std::net::TcpListener::bind(addr).map_err(|e| bad(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| EngineError::Internal(e.to_string()))?;
    listener.set_nonblocking(true).map_err(|e| EngineError::Internal(e.to_string()))?;

    let (jobs, inbox) = mpsc::channel::<Job>();
    let queued = Arc::new(AtomicUsize::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let model_thread = {
        let (queued, stopping, max_image_pixels) = (queued.clone(), stopping.clone(), opts.max_image_pixels);
        std::thread::Builder::new()
            .name("serve-model".into())
            .spawn(move || queue::run(reasoner, &inbox, &queued, &stopping, max_image_pixels))
            .map_err(|e| EngineError::Internal(e.to_string()))?
    };
    let shared = Arc::new(Shared {
        token,
        model_id,
        system: crate::reasoner::prompt::DEFAULT_SYSTEM.to_owned(),
        limits: RequestLimits {
            max_image_pixels: opts.max_image_pixels,
            max_tokens: opts.max_tokens.clamp(1, gauge.context.saturating_sub(1).max(1)),
        },
        max_body: opts.max_body_bytes,
        body_timeout: opts.body_timeout,
        max_queue: opts.max_queue,
        max_pixels: opts.max_pixels,
        max_prompt: opts.max_prompt_tokens.unwrap_or(usize::MAX).min(gauge.context),
        gauge,
        queued,
        bodies: Arc::new(Semaphore::new(kib(opts.body_budget_bytes) as usize)),
        jobs,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("serve-http")
        .enable_all()
        .build()
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    let app = router(shared);
    let conn = ConnLimits { max: opts.max_connections, header_timeout: opts.header_timeout };
    let accept = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| EngineError::Internal(e.to_string()))?;
        Ok::<_, EngineError>(tokio::spawn(accept_loop(listener, app, conn)))
    })?;
    tracing::info!(%addr, "serving");
    Ok(Server { addr, runtime: Some(runtime), accept: Some(accept), stopping, model_thread: Some(model_thread) })
}

#[derive(Clone, Copy, Debug)]
struct ConnLimits {
    max: usize,
    header_timeout: Duration,
}

/// Accepts connections while fewer than `max` are open (the rest wait in the
/// kernel's backlog) and serves each with hyper's HTTP/1.1.
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, limits: ConnLimits) {
    let open = Arc::new(Semaphore::new(limits.max));
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else { return };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(64 << 10);
            if let Err(e) = http.serve_connection(io, service).await {
                tracing::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(500, "server_error", "internal error").into_response()
        }))
        .with_state(shared)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, "application/json")], self.body()).into_response()
    }
}

fn overloaded() -> ApiError {
    ApiError::new(503, "overloaded", "too many requests are waiting; try again later")
}

/// Every route needs the bearer token when one is set (compared in constant time).
async fn authenticate(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(request::bearer_token)
            .unwrap_or_default();
        let same: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()).into();
        if !same {
            let headers = request.headers().clone();
            discard_body(request.into_body(), &headers, s.max_body).await;
            return ApiError::new(401, "authentication_error", "a valid bearer token is required").into_response();
        }
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(404, "not_found", format!("no route {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let list = ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: s.model_id.clone(),
            object: "model".into(),
            created: now(),
            owned_by: "remote-reasoner".into(),
        }],
    };
    axum::Json(list).into_response()
}

/// Whole KiB of `bytes`, rounded up: the unit of the body budget.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32)
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let permit = match admit(&s, &headers) {
        Ok(p) => p,
        Err(e) => {
            discard_body(body, &headers, s.max_body).await;
            return e.into_response();
        }
    };
    match chat_checked(&s, body, permit).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The body length a request declares.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

/// Reads and drops what a refused request still sends (up to 4 bodies' worth,
/// for 5 s at most): a client writes its whole body before it reads, and would
/// otherwise see a reset connection instead of the refusal.
async fn discard_body(body: Body, headers: &HeaderMap, max_body: usize) {
    let bound = 4 * max_body as u64;
    if declared_length(headers).is_some_and(|n| n > bound) {
        return;
    }
    let mut seen = 0u64;
    let mut frames = body.into_data_stream();
    let drain = async {
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut frames).await {
            seen += chunk.len() as u64;
            if seen > bound {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

/// The checks made before a byte of the body is read: its type, the queue,
/// its declared size, and room in the body budget (whose permit it gets).
fn admit(s: &Shared, headers: &HeaderMap) -> std::result::Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if !request::is_json(content_type) {
        return Err(ApiError::invalid(format!(
            "Content-Type must be application/json, not {}",
            content_type.unwrap_or("(none)")
        )));
    }
    if s.queued.load(Ordering::SeqCst) >= s.max_queue {
        return Err(overloaded());
    }
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > s.max_body as u64) {
        return Err(too_big(s.max_body));
    }
    let want = declared.map_or(s.max_body, |n| n as usize);
    s.bodies
        .clone()
        .try_acquire_many_owned(kib(want).max(1))
        .map_err(|_full| ApiError::new(503, "overloaded", "too many request bodies are in flight; try again later"))
}

fn too_big(max_body: usize) -> ApiError {
    ApiError::new(413, "invalid_request_error", format!("the body is over {max_body} bytes"))
}

/// Reads the body within its size limit and deadline.
async fn read_body(s: &Shared, body: Body) -> std::result::Result<bytes::Bytes, ApiError> {
    let too_big = || too_big(s.max_body);
    let limited = http_body_util::Limited::new(body, s.max_body);
    match tokio::time::timeout(s.body_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            format!("the body did not arrive within {} s", s.body_timeout.as_secs()),
        )),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_big()),
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read the body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn chat_checked(
    s: &Arc<Shared>,
    body: Body,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> std::result::Result<Response, ApiError> {
    let body = read_body(s, body).await?;
    let (req, prompt_tokens) = {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            let req = request::parse(&body, &s.system, &s.limits)?;
            let (w, h) = (req.image_size.0 as usize, req.image_size.1 as usize);
            s.gauge.image_tokens(w, h).map_err(|e| ApiError::invalid(e.to_string()).with_param("messages"))?;
            let tokens = s
                .gauge
                .count(&req.chat, w, h)
                .map_err(|e| ApiError::invalid(e.to_string()).with_code("context_length_exceeded"))?;
            Ok::<_, ApiError>((req, tokens))
        })
        .await
        .map_err(|_panicked| ApiError::new(500, "server_error", "internal error"))??
    };
    if prompt_tokens > s.max_prompt {
        return Err(ApiError::invalid(format!(
            "the prompt is {prompt_tokens} tokens; this server takes at most {} (--max-prompt-tokens)",
            s.max_prompt
        ))
        .with_code("context_length_exceeded"));
    }
    let room = s.gauge.context - prompt_tokens;
    let max_tokens = match req.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::invalid(format!(
                "the prompt is {prompt_tokens} tokens and max_tokens {n}: over this model's context of {}",
                s.gauge.context
            ))
            .with_param("max_tokens")
            .with_code("context_length_exceeded"));
        }
        Some(n) => n,
        None => s.limits.max_tokens.min(room),
    };
    let stream = req.stream;
    let reply = enqueue(s, req, permit, max_tokens)?;
    Ok(if stream { reply.stream() } else { reply.whole().await })
}

/// Queues a checked request and answers it, whole or streamed.
fn enqueue(
    s: &Shared,
    req: ValidRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
    max_tokens: usize,
) -> std::result::Result<Reply, ApiError> {
    if s.queued.fetch_add(1, Ordering::SeqCst) >= s.max_queue {
        s.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(overloaded());
    }
    let (reply, pieces) = tokio::sync::mpsc::unbounded_channel();
    let abandoned = Arc::new(AtomicBool::new(false));
    let job = Job {
        chat: req.chat,
        image: req.image,
        permit: Some(permit),
        options: AskOptions { max_pixels: Some(s.max_pixels), ..Default::default() },
        decoding: DecodingRequest {
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            max_tokens,
            ignore_eos: req.ignore_eos,
        },
        reply,
        abandoned: abandoned.clone(),
    };
    if s.jobs.send(job).is_err() {
        s.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(503, "unavailable", "the server is shutting down"));
    }
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    let reply = Reply {
        id: format!("chatcmpl-{:x}-{}", now(), NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        model: if req.model.is_empty() { s.model_id.clone() } else { req.model },
        pieces,
        _abandon: AbandonOnDrop(abandoned),
    };
    Ok(reply)
}

/// The model's answer to one request, on its way to the client. Dropped when
/// the client goes (hyper drops the handler or the body): the job is abandoned.
struct Reply {
    id: String,
    model: String,
    pieces: tokio::sync::mpsc::UnboundedReceiver<Piece>,
    _abandon: AbandonOnDrop,
}

impl Reply {
    /// The non-streamed reply: waits for the whole answer.
    async fn whole(mut self) -> Response {
        while let Some(piece) = self.pieces.recv().await {
            match piece {
                Piece::Text(_) => {}
                Piece::Done(c) => {
                    let reply = ChatCompletion {
                        id: self.id.clone(),
                        object: "chat.completion".into(),
                        created: now(),
                        model: self.model.clone(),
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
                    return axum::Json(reply).into_response();
                }
                Piece::Failed(e) => return e.into_response(),
            }
        }
        ApiError::new(500, "server_error", "the model stopped without an answer").into_response()
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> Event {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: now(),
            model: self.model.clone(),
            choices: vec![ChunkChoice { index: 0, delta, finish_reason: finish.map(str::to_owned) }],
        };
        Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
    }

    /// The streamed reply: a role event, one event per piece of text, a last
    /// one with the finish reason, then `data: [DONE]`.
    fn stream(self) -> Response {
        let first = self.chunk(Delta { role: Some("assistant".into()), content: None }, None);
        let state = (self, VecDeque::from([first]), false);
        let events = futures_util::stream::unfold(state, |(mut this, mut pending, mut over)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (this, pending, over)));
                }
                if over {
                    return None;
                }
                match this.pieces.recv().await {
                    Some(Piece::Text(t)) => pending.push_back(this.chunk(Delta { role: None, content: Some(t) }, None)),
                    Some(Piece::Done(c)) => {
                        pending.push_back(this.chunk(Delta::default(), Some(c.stop.finish_reason())));
                        pending.push_back(Event::default().data("[DONE]"));
                        over = true;
                    }
                    Some(Piece::Failed(e)) => {
                        let err =
                            serde_json::json!({ "error": { "message": e.message, "type": e.kind, "code": e.status } });
                        pending.push_back(Event::default().data(err.to_string()));
                        pending.push_back(Event::default().data("[DONE]"));
                        over = true;
                    }
                    None => return None,
                }
            }
        });
        Sse::new(events).keep_alive(KeepAlive::default()).into_response()
    }
}
