//! RemoteReasoner's front ends: the egui workbench and the command line.
//! All logic lives in the `engine` crate; this crate only drives it.

pub mod ask;
pub mod bench;
pub mod bench_contours;
pub mod cli;
pub mod contour;
pub mod eval;
pub mod gui;
pub mod models;
pub mod segment;
pub mod serve;
pub mod sweep;
