//! `remote-reasoner segment` and `ask --task pixel` as a user runs them: masks on
//! a shared GeoTIFF window, georeferenced like the raster, with SAM 2.1 (seeded
//! tiny weights) or the watershed fallback, and bad input in one line.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
use cli::{ok_json, root, rr, shared};

fn gdal_json(path: &Path) -> serde_json::Value {
    let out = Command::new("gdalinfo").arg("-json").arg(path).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn seeded_sam(dir: &Path) -> PathBuf {
    let path = dir.join("sam2.1_hiera_tiny_seeded.safetensors");
    engine::models::sam2::synthetic::save_checkpoint(&root().join("tests/fixtures/sam2_tiny/weights.json"), &path)
        .unwrap();
    path
}

#[test]
fn segment_writes_a_georeferenced_mask_with_sam_or_the_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let src = gdal_json(&image);
    let gt: Vec<f64> = serde_json::from_value(src["geoTransform"].clone()).unwrap();
    for sam in [None, Some(seeded_sam(tmp.path()))] {
        let out = tmp.path().join(if sam.is_some() { "sam.tif" } else { "fallback.tif" });
        let mut args = vec![
            "segment",
            "--image",
            image.to_str().unwrap(),
            "--window",
            "100,50,400,250",
            "--box",
            "150,100,250,200",
            "--point",
            "200,150,+",
            "--box",
            "300,120,420,320",
            "--point",
            "310,130,-",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        if let Some(s) = &sam {
            args.extend(["--sam", s.to_str().unwrap()]);
        }
        let v = ok_json(&args);
        assert_eq!(
            v["method"],
            if sam.is_some() { "sam2.1_hiera_tiny" } else { "watershed fallback (no SAM checkpoint)" }
        );
        assert_eq!(v["masks"].as_array().unwrap().len(), 2);
        assert_eq!(v["masks"][0]["box"], serde_json::json!([150.0, 100.0, 250.0, 200.0]), "raster pixels");
        // The second box reaches past the window (y 320 > 300): clipped to it.
        assert_eq!(v["masks"][1]["box"][3], 300.0);
        assert_eq!(v["georeferenced"], true);
        assert_eq!(sam.is_some(), v["masks"][0]["iou"].is_number());
        let mask = gdal_json(&out);
        assert_eq!(mask["size"], serde_json::json!([400, 250]));
        let mgt: Vec<f64> = serde_json::from_value(mask["geoTransform"].clone()).unwrap();
        assert_eq!(mgt, vec![gt[0] + 100.0 * gt[1], gt[1], gt[2], gt[3] + 50.0 * gt[5], gt[4], gt[5]]);
        assert!(mask["coordinateSystem"]["wkt"].as_str().unwrap().contains("32610"));
        let px = v["mask_pixels"].as_u64().unwrap();
        assert!(px > 0 && px < 400 * 250, "{px}");
    }
    // PNG output, whole raster.
    let png = tmp.path().join("m.png");
    let out =
        rr(&["segment", "--image", image.to_str().unwrap(), "--box", "10,10,60,60", "--out", png.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("watershed fallback"));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (692, 332));
}

#[test]
fn segment_runs_the_sam_v1_alternative() {
    // The small-ViT SAM v1 of the parity fixtures (seeded weights), as a user's file.
    let tmp = tempfile::tempdir().unwrap();
    let sam = tmp.path().join("sam_vit_seeded.safetensors");
    engine::models::sam2::synthetic::save_checkpoint(&root().join("tests/fixtures/sam_v1/vit_weights.json"), &sam)
        .unwrap();
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let out = tmp.path().join("v1.tif");
    let v = ok_json(&[
        "segment",
        "--sam",
        sam.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--window",
        "100,50,400,250",
        "--box",
        "150,100,250,200",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["method"], "sam_vit_96x2");
    assert!(v["masks"][0]["iou"].is_number() && v["masks"][0]["object_score"].is_null());
    assert_eq!(gdal_json(&out)["size"], serde_json::json!([400, 250]));
}

#[test]
fn segment_reports_bad_input_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let out = tmp.path().join("m.png");
    let fail = |args: &[&str]| {
        let o = rr(args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let (image_s, out_s) = (image.to_str().unwrap().to_owned(), out.to_str().unwrap().to_owned());
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["segment", "--image", &image_s, "--out", &out_s].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let fail = |args: Vec<String>| fail(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(fail(base(&["--box", "10,10,10,50"])).contains("zero area"));
    assert!(fail(base(&["--box", "900,10,950,50"])).contains("outside"));
    assert!(fail(base(&["--box", "1,2,3"])).contains("4 numbers"));
    assert!(fail(base(&["--point", "5,5,+", "--box", "1,1,50,50"])).contains("before any --box"));
    assert!(fail(base(&["--box", "1,1,50,50", "--point", "5,5,x"])).contains("+ or -"));
    let e = fail(base(&["--box", "1,1,50,50", "--sam", "/no/sam2.pt"]));
    assert!(e.contains("/no/sam2.pt") && e.contains("not found"), "{e}");
    let junk = tmp.path().join("junk.pt");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    let e = fail(base(&["--box", "1,1,50,50", "--sam", junk.to_str().unwrap()]));
    assert!(e.contains("junk.pt"), "{e}");
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn ask_pixel_chains_the_region_task_into_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ships.tif");
    let model = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    let image = shared("rotterdam_port_rgb_4p5m_spacenet6.tif");
    let v = ok_json(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--task",
        "pixel",
        "--out",
        out.to_str().unwrap(),
        "--json",
        "where are the ships?",
    ]);
    let pixel = &v["pixel"];
    assert_eq!(pixel["method"], "watershed fallback (no SAM checkpoint)");
    assert_eq!(pixel["masks"].as_array().unwrap().len(), 2);
    assert_eq!(pixel["masks"][0]["box"], v["boxes"][0], "one mask per region box");
    assert_eq!(pixel["georeferenced"], true);
    assert_eq!(gdal_json(&out)["size"], serde_json::json!([200, 200]));
    let total: u64 = pixel["masks"].as_array().unwrap().iter().map(|m| m["pixels"].as_u64().unwrap()).sum();
    let merged = pixel["mask_pixels"].as_u64().unwrap();
    assert!(merged > 0 && merged <= total, "OR-merged: {merged} of {total}");
    // --out belongs to the pixel task.
    let o = rr(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--out",
        "/tmp/x.png",
        "ships",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--task pixel"));
}

/// A box prompted with its own centre point explicitly is the same prompt as the
/// box alone (SAM2ImagePredictor's box + one point): `segment` must not add a
/// second centre point to points the analyst gave. With a negative click the
/// prompt is the box and that click only, so the answer differs from both.
#[test]
fn segment_prompts_a_box_with_exactly_the_points_given() {
    let tmp = tempfile::tempdir().unwrap();
    let sam = seeded_sam(tmp.path());
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let run = |extra: &[&str], name: &str| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "segment",
            "--sam",
            sam.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--window",
            "100,50,400,250",
            "--box",
            "150,100,251,203",
        ];
        args.extend_from_slice(extra);
        args.extend(["--out", out.to_str().unwrap(), "--json"]);
        let v = ok_json(&args);
        (v["masks"][0]["iou"].as_f64().unwrap(), image::open(&out).unwrap().to_luma8().into_raw())
    };
    let (iou_alone, mask_alone) = run(&[], "alone.png");
    let (iou_centre, mask_centre) = run(&["--point", "200.5,151.5,+"], "centre.png");
    assert_eq!(iou_alone, iou_centre, "box alone vs box + its centre point");
    assert_eq!(mask_alone, mask_centre);
    let (iou_neg, _) = run(&["--point", "160,110,-"], "negative.png");
    assert_ne!(iou_neg, iou_alone);
}

/// SAM 3 through the command line on a shared GeoTIFF, with the random-weight
/// model transformers built (tests/fixtures/sam3_tiny, loaded as a user's
/// checkpoint is): a concept and exemplars → one feature per instance with its
/// score and provenance; the threshold and NMS keep what they say.
#[test]
fn segment_text_finds_every_instance_with_sam3() {
    let tmp = tempfile::tempdir().unwrap();
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let sam3 = root().join("tests/fixtures/sam3_tiny/seed1");
    let run = |threshold: &str, nms: &str, features: &Path| {
        ok_json(&[
            "segment",
            "--sam3",
            sam3.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--window",
            "40,20,600,300",
            "--text",
            "ship",
            "--exemplar",
            "100,100,140,130",
            "--exemplar",
            "300,50,340,90,-",
            "--threshold",
            threshold,
            "--nms",
            nms,
            "--features",
            features.to_str().unwrap(),
            "--json",
        ])
    };
    let scores = |v: &serde_json::Value| -> Vec<f64> {
        v["instances"].as_array().unwrap().iter().map(|i| i["score"].as_f64().unwrap()).collect()
    };
    // Threshold 0, no NMS: every query of the model is an instance, best first.
    let all_path = tmp.path().join("all.geojson");
    let all = run("0", "1", &all_path);
    assert_eq!(all["method"], "sam3 (ViT 64×3)");
    let s = scores(&all);
    assert_eq!(s.len(), 8, "the tiny model has 8 queries");
    assert!(s.windows(2).all(|p| p[0] >= p[1]), "best first: {s:?}");
    assert_eq!(all["exemplars"], "+100,100,140,130;-300,50,340,90");
    let boxes_file = tmp.path().join("all_boxes.geojson");
    let fc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&boxes_file).unwrap()).unwrap();
    let feats = fc["features"].as_array().unwrap();
    assert_eq!(feats.len(), 8, "one box feature per instance");
    for (f, score) in feats.iter().zip(&s) {
        let p = &f["properties"];
        assert_eq!(p["concept"], "ship");
        assert_eq!(p["task"], "concept");
        assert_eq!(p["exemplars"], "+100,100,140,130;-300,50,340,90");
        assert!(!p["segmenter_hash"].as_str().unwrap().is_empty(), "SAM 3's weights are named");
        assert!((p["score"].as_f64().unwrap() - score).abs() < 1e-6);
    }
    // A threshold keeps exactly the instances at or above it.
    let cut = (s[2] + s[3]) / 2.0;
    let some = run(&cut.to_string(), "1", &tmp.path().join("some.gpkg"));
    assert_eq!(scores(&some), s[..3].to_vec());
    // NMS: no two kept boxes overlap by more than the IoU given.
    let nms = run("0", "0.1", &tmp.path().join("nms.fgb"));
    let kept: Vec<[f64; 4]> = nms["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_value(i["box"].clone()).unwrap())
        .collect();
    assert!(!kept.is_empty() && kept.len() <= 8);
    for (i, a) in kept.iter().enumerate() {
        for b in &kept[i + 1..] {
            assert!(engine::base::box_iou(*a, *b) <= 0.1 + 1e-9, "{a:?} and {b:?} overlap");
        }
    }
}

/// Bad SAM 3 requests fail in one line naming the problem, before any work.
#[test]
fn segment_text_refuses_bad_requests_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let image = shared("sf_bay_ships_rapideye_5m.tif");
    let sam3 = root().join("tests/fixtures/sam3_tiny/seed0");
    let no_tokenizer = tmp.path().join("no_tokenizer");
    std::fs::create_dir(&no_tokenizer).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(sam3.join(f), no_tokenizer.join(f)).unwrap();
    }
    let out = tmp.path().join("m.png");
    let base = ["segment", "--image", image.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--text", "ship"], "--sam3"),
        (vec!["--sam3", sam3.to_str().unwrap(), "--exemplar", "1,2,3"], "--exemplar '1,2,3'"),
        (vec!["--sam3", sam3.to_str().unwrap(), "--exemplar", "50,50,10,60"], "empty"),
        (vec!["--sam3", sam3.to_str().unwrap(), "--exemplar", "5000,50,5100,60"], "outside the window"),
        (vec!["--sam3", sam3.to_str().unwrap(), "--text", "ship", "--threshold", "2"], "--threshold"),
        (vec!["--sam3", no_tokenizer.to_str().unwrap(), "--text", "ship"], "tokenizer.json"),
    ];
    for (extra, needle) in cases {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let o = rr(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} must fail");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
