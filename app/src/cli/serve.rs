//! `remote-reasoner serve`: a checkpoint behind the OpenAI chat-completions API.

use std::path::PathBuf;

use clap::Args;
use engine::server::{ServeOptions, serve};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Checkpoint directory, or the repository id of one pulled with `models pull`.
    #[arg(long, env = "RR_MODEL")]
    pub model: PathBuf,
    /// Where to listen. Loopback by default; any other address needs --token.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: String,
    /// Bearer token every request must carry (required off loopback).
    #[arg(long, env = "RR_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The model id clients use (default: the checkpoint directory's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
    /// f32, bf16, f16, q8_0 or q4k (default per device).
    #[arg(long)]
    pub precision: Option<String>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Requests allowed to wait for the model (more get HTTP 503).
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Pixel budget of the images (default 802816, as in training).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Largest image a request may send, in decoded pixels (checked from its header).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_image_pixels: u64,
    /// Cap on a request's max_tokens, and the default (never past the model's context).
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Cap on a prompt's tokens, image included (default: the model's context, max_position_embeddings).
    #[arg(long)]
    pub max_prompt_tokens: Option<usize>,
    /// Open connections at most (more wait to be accepted).
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// MiB of request bodies held at once, read or queued (more get HTTP 503).
    #[arg(long, default_value_t = 256)]
    pub body_budget_mib: usize,
    /// Seconds a client has to send its headers; also closes idle connections.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout_s: f64,
    /// Seconds a client has to send a whole body.
    #[arg(long, default_value_t = 60.0)]
    pub body_timeout_s: f64,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let dir = engine::hub::resolve_model(&args.model, &engine::hub::default_cache_dir());
    let mut opts = ServeOptions::new(dir, args.addr.clone());
    opts.token = args.token.clone();
    opts.model_id = args.model_id.clone();
    opts.load = engine::reasoner::LoadOptions { device: args.device, precision: args.precision.clone() };
    opts.max_body_bytes = args.max_body_mib << 20;
    opts.max_queue = args.max_queue;
    opts.max_image_pixels = args.max_image_pixels;
    opts.max_tokens = args.max_tokens;
    opts.max_prompt_tokens = args.max_prompt_tokens;
    opts.max_connections = args.max_connections;
    opts.body_budget_bytes = args.body_budget_mib << 20;
    opts.header_timeout = seconds(args.header_timeout_s, "--header-timeout-s")?;
    opts.body_timeout = seconds(args.body_timeout_s, "--body-timeout-s")?;
    if let Some(p) = args.max_pixels {
        opts.max_pixels = p;
    }
    let server = serve(&opts)?;
    // Scripts wait for this line (the port is real even when 0 was asked for).
    println!("listening on http://{}", server.addr());
    use std::io::Write;
    std::io::stdout().flush()?;
    server.wait();
    Ok(())
}

fn seconds(s: f64, flag: &str) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("{flag} {s}: give a positive number of seconds"))
}
