//! What the command-line tests share: where the repository and the shared data
//! are, running the binary, reading its JSON.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A shared sample raster: `../shared/data` beside the clone, or `$RR_SHARED_DATA`.
pub fn shared(name: &str) -> PathBuf {
    std::env::var_os("RR_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| root().join("../shared/data")).join(name)
}

pub fn rr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remote-reasoner")).args(args).output().unwrap()
}

/// Runs the binary, asserts success, parses stdout as JSON.
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = rr(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
