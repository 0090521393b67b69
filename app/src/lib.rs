//! RemoteReasoner's front ends: the egui workbench and the command line.
//! All logic lives in the `engine` crate; this crate only drives it.

pub mod alloc;
pub mod build_info;
pub mod cli;
pub mod gui;
pub mod png;
