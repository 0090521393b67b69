//! RemoteReasoner's engine: every piece of logic the workbench has, with no UI
//! dependency. The GUI and the command line both drive it.
//!
//! - [`raster`]: GDAL rasters — metadata, windowed reads at any overview level, stretch.
//! - [`geo`]: the affine geotransform and its inverse.
//! - [`tiles`]: the tile pyramid and the LRU tile cache.
//! - [`overviews`]: building overviews as a cancellable job.
//! - [`synthetic`]: generated rasters for tests and benchmarks.
//! - [`hub`]: downloading checkpoints (Hugging Face hub protocol) and listing them.
//! - [`models`]: candle ports of the models (Qwen2.5-VL) and checkpoint loading.
//! - [`reasoner`]: asking a RemoteReasoner checkpoint about an image: prompts,
//!   preprocessing, streamed decoding, parsing the answer into boxes.
//! - [`segment`]: pixel-level reasoning — boxes to masks with SAM 2.1 (or the
//!   watershed fallback without weights), click refinement, the embedding cache.
//! - [`contour`]: masks to polygons with holes along pixel edges, simplification,
//!   the paper's line map.
//! - [`features`], [`export`]: results as GIS features with provenance, written
//!   through GDAL/OGR (GeoPackage, Shapefile, GeoJSON, FlatGeobuf).
//! - [`edit`]: the analyst's working set of features with undoable edits and hit testing.
//! - [`project`]: projects as GeoPackages (features + settings), recovery file.
//! - [`openai`], [`server`], [`reasoner::remote`]: the OpenAI chat-completions dialect;
//!   `serve` (our model behind it) and the remote backend (any server speaking it).
//! - [`eval`]: EarthReason samples and the field's metrics (gIoU, cIoU, Pr@τ, Acc@0.5).
//! - [`sweep`]: a question over a whole scene, tile by tile, merged across seams, resumable.
//! - [`worker`]: the engine thread, its typed requests and events.

pub mod atomic;
pub mod base;
pub mod cache;
pub mod contour;
pub mod edit;
pub mod error;
pub mod eval;
pub mod export;
pub mod features;
pub mod geo;
pub mod hub;
pub mod models;
pub mod openai;
pub mod overviews;
pub mod path_serde;
pub mod pipeline;
pub mod project;
pub mod raster;
pub mod reasoner;
pub mod remote;
pub mod segment;
pub mod server;
pub mod sweep;
#[cfg(any(test, feature = "synthetic"))]
pub mod synthetic;
pub mod tiles;
pub mod worker;

pub use error::{EngineError, Result};
pub use worker::{Engine, EngineConfig, Event, EventKind, JobId, RasterId, Request, RequestKind};

/// Where the program keeps state between runs (recovery file, export journal):
/// `$XDG_STATE_HOME/remote-reasoner`, by default `~/.local/state/remote-reasoner`.
pub fn state_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("remote-reasoner")
}

/// One-time GDAL set-up: register drivers and route GDAL's own messages to
/// `tracing` instead of stderr, so the only thing a user reads is our error.
pub fn gdal_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gdal::DriverManager::register_all();
        gdal::config::set_error_handler(|class, number, msg| {
            tracing::debug!(target: "gdal", ?class, number, "{msg}");
        });
    });
}
