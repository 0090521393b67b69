//! CPU time per frame of the workbench while 1000 polygons (100k vertices in
//! all) are on screen and one of them is being dragged by a vertex: the egui
//! frame (our UI code, layout) plus tessellating what it painted, as the
//! renderer would get it. Headless (egui_kittest), on a synthetic 8192² raster.
//!
//!     cargo bench -p remote-reasoner --bench frame
//!
//! Prints a Markdown table (BENCHMARKS.md records it).

#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

use std::f64::consts::TAU;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::vec2;
use egui_kittest::Harness;
use engine::edit::WorkFeature;
use engine::features::Provenance;
use geo::{LineString, MultiPolygon, Polygon};
use rr_app::gui::WorkbenchApp;
use rr_app::gui::session::Settings;

const POLYGONS: usize = 1000;
const VERTICES: usize = 100;

fn settle(h: &mut Harness<'static, WorkbenchApp>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(h.state().is_idle() && h.state().doc.is_some()) {
        h.step();
        assert!(Instant::now() < deadline, "did not settle");
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..3 {
        h.step();
    }
}

/// A wavy ring of `VERTICES` vertices around (cx, cy).
fn blob(cx: f64, cy: f64, r: f64, seed: usize) -> MultiPolygon<f64> {
    let ring: Vec<(f64, f64)> = (0..=VERTICES)
        .map(|i| {
            let a = TAU * (i % VERTICES) as f64 / VERTICES as f64;
            let rr = r * (1.0 + 0.15 * (5.0 * a + seed as f64).sin());
            (cx + rr * a.cos(), cy + rr * a.sin())
        })
        .collect();
    MultiPolygon::new(vec![Polygon::new(LineString::from(ring), vec![])])
}

/// Milliseconds per frame: egui frame + tessellation.
fn frame_ms(h: &mut Harness<'static, WorkbenchApp>) -> f64 {
    let t = Instant::now();
    h.step();
    let shapes = h.output().shapes.clone();
    let ppp = h.ctx.pixels_per_point();
    std::hint::black_box(h.ctx.tessellate(shapes, ppp));
    t.elapsed().as_secs_f64() * 1e3
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (mean, v[v.len() / 2], v[v.len() * 95 / 100])
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let raster = dir.path().join("large.tif");
    engine::synthetic::sparse_geotiff(&raster, 8192, 3, true).unwrap();
    let recovery = dir.path().join("recovery.gpkg");
    let mut h = Harness::builder().with_size(vec2(1600.0, 1000.0)).build_eframe(move |cc| {
        let mut app = WorkbenchApp::with_session(&cc.egui_ctx, Some(raster), Settings::default(), recovery);
        app.autosave_every = Duration::from_secs(3600);
        app
    });
    settle(&mut h);
    let provenance = Arc::new(Provenance { task: "bench".into(), ..Default::default() });
    let side = (POLYGONS as f64).sqrt().ceil() as usize;
    let cell = 8192.0 / side as f64;
    let features: Vec<WorkFeature> = (0..POLYGONS)
        .map(|i| {
            let (cx, cy) = (((i % side) as f64 + 0.5) * cell, ((i / side) as f64 + 0.5) * cell);
            WorkFeature::new(
                Some([cx - cell * 0.4, cy - cell * 0.4, cx + cell * 0.4, cy + cell * 0.4]),
                blob(cx, cy, cell * 0.3, i),
                provenance.clone(),
            )
        })
        .collect();
    let ids = h.state_mut().session.features.add("bench", features);
    let vertices: usize = h.state().session.features.iter().map(WorkFeature::vertex_count).sum();
    // Warm up: triangulations are cached after the first frame that shows them.
    for _ in 0..5 {
        h.step();
    }
    let idle: Vec<f64> = (0..60).map(|_| frame_ms(&mut h)).collect();

    // Select one polygon in the middle and drag its first vertex around.
    let id = ids[POLYGONS / 2 + side / 2];
    h.state_mut().session.selected = Some(id);
    h.step();
    let rect = h.state().map_rect.unwrap();
    let c = h.state().session.features.get(id).unwrap().polygons.0[0].exterior().0[0];
    let start = h.state().doc.as_ref().unwrap().view.source_to_screen(rect, [c.x, c.y]);
    h.drag_at(start);
    h.step();
    let mut dragging = Vec::new();
    for i in 0..120 {
        let a = i as f32 * 0.1;
        h.hover_at(start + vec2(30.0 * a.cos() + 20.0, 30.0 * a.sin()));
        dragging.push(frame_ms(&mut h));
    }
    assert!(h.state().session.drag.is_some(), "the vertex was being dragged");
    let (im, imed, ip95) = stats(idle);
    let (dm, dmed, dp95) = stats(dragging);
    println!(
        "{POLYGONS} polygons, {vertices} vertices on screen (1600×1000 window, 8192² raster fitted); ms per frame (egui frame + tessellation):\n"
    );
    println!("| state | mean | median | p95 |");
    println!("|---|---:|---:|---:|");
    println!("| idle (hover) | {im:.2} | {imed:.2} | {ip95:.2} |");
    println!("| dragging a vertex | {dm:.2} | {dmed:.2} | {dp95:.2} |");
}
