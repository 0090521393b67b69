//! `remote-reasoner eval` on a synthetic EarthReason-layout set built here from
//! crops of the bundled sample: both protocols, both tasks, resuming, and the
//! summary agreeing with the per-sample lines.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

#[path = "common/cli.rs"]
mod cli;
use cli::{root, rr};

/// `val/` with three images (crops of the sample), their labels and two questions each.
fn dataset(dir: &Path) {
    let sample = root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif");
    let raster = engine::raster::Raster::open(&sample).unwrap();
    let params = engine::raster::RenderParams::default_for(raster.info());
    for sub in ["images", "labels", "QAs"] {
        std::fs::create_dir_all(dir.join("val").join(sub)).unwrap();
    }
    for (i, (x, y)) in [(0u64, 0u64), (40, 30), (70, 60)].iter().enumerate() {
        let w = engine::base::Window { x: *x, y: *y, width: 128, height: 128 };
        let img = raster.render_window(w, (128, 128), &params).unwrap();
        let rgb: Vec<u8> = img.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        let stem = format!("img{i}");
        image::save_buffer(dir.join(format!("val/images/{stem}.png")), &rgb, 128, 128, image::ExtendedColorType::Rgb8)
            .unwrap();
        // The target: a block in the middle (empty for the last image: "no target").
        let label: Vec<u8> = (0..128 * 128)
            .map(|k| u8::from(i < 2 && (30..90).contains(&(k % 128)) && (20..100).contains(&(k / 128))) * 255)
            .collect();
        image::save_buffer(dir.join(format!("val/labels/{stem}.png")), &label, 128, 128, image::ExtendedColorType::L8)
            .unwrap();
        let qa =
            serde_json::json!({ "questions": ["where are the ships?", "which objects are moored?"], "answer": [] });
        std::fs::write(dir.join(format!("val/QAs/{stem}.json")), qa.to_string()).unwrap();
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn eval_scores_resumes_and_summarizes() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let model = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    let out = tmp.path().join("out");
    let base = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--dataset",
            tmp.path().to_str().unwrap(),
            "--split",
            "val",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let args = base(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = rr(&refs);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // SegEarth protocol: the first question per image → 3 samples; stop after 2, then resume.
    let (_, err) = run(&["--limit", "2"]);
    assert!(err.contains("3 sample(s)") || err.contains("2 sample(s)"), "{err}");
    assert_eq!(lines(&out.join("results.jsonl")).len(), 2);
    let (table, err) = run(&[]);
    assert!(err.contains("2 already scored") && err.contains("1 to go"), "{err}");
    let results = lines(&out.join("results.jsonl"));
    assert_eq!(results.len(), 3);
    for r in &results {
        for key in ["id", "question", "iou", "intersection", "union", "boxes", "n_boxes", "parse_ok", "ask_ms"] {
            assert!(r.get(key).is_some(), "{key} in {r}");
        }
        assert!(r["id"].as_str().unwrap().ends_with("#0"));
        // Letterboxed: 128 → 1024 scales areas by 64.
        assert_eq!(r["union"].as_u64().unwrap() % 64, 0);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let s = &summary["summary"];
    let giou: f64 = results.iter().map(|r| r["iou"].as_f64().unwrap()).sum::<f64>() / 3.0;
    assert!((s["gIoU"].as_f64().unwrap() - giou).abs() < 1e-12);
    let (i, u) = results
        .iter()
        .fold((0, 0), |(i, u), r| (i + r["intersection"].as_u64().unwrap(), u + r["union"].as_u64().unwrap()));
    assert!((s["cIoU"].as_f64().unwrap() - i as f64 / u as f64).abs() < 1e-12);
    assert_eq!(s["pr"].as_array().unwrap().len(), 5);
    assert!(table.contains("| samples | gIoU | cIoU |"), "{table}");

    // Full protocol, region task: every question, Acc@0.5 reported.
    let out2 = tmp.path().join("out2");
    let args = vec![
        "eval".to_string(),
        "--dataset".into(),
        tmp.path().display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--protocol".into(),
        "full".into(),
        "--task".into(),
        "region".into(),
        "--out".into(),
        out2.display().to_string(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = rr(&refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results = lines(&out2.join("results.jsonl"));
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|r| r.get("box_iou").is_some()));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("summary.json")).unwrap()).unwrap();
    assert!(summary["summary"]["Acc@0.5"].is_number(), "{summary}");
    assert_eq!(summary["protocol"], "full");
}

#[test]
fn eval_reports_a_bad_dataset_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    let o = rr(&[
        "eval",
        "--dataset",
        tmp.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("QAs") && err.contains("not an EarthReason split"), "{err}");
}
