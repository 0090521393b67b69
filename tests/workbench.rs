//! The analyst's whole loop in the GUI, headless (egui_kittest): ask the tiny
//! trained checkpoint → the trace and the features appear → drag a vertex →
//! undo → redo → export → the file read back has the edited geometry; a box
//! drawn without any weights; project save → load; recovery after a crash;
//! snapshots of the main views.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{Pos2, Vec2, vec2};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use gdal::vector::LayerAccess;
use rr_app::gui::WorkbenchApp;
use rr_app::gui::jobs::Pending;
use rr_app::gui::session::Settings;

#[path = "common/hub_server.rs"]
mod hub_server;
#[path = "common/served.rs"]
mod served;

const SIZE: Vec2 = vec2(1400.0, 900.0);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> PathBuf {
    root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif")
}

fn harness(path: Option<PathBuf>, settings: Settings, recovery: PathBuf) -> Harness<'static, WorkbenchApp> {
    // Frames 1/30 s apart (kittest's default is 1/4 s), so that two clicks can be a double-click.
    Harness::builder().with_size(SIZE).with_step_dt(1.0 / 30.0).build_eframe(move |cc| {
        let mut app = WorkbenchApp::with_session(&cc.egui_ctx, path, settings, recovery);
        app.autosave_every = Duration::from_millis(200);
        app
    })
}

/// Steps frames until `done` holds (60 s at most).
fn step_until(h: &mut Harness<'static, WorkbenchApp>, what: &str, done: impl Fn(&WorkbenchApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(h.state()) {
        h.step();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

/// A few frames: a window that changed size is laid out again before it is queried.
fn settle(h: &mut Harness<'static, WorkbenchApp>) {
    for _ in 0..4 {
        h.step();
    }
}

fn idle(h: &mut Harness<'static, WorkbenchApp>) {
    step_until(h, "the raster to load", |a| a.is_idle() && a.doc.is_some());
}

fn screen_of(h: &Harness<'static, WorkbenchApp>, p: [f64; 2]) -> Pos2 {
    let rect = h.state().map_rect.unwrap();
    h.state().doc.as_ref().unwrap().view.source_to_screen(rect, p)
}

/// A primary-button drag from `a` to `b` in small steps, released at `b`.
fn drag(h: &mut Harness<'static, WorkbenchApp>, a: Pos2, b: Pos2) {
    h.drag_at(a);
    h.step();
    for i in 1..=8 {
        h.hover_at(a + (b - a) * (i as f32 / 8.0));
        h.step();
    }
    h.event(egui::Event::PointerButton {
        pos: b,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: egui::Modifiers::NONE,
    });
    h.step();
    h.step();
}

/// A primary click at `p` (hovered first, as a real pointer would be).
fn click(h: &mut Harness<'static, WorkbenchApp>, p: Pos2) {
    h.hover_at(p);
    h.step();
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos: p,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
    }
    h.step();
}

/// Box tool, a box dragged from `a` to `b` (raster pixels), its feature awaited.
fn draw_box(h: &mut Harness<'static, WorkbenchApp>, a: [f64; 2], b: [f64; 2]) {
    let before = h.state().session.features.len();
    h.key_press(egui::Key::B);
    h.step();
    let (p, q) = (screen_of(h, a), screen_of(h, b));
    drag(h, p, q);
    step_until(h, "the drawn box's feature", move |app| app.session.features.len() > before);
}

fn first_vertex(app: &WorkbenchApp, id: u64) -> [f64; 2] {
    let c = app.session.features.get(id).unwrap().polygons.0[0].exterior().0[0];
    [c.x, c.y]
}

#[test]
fn ask_trace_features_drag_undo_redo_export() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        model: root().join("tests/fixtures/qwen2_5_vl_tiny_trained").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    // Ask as a user does: type the question, press Run.
    h.get_by_label("Question").click();
    h.step();
    h.get_by_label("Question").type_text("where are the ships?");
    h.step();
    h.get_by_label("Run").click();
    h.step();
    assert!(h.state().busy(), "the run started");
    step_until(&mut h, "the answer and the masks", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.text.starts_with("<think>Ships are long hulls"), "{}", run.text);
    // The trace is on screen, and the features: one per box, with polygons.
    assert!(h.get_all_by_label_contains("Ships are long hulls moored").count() >= 1);
    let s = &h.state().session;
    assert_eq!(s.features.len(), 2);
    let f = s.features.iter().next().unwrap();
    assert!(f.bbox.is_some() && !f.polygons.0.is_empty());
    assert_eq!(f.provenance.query, "where are the ships?");
    assert_eq!(f.provenance.segmenter, "watershed fallback (no SAM checkpoint)");
    assert_eq!(f.provenance.weights_hash.len(), 12);
    let id = f.id;
    assert_eq!(s.selected, Some(id), "the first new feature is selected");
    assert!(h.get_all_by_label_contains("where are the ships?").count() >= 2, "in the table and the details");

    // Drag the selected feature's first vertex by (+3, +2) raster pixels.
    let v = first_vertex(h.state(), id);
    let (a, b) = (screen_of(&h, v), screen_of(&h, [v[0] + 3.0, v[1] + 2.0]));
    drag(&mut h, a, b);
    let moved = first_vertex(h.state(), id);
    assert!((moved[0] - v[0] - 3.0).abs() < 0.05 && (moved[1] - v[1] - 2.0).abs() < 0.05, "{v:?} → {moved:?}");
    assert!(h.state().session.features.get(id).unwrap().edited);
    // Undo, redo.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.step();
    assert_eq!(first_vertex(h.state(), id), v);
    assert!(!h.state().session.features.get(id).unwrap().edited);
    h.key_press_modifiers(egui::Modifiers::COMMAND | egui::Modifiers::SHIFT, egui::Key::Z);
    h.step();
    assert_eq!(first_vertex(h.state(), id), moved);

    // Export through the dialog.
    let out = tmp.path().join("edited.gpkg");
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::E);
    h.step();
    h.get_by_label("Save to").click();
    h.step();
    h.get_by_label("Save to").type_text(out.to_str().unwrap());
    h.step();
    h.get_by_label("Export").click();
    step_until(&mut h, "the export", |a| {
        !a.jobs.any(|p| matches!(p, Pending::Export)) && a.session.last_export.is_some()
    });
    let last = h.state().session.last_export.clone().unwrap();
    assert!(last.contains("2 polygons") && last.contains("2 boxes"), "{last}");
    // Read back: feature `id` has the dragged vertex, in map coordinates, and is flagged edited.
    let ds = gdal::Dataset::open(&out).unwrap();
    let mut layer = ds.layer_by_name("polygons").unwrap();
    let gt = gdal::Dataset::open(sample()).unwrap().geo_transform().unwrap();
    let (x, y) = (gt[0] + moved[0] * gt[1] + moved[1] * gt[2], gt[3] + moved[0] * gt[4] + moved[1] * gt[5]);
    let mut found = false;
    for f in layer.features() {
        if f.field_as_integer64(f.field_index("id").unwrap()).unwrap() != Some(id as i64) {
            continue;
        }
        assert_eq!(f.field_as_integer(f.field_index("edited").unwrap()).unwrap(), Some(1));
        let g = f.geometry().unwrap().to_geo().unwrap();
        use geo::CoordsIter;
        found = g.coords_iter().any(|c| (c.x - x).abs() < 1e-6 && (c.y - y).abs() < 1e-6);
    }
    assert!(found, "the exported polygon has the dragged vertex at ({x}, {y})");
}

/// Without any weights: the panel says what is missing; a box drawn by hand is
/// segmented (watershed), traced, edited and saved; the project reopens as it was.
#[test]
fn manual_box_without_weights_then_project_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(Some(sample()), Settings::default(), tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    h.get_by_label_contains("No RemoteReasoner checkpoint is configured");
    draw_box(&mut h, [60.0, 70.0], [100.0, 130.0]);
    let f = h.state().session.features.iter().next().unwrap().clone();
    assert_eq!(f.provenance.task, "manual");
    assert_eq!(f.bbox, Some([60.0, 70.0, 100.0, 130.0]));
    assert!(!f.polygons.0.is_empty(), "traced");
    // Delete one vertex (select it with a click, then Del) and simplify with the slider's state.
    h.key_press(egui::Key::V);
    h.step();
    let v = first_vertex(h.state(), f.id);
    let p = screen_of(&h, v);
    click(&mut h, p);
    assert!(h.state().session.selected_vertex.is_some(), "vertex selected");
    let before = h.state().session.features.get(f.id).unwrap().vertex_count();
    h.key_press(egui::Key::Delete);
    h.step();
    assert_eq!(h.state().session.features.get(f.id).unwrap().vertex_count(), before - 1);

    // Double-click the middle of an edge: a vertex is inserted there.
    let ring = h.state().session.features.get(f.id).unwrap().polygons.0[0].exterior().0.clone();
    let mid = [(ring[1].x + ring[2].x) / 2.0, (ring[1].y + ring[2].y) / 2.0];
    let p = screen_of(&h, mid);
    h.hover_at(p);
    h.step();
    let button = egui::PointerButton::Primary;
    for pressed in [true, false, true, false] {
        h.event(egui::Event::PointerButton { pos: p, button, pressed, modifiers: egui::Modifiers::NONE });
    }
    h.step();
    assert_eq!(h.state().session.features.get(f.id).unwrap().vertex_count(), before, "one deleted, one inserted");
    assert_eq!(h.state().session.features.undo_label(), Some("insert vertex"));

    // Save, then open the project in a fresh workbench.
    let project = tmp.path().join("work.gpkg");
    h.state_mut().save_project(project.clone(), false);
    step_until(&mut h, "the save", |a| !a.jobs.any(|p| matches!(p, Pending::Save { .. })));
    assert!(!h.state().session.is_dirty());
    let saved: Vec<_> = h.state().session.features.iter().cloned().collect();
    let view = h.state().doc.as_ref().unwrap().view;
    let mut h2 = harness(None, Settings::default(), tmp.path().join("recovery2.gpkg"));
    h2.step();
    h2.state_mut().load_project(project);
    step_until(&mut h2, "the project and its raster", |a| a.doc.is_some() && a.session.features.len() == saved.len());
    idle(&mut h2);
    let loaded: Vec<_> = h2.state().session.features.iter().cloned().collect();
    assert_eq!(loaded[0].id, saved[0].id);
    assert_eq!(loaded[0].vertex_count(), saved[0].vertex_count());
    assert!(loaded[0].edited);
    use geo::Area;
    assert!((loaded[0].polygons.unsigned_area() - saved[0].polygons.unsigned_area()).abs() < 1e-6);
    let v2 = h2.state().doc.as_ref().unwrap().view;
    assert!((v2.center[0] - view.center[0]).abs() < 1e-9 && (v2.zoom - view.zoom).abs() < 1e-9, "view restored");
}

#[test]
fn unsaved_work_is_offered_back_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let recovery = tmp.path().join("recovery.gpkg");
    {
        let mut h = harness(Some(sample()), Settings::default(), recovery.clone());
        idle(&mut h);
        draw_box(&mut h, [20.0, 20.0], [50.0, 60.0]);
        step_until(&mut h, "the autosave", |a| a.session.autosaved_revision == a.session.features.revision());
        // The process dies here: no exit handler runs.
        std::mem::forget(h);
    }
    assert!(recovery.exists());
    // Closing the window with unsaved work asks first; discarding it removes the recovery copy.
    {
        let other = tmp.path().join("recovery-close.gpkg");
        let mut h = harness(Some(sample()), Settings::default(), other.clone());
        idle(&mut h);
        draw_box(&mut h, [20.0, 20.0], [50.0, 60.0]);
        step_until(&mut h, "the autosave", |a| a.session.autosaved_revision == a.session.features.revision());
        assert!(other.exists());
        h.input_mut().viewports.entry(egui::ViewportId::ROOT).or_default().events.push(egui::ViewportEvent::Close);
        h.step();
        h.step();
        assert!(h.state().session.confirm_close);
        h.get_by_label("Close without saving").click();
        h.step();
        assert!(h.state().session.discard_on_close && !other.exists());
    }
    assert!(recovery.exists());
    let mut h = harness(None, Settings::default(), recovery.clone());
    h.step();
    h.get_by_label_contains("did not close normally");
    h.get_by_label("Restore").click();
    step_until(&mut h, "the restored work", |a| a.doc.is_some() && a.session.features.len() == 1);
    let f = h.state().session.features.iter().next().unwrap();
    assert_eq!(f.bbox, Some([20.0, 20.0, 50.0, 60.0]));
    assert!(h.state().session.is_dirty(), "restored work is unsaved work");
}

#[test]
fn snapshots_of_the_main_views() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(Some(sample()), Settings::default(), tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    draw_box(&mut h, [60.0, 70.0], [100.0, 130.0]);
    idle(&mut h);
    let options = egui_kittest::SnapshotOptions::new().output_path(root().join("tests/snapshots"));
    h.snapshot_options("workbench_feature_selected", &options);
    h.key_press(egui::Key::F1);
    h.step();
    h.step();
    h.snapshot_options("workbench_help", &options);
}

/// Settings → a hub repository → Download: progress shows while the files come
/// in (verified), then the downloaded model answers by its repository id.
#[test]
fn download_from_settings_then_ask_by_repository_id() {
    let hub = hub_server::serve("acme/tiny-reasoner", hub_server::checkpoint_files(), None);
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        model: "acme/tiny-reasoner".into(),
        hub_endpoint: hub.url.clone(),
        models_cache: tmp.path().join("models").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    h.get_by_label("Settings…").click();
    h.step();
    h.step();
    h.step();
    h.get_by_label("Download model").click();
    h.step();
    assert!(h.state().jobs.pull().is_some(), "download started");
    let mut seen = 0.0f32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some((f, _)) = h.state().jobs.pull() {
        seen = seen.max(f);
        h.step();
        assert!(Instant::now() < deadline, "download did not finish");
        std::thread::sleep(Duration::from_millis(2));
    }
    h.step();
    let note = h.state().notifications.last().unwrap().clone();
    assert!(!note.is_error && note.text.contains("Downloaded and verified acme/tiny-reasoner"), "{}", note.text);
    assert!(seen > 0.0, "progress was reported");
    // Ask by repository id: resolved in the models cache.
    h.state_mut().session.query = "where are the ships?".into();
    h.state_mut().run_query();
    step_until(&mut h, "the answer", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(h.state().session.features.len(), 2);
    // A question (VQA): the answer is shown with its trace, no features are made.
    h.state_mut().session.task = engine::base::Goal::Vqa;
    h.state_mut().session.query = "how many ships are there?".into();
    h.state_mut().run_query();
    step_until(&mut h, "the VQA answer", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none() && run.text.contains("<answer>2</answer>"), "{}", run.text);
    h.get_by_label_contains("I count the hulls along the quays.");
    assert_eq!(h.state().session.features.len(), 2);
}

/// An endpoint that accepts connections and closes each after `delay`, unanswered.
/// A first start with nothing configured: one dialog offers RemoteReasoner-7B
/// and SAM 2.1 with the sizes the hub gives, downloads both (verified), and the
/// workbench then answers with them — boxes become SAM 2.1 masks.
#[test]
fn first_run_dialog_downloads_both_models_then_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let sam_file = tmp.path().join("sam.safetensors");
    let spec = root().join("tests/fixtures/sam2_tiny/weights.json");
    engine::models::sam2::synthetic::save_checkpoint(&spec, &sam_file).unwrap();
    let sam_bytes = std::fs::read(&sam_file).unwrap();
    let sam_size = sam_bytes.len() as u64;
    let sam_repo = [("sam2.1_hiera_tiny.pt".to_string(), sam_bytes), ("README.md".to_string(), b"# SAM\n".to_vec())];
    let hub = hub_server::serve_repos(
        vec![
            ("1e12Leon/RemoteReasoner", hub_server::checkpoint_files()),
            ("facebook/sam2.1-hiera-tiny", sam_repo.into_iter().collect()),
        ],
        None,
    );
    let settings = Settings {
        hub_endpoint: hub.url.clone(),
        models_cache: tmp.path().join("models").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    h.state_mut().offer_setup();
    step_until(&mut h, "the sizes", |a| a.session.setup.as_ref().is_some_and(|s| s.sizes.is_some()));
    // The sizes the hub gives are shown before anything is fetched.
    let reasoner_size: u64 = hub_server::checkpoint_files()
        .iter()
        .filter(|(n, _)| n.as_str() != "README.md")
        .map(|(_, b)| b.len() as u64)
        .sum();
    let sizes = h.state().session.setup.as_ref().unwrap().sizes.clone().unwrap();
    assert_eq!(sizes, vec![Ok(reasoner_size), Ok(sam_size)]);
    h.get_by_label_contains(&format!("1e12Leon/RemoteReasoner  ·  {}", rr_app::gui::setup::human_size(reasoner_size)));
    h.get_by_label_contains(&rr_app::gui::setup::human_size(sam_size));
    h.get_by_label("Download").click();
    h.step();
    assert!(h.state().jobs.pull().is_some(), "download started");
    step_until(&mut h, "both downloads", |a| a.session.setup.is_none());
    let s = h.state().session.settings.clone();
    assert_eq!(s.model, "1e12Leon/RemoteReasoner");
    assert!(s.sam.ends_with("sam2.1_hiera_tiny.pt") && Path::new(&s.sam).is_file(), "{}", s.sam);
    assert!(s.setup_seen, "the dialog does not open by itself again");
    let note = h.state().notifications.last().unwrap().clone();
    assert!(!note.is_error && note.text.contains("Downloaded and verified"), "{}", note.text);
    h.state_mut().offer_setup();
    assert!(h.state().session.setup.is_none(), "configured: no dialog");

    h.state_mut().session.query = "where are the ships?".into();
    h.state_mut().run_query();
    step_until(&mut h, "the answer", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(h.state().session.features.len(), 2);
    let segmenter = h.state().session.segmenter.clone();
    assert!(matches!(segmenter, Some(engine::segment::Method::Sam2(_))), "{segmenter:?}");
}

/// Offline, the dialog says the sizes are unknown and a failed download can be
/// tried again; "Later" closes it for good, a checkpoint folder or a server
/// configures the workbench in one step.
#[test]
fn first_run_dialog_offline_later_folder_and_server() {
    let tmp = tempfile::tempdir().unwrap();
    // A hub that hangs up on every connection. (A port bound and released could be
    // taken by another test's server meanwhile.)
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in dead.incoming() {
            drop(stream);
        }
    });
    let settings = Settings {
        hub_endpoint: dead_url,
        models_cache: tmp.path().join("models").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(None, settings, tmp.path().join("recovery.gpkg"));
    h.state_mut().offer_setup();
    step_until(&mut h, "the sizes", |a| a.session.setup.as_ref().is_some_and(|s| s.sizes.is_some()));
    assert_eq!(h.query_all_by_label_contains("size unknown").count(), 2);
    h.get_by_label("Download").click();
    step_until(&mut h, "the failed download", |a| a.session.setup.as_ref().is_some_and(|s| s.error.is_some()));
    h.get_by_label("Resume download");
    h.get_by_label("Later").click();
    settle(&mut h);
    assert!(h.state().session.setup.is_none() && h.state().session.settings.setup_seen);
    h.state_mut().offer_setup();
    assert!(h.state().session.setup.is_none(), "Later is remembered");

    // Help > Set up models… opens it again: a local folder.
    h.state_mut().open_setup();
    settle(&mut h);
    h.get_by_label("Use a checkpoint folder on this computer").click();
    settle(&mut h);
    // A folder without config.json is refused, saying why; the dialog stays.
    h.state_mut().session.setup.as_mut().unwrap().local_model = tmp.path().display().to_string();
    settle(&mut h);
    h.get_by_label("Use this folder").click();
    settle(&mut h);
    assert!(h.state().session.settings.model.is_empty());
    h.get_by_label_contains("has no config.json");
    let folder = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    h.state_mut().session.setup.as_mut().unwrap().local_model = folder.display().to_string();
    settle(&mut h);
    h.get_by_label("Use this folder").click();
    settle(&mut h);
    assert_eq!(h.state().session.settings.model, folder.display().to_string());
    assert!(h.state().session.setup.is_none());

    // And a server.
    h.state_mut().open_setup();
    settle(&mut h);
    h.get_by_label("Use a server (OpenAI-compatible: vLLM, SGLang, ours)").click();
    settle(&mut h);
    h.state_mut().session.setup.as_mut().unwrap().endpoint = "http://gpu:8000".into();
    settle(&mut h);
    h.get_by_label("Use this server").click();
    settle(&mut h);
    assert_eq!(h.state().session.settings.endpoint, "http://gpu:8000");
}

fn slow_endpoint(delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                drop(conn);
            });
        }
    });
    url
}

/// SAM (seeded tiny SAM 2.1 weights) for a hand-drawn box, then a refinement
/// click; a box corner dragged; an edge double-clicked; a question cancelled
/// while its model loads, and the next one answered.
#[test]
fn refine_resize_insert_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let sam = tmp.path().join("sam2.1_hiera_tiny_seeded.safetensors");
    engine::models::sam2::synthetic::save_checkpoint(&root().join("tests/fixtures/sam2_tiny/weights.json"), &sam)
        .unwrap();
    let settings = Settings {
        sam: sam.display().to_string(),
        model: root().join("tests/fixtures/qwen2_5_vl_tiny_trained").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    draw_box(&mut h, [60.0, 70.0], [110.0, 130.0]);
    let f = h.state().session.features.iter().next().unwrap().clone();
    assert_eq!(f.provenance.segmenter, "sam2.1_hiera_tiny");
    assert!(f.score.is_some() && f.segment.is_some());
    // Refine: R, then a left click inside the box.
    h.key_press(egui::Key::R);
    h.step();
    let p = screen_of(&h, [85.0, 100.0]);
    click(&mut h, p);
    step_until(&mut h, "the refined mask", |a| !a.jobs.any(|p| matches!(p, Pending::Refine { .. })));
    let refined = h.state().session.features.get(f.id).unwrap().clone();
    let clicks = &refined.segment.as_ref().unwrap().clicks;
    assert_eq!(clicks.len(), 1);
    assert!(clicks[0].2 && (clicks[0].0 - 85.0).abs() < 0.5 && (clicks[0].1 - 100.0).abs() < 0.5, "{clicks:?}");
    assert!(refined.edited);
    assert_eq!(h.state().session.features.undo_label(), Some("refine mask"));

    // Select tool: drag the box's bottom-right corner.
    h.key_press(egui::Key::V);
    h.step();
    let (a, b) = (screen_of(&h, [110.0, 130.0]), screen_of(&h, [120.0, 140.0]));
    drag(&mut h, a, b);
    let bb = h.state().session.features.get(f.id).unwrap().bbox.unwrap();
    assert!((bb[2] - 120.0).abs() < 0.2 && (bb[3] - 140.0).abs() < 0.2 && bb[0] == 60.0 && bb[1] == 70.0, "{bb:?}");
    assert_eq!(h.state().session.features.undo_label(), Some("resize box"));

    // Cancel a question while its model loads (an endpoint slow to answer: the
    // tiny local model would answer before a click lands); the engine gets
    // past it and the next question, to the local model, is answered.
    h.state_mut().session.settings.endpoint = slow_endpoint(Duration::from_millis(1500));
    h.state_mut().session.query = "where are the ships?".into();
    h.state_mut().run_query();
    h.step();
    assert!(h.state().busy());
    h.get_by_label("Cancel").click();
    h.step();
    let run = h.state().session.run.clone().unwrap();
    assert!(!run.is_running() && run.error.as_deref() == Some("Cancelled."), "{run:?}");
    let n = h.state().session.features.len();
    h.state_mut().session.settings.endpoint.clear();
    h.state_mut().run_query();
    step_until(&mut h, "the second question", |a| !a.busy());
    assert!(h.state().session.run.as_ref().unwrap().error.is_none());
    assert_eq!(h.state().session.features.len(), n + 2, "answered after the cancelled one");
}

/// The workbench asking through an OpenAI-compatible endpoint (`serve` here):
/// the reasoning streams in and the features appear, as with a local model.
#[test]
fn ask_through_an_endpoint() {
    let server = served::start(&["--addr", "127.0.0.1:0"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings { endpoint: server.url.clone(), ..Settings::default() };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    h.state_mut().session.query = "where are the ships?".into();
    h.state_mut().run_query();
    step_until(&mut h, "the answer through the endpoint", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.text.starts_with("<think>Ships are long hulls"), "{run:?}");
    let r = h.state().session.reasoner.clone().unwrap();
    assert_eq!((r.device.as_str(), r.precision.as_str()), ("remote", "qwen2_5_vl_tiny_trained"));
    assert_eq!(h.state().session.features.len(), 2);
    let f = h.state().session.features.iter().next().unwrap();
    assert!(f.provenance.model.starts_with("qwen2_5_vl_tiny_trained@http://127.0.0.1:"), "{}", f.provenance.model);
    h.get_by_label_contains("(remote)");
}

/// The whole raster swept from the panel: features arrive as one undoable step;
/// a second sweep of the same question resumes from the saved tiles.
#[test]
fn sweep_from_the_panel_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        model: root().join("tests/fixtures/qwen2_5_vl_tiny_trained").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("state/recovery.gpkg"));
    idle(&mut h);
    h.state_mut().session.query = "where are the ships?".into();
    h.step();
    h.get_by_label("Sweep whole raster").click();
    h.step();
    assert!(h.state().jobs.sweep().is_some());
    step_until(&mut h, "the sweep", |a| a.jobs.sweep().is_none());
    let note = h.state().notifications.last().unwrap().text.clone();
    assert!(note.starts_with("Sweep done: 1 tiles (0 resumed)"), "{note}");
    let n = h.state().session.features.len();
    assert!(n >= 1, "{note}");
    assert!(
        h.state().session.features.iter().all(|f| f.provenance.task == "sweep:contour" && !f.polygons.0.is_empty())
    );
    assert_eq!(h.state().session.features.undo_label(), Some("sweep"));
    // The progress file lives beside the recovery file; the same sweep again resumes.
    assert!(std::fs::read_dir(tmp.path().join("state/sweeps")).unwrap().count() >= 1);
    h.get_by_label("Sweep whole raster").click();
    h.step();
    assert!(h.state().jobs.sweep().is_some());
    step_until(&mut h, "the resumed sweep", |a| a.jobs.sweep().is_none());
    let note = h.state().notifications.last().unwrap().text.clone();
    assert!(note.starts_with("Sweep done: 1 tiles (1 resumed)"), "{note}");
    assert_eq!(h.state().session.features.len(), 2 * n);
}

/// Saving while an autosave is still being written: the analyst's save is not
/// dropped, and the recovery copy goes once both are done.
#[test]
fn a_save_during_an_autosave_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let recovery = tmp.path().join("recovery.gpkg");
    let mut h = harness(Some(sample()), Settings::default(), recovery.clone());
    idle(&mut h);
    let project = tmp.path().join("work.gpkg");
    h.state_mut().save_project(recovery.clone(), true);
    h.state_mut().save_project(project.clone(), false);
    step_until(&mut h, "both saves", |a| !a.jobs.any(|p| matches!(p, Pending::Save { .. })));
    let notes: Vec<_> = h.state().notifications.iter().map(|n| n.text.clone()).collect();
    assert!(project.exists(), "the analyst's save was written: {notes:?}");
    assert_eq!(h.state().session.project_path.as_deref(), Some(project.as_path()));
    assert!(!recovery.exists(), "the recovery copy is removed once the project is saved");
}

#[test]
fn an_unreadable_recovery_file_is_set_aside_not_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let recovery = tmp.path().join("recovery.gpkg");
    std::fs::write(&recovery, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>())
        .unwrap();
    let mut h = harness(None, Settings::default(), recovery.clone());
    h.step();
    let app = h.state();
    assert!(app.session.recovery_offer.is_none(), "not offered");
    assert!(!recovery.exists(), "moved out of the way");
    let aside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("unreadable"))
        .collect();
    assert_eq!(aside.len(), 1, "kept beside it: {aside:?}");
    assert!(app.notifications.iter().any(|n| n.is_error && n.text.contains("set aside")), "told");
}

#[test]
fn a_geopackage_without_a_project_table_is_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let gpkg = tmp.path().join("features.gpkg");
    let provenance = std::sync::Arc::new(engine::features::Provenance::default());
    let poly = geo::Rect::new((0.0, 0.0), (5.0, 5.0)).to_polygon();
    let f = engine::edit::WorkFeature::new(Some([0.0, 0.0, 5.0, 5.0]), geo::MultiPolygon::new(vec![poly]), provenance);
    let set = engine::edit::feature_set(&[f], None, None);
    engine::export::export(&gpkg, &set, &engine::export::ExportOptions::default(), &mut |_, _| true).unwrap();
    let mut h = harness(Some(gpkg), Settings::default(), tmp.path().join("recovery.gpkg"));
    step_until(&mut h, "the error", |a| a.notifications.iter().any(|n| n.is_error));
    let text = &h.state().notifications.iter().find(|n| n.is_error).unwrap().text;
    assert!(text.contains("not a RemoteReasoner project") && text.contains("polygons"), "{text}");
    assert!(!text.contains("not a raster GDAL can read"), "{text}");
}

#[test]
fn open_url_dialog_opens_what_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = harness(None, Settings::default(), tmp.path().join("recovery.gpkg"));
    h.state_mut().session.open_url = Some(String::new());
    h.step();
    h.step();
    h.get_by_label("URL, /vsi… name or STAC item").click();
    h.step();
    h.get_by_label("URL, /vsi… name or STAC item").type_text(&sample().display().to_string());
    h.step();
    assert_eq!(h.state().session.open_url.as_deref(), Some(sample().display().to_string().as_str()));
    h.get_by_label("Open").click();
    step_until(&mut h, "the raster", |a| a.doc.is_some());
    assert!(h.state().session.open_url.is_none(), "the dialog closed");
}

/// "Find all" as an analyst uses it, with the random-weight SAM 3 transformers
/// built: type a concept, draw an exemplar and a counter-example with the
/// Exemplar tool (E), press Find all → one feature per instance, each with its
/// score and the concept's provenance; then "From the answer": the trained tiny
/// reasoner answers the question and its boxes and concept drive SAM 3.
#[test]
fn find_all_with_drawn_exemplars_and_from_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings {
        model: root().join("tests/fixtures/qwen2_5_vl_tiny_trained").display().to_string(),
        sam3: root().join("tests/fixtures/sam3_tiny/seed1").display().to_string(),
        ..Settings::default()
    };
    let mut h = harness(Some(sample()), settings, tmp.path().join("recovery.gpkg"));
    idle(&mut h);
    h.get_by_label("Concept").click();
    h.step();
    h.get_by_label("Concept").type_text("ship");
    h.step();
    // One exemplar, then one counter-example, drawn on the map with the panel's tool.
    h.get_by_label("Draw exemplar").click();
    h.step();
    let (a, b) = (screen_of(&h, [40.0, 50.0]), screen_of(&h, [80.0, 110.0]));
    drag(&mut h, a, b);
    h.get_by_label("counter-example").click();
    h.step();
    let (a, b) = (screen_of(&h, [120.0, 40.0]), screen_of(&h, [150.0, 70.0]));
    drag(&mut h, a, b);
    let ex = h.state().session.find.exemplars.clone();
    assert_eq!(ex.len(), 2, "both boxes became exemplars");
    assert!(ex[0].positive && !ex[1].positive);
    assert!((ex[0].bbox.x1 - 40.0).abs() <= 1.0 && (ex[0].bbox.y2 - 110.0).abs() <= 1.0, "{:?}", ex[0].bbox);
    h.state_mut().session.find.threshold = 0.05;
    h.get_by_label("Find all").click();
    h.step();
    step_until(&mut h, "SAM 3's instances", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    let s = &h.state().session;
    assert!(!s.features.is_empty(), "instances found");
    for f in s.features.iter() {
        assert_eq!(f.provenance.concept, "ship");
        assert_eq!(f.provenance.task, "concept");
        assert!(f.provenance.exemplars.starts_with('+') && f.provenance.exemplars.contains(";-"));
        assert!(f.score.unwrap() >= 0.05, "score kept with the feature");
        assert_eq!(f.provenance.segmenter, "sam3 (ViT 64×3)");
    }
    let found = s.features.len();

    // From the answer: the question's boxes become exemplars; the typed concept stays the text.
    h.state_mut().session.find.exemplars.clear();
    h.state_mut().session.find.concept.clear();
    h.get_by_label("Question").click();
    h.step();
    h.get_by_label("Question").type_text("where are the ships?");
    h.step();
    h.get_by_label("From the answer").click();
    h.step();
    h.get_by_label("Find all").click();
    h.step();
    step_until(&mut h, "the answer, then SAM 3", |a| !a.busy());
    let run = h.state().session.run.clone().unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);
    assert!(run.text.starts_with("<think>Ships are long hulls"), "the reasoning streamed: {}", run.text);
    let s = &h.state().session;
    let new: Vec<_> = s.features.iter().skip(found).collect();
    assert!(!new.is_empty());
    for f in &new {
        assert_eq!(f.provenance.task, "reason+concept");
        assert_eq!(f.provenance.concept, "ship", "named by the question and reasoning");
        assert!(f.provenance.reasoning.contains("Ships are long hulls"));
        assert_eq!(f.provenance.exemplars.matches('+').count(), 2, "the reasoner's two boxes");
    }
}
