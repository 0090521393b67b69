//! Arguments and parsing shared by the subcommands: who answers (a local
//! checkpoint or an endpoint), windows, sizes, band lists.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use engine::base::Window;
use engine::pipeline::{Backend, ReasonerSpec};
use engine::raster::BandMapping;
use engine::reasoner::LoadOptions;
use engine::remote::{RemoteOptions, api_key_from_env};

/// Who answers: a local checkpoint or an OpenAI-compatible endpoint (shared by
/// `ask`, `eval` and `sweep`).
#[derive(Clone, Debug, Args)]
pub struct BackendArgs {
    /// Checkpoint directory (config.json, tokenizer.json, safetensors, …), or the
    /// repository id of one pulled with `models pull`.
    #[arg(long, env = "RR_MODEL", conflicts_with = "endpoint")]
    pub model: Option<PathBuf>,
    /// An OpenAI-compatible chat-completions server instead of a local checkpoint
    /// (vLLM, SGLang, llama.cpp, `remote-reasoner serve`), e.g. http://gpu:8000.
    /// Its API key comes from RR_API_KEY or OPENAI_API_KEY.
    #[arg(long, env = "RR_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The model name on the endpoint (default: the first it lists).
    #[arg(long, requires = "endpoint")]
    pub api_model: Option<String>,
    /// cpu, cuda[:N] or metal[:N] (for a local checkpoint and SAM).
    #[arg(long, default_value = "cpu")]
    pub device: engine::models::DeviceChoice,
    /// f32, bf16, f16, q8_0 or q4k (the language model's projections quantized).
    /// Default: f32 on CPU when it fits in memory, else q8_0; bf16 on GPUs.
    #[arg(long)]
    pub precision: Option<String>,
}

fn parse_numbers(s: &str, sep: char, n: usize, what: &str) -> anyhow::Result<Vec<u64>> {
    let v: Vec<u64> = s
        .split(sep)
        .map(|p| p.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} '{s}' must be {n} non-negative integers separated by '{sep}'"))?;
    if v.len() != n {
        bail!("{what} '{s}' must have {n} numbers, it has {}", v.len());
    }
    Ok(v)
}

/// Parses `--window x,y,w,h`.
pub fn parse_window(s: &str) -> anyhow::Result<Window> {
    let v = parse_numbers(s, ',', 4, "--window")?;
    Ok(Window { x: v[0], y: v[1], width: v[2], height: v[3] })
}

/// Parses `--size WxH`.
pub fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let v = parse_numbers(&s.to_lowercase(), 'x', 2, "--size")?;
    let w = u32::try_from(v[0]).context("--size width too large")?;
    let h = u32::try_from(v[1]).context("--size height too large")?;
    if w == 0 || h == 0 {
        bail!("--size {s}: width and height must be positive");
    }
    Ok((w, h))
}

/// Parses `--bands r,g,b` or `--bands b`.
pub fn parse_bands(s: &str) -> anyhow::Result<BandMapping> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--bands '{s}' must be band numbers like 1,2,3 or 1"))?;
    match v.as_slice() {
        [b] => Ok(BandMapping::Grey(*b)),
        [r, g, b] => Ok(BandMapping::Rgb([*r, *g, *b])),
        _ => bail!("--bands '{s}' must name 1 or 3 bands, it names {}", v.len()),
    }
}

/// The model as the user named it (a directory or a repository id), or
/// `name@endpoint` as the endpoint reports it.
pub fn model_label(args: &BackendArgs, backend: &Backend) -> String {
    match (&args.model, backend) {
        (Some(m), Backend::Local(_)) => m.display().to_string(),
        _ => backend.model_id(),
    }
}

/// What the flags name: a local checkpoint (a repository id resolved in the
/// hub cache) or an endpoint.
pub fn reasoner_spec(args: &BackendArgs) -> anyhow::Result<ReasonerSpec> {
    if let Some(endpoint) = &args.endpoint {
        return Ok(ReasonerSpec::Endpoint(RemoteOptions {
            endpoint: endpoint.clone(),
            model: args.api_model.clone().unwrap_or_default(),
            api_key: api_key_from_env(),
            ..Default::default()
        }));
    }
    let model = args.model.as_ref().context("--model or --endpoint is needed")?;
    let dir = engine::hub::resolve_model(model, &engine::hub::default_cache_dir());
    Ok(ReasonerSpec::Local { dir, options: LoadOptions { device: args.device, precision: args.precision.clone() } })
}

/// The local checkpoint or the endpoint the flags name: the backend, its load
/// time (ms) and how its weights are held.
pub fn open_backend(args: &BackendArgs) -> anyhow::Result<(Backend, f64, String)> {
    let (backend, info) = Backend::open(&reasoner_spec(args)?)?;
    let precision = if info.device == "remote" { format!("remote ({})", info.precision) } else { info.precision };
    Ok((backend, info.load_ms, precision))
}
