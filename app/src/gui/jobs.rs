//! The jobs the workbench has in flight, one registry for all of them, and the
//! commands the `*_ui` functions return: drawing only decides what to do; the
//! app does it after the frame is drawn ([`super::WorkbenchApp::apply`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use engine::JobId;
use engine::base::{Goal, PixelBox, Window};
use engine::tiles::TileKey;

/// Clicks on a mask, raster pixels; `true` = object.
pub type Clicks = Vec<(f64, f64, bool)>;

/// What a job in flight is for — everything its events need to be applied.
#[derive(Clone, Debug)]
pub enum Pending {
    /// A raster being opened; `project`: it may turn out to be a project.
    Open {
        path: PathBuf,
        project: bool,
    },
    /// A project being loaded; `restoring`: the recovery file (set aside if unreadable).
    LoadProject {
        restoring: bool,
    },
    /// The view's tiles, and those still owed.
    Tiles {
        owed: Vec<TileKey>,
    },
    Overviews {
        fraction: f32,
    },
    /// The question in the query panel ([`super::session::Run`] holds its state).
    Ask,
    /// A box drawn by hand.
    Segment,
    /// A refinement click on a feature, with all its clicks so far.
    Refine {
        feature: u64,
        clicks: Clicks,
    },
    /// A save: where, whether it is the autosave copy, the revision it holds.
    Save {
        path: PathBuf,
        recovery: bool,
        revision: u64,
    },
    Export,
    /// A download: fraction done, what it is fetching; `offer`: one of the
    /// first-run dialog's ([`super::setup::OFFERS`]).
    Pull {
        fraction: f32,
        message: String,
        offer: Option<usize>,
    },
    /// The first-run dialog asking the hub for the sizes of its offers.
    PlanPull,
    Sweep(SweepState),
}

/// A sweep in flight.
#[derive(Clone, Debug)]
pub struct SweepState {
    pub fraction: f32,
    pub message: String,
    pub started: Instant,
    pub goal: Goal,
    pub query: String,
}

/// Jobs in flight by id.
#[derive(Debug, Default)]
pub struct Jobs(HashMap<JobId, Pending>);

impl Jobs {
    pub fn insert(&mut self, job: JobId, pending: Pending) {
        self.0.insert(job, pending);
    }

    pub fn get(&self, job: JobId) -> Option<&Pending> {
        self.0.get(&job)
    }

    pub fn get_mut(&mut self, job: JobId) -> Option<&mut Pending> {
        self.0.get_mut(&job)
    }

    pub fn remove(&mut self, job: JobId) -> Option<Pending> {
        self.0.remove(&job)
    }

    /// The first job that `f` picks (jobs of one kind are rarely more than one).
    pub fn find(&self, f: impl Fn(&Pending) -> bool) -> Option<(JobId, &Pending)> {
        self.0.iter().find(|(_, p)| f(p)).map(|(j, p)| (*j, p))
    }

    /// Whether a job that `f` picks is in flight.
    pub fn any(&self, f: impl Fn(&Pending) -> bool) -> bool {
        self.0.values().any(f)
    }

    /// Drops the jobs `f` picks, returning their ids.
    pub fn remove_where(&mut self, f: impl Fn(&Pending) -> bool) -> Vec<JobId> {
        let ids: Vec<JobId> = self.0.iter().filter(|(_, p)| f(p)).map(|(j, _)| *j).collect();
        for j in &ids {
            self.0.remove(j);
        }
        ids
    }

    /// The sweep in flight.
    pub fn sweep(&self) -> Option<(JobId, &SweepState)> {
        self.0.iter().find_map(|(j, p)| if let Pending::Sweep(s) = p { Some((*j, s)) } else { None })
    }

    /// The download in flight: fraction and what it fetches.
    pub fn pull(&self) -> Option<(f32, &str)> {
        self.0.values().find_map(|p| match p {
            Pending::Pull { fraction, message, .. } => Some((*fraction, message.as_str())),
            _ => None,
        })
    }

    /// The view's tile request and the tiles it still owes.
    pub fn tiles(&self) -> Option<(JobId, &[TileKey])> {
        self.0
            .iter()
            .find_map(|(j, p)| if let Pending::Tiles { owed } = p { Some((*j, owed.as_slice())) } else { None })
    }

    /// The overview build in flight and its fraction done.
    pub fn overviews(&self) -> Option<(JobId, f32)> {
        self.0
            .iter()
            .find_map(|(j, p)| if let Pending::Overviews { fraction } = p { Some((*j, *fraction)) } else { None })
    }

    /// The raster being opened, with the path asked for.
    pub fn opening(&self) -> Option<&PathBuf> {
        self.0.values().find_map(|p| if let Pending::Open { path, .. } = p { Some(path) } else { None })
    }
}

/// What a `*_ui` function asks the app to do once the frame is drawn.
#[derive(Clone, Debug)]
pub enum Command {
    /// The native "open raster" dialog.
    OpenDialog,
    /// A raster, or a project (a `.gpkg` the engine tells apart).
    OpenAny(PathBuf),
    RunQuery,
    /// "Find all": SAM 3 on the area (alone, or from the reasoner's answer).
    FindAll,
    CancelRun,
    RunSweep,
    /// Stop a job (a sweep, overview building).
    Cancel(JobId),
    /// The view's tiles (replacing the request in flight; none: cancel it).
    RequestTiles(Vec<TileKey>),
    BuildOverviews,
    /// A box drawn by hand, segmented on the window around it.
    SegmentBox {
        window: Window,
        bbox: PixelBox,
    },
    /// A refinement click on feature `feature` (raster pixels; `true` = object).
    Refine {
        feature: u64,
        at: [f64; 2],
        positive: bool,
    },
    /// Export every feature with the dialog's choices.
    Export(Box<super::dialogs::ExportDialog>),
    PullModel,
    /// The first-run dialog's choice.
    Setup(super::setup::SetupCommand),
    SaveProject(PathBuf),
    LoadProject(PathBuf),
    /// Restore the recovery file.
    Restore(PathBuf),
}
