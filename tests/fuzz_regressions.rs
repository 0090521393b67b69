//! Replays the fuzzing seeds (`fuzz/seeds/TARGET`) and every input a fuzzer
//! found a bug with (`tests/fixtures/fuzz/TARGET`) through the cargo-fuzz targets'
//! own bodies (`fuzz/entries.rs`), so a fixed bug stays fixed
//! without a nightly toolchain. Each must end in a value or a named error.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

#[path = "../fuzz/entries.rs"]
mod entries;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for dir in [root.join("fuzz/seeds").join(target), root.join("tests/fixtures/fuzz").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no inputs for {target}");
    out
}

#[test]
fn answer_parser() {
    for (_, data) in inputs("answer_parser") {
        entries::answer_parser(&data);
    }
}

#[test]
fn pt_reader() {
    let findings = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fuzz");
    for (p, data) in inputs("pt_reader") {
        let dir = tempfile::tempdir().unwrap();
        let refused = entries::pt_reader(&data, dir.path());
        // Refused, never allocated for (the checks themselves are unit-tested in `models::pth`).
        assert!(refused || !p.starts_with(&findings), "{p:?}: a broken checkpoint must be refused");
    }
}

#[test]
fn checkpoint_config() {
    for (_, data) in inputs("checkpoint_config") {
        entries::checkpoint_config(&data, tempfile::tempdir().unwrap().path());
    }
}

#[test]
fn openai_request() {
    for (_, data) in inputs("openai_request") {
        entries::openai_request(&data);
    }
}

#[test]
fn sse_reader() {
    for (_, data) in inputs("sse_reader") {
        entries::sse_reader(&data);
    }
}

#[test]
fn project_load() {
    for (_, data) in inputs("project_load") {
        entries::project_load(&data, tempfile::tempdir().unwrap().path());
    }
}
