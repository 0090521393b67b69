//! A raster read over the network gets a thread of its own, which opens it
//! and owns its dataset: a slow range request then holds up only that
//! raster's tiles, never the engine thread (other rasters, questions, the GUI).
//!
//! Tile requests coalesce as on the engine thread: a new one replaces the
//! unfinished one, checked between tiles.

use std::collections::VecDeque;
use std::path::PathBuf;

use crossbeam_channel::{Receiver, TryRecvError};

use super::{Raster, RasterInfo, RenderParams, Tile};
use crate::base::guard;
use crate::error::EngineError;
use crate::tiles::TileKey;

/// Work for a reader thread.
pub enum ReaderMsg {
    /// Render `keys` (replacing any unfinished tile request).
    Tiles { job: u64, params: RenderParams, hash: u64, keys: VecDeque<TileKey> },
    /// Run anything else that needs the dataset (reading a window for a question).
    Run(Box<dyn FnOnce(&Raster) + Send>),
}

impl std::fmt::Debug for ReaderMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tiles { job, keys, .. } => write!(f, "Tiles {{ job: {job}, keys: {} }}", keys.len()),
            Self::Run(_) => f.write_str("Run"),
        }
    }
}

/// What a reader thread reports.
#[derive(Debug)]
pub enum ReaderReport {
    Opened(Result<Box<RasterInfo>, EngineError>),
    Tile { job: u64, hash: u64, result: Result<Tile, EngineError> },
    TilesDone { job: u64 },
}

/// Starts the thread for `path`; it reports through `report` and stops when
/// the sender side of `inbox` is dropped.
pub fn spawn(
    name: String,
    path: PathBuf,
    inbox: Receiver<ReaderMsg>,
    report: impl Fn(ReaderReport) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || run(&path, &inbox, &report)).map(|_| ())
}

fn run(path: &std::path::Path, inbox: &Receiver<ReaderMsg>, report: &dyn Fn(ReaderReport)) {
    let raster = match guard(|| Raster::open(path)) {
        Ok(r) => r,
        Err(e) => return report(ReaderReport::Opened(Err(e))),
    };
    report(ReaderReport::Opened(Ok(Box::new(raster.info().clone()))));
    let mut tiles: Option<(u64, RenderParams, u64, VecDeque<TileKey>)> = None;
    loop {
        let msg = if tiles.is_some() {
            match inbox.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            match inbox.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        };
        match msg {
            Some(ReaderMsg::Tiles { job, params, hash, keys }) => tiles = Some((job, params, hash, keys)),
            Some(ReaderMsg::Run(f)) => {
                // A panic in one job must not end the raster's thread.
                let _ = guard(|| {
                    f(&raster);
                    Ok(())
                });
            }
            None => {
                let Some((job, params, hash, queue)) = tiles.as_mut() else { continue };
                let (job, hash) = (*job, *hash);
                let Some(key) = queue.pop_front() else {
                    tiles = None;
                    report(ReaderReport::TilesDone { job });
                    continue;
                };
                let result = guard(|| raster.render_tile(key, params));
                if result.is_err() {
                    tiles = None;
                }
                report(ReaderReport::Tile { job, hash, result });
            }
        }
    }
}
