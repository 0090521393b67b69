//! Parity of the candle SAM 2.1 image predictor with PyPI `sam2` 1.1.0's
//! `SAM2ImagePredictor`, on SAM 2.1 tiny with the seeded weights of
//! `tools/make_sam2_fixtures.py` (rebuilt here, written as a checkpoint file and
//! loaded through `Sam2::load` like a user's), and of the pickle-free `.pt` reader.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use engine::base::RgbImage;
use engine::models::EncoderPrecision;
use engine::models::sam2::{self, Sam2};
use serde_json::Value;

#[path = "common/sam_cases.rs"]
mod sam_cases;
use sam_cases::*;

fn dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sam2_tiny");
    assert!(d.join("expected.json").is_file(), "FIXTURE MISSING: {} (tools/make_sam2_fixtures.py)", d.display());
    d
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap()
}

/// The seeded checkpoint, written as safetensors and loaded through the user path.
fn model() -> Sam2 {
    model_at(EncoderPrecision::F32)
}

fn model_at(precision: EncoderPrecision) -> Sam2 {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sam2.1_hiera_tiny_seeded.safetensors");
    sam2::synthetic::save_checkpoint(&dir().join("weights.json"), &path).unwrap();
    let m = Sam2::load(&path, &Device::Cpu, precision).unwrap();
    assert_eq!(m.geometry, sam2::Geometry::Tiny);
    m
}

fn image() -> RgbImage {
    rgb_png(&dir().join("image.png"))
}

#[test]
fn pt_reader_handles_the_layouts_checkpoints_hold() {
    let tensors = engine::models::pth::read(&dir().join("format_check.pt"), Some("model"), &Device::Cpu).unwrap();
    let want: Value = serde_json::from_str(&std::fs::read_to_string(dir().join("format_check.json")).unwrap()).unwrap();
    for (name, w) in want.as_object().unwrap() {
        let t = &tensors[name];
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let got: Vec<f32> = t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, f32s(&w["values"]), "{name}");
    }
    // Foreign and broken files are named, never a panic.
    let e = Sam2::load(&dir().join("format_check.pt"), &Device::Cpu, EncoderPrecision::F32).unwrap_err().to_string();
    assert!(e.contains("format_check.pt") && e.contains("not a SAM 2 checkpoint"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"PK\x03\x04 this is no zip").unwrap();
    let e = Sam2::load(&junk, &Device::Cpu, EncoderPrecision::F32).unwrap_err().to_string();
    assert!(e.contains("junk.pt") && e.contains("PyTorch checkpoint"), "{e}");
    std::fs::write(&junk, b"hello").unwrap();
    assert!(Sam2::load(&junk, &Device::Cpu, EncoderPrecision::F32).unwrap_err().to_string().contains("junk.pt"));
    let e = Sam2::load(&tmp.path().join("absent.pt"), &Device::Cpu, EncoderPrecision::F32).unwrap_err().to_string();
    assert!(e.contains("absent.pt") && e.contains("not found"), "{e}");
}

#[test]
fn masks_logits_and_scores_equal_sam2() {
    let exp = expected();
    let m = model();
    let img = image();
    let emb = m.encode(&img).unwrap();
    let sample = embed_sample(&emb);
    let d = max_abs(&sample, &f32s(&exp["image_embed_sample"]));
    let mean_abs = emb.image.abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    eprintln!("image embedding: sample max |Δ| = {d:e}, mean |x| {mean_abs} vs {}", exp["image_embed_mean_abs"]);
    assert!(d < 1e-3, "{d}");

    let tensors = candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap();
    for case in ["single", "multi", "refine"] {
        let c = &exp["cases"][case];
        let mut ps = prompts(c);
        if case == "refine" {
            let prev: Vec<f32> = tensors["single.low_res"].flatten_all().unwrap().to_vec1().unwrap();
            ps[0].mask_input = Some(prev);
        }
        let preds = m.predict(&emb, &ps, false).unwrap();
        let want: &Tensor = &tensors[&format!("{case}.low_res")];
        let want = want.reshape((ps.len(), sam2::LOW_RES * sam2::LOW_RES)).unwrap();
        for (i, p) in preds.iter().enumerate() {
            let w: Vec<f32> = want.get(i).unwrap().to_vec1().unwrap();
            let d = max_abs(&p.low_res, &w);
            let iou = c["iou"][i].as_f64().unwrap() as f32;
            let mask = sam2::upscale_mask(&p.low_res, (500, 340));
            let agree = agreement(&mask, &mask_png(&dir().join(format!("{case}_mask{i}.png"))));
            eprintln!("{case}[{i}]: low-res max |Δ| = {d:e}, IoU {} vs {iou}, mask agreement {:.5}", p.iou, agree);
            assert!(d < 1e-3, "{case}[{i}] low-res logits differ by {d}");
            assert!((p.iou - iou).abs() < 1e-4, "{case}[{i}] IoU {} vs {iou}", p.iou);
            assert!(agree >= 0.999, "{case}[{i}] mask agreement {agree}");
        }
        if case == "single" {
            let s = c["object_score"].as_f64().unwrap() as f32;
            let got = preds[0].object_score.expect("SAM 2 scores objects");
            assert!((got - s).abs() < 1e-3, "{got} vs {s}");
        }
    }
}

/// The encoder with bf16 products (the default on CPUs with AVX-512 BF16, plain
/// loops elsewhere) stays within bounds of `sam2`'s f32 results: its masks agree
/// with the reference's on nearly every pixel and the scores barely move.
#[test]
fn bf16_encoder_stays_close_to_sam2() {
    let exp = expected();
    let m = model_at(EncoderPrecision::Bf16);
    let emb = m.encode(&image()).unwrap();
    let mean_abs = exp["image_embed_mean_abs"].as_f64().unwrap() as f32;
    let d = max_abs(&embed_sample(&emb), &f32s(&exp["image_embed_sample"]));
    eprintln!("bf16 image embedding: sample max |Δ| = {d:e} (mean |x| {mean_abs})");
    assert!(d < 0.1 * mean_abs.max(1e-3), "{d}");
    for case in ["single", "multi"] {
        let c = &exp["cases"][case];
        let preds = m.predict(&emb, &prompts(c), false).unwrap();
        for (i, p) in preds.iter().enumerate() {
            let iou = c["iou"][i].as_f64().unwrap() as f32;
            let mask = sam2::upscale_mask(&p.low_res, (500, 340));
            let agree = agreement(&mask, &mask_png(&dir().join(format!("{case}_mask{i}.png"))));
            eprintln!("bf16 {case}[{i}]: IoU {} vs {iou}, mask agreement {agree:.5}", p.iou);
            assert!((p.iou - iou).abs() < 0.01, "{case}[{i}] IoU {} vs {iou}", p.iou);
            assert!(agree >= 0.995, "{case}[{i}] mask agreement {agree}");
        }
    }
}

/// The official `.pt` the script writes (156 MB, not committed) loads to the same model.
#[test]
fn official_checkpoint_file_loads_the_same_weights_when_present() {
    let pt = dir().join("sam2.1_hiera_tiny_random.pt");
    if !pt.is_file() {
        eprintln!("SKIPPED: {} is not here (made by tools/make_sam2_fixtures.py, too large to commit)", pt.display());
        return;
    }
    let from_pt = engine::models::pth::read(&pt, Some("model"), &Device::Cpu).unwrap();
    let seeded = sam2::synthetic::weights_from_spec(&dir().join("weights.json"), &Device::Cpu).unwrap();
    for (name, t) in &seeded {
        let d = (from_pt[name].clone() - t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    Sam2::load(&pt, &Device::Cpu, EncoderPrecision::F32).unwrap();
}
