//! `remote-reasoner ask` end to end with the tiny checkpoints: a window of a shared
//! GeoTIFF goes through the raster engine, the model, the parser, and comes back
//! as source-pixel and world-coordinate boxes.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
use cli::{root, rr, shared};

fn trained() -> PathBuf {
    let dir = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    assert!(
        dir.join("model.safetensors").is_file(),
        "FIXTURE MISSING: {} (tools/make_qwen_fixtures.py)",
        dir.display()
    );
    dir
}

#[test]
fn ask_json_maps_boxes_to_source_pixels_and_world_coordinates() {
    let image = shared("rotterdam_port_rgb_4p5m_spacenet6.tif");
    let out = rr(&[
        "ask",
        "--model",
        trained().to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--window",
        "10,20,180,170",
        "--json",
        "where are the ships?",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in
        ["prompt", "generated_token_ids", "raw_text", "think", "answer", "boxes", "boxes_world", "resized", "timings"]
    {
        assert!(v.get(key).is_some(), "no {key}");
    }
    assert!(
        v["prompt"]
            .as_str()
            .unwrap()
            .contains("<|vision_start|><|image_pad|><|vision_end|>\nText description: where are the ships?")
    );
    assert_eq!(v["think"], "Ships are long hulls moored along the quays of the basin.");
    assert!(v["format_ok"].as_bool().unwrap());
    assert_eq!(v["stop"], "eos");
    // smart_resize(170, 180) = (168, 168): the frame the boxes are written in.
    assert_eq!(v["resized"], serde_json::json!([168, 168]));
    let resized: Vec<Vec<f64>> = serde_json::from_value(v["boxes_resized"].clone()).unwrap();
    assert_eq!(resized, [[30.0, 40.0, 70.0, 120.0], [100.0, 150.0, 130.0, 190.0]]);
    // Source pixels: scale by 180/168 and 170/168, offset by the window, clip to it.
    let boxes: Vec<Vec<f64>> = serde_json::from_value(v["boxes"].clone()).unwrap();
    let (sx, sy) = (180.0 / 168.0, 170.0 / 168.0);
    let want = [
        [10.0 + 30.0 * sx, 20.0 + 40.0 * sy, 10.0 + 70.0 * sx, 20.0 + 120.0 * sy],
        [10.0 + 100.0 * sx, 20.0 + 150.0 * sy, 10.0 + 130.0 * sx, 20.0 + 170.0], // y2 = 190·sy clipped to the window
    ];
    for (b, w) in boxes.iter().zip(&want) {
        for (a, e) in b.iter().zip(w) {
            assert!((a - e).abs() < 1e-9, "{boxes:?} vs {want:?}");
        }
    }
    assert!(v["repairs"].as_array().unwrap().iter().any(|r| r["kind"] == "clipped"));
    // World coordinates through GDAL's own geotransform.
    let info = Command::new("gdalinfo").arg("-json").arg(&image).output().unwrap();
    let g: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let gt: Vec<f64> = serde_json::from_value(g["geoTransform"].clone()).unwrap();
    let world = &v["boxes_world"][0];
    let (x, y) = (gt[0] + want[0][0] * gt[1], gt[3] + want[0][1] * gt[5]);
    assert!((world["corners"][0][0].as_f64().unwrap() - x).abs() < 1e-6);
    assert!((world["corners"][0][1].as_f64().unwrap() - y).abs() < 1e-6);
    let bounds: Vec<f64> = serde_json::from_value(world["bounds"].clone()).unwrap();
    assert!((bounds[3] - y).abs() < 1e-6, "north edge is the top of the box");
    assert_eq!(v["epsg"], 32631);
    assert!(v["timings"]["ms_per_token"].as_f64().unwrap() > 0.0);
}

#[test]
fn ask_streams_the_trace_and_answers_questions() {
    let image = root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif");
    let out = rr(&[
        "ask",
        "--model",
        trained().to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--task",
        "vqa",
        "how many ships are there?",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("<think>I count the hulls along the quays.</think>"), "{text}");
    assert!(text.contains("Answer: 2"), "{text}");
}

#[test]
fn ask_reports_bad_input_in_one_line() {
    let image = root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif");
    let fail = |args: &[&str]| {
        let out = rr(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let e = fail(&["ask", "--model", "/no/model", "--image", image.to_str().unwrap(), "ships"]);
    assert!(e.contains("/no/model") && e.contains("not found"), "{e}");
    let e = fail(&["ask", "--model", trained().to_str().unwrap(), "--image", image.to_str().unwrap()]);
    assert!(e.contains("query"), "{e}");
    let e = fail(&["ask", "--model", trained().to_str().unwrap(), "--image", "/no/image.tif", "ships"]);
    assert!(e.contains("/no/image.tif"), "{e}");
    let e = fail(&[
        "ask",
        "--model",
        trained().to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--window",
        "190,0,50,50",
        "x",
    ]);
    assert!(e.contains("outside"), "{e}");
}

/// Reasoning + concepts: the trained tiny reasoner answers "where are the
/// ships?" with two boxes and reasoning about ships; SAM 3 (random weights from
/// transformers) gets "ship" and those boxes as exemplars. Instances stay in
/// the area the answer points at unless --scope image; every reasoner box is
/// either matched by an instance or kept as a box; provenance names both models.
#[test]
fn ask_find_all_hands_the_reasoners_concept_and_boxes_to_sam3() {
    let tmp = tempfile::tempdir().unwrap();
    let image = shared("rotterdam_port_rgb_4p5m_spacenet6.tif");
    let sam3 = root().join("tests/fixtures/sam3_tiny/seed1");
    let model = trained();
    let run = |extra: &[&str]| {
        let out = tmp.path().join("found.geojson");
        let mut args = vec![
            "ask",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--window",
            "10,20,180,170",
            "--find-all",
            "--sam3",
            sam3.to_str().unwrap(),
            "--threshold",
            "0",
            "--nms",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        args.push("where are the ships?");
        let o = rr(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let boxes: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("found_boxes.geojson")).unwrap()).unwrap();
        (v, boxes)
    };
    let boxes_of = |v: &serde_json::Value, key: &str| -> Vec<[f64; 4]> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_value(b["box"].clone()).unwrap_or_default())
            .collect()
    };
    let (anywhere, _) = run(&["--scope", "image"]);
    assert_eq!(anywhere["concept"], "ship", "the concept the question and reasoning name");
    assert_eq!(anywhere["found_by_sam3"], 8, "threshold 0, no NMS, scope image: every query");
    let reasoner: Vec<[f64; 4]> = serde_json::from_value(anywhere["reasoner_boxes"].clone()).unwrap();
    assert_eq!(reasoner.len(), 2);
    let exemplars: Vec<&str> = anywhere["exemplars"].as_str().unwrap().split(';').collect();
    assert_eq!(exemplars.len(), 2);
    for (e, r) in exemplars.iter().zip(&reasoner) {
        let v: Vec<f64> = e.strip_prefix('+').expect("positive").split(',').map(|n| n.parse().unwrap()).collect();
        assert!(v.iter().zip(r).all(|(a, b)| (a - b).abs() <= 0.005), "exemplar {e} is reasoner box {r:?}");
    }

    let (scoped, fc) = run(&[]);
    let found = scoped["found_by_sam3"].as_u64().unwrap() as usize;
    assert!(found <= 8);
    // The answer area: the reasoner boxes' hull grown by their median side.
    let side = reasoner.iter().map(|b| (b[2] - b[0]).max(b[3] - b[1])).fold(f64::MIN, f64::max);
    let hull = reasoner.iter().fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |h, b| {
        [h[0].min(b[0]), h[1].min(b[1]), h[2].max(b[2]), h[3].max(b[3])]
    });
    let instances = boxes_of(&scoped, "instances");
    for b in &instances[..found] {
        let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
        assert!(cx >= hull[0] - side && cx <= hull[2] + side && cy >= hull[1] - side && cy <= hull[3] + side, "{b:?}");
    }
    // Nothing the reasoner found is dropped: matched by an instance, or kept as a box.
    for r in &reasoner {
        let matched = instances[..found].iter().any(|b| engine::base::box_iou(*b, *r) >= 0.5);
        let kept = instances[found..].iter().any(|b| b == r);
        assert!(matched || kept, "reasoner box {r:?} lost");
    }
    let feats = fc["features"].as_array().unwrap();
    assert_eq!(feats.len(), instances.len());
    let p = &feats[0]["properties"];
    assert_eq!(p["task"], "reason+concept");
    assert_eq!(p["concept"], "ship");
    assert!(p["reasoning"].as_str().unwrap().contains("Ships"));
    assert!(p["model"].as_str().unwrap().contains("qwen2_5_vl_tiny_trained"));
    assert_eq!(p["segmenter"], "sam3 (ViT 64×3)");
    assert_ne!(p["weights_hash"], p["segmenter_hash"], "both models are named");

    let (named, _) = run(&["--concept", "storage tank"]);
    assert_eq!(named["concept"], "storage tank", "the analyst's concept wins");
}
