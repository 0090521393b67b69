//! `remote-reasoner`: with no subcommand, the desktop workbench; subcommands run headless.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// mimalloc keeps freed pages for reuse: the model's large per-op buffers then
/// stop costing a fresh, kernel-zeroed mapping each time (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rr_app::cli::{Cli, Command};

fn main() -> ExitCode {
    rr_app::alloc::keep_freed_memory();
    // The long `--version`: commit, features, GDAL and CPU kernels (built once, at start).
    let long_version: &'static str = Box::leak(rr_app::build_info::BuildInfo::current().to_string().into_boxed_str());
    let matches = Cli::command().long_version(long_version).get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `segment` needs the order of --box and --point: a point refines the box before it.
    if let (Some(Command::Segment(args)), Some(m)) = (&mut cli.command, matches.subcommand_matches("segment")) {
        let positions = |id: &str| m.indices_of(id).map(Iterator::collect).unwrap_or_default();
        args.order = Some((positions("boxes"), positions("points")));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Exports killed midway by an earlier run: finish the committed ones, remove the rest.
    engine::atomic::recover();
    let result = rr_app::cli::run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remote-reasoner: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
