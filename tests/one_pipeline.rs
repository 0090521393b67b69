//! One question pipeline: the same question about the same window, asked in
//! the workbench (headless), with `ask --json --save-project`, and with
//! `ask --endpoint` against `serve`, gives the same boxes, the same masks
//! (by digest) and the same polygons.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::vec2;
use egui_kittest::Harness;
use engine::base::Window;
use engine::edit::WorkFeature;
use rr_app::gui::WorkbenchApp;
use rr_app::gui::jobs::Pending;
use rr_app::gui::session::{AreaMode, Settings};

#[path = "common/served.rs"]
mod served;

const QUERY: &str = "where are the ships?";
/// Off the origin and not square, so that a mix-up of offsets or axes shows
/// (the tiny checkpoint answers two boxes here; on some windows it garbles one).
const WINDOW: Window = Window { x: 4, y: 2, width: 196, height: 198 };

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> PathBuf {
    root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif")
}

fn step_until(h: &mut Harness<'static, WorkbenchApp>, what: &str, done: impl Fn(&WorkbenchApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(h.state()) {
        h.step();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

/// What each front end produced: per feature its box, its mask's digest and
/// its polygons as the saved project holds them.
#[derive(Debug, PartialEq)]
struct Result {
    boxes: Vec<[f64; 4]>,
    masks: Vec<String>,
    polygons: Vec<geo::MultiPolygon<f64>>,
}

fn polygons(project: &Path) -> Vec<geo::MultiPolygon<f64>> {
    let p = engine::project::load(project).unwrap();
    p.features.into_iter().map(|f| f.exact).collect()
}

/// The workbench: the window drawn as the area, Run, then the project saved.
fn through_the_gui(model: &str, sam: &Path, dir: &Path) -> Result {
    let settings = Settings { model: model.into(), sam: sam.display().to_string(), ..Settings::default() };
    let recovery = dir.join("recovery.gpkg");
    let mut h = Harness::builder()
        .with_size(vec2(1400.0, 900.0))
        .build_eframe(move |cc| WorkbenchApp::with_session(&cc.egui_ctx, Some(sample()), settings, recovery));
    step_until(&mut h, "the raster", |a| a.is_idle() && a.doc.is_some());
    let s = &mut h.state_mut().session;
    s.area_mode = AreaMode::Drawn;
    s.drawn_area = Some(WINDOW);
    s.query = QUERY.into();
    h.state_mut().run_query();
    step_until(&mut h, "the answer", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.window, WINDOW);
    let features: Vec<WorkFeature> = h.state().session.features.iter().cloned().collect();
    let project = dir.join("gui.gpkg");
    h.state_mut().save_project(project.clone(), false);
    step_until(&mut h, "the save", |a| !a.jobs.any(|p| matches!(p, Pending::Save { .. })));
    Result {
        boxes: features.iter().map(|f| f.bbox.unwrap()).collect(),
        masks: features.iter().map(|f| f.segment.as_ref().unwrap().segment.mask.digest()).collect(),
        polygons: polygons(&project),
    }
}

/// `ask --json --save-project` with `backend` (`--model DIR` or `--endpoint URL`).
fn through_the_cli(backend: &[&str], sam: &Path, project: &Path) -> Result {
    let w = format!("{},{},{},{}", WINDOW.x, WINDOW.y, WINDOW.width, WINDOW.height);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .arg("ask")
        .args(backend)
        .args(["--sam", sam.to_str().unwrap(), "--task", "contour", "--window", &w, "--json"])
        .args(["--save-project", project.to_str().unwrap(), "--image", sample().to_str().unwrap(), QUERY])
        .output()
        .unwrap();
    assert!(out.status.success(), "{backend:?}: {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["window"], serde_json::json!([WINDOW.x, WINDOW.y, WINDOW.width, WINDOW.height]));
    let masks = j["pixel"]["masks"].as_array().unwrap();
    Result {
        boxes: serde_json::from_value(j["boxes"].clone()).unwrap(),
        masks: masks.iter().map(|m| m["sha256"].as_str().unwrap().to_owned()).collect(),
        polygons: polygons(project),
    }
}

#[test]
fn gui_cli_and_endpoint_give_the_same_boxes_masks_and_polygons() {
    let tmp = tempfile::tempdir().unwrap();
    let sam = tmp.path().join("sam2.1_hiera_tiny_seeded.safetensors");
    engine::models::sam2::synthetic::save_checkpoint(&root().join("tests/fixtures/sam2_tiny/weights.json"), &sam)
        .unwrap();
    let model = served::model();

    let gui = through_the_gui(&model, &sam, tmp.path());
    assert_eq!(gui.boxes.len(), 2, "the tiny trained checkpoint answers two ships");
    assert!(gui.polygons.iter().all(|p| !p.0.is_empty()), "every mask traced");
    assert_eq!(gui.masks.len(), 2);
    assert_ne!(gui.masks[0], gui.masks[1]);

    let cli = through_the_cli(&["--model", &model], &sam, &tmp.path().join("cli.gpkg"));
    assert_eq!(cli, gui, "ask --json vs the workbench");

    let server = served::start(&["--addr", "127.0.0.1:0"]).unwrap();
    let remote = through_the_cli(&["--endpoint", &server.url], &sam, &tmp.path().join("endpoint.gpkg"));
    assert_eq!(remote, gui, "ask --endpoint (serve) vs the workbench");
}
