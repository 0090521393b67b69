//! Parity of the candle Qwen2.5-VL port with transformers, on the tiny random-weight
//! checkpoint made by `tools/make_qwen_fixtures.py` (committed in
//! `tests/fixtures/qwen2_5_vl_tiny`). Every check loads the checkpoint through the
//! same `Reasoner::load` a real RemoteReasoner-7B directory goes through.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use engine::base::Goal;
use engine::base::RgbImage;
use engine::models::qwen2_5_vl::rope_index;
use engine::reasoner::generate::{Decoding, Sampler};
use engine::reasoner::processor;
use engine::reasoner::{AskOptions, LoadOptions, Reasoner, prompt};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_5_vl_tiny");
    assert!(
        dir.join("expected.json").is_file(),
        "FIXTURE MISSING: {} — regenerate it with `python tools/make_qwen_fixtures.py` (see its header)",
        dir.display()
    );
    dir
}

struct Fixture {
    dir: PathBuf,
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dir = fixture_dir();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    Fixture { dir, json, tensors }
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load(dir: &Path) -> Reasoner {
    Reasoner::load(dir, &LoadOptions { precision: Some("f32".into()), ..Default::default() }).unwrap()
}

fn png(path: &Path) -> RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    RgbImage::new(img.width() as usize, img.height() as usize, img.into_raw()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn pixel_values_equal_the_processor() {
    let f = fixture();
    let r = load(&f.dir);
    let pre = r.preprocessor_for(&AskOptions::default());
    for (name, tol) in [("plain", 1e-5f32), ("resized", 1e-5)] {
        let p = processor::preprocess(&png(&f.dir.join(format!("{name}.png"))), &pre).unwrap();
        let want = &f.tensors[&format!("{name}.pixel_values")];
        let got =
            Tensor::from_vec(p.pixel_values.clone(), (p.pixel_values.len() / p.patch_dim, p.patch_dim), &Device::Cpu)
                .unwrap();
        let grid: Vec<usize> = f.json["images"][name]["grid_thw"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(p.grid_thw.to_vec(), grid, "{name}");
        let d = max_abs_diff(&got, want);
        eprintln!("pixel values ({name}): max |Δ| = {d:e}");
        // The resize reproduces Pillow's fixed-point bicubic exactly, so the resized
        // image is held to the same bound as the one that needs no resize.
        assert!(d < tol, "{name}: max |Δ| = {d}");
    }
}

#[test]
fn prompt_tokens_and_rope_positions_equal_transformers() {
    let f = fixture();
    let r = load(&f.dir);
    let query = f.json["query"].as_str().unwrap();
    let chat = prompt::chat(&r.system_prompt, Goal::Region, query);
    assert_eq!(chat, f.json["chat"].as_str().unwrap());
    let want = u32s(&f.json["input_ids"]);
    let tokens = want.iter().filter(|&&t| t == r.config().image_token_id).count();
    assert_eq!(r.prompt_ids(&chat, tokens).unwrap(), want);
    let grid = [1, 12, 16];
    let (pos, next) = rope_index(&want, r.config().image_token_id, &[grid], 2).unwrap();
    for (axis, got) in pos.iter().enumerate() {
        let expected: Vec<i64> =
            f.json["position_ids"][axis].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got, &expected, "axis {axis}");
    }
    assert_eq!(next, want.len() as i64 + f.json["rope_delta"].as_i64().unwrap());
}

/// Vision tower, first-step logits, 32 greedy tokens (with and without a
/// repetition penalty) and the logits after them.
#[test]
fn vision_logits_and_greedy_tokens_equal_transformers() {
    let f = fixture();
    let mut r = load(&f.dir);
    let pixels = &f.tensors["plain.pixel_values"];
    let grid = [[1usize, 12, 16]];
    let model = r.model_mut();
    let embeds = model.encode_images(pixels, &grid).unwrap();
    let d = max_abs_diff(&embeds, &f.tensors["plain.image_embeds"]);
    eprintln!("vision tower: max |Δ| = {d:e}");
    assert!(d < 1e-4, "vision tower: max |Δ| = {d}");

    let ids = u32s(&f.json["input_ids"]);
    let logits = model.prefill(&ids, Some(&embeds), &grid).unwrap();
    let d = max_abs_diff(&logits.squeeze(0).unwrap(), &f.tensors["plain.first_logits"]);
    eprintln!("first-step logits: max |Δ| = {d:e}");
    assert!(d < 1e-4, "first-step logits: max |Δ| = {d}");

    for (key, penalty) in [("greedy_tokens", 1.0f32), ("greedy_penalty_1_5_tokens", 1.5)] {
        let want = u32s(&f.json[key]);
        let mut sampler = Sampler::new(&Decoding { repetition_penalty: penalty, ..Decoding::greedy(32) });
        let mut logits = model.prefill(&ids, Some(&embeds), &grid).unwrap();
        let mut context = ids.clone();
        let mut got = Vec::new();
        for _ in 0..32 {
            let t = sampler.next(&logits, &context).unwrap();
            got.push(t);
            context.push(t);
            logits = model.step(t).unwrap();
        }
        assert_eq!(got, want, "{key}");
        if penalty == 1.0 {
            let d = max_abs_diff(&logits.squeeze(0).unwrap(), &f.tensors["plain.logits_after_32"]);
            eprintln!("logits after 32 tokens: max |Δ| = {d:e}");
            assert!(d < 1e-4, "logits after 32 decoded tokens: max |Δ| = {d}");
        }
    }
}

#[test]
fn ask_runs_end_to_end_and_streams_the_same_tokens() {
    let f = fixture();
    let mut r = load(&f.dir);
    let img = png(&f.dir.join("plain.png"));
    let opts = AskOptions { decoding: Some(Decoding::greedy(32)), ..Default::default() };
    let mut streamed = String::new();
    let mut stages = Vec::new();
    let answer = r
        .ask(&img, Goal::Region, f.json["query"].as_str().unwrap(), &opts, |e| {
            match e {
                engine::reasoner::AskEvent::Text(t) => streamed.push_str(&t),
                other => stages.push(other),
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(answer.generated_token_ids, u32s(&f.json["greedy_tokens"]));
    assert_eq!(answer.raw_text, f.json["greedy_text"].as_str().unwrap());
    assert_eq!(streamed, answer.raw_text, "the stream adds up to the text");
    assert_eq!(stages.len(), 2);
    assert_eq!(answer.resized, (224, 168));
    assert_eq!(answer.prompt_tokens, u32s(&f.json["input_ids"]).len());
    assert!(answer.timings.ms_per_token > 0.0);

    // Cancelling between tokens stops at once.
    let mut seen = 0;
    let e = r
        .ask(&img, Goal::Region, "x", &opts, |e| {
            if matches!(e, engine::reasoner::AskEvent::Text(_)) {
                seen += 1;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(matches!(e, engine::EngineError::Cancelled) && seen == 1, "{e}");
}

/// Copies the fixture's non-weight files into a fresh directory.
fn copy_without_weights(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "tokenizer.json", "generation_config.json", "preprocessor_config.json"] {
        std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn first_logits(r: &mut Reasoner, f: &Fixture) -> Tensor {
    let grid = [[1usize, 12, 16]];
    let m = r.model_mut();
    let embeds = m.encode_images(&f.tensors["plain.pixel_values"], &grid).unwrap();
    m.prefill(&u32s(&f.json["input_ids"]), Some(&embeds), &grid).unwrap()
}

#[test]
fn sharded_and_transformers_5_layouts_load_to_the_same_model() {
    let f = fixture();
    let want = first_logits(&mut load(&f.dir), &f);
    let weights = candle_core::safetensors::load(f.dir.join("model.safetensors"), &Device::Cpu).unwrap();

    // Two shards and an index, as the hub serves the 7B checkpoint.
    let sharded = copy_without_weights(&f.dir);
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in weights.iter().enumerate() {
        let shard = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        if i % 2 == 0 { &mut a } else { &mut b }.insert(name.clone(), t.clone());
        map.insert(name.clone(), Value::String(shard.into()));
    }
    candle_core::safetensors::save(&a, sharded.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, sharded.path().join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let got = first_logits(&mut load(sharded.path()), &f);
    assert_eq!(max_abs_diff(&got, &want), 0.0);

    // transformers 5 names (model.visual.*, model.language_model.*).
    let renamed_dir = copy_without_weights(&f.dir);
    let renamed: HashMap<String, Tensor> = weights
        .iter()
        .map(|(n, t)| {
            let n = if let Some(rest) = n.strip_prefix("visual.") {
                format!("model.visual.{rest}")
            } else if let Some(rest) = n.strip_prefix("model.") {
                format!("model.language_model.{rest}")
            } else {
                n.clone()
            };
            (n, t.clone())
        })
        .collect();
    candle_core::safetensors::save(&renamed, renamed_dir.path().join("model.safetensors")).unwrap();
    let got = first_logits(&mut load(renamed_dir.path()), &f);
    assert_eq!(max_abs_diff(&got, &want), 0.0);

    // bf16 runs the same graph (looser numbers, same shapes).
    let mut bf16 =
        Reasoner::load(&f.dir, &LoadOptions { precision: Some("bf16".into()), ..Default::default() }).unwrap();
    assert_eq!(bf16.precision, engine::models::Precision::Float(DType::BF16));
    let d = max_abs_diff(&first_logits(&mut bf16, &f), &want);
    eprintln!("bf16 first-step logits vs f32: max |Δ| = {d:e}");
    assert!(d < 0.5, "bf16 drifted by {d}");
}

/// `precision`'s image features and first-step logits on the random checkpoint
/// close to f32's (logits within `tolerance` of the largest f32 logit) (and not equal: the weights were quantized), and the
/// trained checkpoint's boxes unchanged.
fn quantized_stays_close_and_keeps_the_answer(precision: &str, tolerance: f32) {
    let f = fixture();
    let mut reference = load(&f.dir);
    let want = first_logits(&mut reference, &f);
    let opts = LoadOptions { precision: Some(precision.into()), ..Default::default() };
    let mut r = Reasoner::load(&f.dir, &opts).unwrap();
    let largest = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    // The vision tower runs in bf16 under either format where the CPU has AVX-512
    // BF16, else at Q8_0: its image features within 5 % of the largest f32
    // feature (measured 0.38 % in bf16, 1.1 % at Q8_0).
    let grid = [[1usize, 12, 16]];
    let features = |r: &mut Reasoner| r.model_mut().encode_images(&f.tensors["plain.pixel_values"], &grid).unwrap();
    let want_features = features(&mut reference);
    let d = max_abs_diff(&features(&mut r), &want_features);
    let scale = largest(&want_features);
    eprintln!("{precision} image features vs f32: max |Δ| = {d:e} (largest |feature| {scale})");
    assert!(d > 0.0 && d < 0.05 * scale, "{d} vs {scale}");

    let d = max_abs_diff(&first_logits(&mut r, &f), &want);
    let scale = largest(&want);
    eprintln!("{precision} first-step logits vs f32: max |Δ| = {d:e} (largest |logit| {scale})");
    assert!(d > 0.0 && d < tolerance * scale, "{d} vs {scale}");

    let trained = f.dir.with_file_name("qwen2_5_vl_tiny_trained");
    let sample = f.dir.join("../../../assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif");
    let raster = engine::raster::Raster::open(&sample).unwrap();
    let params = engine::raster::RenderParams::default_for(raster.info());
    let view = engine::pipeline::read_window(&raster, engine::base::Window::full(200, 200), &params, 802_816).unwrap();
    let mut r = Reasoner::load(&trained, &opts).unwrap();
    let a = r
        .ask(&view.image, Goal::Region, "where are the ships?", &AskOptions::default(), |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(a.boxes_resized, [[30.0, 40.0, 70.0, 120.0], [100.0, 150.0, 130.0, 190.0]]);
}

/// The language model's projections quantized to Q8_0 as they load. The int8
/// kernel quantises activations per 32 too (as llama.cpp's Q8_0 does), in
/// prefill as in decoding: within 5 % of the largest logit on this random model.
#[test]
fn q8_0_projections_stay_close_and_keep_the_answer() {
    quantized_stays_close_and_keeps_the_answer("q8_0", 0.05);
}

/// Q4_K projections (our 4-bit kernel, rounding as close as ggml's Q4_K: see
/// `quant::int4`): on this 64-wide random checkpoint 4 bits move the first
/// logits by up to 35 % of the largest (measured 28 %; candle's own Q4_K cannot
/// load it, its super-blocks need 256 inputs).
#[test]
fn q4k_projections_stay_close_and_keep_the_answer() {
    quantized_stays_close_and_keeps_the_answer("q4k", 0.35);
}

#[test]
fn broken_checkpoints_give_clear_errors() {
    let f = fixture();
    let err = |dir: &Path| Reasoner::load(dir, &LoadOptions::default()).unwrap_err().to_string();

    let e = err(Path::new("/no/such/model"));
    assert!(e.contains("/no/such/model") && e.contains("not found"), "{e}");

    let dir = copy_without_weights(&f.dir);
    let e = err(dir.path());
    assert!(e.contains("no model.safetensors"), "{e}");

    std::fs::copy(f.dir.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(f.dir.join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 128", "\"intermediate_size\": 256"),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(e.contains("weights do not match config.json") && e.contains("shape"), "{e}");

    std::fs::write(dir.path().join("config.json"), config.replace("qwen2_5_vl\"", "llava\"")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("config.json") && e.contains("\"llava\""), "{e}");

    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = err(dir.path());
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");

    std::fs::copy(f.dir.join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let e = err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

/// The resizes are Pillow's bit for bit, bicubic (this processor) and bilinear
/// (SAM v1's), on 40 size pairs made by Pillow itself
/// (`tools/make_resize_fixtures.py`), including those where Pillow 13 runs the
/// vertical pass first: each pass rounds to 8 bits, so the order shows in the
/// pixels (up to 3 levels on a third of them for 325×286 → 336×280).
#[test]
fn pil_resize_equals_pillow() {
    use engine::models::pil_resize::{Filter, resize_rgb8};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pillow_resize");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let src = png(&dir.join("source.png"));
    let mut vertical_first = 0;
    for case in cases["cases"].as_array().unwrap() {
        let (w, h) = (case["size"][0].as_u64().unwrap() as usize, case["size"][1].as_u64().unwrap() as usize);
        for (name, filter) in [("bicubic", Filter::Bicubic), ("bilinear", Filter::Bilinear)] {
            let want = png(&dir.join(format!("{w}_{h}_{name}.png")));
            let got = resize_rgb8(&src.data, (src.width, src.height), (w, h), filter);
            let differ = got.iter().zip(&want.data).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{name} {w}×{h}: {differ} values differ from Pillow");
        }
        assert_eq!(processor::resize_bicubic(&src, w, h).unwrap(), png(&dir.join(format!("{w}_{h}_bicubic.png"))));
        vertical_first += usize::from(case["vertical_first"].as_bool().unwrap());
    }
    assert!(vertical_first >= 10, "the fixture must exercise the vertical-first order");
}

/// torchvision's antialiased bilinear resize of uint8 images (SAM 3's
/// processor), bit for bit, on 48 size pairs made by torchvision itself: its
/// 16-bit weights take a precision that depends on the largest weight, so
/// shrinking and growing round differently from Pillow.
#[test]
fn torch_resize_equals_torchvision() {
    use engine::models::pil_resize::resize_rgb8_torch;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pillow_resize");
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let size = |v: &Value| (v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize);
    let mut checked = 0;
    for (source, prefix, list) in [("source.png", "", "cases"), ("large.png", "large_", "large")] {
        let src = png(&dir.join(source));
        for case in cases[list].as_array().unwrap() {
            let (w, h) = size(if list == "cases" { &case["size"] } else { case });
            let want = png(&dir.join(format!("{prefix}{w}_{h}_torchvision.png")));
            let got = resize_rgb8_torch(&src.data, (src.width, src.height), (w, h));
            let differ = got.iter().zip(&want.data).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{source} → {w}×{h}: {differ} values differ from torchvision");
            checked += 1;
        }
    }
    assert_eq!(checked, 48);
}
