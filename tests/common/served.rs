//! `remote-reasoner serve` with the tiny trained checkpoint, started for a test.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The tiny trained checkpoint the server runs.
pub fn model() -> String {
    fixture("qwen2_5_vl_tiny_trained")
}

/// A checkpoint under tests/fixtures.
pub fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name).display().to_string()
}

/// A running `serve`; killed on drop. Its log (at info level) is collected.
pub struct Served {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// `host:port` of the server.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's resident memory in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// Starts `serve` with `extra` flags; Err(stderr) when it refuses to start.
pub fn start(extra: &[&str]) -> Result<Served, String> {
    start_with(&model(), extra)
}

/// Starts `serve` on the checkpoint `model` with `extra` flags.
pub fn start_with(model: &str, extra: &[&str]) -> Result<Served, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(["serve", "--model", model])
        .args(extra)
        .env("RR_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr all along: a full pipe would block the server.
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, mut stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => Ok(Served { child, url: url.to_owned(), log }),
        None => {
            let _ = child.wait();
            let _ = reader.join();
            let err = log.lock().unwrap().clone();
            Err(err)
        }
    }
}
