//! The command line: with no subcommand, the desktop workbench; subcommands run
//! headless. One module per subcommand, shared arguments in [`args`].

pub mod args;
pub mod ask;
pub mod contour;
pub mod eval;
pub mod find;
pub mod models;
pub mod raster;
pub mod segment;
pub mod serve;
pub mod sweep;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::gui::RendererChoice;

/// RemoteReasoner: geospatial reasoning workbench for remote-sensing imagery.
#[derive(Debug, Parser)]
#[command(name = "remote-reasoner", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Raster, or project (.gpkg saved by the workbench or `ask --save-project`), to open (GUI only).
    pub file: Option<PathBuf>,
    /// GPU backend of the window.
    #[arg(long, value_enum, default_value = "wgpu", env = "RR_RENDERER")]
    pub renderer: RendererChoice,
    /// Save a PNG of the window once FILE's first view has loaded, then quit (GUI only).
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a raster's metadata.
    Info(raster::InfoArgs),
    /// Render a window of a raster to PNG through the viewer's tile path.
    Render(raster::RenderArgs),
    /// Build external overviews (.ovr) for a raster.
    Overviews(raster::OverviewArgs),
    /// Ask a RemoteReasoner checkpoint about a window of a raster (region, pixel, contour, vqa, caption).
    Ask(Box<ask::AskArgs>),
    /// Masks for boxes (and clicks) on a raster window: SAM 2.1 (or SAM v1 / MobileSAM), or the watershed fallback;
    /// with --text / --exemplar, every instance of a concept (SAM 3).
    Segment(segment::SegmentArgs),
    /// Trace a mask raster into georeferenced polygons with holes (GPKG, Shapefile, GeoJSON, FlatGeobuf).
    Polygonize(contour::PolygonizeArgs),
    /// Serve a checkpoint behind the OpenAI chat-completions API (/v1/models, /v1/chat/completions).
    Serve(serve::ServeArgs),
    /// Ask about a whole scene tile by tile, merged across seams, resumable.
    Sweep(Box<sweep::SweepArgs>),
    /// Evaluate on an EarthReason-layout dataset (gIoU, cIoU, Pr@τ, Acc@0.5); resumable.
    Eval(Box<eval::EvalArgs>),
    /// Download (`pull`) and list (`list`) checkpoints.
    Models(models::ModelsArgs),
    /// Print shell completions to stdout (e.g. `remote-reasoner completions bash > /etc/bash_completion.d/remote-reasoner`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: what packaging installs as remote-reasoner.1.
    #[command(hide = true)]
    Manpage,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => crate::gui::run(cli.file, cli.renderer, cli.screenshot),
        Some(Command::Info(args)) => raster::info(&args),
        Some(Command::Render(args)) => raster::render(&args),
        Some(Command::Overviews(args)) => raster::overviews(&args),
        Some(Command::Ask(args)) => ask::run(&args),
        Some(Command::Segment(args)) => segment::run(&args),
        Some(Command::Polygonize(args)) => contour::polygonize(&args),
        Some(Command::Sweep(args)) => sweep::run(&args),
        Some(Command::Eval(args)) => eval::run(&args),
        Some(Command::Serve(args)) => serve::run(&args),
        Some(Command::Models(args)) => models::run(&args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "remote-reasoner", &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Manpage) => Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?),
    }
}
