//! The bodies of the fuzz targets, one function each, shared with
//! `tests/fuzz_regressions.rs` so that a finding replays on stable through
//! exactly the code the fuzzer ran. Each asserts what must hold for any input;
//! the file-reading ones write the input into `scratch` first and say whether
//! the input was refused.

#![allow(dead_code)] // each target uses one of them

use std::path::Path;

/// The model's reply → think / answer / boxes → boxes in source pixels: boxes
/// stay finite and inside the source image. The first 4 bytes pick the sizes.
pub fn answer_parser(data: &[u8]) {
    use engine::reasoner::parse::{parse_boxes, split, to_source};
    if data.len() < 4 {
        return;
    }
    let resized = (usize::from(data[0]) * 8 + 1, usize::from(data[1]) * 8 + 1);
    let source = (usize::from(data[2]) * 40 + 1, usize::from(data[3]) * 40 + 1);
    let (boxes, _) = parse_boxes(&split(&String::from_utf8_lossy(&data[4..])).answer);
    for b in to_source(&boxes, resized, source).0 {
        assert!(b.x1.is_finite() && b.y1.is_finite() && b.x2.is_finite() && b.y2.is_finite(), "{b:?}");
        assert!(
            b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= source.0 as f64 && b.y2 <= source.1 as f64,
            "{b:?} in {source:?}"
        );
    }
}

/// A `torch.save` archive read without running pickle code. True when refused.
pub fn pt_reader(data: &[u8], scratch: &Path) -> bool {
    let path = scratch.join("model.pt");
    std::fs::write(&path, data).expect("scratch file");
    engine::models::pth::read(&path, Some("model"), &candle_core::Device::Cpu).is_err()
}

/// A checkpoint's `config.json` (then the loader's memory check), processor or
/// generation settings, or a safetensors file: the first byte picks which.
pub fn checkpoint_config(data: &[u8], scratch: &Path) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            if let Ok(config) = engine::models::qwen2_5_vl::Config::from_json(&String::from_utf8_lossy(rest)) {
                let _ = config.parameter_count();
                let _ = config.quantizable();
            }
        }
        1 => {
            let _ = serde_json::from_slice::<engine::reasoner::processor::PreprocessorConfig>(rest);
            let _ = serde_json::from_slice::<engine::reasoner::generate::GenerationConfig>(rest);
        }
        _ => {
            let path = scratch.join("model.safetensors");
            std::fs::write(&path, rest).expect("scratch file");
            let _ = engine::models::read_checkpoint(&path, &candle_core::Device::Cpu);
            let _ = engine::models::tensor_names(&[path]);
        }
    }
}

/// A chat-completions body and Authorization header as `serve` checks them:
/// a typed 4xx, or a request within the limits.
pub fn openai_request(data: &[u8]) {
    use engine::server::request::{RequestLimits, bearer_token, parse};
    let limits = RequestLimits { max_image_pixels: 1 << 20, max_tokens: 512 };
    match parse(data, "system", &limits) {
        Ok(r) => {
            let (w, h) = r.image_size;
            assert!(u64::from(w) * u64::from(h) <= limits.max_image_pixels);
            assert!(r.max_tokens.is_none_or(|n| (1..=512).contains(&n)));
            assert!(r.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
        }
        Err(e) => assert!(matches!(e.status, 400 | 413 | 422), "{e}"),
    }
    let _ = bearer_token(&String::from_utf8_lossy(data));
}

/// A remote server's streamed reply as the client reads it: pieces, an end or
/// a named error; never more text than was sent.
pub fn sse_reader(data: &[u8]) {
    use engine::openai::{StreamItem, read_event_stream};
    let mut text = String::new();
    let _ = read_event_stream(std::io::Cursor::new(data), |item| {
        if let StreamItem::Text(t) = item {
            text.push_str(&t);
        }
        std::ops::ControlFlow::Continue(())
    });
    assert!(text.len() <= data.len());
}

/// A project file as the workbench opens it: a project or a named error.
pub fn project_load(data: &[u8], scratch: &Path) {
    let path = scratch.join("project.gpkg");
    std::fs::write(&path, data).expect("scratch file");
    let _ = engine::project::is_project(&path);
    let _ = engine::project::load(&path);
}
