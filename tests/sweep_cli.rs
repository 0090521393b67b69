//! `remote-reasoner sweep` over a synthetic 8192² raster with the tiny trained
//! checkpoint: tiling at an overview level, interrupted and resumed, refusing a
//! progress file of another sweep, and the same result through `serve` with
//! two requests at a time. (Seam merging itself is unit-tested in engine::sweep.)

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/cli.rs"]
mod cli;
#[path = "common/served.rs"]
mod served;
use cli::{ok_json, rr};

fn tile_indices(progress: &Path) -> (usize, HashSet<u64>) {
    let text = std::fs::read_to_string(progress).unwrap_or_default();
    let mut lines = text.lines();
    let _header = lines.next();
    let mut n = 0;
    let mut set = HashSet::new();
    for l in lines {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            n += 1;
            set.insert(v["index"].as_u64().unwrap());
        }
    }
    (n, set)
}

#[test]
fn sweep_tiles_resumes_and_matches_through_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let scene = tmp.path().join("scene.tif");
    engine::synthetic::sparse_geotiff(&scene, 8192, 3, true).unwrap();
    let out = tmp.path().join("ships.gpkg");
    let progress = tmp.path().join("ships.gpkg.sweep.jsonl");
    let model = served::model();
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "sweep",
            "--image",
            scene.to_str().unwrap(),
            "--query",
            "where are the ships?",
            "--task",
            "region",
            "--tile",
            "512",
            "--overlap",
            "64",
            "--level",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Interrupt the first run after a few tiles.
    let mut first = args(&out, &["--model", &model]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tile_indices(&progress).0 < 3 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (before, _) = tile_indices(&progress);
    assert!(before >= 3);

    // 8192 px read at 1/4 in 512-px tiles with a 64-px overlap: stride 1792 → 5 × 5 tiles.
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let v = ok_json(&refs);
    assert_eq!(v["tiles"], 25);
    let resumed = v["resumed"].as_u64().unwrap() as usize;
    assert!(resumed >= 3 && resumed <= before, "resumed {resumed} of {before} saved tiles");
    assert_eq!(v["processed"].as_u64().unwrap() as usize + resumed, 25);
    assert_eq!(tile_indices(&progress).1, (0..25).collect::<HashSet<u64>>());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers[0][0], "boxes");
    let ds = gdal::Dataset::open(&out).unwrap();
    use gdal::vector::LayerAccess;
    assert_eq!(ds.layer_by_name("boxes").unwrap().feature_count(), v["boxes"].as_u64().unwrap());
    // Done: a rerun only merges again.
    let again = ok_json(&refs);
    assert_eq!((again["processed"].as_u64(), again["boxes"].clone()), (Some(0), v["boxes"].clone()));

    // Another sweep into the same output is refused, not mixed in.
    first.extend(["--max-pixels".to_string(), "500000".to_string()]);
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let o = rr(&refs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("other settings"), "{err}");

    // Through `serve`, two requests at a time, on an area: the same boxes as locally.
    let server = served::start(&["--addr", "127.0.0.1:0"]).unwrap();
    let aoi = ["--aoi", "0,0,4096,4096"];
    let local_out = tmp.path().join("local.gpkg");
    let remote_out = tmp.path().join("remote.gpkg");
    let mut local = args(&local_out, &["--model", &model]);
    local.extend(aoi.iter().map(|s| s.to_string()));
    let mut remote = args(&remote_out, &["--endpoint", &server.url, "--concurrency", "2"]);
    remote.extend(aoi.iter().map(|s| s.to_string()));
    let l = ok_json(&local.iter().map(String::as_str).collect::<Vec<_>>());
    let r = ok_json(&remote.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(l["tiles"], 9);
    assert_eq!(
        (r["tiles"].clone(), r["boxes_raw"].clone(), r["boxes"].clone()),
        (l["tiles"].clone(), l["boxes_raw"].clone(), l["boxes"].clone())
    );
}

/// `sweep --segmenter sam3 --text ship` over a shared GeoTIFF in 8 tiles with
/// the random-weight SAM 3 transformers built: one feature per instance with its
/// score and the concept's provenance, no two kept instances duplicating each
/// other across a seam, resumable, and a progress file of other settings refused.
#[test]
fn sweep_finds_every_instance_of_a_concept_with_sam3() {
    let tmp = tempfile::tempdir().unwrap();
    let image = cli::shared("sf_bay_ships_rapideye_5m.tif");
    let sam3 = cli::root().join("tests/fixtures/sam3_tiny/seed1");
    let out = tmp.path().join("ships.geojson");
    let args = |threshold: &'static str| {
        vec![
            "sweep".to_owned(),
            "--segmenter".into(),
            "sam3".into(),
            "--sam3".into(),
            sam3.display().to_string(),
            "--image".into(),
            image.display().to_string(),
            "--text".into(),
            "ship".into(),
            "--tile".into(),
            "256".into(),
            "--overlap".into(),
            "64".into(),
            "--threshold".into(),
            threshold.into(),
            "--out".into(),
            out.display().to_string(),
            "--json".into(),
        ]
    };
    let run = |a: &[String]| ok_json(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let v = run(&args("0.1"));
    assert_eq!(v["tiles"], 8);
    assert_eq!(v["segmenter"], "sam3 (ViT 64×3)");
    let n = v["instances"].as_u64().unwrap() as usize;
    assert!(n > 0 && n <= v["boxes_raw"].as_u64().unwrap() as usize);
    let boxes_file = tmp.path().join("ships_boxes.geojson");
    let fc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&boxes_file).unwrap()).unwrap();
    let feats = fc["features"].as_array().unwrap();
    assert_eq!(feats.len(), n, "one feature per instance");
    for f in feats {
        let p = &f["properties"];
        assert_eq!(p["task"], "sweep:concept");
        assert_eq!(p["concept"], "ship");
        assert!(p["score"].as_f64().unwrap() >= 0.1 - 1e-9, "{p}");
        assert!(!p["segmenter_hash"].as_str().unwrap().is_empty());
    }
    // Resumed: nothing redone, the same instances.
    let again = run(&args("0.1"));
    assert_eq!((again["processed"].as_u64(), again["resumed"].as_u64()), (Some(0), Some(8)));
    assert_eq!(again["instances"], v["instances"]);
    // Another threshold is another sweep: the progress file is refused, not mixed in.
    let o = rr(&args("0.3").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("other settings"));
    // Without --text, a SAM 3 sweep says what it needs.
    let o =
        rr(&["sweep", "--segmenter", "sam3", "--image", image.to_str().unwrap(), "--out", "x.gpkg", "--model", "m"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--text"), "{}", String::from_utf8_lossy(&o.stderr));
}
