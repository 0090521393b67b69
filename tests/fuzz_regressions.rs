//! Replays the fuzzing seeds (`fuzz/seeds/TARGET`) and every input a fuzzer
//! found a bug with (`tests/fixtures/fuzz/TARGET`) through the same entry
//! points as the cargo-fuzz targets in `fuzz/`, so a fixed bug stays fixed
//! without a nightly toolchain. Each must end in a value or a named error.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

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

fn scratch(name: &str, data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    (dir, path)
}

#[test]
fn answer_parser() {
    use engine::reasoner::parse::{parse_boxes, split, to_source};
    for (p, data) in inputs("answer_parser") {
        if data.len() < 4 {
            continue;
        }
        let resized = (usize::from(data[0]) * 8 + 1, usize::from(data[1]) * 8 + 1);
        let source = (usize::from(data[2]) * 40 + 1, usize::from(data[3]) * 40 + 1);
        let (boxes, _) = parse_boxes(&split(&String::from_utf8_lossy(&data[4..])).answer);
        for b in to_source(&boxes, resized, source).0 {
            assert!(b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= source.0 as f64 && b.y2 <= source.1 as f64, "{p:?}: {b:?}");
        }
    }
}

#[test]
fn pt_reader() {
    for (p, data) in inputs("pt_reader") {
        let (_dir, path) = scratch("model.pt", &data);
        let read = engine::models::pth::read(&path, Some("model"), &candle_core::Device::Cpu);
        if p.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fuzz")) {
            // Refused, never allocated for (the checks themselves are unit-tested in `models::pth`).
            assert!(read.is_err(), "{p:?}: a broken checkpoint must be refused");
        }
    }
}

#[test]
fn checkpoint_config() {
    for (_, data) in inputs("checkpoint_config") {
        let Some((&which, rest)) = data.split_first() else { continue };
        match which % 3 {
            0 => {
                if let Ok(config) = engine::models::qwen2_5_vl::Config::from_json(&String::from_utf8_lossy(rest)) {
                    let _ = config.parameter_count();
                    let _ = config.text_projection_count();
                }
            }
            1 => {
                let _ = serde_json::from_slice::<engine::reasoner::processor::PreprocessorConfig>(rest);
                let _ = serde_json::from_slice::<engine::reasoner::generate::GenerationConfig>(rest);
            }
            _ => {
                let (_dir, path) = scratch("model.safetensors", rest);
                let _ = engine::models::read_checkpoint(&path, &candle_core::Device::Cpu);
                let _ = engine::models::tensor_names(&[path]);
            }
        }
    }
}

#[test]
fn openai_request() {
    use engine::server::request::{RequestLimits, parse};
    let limits = RequestLimits { max_image_pixels: 1 << 20, max_tokens: 512 };
    for (p, data) in inputs("openai_request") {
        if let Err(e) = parse(&data, "system", &limits) {
            assert!(matches!(e.status, 400 | 413 | 422), "{p:?}: {e}");
        }
    }
}

#[test]
fn sse_reader() {
    for (_, data) in inputs("sse_reader") {
        let _ = engine::openai::read_event_stream(std::io::Cursor::new(&data), |_| std::ops::ControlFlow::Continue(()));
    }
}

#[test]
fn project_load() {
    for (_, data) in inputs("project_load") {
        let (_dir, path) = scratch("project.gpkg", &data);
        let _ = engine::project::is_project(&path);
        let _ = engine::project::load(&path);
    }
}
