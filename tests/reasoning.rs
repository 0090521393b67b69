//! Questions through the engine thread: the model runs on its own thread, the
//! trace streams as events, cancel works between tokens, and a failed or
//! cancelled question leaves the engine usable.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::base::Goal;
use engine::base::Window;
use engine::pipeline::{Question, ReasonerSpec};
use engine::raster::RenderParams;
use engine::reasoner::{AskOptions, LoadOptions};
use engine::tiles::TileKey;
use engine::worker::AskStage;
use engine::worker::Models;
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

fn tiny() -> PathBuf {
    root().join("tests/fixtures/qwen2_5_vl_tiny_trained")
}

fn models(dir: PathBuf) -> Models {
    let label = Some(dir.display().to_string());
    Models { reasoner: ReasonerSpec::Local { dir, options: LoadOptions::default() }, label, sam: None }
}

fn ask_with(e: &Engine, raster: u64, info: &engine::raster::RasterInfo, query: &str, models: Models) -> u64 {
    let question = Question { goal: Goal::Region, query: query.to_owned(), options: AskOptions::default() };
    let params = RenderParams::default_for(info);
    e.send(RequestKind::Ask { raster, window: Window::full(200, 200), params, question, models })
}

fn ask(e: &Engine, raster: u64, info: &engine::raster::RasterInfo, query: &str) -> u64 {
    ask_with(e, raster, info, query, models(tiny()))
}

#[test]
fn a_question_streams_its_trace_and_returns_raster_boxes() {
    let e = Engine::spawn(EngineConfig::default(), Arc::new(|| {}));
    let (raster, info) = open_sample(&e);

    // A question naming a broken checkpoint fails, naming it; the engine keeps serving.
    let job = ask_with(&e, raster, &info, "where are the ships?", models("/no/checkpoint".into()));
    let mut stages = Vec::new();
    let last = loop {
        match next(&e) {
            Event { job: j, kind: EventKind::AskStage { stage } } if j == job => stages.push(stage),
            other => break other,
        }
    };
    match last {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("/no/checkpoint"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stages, [AskStage::Queued, AskStage::LoadingModel]);

    // So does an explicit load.
    let spec = ReasonerSpec::Local { dir: "/no/checkpoint".into(), options: LoadOptions::default() };
    let job = e.send(RequestKind::LoadReasoner { spec });
    match next(&e) {
        Event { job: j, kind: EventKind::Failed { error } } => {
            assert!(j == job && error.contains("/no/checkpoint"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // The first question loads the model it names (one request, no round trip).
    let job = ask(&e, raster, &info, "where are the ships?");
    let mut stages = Vec::new();
    loop {
        match next(&e) {
            Event { job: j, kind: EventKind::AskStage { stage } } if j == job => stages.push(stage),
            Event { job: j, kind: EventKind::ReasonerLoaded { info } } if j == job => {
                assert_eq!((info.dir, info.parameters), (tiny(), 232_096));
                assert_eq!(info.weights_hash.len(), 12, "fingerprinted on load");
            }
            Event { job: j, kind: EventKind::AskText { .. } } if j == job => {}
            Event { job: j, kind: EventKind::Answered { .. } } if j == job => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(stages[..2], [AskStage::Queued, AskStage::LoadingModel]);

    // The next one finds it loaded.
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
            Event { kind: EventKind::TilesDone, .. }
            | Event { kind: EventKind::AskStage { .. }, .. }
            | Event { kind: EventKind::AskText { .. }, .. } => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(outcome.answer.boxes_resized, [[150.0, 20.0, 190.0, 60.0]]);
}
