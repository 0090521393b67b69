//! The workbench driven headless with `egui_kittest` (software wgpu adapter, no
//! display): open a raster, pan and zoom, read the status bar, stream overview
//! tiles, report errors, and one rendered snapshot.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{Pos2, Vec2, vec2};
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use rr_app::gui::WorkbenchApp;

const SIZE: Vec2 = vec2(1400.0, 900.0);

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif")
}

fn harness(path: Option<PathBuf>) -> Harness<'static, WorkbenchApp> {
    // A recovery file of its own, so a user's unsaved work never shows up here.
    let recovery =
        std::env::temp_dir().join(format!("rr-gui-test-{}-{:?}.gpkg", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_file(&recovery);
    Harness::builder().with_size(SIZE).build_eframe(move |cc| {
        WorkbenchApp::with_session(&cc.egui_ctx, path, rr_app::gui::session::Settings::default(), recovery)
    })
}

/// Steps frames until the app is idle (raster open, every tile of the view here)
/// and the view has stopped moving (smooth scrolling spreads over frames).
fn settle(h: &mut Harness<'static, WorkbenchApp>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut calm = 0;
    let mut last = None;
    while calm < 3 {
        h.step();
        let view = h.state().doc.as_ref().map(|d| d.view);
        if h.state().is_idle() && view == last {
            calm += 1;
        } else {
            calm = 0;
        }
        last = view;
        assert!(Instant::now() < deadline, "the workbench did not settle within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The status bar's position text, e.g. "Pixel 10, 4   X 500021.00  Y 3999992.00   EPSG:32631".
fn status_position(h: &Harness<'static, WorkbenchApp>) -> String {
    // AccessKit keeps a label widget's text in its value.
    let is_position = |v: &str| v.starts_with("Pixel ") && v[6..].starts_with(|c: char| c.is_ascii_digit());
    let label =
        h.get_by(move |n| n.role() == egui::accesskit::Role::Label && n.value().is_some_and(|v| is_position(&v)));
    label.accesskit_node().value().unwrap_or_default()
}

/// The number after `key` in a whitespace-separated text.
fn number_after(text: &str, key: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == key).unwrap_or_else(|| panic!("no {key} in {text:?}"));
    words[i + 1].trim_end_matches([',', '°']).parse().unwrap_or_else(|_| panic!("bad number after {key} in {text:?}"))
}

fn source_under(h: &mut Harness<'static, WorkbenchApp>, p: Pos2) -> [f64; 2] {
    h.hover_at(p);
    h.run_ok();
    h.state().cursor_source.expect("pointer is over the map")
}

/// The geotransform as GDAL itself reads it, independent of the engine.
fn gdal_geotransform(path: &Path) -> [f64; 6] {
    gdal::Dataset::open(path).unwrap().geo_transform().unwrap()
}

#[test]
fn open_pan_zoom_and_status_bar_map_coordinates() {
    let mut h = harness(Some(sample()));
    settle(&mut h);
    let rect = h.state().map_rect.unwrap();
    {
        let doc = h.state().doc.as_ref().expect("sample opened");
        assert_eq!((doc.info.width, doc.info.height), (200, 200));
        // Fitted: the whole raster fills the shorter side of the map.
        let zoom = f64::from(rect.width().min(rect.height())) / 200.0;
        assert!((doc.view.zoom - zoom).abs() < 1e-9, "{} vs {zoom}", doc.view.zoom);
        assert!(!doc.tiles.is_empty());
    }
    let zoom = h.state().doc.as_ref().unwrap().view.zoom;

    // The status bar gives the pixel and its map coordinates in the raster's CRS.
    let offset = vec2(37.0, -21.0);
    let s = source_under(&mut h, rect.center() + offset);
    let expect = [100.0 + f64::from(offset.x) / zoom, 100.0 + f64::from(offset.y) / zoom];
    assert!((s[0] - expect[0]).abs() < 1e-3 && (s[1] - expect[1]).abs() < 1e-3, "{s:?} vs {expect:?}");
    let text = status_position(&h);
    let gt = gdal_geotransform(&sample());
    assert_eq!(number_after(&text, "Pixel"), expect[0].floor(), "{text}");
    assert_eq!(number_after(&text, &format!("{},", expect[0].floor())), expect[1].floor(), "{text}");
    let (x, y) = (gt[0] + expect[0] * gt[1] + expect[1] * gt[2], gt[3] + expect[0] * gt[4] + expect[1] * gt[5]);
    assert!((number_after(&text, "X") - x).abs() <= 0.006, "{text}: X should be {x:.3}");
    assert!((number_after(&text, "Y") - y).abs() <= 0.006, "{text}: Y should be {y:.3}");
    assert!(text.ends_with("EPSG:32631"), "{text}");

    // Pan: once a drag is under way, the image follows the pointer exactly.
    let start = rect.center() + vec2(-150.0, 90.0);
    h.drag_at(start);
    h.step();
    let mut p = start;
    for _ in 0..3 {
        p += vec2(10.0, -6.0);
        h.hover_at(p);
        h.step();
    }
    let grabbed = h.state().cursor_source.unwrap();
    for _ in 0..5 {
        p += vec2(25.0, -15.0);
        h.hover_at(p);
        h.step();
    }
    h.event(egui::Event::PointerButton {
        pos: p,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: egui::Modifiers::NONE,
    });
    settle(&mut h);
    let after = source_under(&mut h, p);
    assert!((after[0] - grabbed[0]).abs() < 1e-6 && (after[1] - grabbed[1]).abs() < 1e-6, "{after:?} vs {grabbed:?}");
    let moved = h.state().doc.as_ref().unwrap().view.center;
    // The whole pointer motion (155, -93) moved the image, none of it lost to the drag threshold.
    let expect = [100.0 - f64::from(p.x - start.x) / zoom, 100.0 - f64::from(p.y - start.y) / zoom];
    assert!((moved[0] - expect[0]).abs() < 1e-6 && (moved[1] - expect[1]).abs() < 1e-6, "{moved:?} vs {expect:?}");

    // Wheel zoom keeps the pixel under the cursor where it is.
    let anchor = rect.center() + vec2(120.0, 60.0);
    let before = source_under(&mut h, anchor);
    h.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: vec2(0.0, 120.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Wheel,
        modifiers: egui::Modifiers::NONE,
    });
    settle(&mut h);
    let zoomed = h.state().doc.as_ref().unwrap().view.zoom;
    assert!(zoomed > zoom * 1.3, "wheel zoomed in: {zoom} -> {zoomed}");
    let after = source_under(&mut h, anchor);
    assert!((after[0] - before[0]).abs() < 1e-6 && (after[1] - before[1]).abs() < 1e-6, "{after:?} vs {before:?}");
    let text = status_position(&h);
    assert_eq!(number_after(&text, "Pixel"), before[0].floor(), "{text}");

    // Fit (Ctrl+Shift+F) and 1:1 (Ctrl+1).
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Num1);
    settle(&mut h);
    assert_eq!(h.state().doc.as_ref().unwrap().view.zoom, 1.0);
    h.key_press_modifiers(egui::Modifiers::COMMAND | egui::Modifiers::SHIFT, egui::Key::F);
    settle(&mut h);
    let doc = h.state().doc.as_ref().unwrap();
    assert!((doc.view.zoom - zoom).abs() < 1e-9 && doc.view.center == [100.0, 100.0]);
}

#[test]
fn large_raster_streams_tiles_at_the_overview_level_of_the_zoom() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.tif");
    engine::synthetic::sparse_geotiff(&path, 8192, 3, true).unwrap();
    let mut h = harness(Some(path));
    settle(&mut h);
    let rect = h.state().map_rect.unwrap();
    let check_level = |h: &Harness<'static, WorkbenchApp>| {
        let doc = h.state().doc.as_ref().unwrap();
        let pyramid = doc.info.pyramid();
        let level = pyramid.level_for_zoom(doc.view.zoom);
        let [x0, y0, x1, y1] = doc.view.visible_source(rect);
        let keys = pyramid.tiles_in_rect(level, x0, y0, x1, y1);
        assert!(!keys.is_empty());
        for k in &keys {
            assert!(doc.tiles.contains(k), "tile {k:?} of the view is missing");
        }
        level
    };
    assert_eq!(h.state().doc.as_ref().unwrap().info.overviews.len(), 5);
    // 8192 px in ~670 points: each screen pixel covers > 8 source pixels.
    assert_eq!(check_level(&h), 3);
    h.hover_at(rect.center());
    h.event(egui::Event::Zoom(8.0));
    settle(&mut h);
    assert_eq!(check_level(&h), 0, "zoomed in 8x: full resolution");
    // What is on screen at full resolution matches the synthetic pattern: the view's
    // centre lies on the written diagonal, so it is not blank.
    let doc = h.state().doc.as_ref().unwrap();
    assert!(doc.view.center[0] > 3000.0 && doc.view.center[0] < 5200.0);
}

/// A file dropped on the window, as the windowing integration hands it over.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn errors_are_notified_and_the_session_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.tif");
    std::fs::write(&garbage, b"II*\0 definitely not a TIFF body").unwrap();
    let mut h = harness(Some(garbage));
    settle(&mut h);
    assert!(h.state().doc.is_none());
    let n = h.state().notifications.last().expect("an error notification");
    assert!(n.is_error && n.text.contains("broken.tif"), "{}", n.text);
    h.get_by_label_contains("broken.tif"); // shown on screen

    // Dropping a good file onto the window opens it.
    h.input_mut().dropped_files.push(std::sync::Arc::new(Dropped(sample())));
    settle(&mut h);
    assert_eq!(h.state().doc.as_ref().map(|d| d.info.width), Some(200));

    // Dismissing the error removes it.
    h.get_by_label("×").click();
    h.step();
    assert!(h.state().notifications.is_empty());
}

#[test]
fn snapshot_of_the_opened_sample() {
    let mut h = harness(Some(sample()));
    settle(&mut h);
    let rect = h.state().map_rect.unwrap();
    h.hover_at(rect.center() + vec2(20.0, 20.0));
    h.step();
    h.step();
    let options = egui_kittest::SnapshotOptions::new()
        .output_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/snapshots"));
    h.snapshot_options("sample_opened", &options);
}

/// Help > About shows what `--version` prints and the licences.
#[test]
fn about_shows_the_build_and_the_licences() {
    let mut h = harness(None);
    settle(&mut h);
    h.get_by_label("Help").click();
    h.run();
    h.get_by_label("About RemoteReasoner").click();
    h.run();
    assert!(h.state().session.show_about);
    let info = rr_app::build_info::BuildInfo::current();
    h.get_by_label_contains(&format!("commit {}", info.commit));
    h.get_by_label_contains("CC BY-SA 4.0");
    h.get_by_label("RemoteReasoner: Apache-2.0.");
}
