//! `remote-reasoner serve` over real HTTP with the tiny trained checkpoint: the
//! OpenAI routes (whole and streamed replies), `ask --endpoint` giving the same
//! boxes as the local model, authentication off loopback, size limits, and
//! concurrent requests queued.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test
#![allow(clippy::result_large_err)] // ureq's error, matched on by status in the tests

use std::io::{BufRead, BufReader};
use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
#[path = "common/served.rs"]
mod served;
use cli::{ok_json, root, rr};
use served::{model, start};

fn sample() -> String {
    root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif").display().to_string()
}

/// The sample as the model would see it: a PNG data URL of the 196×196 resize
/// (a multiple of 28, so the server keeps it as it is).
fn image_url() -> String {
    let raster = engine::raster::Raster::open(std::path::Path::new(&sample())).unwrap();
    let params = engine::raster::RenderParams::default_for(raster.info());
    let view = engine::pipeline::read_window(&raster, engine::base::Window::full(200, 200), &params, 802_816).unwrap();
    let img = engine::reasoner::processor::resize_bicubic(&view.image, 196, 196).unwrap();
    engine::openai::data_url(&img).unwrap()
}

fn grounding_request(stream: bool) -> serde_json::Value {
    let content = engine::reasoner::prompt::user_content(engine::base::Goal::Region, "where are the ships?");
    let (before, after) = content.split_once("<image>").unwrap();
    serde_json::json!({
        "model": "qwen2_5_vl_tiny_trained",
        "stream": stream,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": before},
            {"type": "image_url", "image_url": {"url": image_url()}},
            {"type": "text", "text": after},
        ]}],
    })
}

fn post(url: &str, body: &str, token: Option<&str>) -> Result<ureq::Response, ureq::Error> {
    let mut r = ureq::post(&format!("{url}/v1/chat/completions")).set("Content-Type", "application/json");
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    r.send_string(body)
}

/// The concatenated deltas of a streamed reply, and whether it ended in [DONE].
fn read_stream(response: ureq::Response) -> (String, bool, Option<String>) {
    let (mut text, mut done, mut finish) = (String::new(), false, None);
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    (text, done, finish)
}

#[test]
fn openai_routes_whole_and_streamed_and_ask_by_endpoint() {
    let s = start(&["--addr", "127.0.0.1:0"]).unwrap();
    let models: serde_json::Value = ureq::get(&format!("{}/v1/models", s.url)).call().unwrap().into_json().unwrap();
    assert_eq!(models["data"][0]["id"], "qwen2_5_vl_tiny_trained");

    // The local model's answer, for comparison.
    let local = ok_json(&["ask", "--model", &model(), "--image", &sample(), "--json", "where are the ships?"]);
    let expected = local["raw_text"].as_str().unwrap().to_owned();

    let whole: serde_json::Value =
        post(&s.url, &grounding_request(false).to_string(), None).unwrap().into_json().unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    assert_eq!(whole["usage"]["completion_tokens"], local["generated_token_ids"].as_array().unwrap().len());

    let (text, done, finish) = read_stream(post(&s.url, &grounding_request(true).to_string(), None).unwrap());
    assert!(done, "the stream ends with data: [DONE]");
    assert_eq!(text, expected);
    assert_eq!(finish.as_deref(), Some("stop"));

    // The CLI through the endpoint: the same boxes, in pixels and map coordinates.
    let remote = ok_json(&["ask", "--endpoint", &s.url, "--image", &sample(), "--json", "where are the ships?"]);
    assert_eq!(remote["boxes"], local["boxes"]);
    assert_eq!(remote["boxes_world"], local["boxes_world"]);
    assert_eq!(remote["think"], local["think"]);

    // Bad requests are refused with a reason, and the server carries on.
    let err = post(&s.url, r#"{"messages":[{"role":"user","content":"no image"}]}"#, None).unwrap_err();
    match err {
        ureq::Error::Status(400, r) => assert!(r.into_string().unwrap().contains("no image_url")),
        other => panic!("{other:?}"),
    }
    assert!(ureq::get(&format!("{}/v1/models", s.url)).call().is_ok());
}

#[test]
fn concurrent_requests_are_queued_and_all_answered() {
    let s = start(&["--addr", "127.0.0.1:0"]).unwrap();
    let body = grounding_request(true).to_string();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (s.url.clone(), body.clone());
            std::thread::spawn(move || read_stream(post(&url, &body, None).unwrap()))
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(replies.iter().all(|(text, done, _)| *done && text == &replies[0].0 && text.contains("<answer>")));
}

#[test]
fn off_loopback_a_token_is_required_and_checked() {
    // 127.0.0.2 is not 127.0.0.1: it counts as reaching other machines.
    let err = start(&["--addr", "127.0.0.2:0"]).err().expect("refused to start without a token");
    assert!(err.contains("bearer token is required"), "{err}");
    let s = start(&["--addr", "127.0.0.2:0", "--token", "s3cret", "--max-body-mib", "1"]).unwrap();
    match ureq::get(&format!("{}/v1/models", s.url)).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let models = ureq::get(&format!("{}/v1/models", s.url)).set("Authorization", "Bearer s3cret").call();
    assert_eq!(models.unwrap().status(), 200);
    match post(&s.url, &grounding_request(false).to_string(), Some("wrong")) {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    // Over the 1 MiB limit: 413.
    let big = format!(r#"{{"messages":[],"pad":"{}"}}"#, "x".repeat(2 << 20));
    match post(&s.url, &big, Some("s3cret")) {
        Err(ureq::Error::Status(413, _)) => {}
        other => panic!("expected 413, got {other:?}"),
    }
    // The CLI with the key from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(["ask", "--endpoint", &s.url, "--image", &sample(), "--json", "where are the ships?"])
        .env("RR_API_KEY", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let no_key = rr(&["ask", "--endpoint", &s.url, "--image", &sample(), "where are the ships?"]);
    let err = String::from_utf8_lossy(&no_key.stderr);
    assert!(!no_key.status.success() && err.contains("401"), "{err}");
}
