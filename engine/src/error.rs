//! Errors the engine reports. Every variant that concerns a file names it, so a
//! message shown to the analyst (or printed by the CLI) says what and where.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },

    #[error("{path}: not a raster GDAL can read ({reason})")]
    NotARaster { path: PathBuf, reason: String },

    #[error("{path}: unsupported raster: {reason}")]
    Unsupported { path: PathBuf, reason: String },

    #[error("{path}: cannot read pixels (file truncated or corrupt?): {reason}")]
    Read { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Write { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Model { path: PathBuf, reason: String },

    #[error("{path}: not a RemoteReasoner project: {reason}")]
    NotAProject { path: PathBuf, reason: String },

    #[error("model computation failed: {0}")]
    Compute(String),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("no raster open with id {0}")]
    UnknownRaster(u64),

    #[error("cancelled")]
    Cancelled,

    #[error("internal error: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Compute(e.to_string())
    }
}

/// Engine-wide result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
