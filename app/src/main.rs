//! `remote-reasoner`: with no subcommand, the desktop workbench; subcommands run headless.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// mimalloc keeps freed pages for reuse: the model's large per-op buffers then
/// stop costing a fresh, kernel-zeroed mapping each time (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rr_app::cli::{Cli, Command};

/// Keeps freed memory for reuse instead of returning it to the OS after a delay:
/// the models free and reallocate buffers of tens of MB per operation, and fresh
/// pages cost a kernel page-zeroing fault each (SAM 2.1 encoder 3.2 → 2.5 s here).
fn keep_freed_memory() {
    // `mi_option_purge_delay` is option 15 in the vendored mimalloc (v2 and v3
    // headers; `MIMALLOC_VERBOSE=1` lists it as 'purge_delay'); a positive value is
    // its default delay in ms, −1 means never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain getter/setter of a process-wide allocator option.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) > 0 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let matches = Cli::command().get_matches();
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
    let result = match cli.command {
        None => rr_app::gui::run(cli.file, cli.renderer, cli.screenshot),
        Some(Command::Info(args)) => rr_app::cli::info(&args),
        Some(Command::Render(args)) => rr_app::cli::render(&args),
        Some(Command::Overviews(args)) => rr_app::cli::overviews(&args),
        Some(Command::Ask(args)) => rr_app::ask::run(&args),
        Some(Command::Segment(args)) => rr_app::segment::run(&args),
        Some(Command::Polygonize(args)) => rr_app::contour::polygonize(&args),
        Some(Command::Sweep(args)) => rr_app::sweep::run(&args),
        Some(Command::Eval(args)) => rr_app::eval::run(&args),
        Some(Command::Serve(args)) => rr_app::serve::run(&args),
        Some(Command::Models(args)) => rr_app::models::run(&args),
        Some(Command::Bench(args)) => rr_app::bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remote-reasoner: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
