//! The one model thread and the jobs it takes in turn: images are decoded here,
//! one at a time, so waiting requests hold only their encoded bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;

use super::request::ApiError;
use crate::error::EngineError;
use crate::openai::decode_image;
use crate::reasoner::{AskEvent, AskOptions, RawCompletion, Reasoner};

/// What the model thread sends back for one request.
#[derive(Debug)]
pub enum Piece {
    Text(String),
    Done(Box<RawCompletion>),
    Failed(ApiError),
}

/// The sampling fields of a request (applied over the checkpoint's defaults).
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodingRequest {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub ignore_eos: bool,
}

/// One request for the model thread.
#[derive(Debug)]
pub struct Job {
    pub chat: String,
    /// Encoded PNG/JPEG; the body budget's permit is held until it is decoded.
    pub image: Vec<u8>,
    pub permit: Option<OwnedSemaphorePermit>,
    pub options: AskOptions,
    pub decoding: DecodingRequest,
    pub reply: UnboundedSender<Piece>,
    /// Set when the client has gone: the job is skipped or stopped at the next token.
    pub abandoned: Arc<AtomicBool>,
}

/// Sets the job's `abandoned` flag when the request handler goes away (the
/// client disconnected, or the reply finished: then the flag is harmless).
#[derive(Debug)]
pub struct AbandonOnDrop(pub Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs jobs until every sender is gone; `stopping` ends the current one early.
pub fn run(
    mut reasoner: Reasoner,
    inbox: &mpsc::Receiver<Job>,
    queued: &AtomicUsize,
    stopping: &AtomicBool,
    max_image_pixels: u64,
) {
    for mut job in inbox.iter() {
        if job.abandoned.load(Ordering::SeqCst) || stopping.load(Ordering::SeqCst) {
            tracing::info!("client gone: its request was skipped");
        } else {
            run_job(&mut reasoner, &mut job, stopping, max_image_pixels);
        }
        queued.fetch_sub(1, Ordering::SeqCst);
    }
}

fn run_job(reasoner: &mut Reasoner, job: &mut Job, stopping: &AtomicBool, max_image_pixels: u64) {
    let image = decode_image(&job.image, max_image_pixels);
    job.image = Vec::new();
    job.permit = None;
    let image = match image {
        Ok(i) => i,
        Err(e) => {
            let _ = job.reply.send(Piece::Failed(ApiError::invalid(e.to_string()).with_param("messages")));
            return;
        }
    };
    let mut options = job.options.clone();
    let mut d = reasoner.decoding_for(&options);
    if let Some(t) = job.decoding.temperature {
        d.temperature = (t > 0.0).then_some(t);
    }
    d.top_p = job.decoding.top_p.or(d.top_p);
    if let Some(seed) = job.decoding.seed {
        d.seed = seed;
    }
    d.max_new_tokens = job.decoding.max_tokens;
    d.ignore_eos = job.decoding.ignore_eos;
    options.decoding = Some(d);
    let (reply, abandoned) = (job.reply.clone(), job.abandoned.clone());
    let mut sent = 0usize;
    let result = crate::base::guard(|| {
        reasoner.complete(&image, &job.chat, &options, |event| {
            let gone = abandoned.load(Ordering::SeqCst) || stopping.load(Ordering::SeqCst);
            match event {
                _ if gone => std::ops::ControlFlow::Break(()),
                AskEvent::Text(t) => {
                    sent += 1;
                    if reply.send(Piece::Text(t)).is_err() {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                }
                _ => std::ops::ControlFlow::Continue(()),
            }
        })
    });
    let piece = match result {
        Ok(c) => {
            let t = &c.timings;
            let ms = t.preprocess_ms + t.vision_ms + t.prefill_ms + t.decode_ms;
            tracing::info!(
                prompt = c.prompt_tokens,
                generated = c.generated_token_ids.len(),
                ms = ms.round(),
                "answered"
            );
            Piece::Done(Box::new(c))
        }
        Err(EngineError::Cancelled) => {
            tracing::info!(pieces = sent, "client gone: generation stopped");
            return;
        }
        Err(EngineError::InvalidRequest(e)) => Piece::Failed(ApiError::invalid(e)),
        // A bug (a panic included) is logged here, not described to the client.
        Err(EngineError::Internal(e)) => {
            tracing::error!(error = %e, "internal error");
            Piece::Failed(ApiError::new(500, "server_error", "internal error"))
        }
        Err(e) => Piece::Failed(ApiError::new(500, "server_error", e.to_string())),
    };
    let _ = job.reply.send(piece);
}
