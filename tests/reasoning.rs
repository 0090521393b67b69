//! Questions through the engine thread: the model runs on its own thread, the
//! trace streams as events, cancel works between tokens, and a failed or
//! cancelled question leaves the engine usable.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::base::Window;
use engine::raster::RenderParams;
use engine::reasoner::{AskOptions, LoadOptions, Task};
use engine::tiles::TileKey;
use engine::worker::AskStage;
use engine::{Engine, EngineConfig, Event, EventKind, RequestKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn next(e: &Engine) -> Event {
    e.recv_timeout(Duration::from_secs(60)).expect("engine answered")
}

fn open_sample(e: &Engine) -> (u64, engine::raster::RasterInfo) {
    e.open(root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif"));
    match next(e) {
        Event { kind: EventKind::Opened { raster, info, .. }, .. } => (raster, *info),
        other => panic!("{other:?}"),
    }
}

fn ask(e: &Engine, raster: u64, info: &engine::raster::RasterInfo, query: &str) -> u64 {
    let (query, params) = (query.to_owned(), RenderParams::default_for(info));
    e.send(RequestKind::Ask {
        raster,
        window: Window::full(200, 200),
        params,
        task: Task::Region,
        query,
        options: AskOptions::default(),
    })
}

#[test]
fn a_question_streams_its_trace_and_returns_raster_boxes() {
    let e = Engine::spawn(EngineConfig::default(), Arc::new(|| {}));
    let (raster, info) = open_sample(&e);

    // Asking before any checkpoint is loaded fails clearly.
    let job = ask(&e, raster, &info, "where are the ships?");
    assert!(matches!(next(&e), Event { kind: EventKind::AskStage { stage: AskStage::Queued, .. }, .. }));
    match next(&e) {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("no RemoteReasoner checkpoint"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // A broken directory fails and names it; the engine keeps serving.
    let job = e.send(RequestKind::LoadReasoner { dir: "/no/checkpoint".into(), options: LoadOptions::default() });
    match next(&e) {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("/no/checkpoint"), "{error}")
        }
        other => panic!("{other:?}"),
    }

    let dir = root().join("tests/fixtures/qwen2_5_vl_tiny_trained");
    let job = e.send(RequestKind::LoadReasoner { dir: dir.clone(), options: LoadOptions::default() });
    match next(&e) {
        Event { job: j, kind: EventKind::ReasonerLoaded { info } } => {
            assert_eq!(j, job);
            assert_eq!((info.dir, info.parameters), (dir, 232_096));
        }
        other => panic!("{other:?}"),
    }

    let job = ask(&e, raster, &info, "where are the ships?");
    let (mut stages, mut text) = (Vec::new(), String::new());
    let outcome = loop {
        match next(&e) {
            Event { job: j, kind: EventKind::AskStage { stage } } if j == job => stages.push(stage),
            Event { job: j, kind: EventKind::AskText { text: t } } if j == job => text.push_str(&t),
            Event { job: j, kind: EventKind::Answered { outcome, .. } } if j == job => break outcome,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        stages,
        [AskStage::Queued, AskStage::EncodingImage, AskStage::ReadingPrompt { tokens: 49 }, AskStage::Reasoning]
    );
    assert_eq!(text, outcome.answer.raw_text);
    assert!(outcome.answer.think.starts_with("Ships are long hulls"));
    assert_eq!(outcome.boxes.len(), 2);
    // 196 → 200: boxes scale by 200/196 into raster pixels.
    let b = outcome.boxes[0];
    assert!((b.x1 - 30.0 * 200.0 / 196.0).abs() < 1e-9 && (b.y2 - 120.0 * 200.0 / 196.0).abs() < 1e-9, "{b:?}");

    // Cancel after the first piece of text: the question stops, the engine goes on.
    let job = ask(&e, raster, &info, "where are the ships?");
    loop {
        match next(&e) {
            Event { job: j, kind: EventKind::AskText { .. } } if j == job => {
                e.cancel(job);
                break;
            }
            Event { kind: EventKind::AskStage { .. }, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    loop {
        match next(&e) {
            Event { kind: EventKind::AskText { .. }, .. } => {}
            Event { job: j, kind: EventKind::Cancelled } if j == job => break,
            other => panic!("{other:?}"),
        }
    }
    let tiles = e.request_tiles(raster, RenderParams::default_for(&info), vec![TileKey { level: 0, x: 0, y: 0 }]);
    assert!(matches!(next(&e), Event { job, kind: EventKind::Tile { .. } } if job == tiles));
    let job = ask(&e, raster, &info, "find the storage tanks");
    let outcome = loop {
        match next(&e) {
            Event { job: j, kind: EventKind::Answered { outcome, .. } } if j == job => break outcome,
            Event { kind: EventKind::TilesDone { .. }, .. }
            | Event { kind: EventKind::AskStage { .. }, .. }
            | Event { kind: EventKind::AskText { .. }, .. } => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(outcome.answer.boxes_resized, [[150.0, 20.0, 190.0, 60.0]]);
}
