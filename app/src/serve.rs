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
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let dir = engine::hub::resolve_model(&args.model, &engine::hub::default_cache_dir());
    let mut opts = ServeOptions::new(dir, args.addr.clone());
    opts.token = args.token.clone();
    opts.model_id = args.model_id.clone();
    opts.load = engine::reasoner::LoadOptions { device: args.device, precision: args.precision.clone() };
    opts.max_body_bytes = args.max_body_mib << 20;
    opts.max_queue = args.max_queue;
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
