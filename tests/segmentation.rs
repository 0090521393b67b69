//! Boxes to masks through the engine thread: the watershed fallback without a
//! checkpoint, SAM 2.1 (seeded tiny weights) with the window's encoding cached,
//! refinement clicks with the newest click superseding queued ones, and errors
//! that leave the engine usable.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::base::PixelBox;
use engine::base::Window;
use engine::raster::RenderParams;
use engine::segment::Method;
use engine::{Engine, EngineConfig, Event, EventKind, RequestKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn next(e: &Engine) -> Event {
    e.recv_timeout(Duration::from_secs(120)).expect("engine answered")
}

/// SAM 2.1 tiny with the parity fixture's seeded weights, as a checkpoint file.
fn seeded_sam(dir: &Path) -> PathBuf {
    let path = dir.join("sam2.1_hiera_tiny_seeded.safetensors");
    engine::models::sam2::synthetic::save_checkpoint(&root().join("tests/fixtures/sam2_tiny/weights.json"), &path)
        .unwrap();
    path
}

/// The question's pixel budget (the reasoner's training maximum).
const MAX_PIXELS: usize = engine::reasoner::processor::TRAINING_MAX_PIXELS;

fn b(x1: f64, y1: f64, x2: f64, y2: f64) -> PixelBox {
    PixelBox { x1, y1, x2, y2 }
}

#[test]
fn pixel_task_refinement_and_cache_through_the_engine() {
    let e = Engine::spawn(EngineConfig::default(), Arc::new(|| {}));
    e.open(root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif"));
    let (raster, info) = match next(&e) {
        Event { kind: EventKind::Opened { raster, info, .. }, .. } => (raster, *info),
        other => panic!("{other:?}"),
    };
    let params = RenderParams::default_for(&info);
    let window = Window { x: 20, y: 10, width: 160, height: 180 };
    let request = |sam: &Option<PathBuf>, window, boxes| RequestKind::Segment {
        raster,
        window,
        params,
        max_pixels: MAX_PIXELS,
        sam: sam.clone(),
        boxes,
    };
    let segment = |sam: &Option<PathBuf>, boxes: Vec<PixelBox>| e.send(request(sam, window, boxes));
    let outcome = |job| loop {
        match next(&e) {
            Event { job: j, kind: EventKind::Segmented { segments: outcome, .. } } if j == job => return outcome,
            Event { job: j, kind: EventKind::Failed { error } } if j == job => panic!("{error}"),
            Event { kind: EventKind::Cancelled, .. } | Event { kind: EventKind::Refined { .. }, .. } => {}
            other => panic!("{other:?}"),
        }
    };

    // Without a checkpoint: the watershed fallback, labelled as such.
    let o = outcome(segment(&None, vec![b(40.0, 40.0, 100.0, 120.0), b(120.0, 20.0, 175.0, 60.0)]));
    assert_eq!(o.method, Method::WatershedFallback);
    assert_eq!((o.image_size, o.per_box.len()), ((160, 180), 2));
    assert!(o.per_box.iter().all(|(_, s)| s.mask.count() > 0 && s.iou.is_none()));
    assert_eq!(o.merged.count(), {
        let u = engine::segment::Mask::union(160, 180, o.per_box.iter().map(|(_, s)| &s.mask));
        u.count()
    });
    assert_eq!(o.per_box[0].0, b(40.0, 40.0, 100.0, 120.0), "boxes come back in raster pixels");
    // No boxes: an empty mask.
    let o = outcome(segment(&None, Vec::new()));
    assert_eq!((o.merged.count(), o.per_box.len()), (0, 0));

    // SAM 2.1, named by the request and loaded by it: the window is encoded
    // once, later prompts on it reuse the encoding.
    let tmp = tempfile::tempdir().unwrap();
    let sam = Some(seeded_sam(tmp.path()));
    let job = segment(&sam, vec![b(40.0, 40.0, 100.0, 120.0)]);
    match next(&e) {
        Event { job: j, kind: EventKind::SegmenterLoaded { method } } => {
            assert!(j == job && method == Method::Sam2("sam2.1_hiera_tiny".into()));
        }
        other => panic!("{other:?}"),
    }
    let first = outcome(job);
    assert!(first.encoded);
    let (_, seg) = &first.per_box[0];
    assert!(
        seg.iou.is_some() && seg.object_score.is_some() && seg.low_res.as_ref().is_some_and(|l| l.len() == 256 * 256)
    );
    let again = outcome(segment(&sam, vec![b(40.0, 40.0, 100.0, 120.0), b(10.0, 10.0, 60.0, 60.0)]));
    assert!(!again.encoded, "the cached encoding is reused");
    assert_eq!(again.per_box[0].1.mask, first.per_box[0].1.mask, "same prompt, same mask");

    // Two clicks on one feature queued behind a new window's encoding: the older is dropped.
    let other = Window { x: 0, y: 0, width: 200, height: 200 };
    let busy = e.send(request(&sam, other, vec![b(5.0, 5.0, 50.0, 50.0)]));
    let previous = Some(Box::new(first.per_box[0].1.clone()));
    let click = |clicks: Vec<(f64, f64, bool)>| {
        let previous = previous.clone();
        e.send(RequestKind::Refine {
            raster,
            window,
            params,
            max_pixels: MAX_PIXELS,
            sam: sam.clone(),
            feature: 7,
            bbox: b(40.0, 40.0, 100.0, 120.0),
            previous,
            clicks,
        })
    };
    let older = click(vec![(70.0, 80.0, false)]);
    let newer = click(vec![(70.0, 80.0, false), (50.0, 60.0, true)]);
    let (mut busy_done, mut older_cancelled, mut refined) = (false, false, None);
    while refined.is_none() {
        match next(&e) {
            Event { job, kind: EventKind::Segmented { .. } } if job == busy => busy_done = true,
            Event { job, kind: EventKind::Cancelled } if job == older => older_cancelled = true,
            Event { job, kind: EventKind::Refined { feature, segment, polygons } } if job == newer => {
                assert!(!polygons.0.is_empty(), "the refined mask is traced");
                refined = Some((feature, segment));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(busy_done && older_cancelled, "the superseded click was dropped");
    let (feature, refined_segment) = refined.unwrap();
    assert_eq!(feature, 7);
    assert_ne!(refined_segment.mask, first.per_box[0].1.mask, "the clicks changed the mask");

    // A box outside the window fails clearly; the engine goes on.
    let bad = segment(&sam, vec![b(500.0, 500.0, 600.0, 600.0)]);
    match next(&e) {
        Event { job, kind: EventKind::Failed { error } } => {
            assert!(job == bad && error.contains("box 1") && error.contains("outside"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // A checkpoint that does not load fails, naming it, whether loaded ahead or by a request.
    let job = e.send(RequestKind::LoadSegmenter { checkpoint: Some("/no/sam.pt".into()) });
    match next(&e) {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("/no/sam.pt"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let job = segment(&Some("/no/sam.pt".into()), vec![b(40.0, 40.0, 100.0, 120.0)]);
    match next(&e) {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("/no/sam.pt"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // The loaded model stays: the next request naming it is not loaded again.
    let job = segment(&sam, vec![b(40.0, 40.0, 100.0, 120.0)]);
    match next(&e) {
        Event { job: j, kind: EventKind::Segmented { segments, .. } } => {
            assert_eq!(j, job);
            assert_eq!(
                segments.method,
                Method::Sam2("sam2.1_hiera_tiny".into()),
                "a failed load keeps the loaded model"
            );
            assert!(!segments.encoded, "and its cached encoding");
        }
        other => panic!("{other:?}"),
    }
}
