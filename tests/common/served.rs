//! `remote-reasoner serve` with the tiny trained checkpoint, started for a test.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The tiny trained checkpoint the server runs.
pub fn model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2_5_vl_tiny_trained")
        .display()
        .to_string()
}

/// A running `serve`; killed on drop.
pub struct Served {
    child: Child,
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` with `extra` flags; Err(stderr) when it refuses to start.
pub fn start(extra: &[&str]) -> Result<Served, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(["serve", "--model", &model()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok(Served { child, url: url.to_owned() }),
        None => {
            let out = child.wait_with_output().unwrap();
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
