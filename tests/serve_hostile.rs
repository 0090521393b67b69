//! `serve` against hostile and careless clients, over real loopback HTTP: each
//! case the hardening issue found (huge declared bodies, over-long prompts,
//! unbounded max_tokens, decompression bombs, bad fields, slow-loris, stalled
//! bodies, 200 clients at once, clients that leave) must get a clear answer
//! while the server stays up and its memory stays bounded.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[path = "common/served.rs"]
mod served;
use served::{Served, fixture, start, start_with};

/// Memory a server may gain over a test's hostile requests.
const RSS_SLACK_MIB: f64 = 256.0;

fn png_url(w: usize, h: usize) -> String {
    let img = engine::base::RgbImage::new(w, h, vec![90; w * h * 3]).unwrap();
    engine::openai::data_url(&img).unwrap()
}

/// A `data:` URL of a 1-bit PNG of `w`×`h` zeros: tens of KB that decode to
/// gigabytes (the decompression bomb of the issue).
fn bomb_url(w: u32, h: u32) -> String {
    use base64::Engine as _;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        enc.set_compression(png::Compression::High);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&vec![0u8; (w as usize).div_ceil(8) * h as usize]).unwrap();
        writer.finish().unwrap();
    }
    assert!(out.len() < 200_000, "{} bytes", out.len());
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(out))
}

/// A chat request with `text` and the image `url`, plus `extra` top-level fields.
fn chat_body(text: &str, url: &str, extra: serde_json::Value) -> String {
    let mut body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ]}],
    });
    if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    body.to_string()
}

/// Sends raw bytes on a fresh connection; the status and body of the reply
/// (status 0 when the server closed without one).
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// POSTs a JSON body to the chat route; status and body.
fn post(s: &Served, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = ureq::post(&format!("{}/v1/chat/completions", s.url))
        .timeout(Duration::from_secs(120))
        .set("Content-Type", "application/json");
    for (k, v) in headers {
        r = r.set(k, v);
    }
    match r.send_string(body) {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

/// The parsed OpenAI error of a reply body.
fn error_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    v["error"].clone()
}

/// The server answers a plain request.
fn healthy(s: &mut Served, token: Option<&str>) {
    assert!(s.alive(), "the server is gone: {}", s.log());
    let mut r = ureq::get(&format!("{}/v1/models", s.url)).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    assert_eq!(r.call().unwrap().status(), 200);
}

/// Waits until the server's log contains `needle`.
fn wait_for_log(s: &Served, needle: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if s.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_header_only_request_declaring_a_petabyte_gets_413_or_401_and_the_server_lives() {
    for token in [None, Some("s3cret")] {
        let mut s = match token {
            Some(t) => start(&["--addr", "127.0.0.1:0", "--token", t]).unwrap(),
            None => start(&["--addr", "127.0.0.1:0"]).unwrap(),
        };
        let before = s.rss_mib();
        let head = |auth: &str| {
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: 1000000000000000\r\nConnection: close\r\n\r\n"
            )
        };
        if let Some(t) = token {
            let (status, body) = raw(&s.addr(), head("").as_bytes());
            assert_eq!(status, 401, "{body}");
            let (status, body) = raw(&s.addr(), head(&format!("Authorization: Bearer {t}\r\n")).as_bytes());
            assert_eq!(status, 413, "{body}");
            assert!(error_of(&body)["message"].as_str().unwrap().contains("over"));
        } else {
            for _ in 0..5 {
                let (status, body) = raw(&s.addr(), head("").as_bytes());
                assert_eq!(status, 413, "{body}");
            }
        }
        healthy(&mut s, token);
        assert!(s.rss_mib() < before + 32.0, "{} → {} MiB", before, s.rss_mib());
    }
}

#[test]
fn prompts_over_the_context_and_max_tokens_over_the_cap_are_refused() {
    let mut s = start(&["--addr", "127.0.0.1:0"]).unwrap();
    let before = s.rss_mib();
    let url = png_url(56, 56);
    for kb in [36, 600] {
        let text = "where are the ships in the harbour basin? ".repeat(kb * 1024 / 42);
        let (status, body) = post(&s, &chat_body(&text, &url, serde_json::json!({})), &[]);
        assert_eq!(status, 400, "{kb} KB: {body}");
        let e = error_of(&body);
        assert_eq!(e["code"], "context_length_exceeded", "{body}");
        assert!(e["message"].as_str().unwrap().contains("4096"), "names the model's context: {body}");
    }
    for (n, why) in [(100_000, "over the cap"), (0, "zero")] {
        let (status, body) = post(&s, &chat_body("ships?", &url, serde_json::json!({"max_tokens": n})), &[]);
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(error_of(&body)["param"], "max_tokens");
    }
    // Under the cap but past the room the prompt leaves.
    let text = "ships ".repeat(3000);
    let (status, body) = post(&s, &chat_body(&text, &url, serde_json::json!({"max_tokens": 4000})), &[]);
    assert_eq!(status, 400, "{body}");
    // A --max-prompt-tokens cap from the command line: the 56×56 image alone is 4 tokens.
    let short = start(&["--addr", "127.0.0.1:0", "--max-prompt-tokens", "40"]).unwrap();
    let (status, body) = post(&short, &chat_body(&"ships ".repeat(60), &url, serde_json::json!({})), &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-prompt-tokens"), "{body}");
    // A --max-tokens cap from the command line.
    let capped = start(&["--addr", "127.0.0.1:0", "--max-tokens", "16"]).unwrap();
    let (status, body) = post(&capped, &chat_body("ships?", &url, serde_json::json!({"max_tokens": 17})), &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&capped, &chat_body("ships?", &url, serde_json::json!({"max_tokens": 16})), &[]);
    assert_eq!(status, 200, "{body}");
    healthy(&mut s, None);
    assert!(s.rss_mib() < before + RSS_SLACK_MIB, "{} → {} MiB", before, s.rss_mib());
}

#[test]
fn images_are_checked_from_their_header_and_decoded_in_turn() {
    let mut s = start(&["--addr", "127.0.0.1:0"]).unwrap();
    let before = s.rss_mib();
    // 20000×20000 at 1 bit: 400 from the header, eight at once, memory flat.
    let bomb = chat_body("ships?", &bomb_url(20_000, 20_000), serde_json::json!({}));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (s.url.clone(), bomb.clone());
            std::thread::spawn(move || {
                let r = ureq::post(&format!("{url}/v1/chat/completions")).set("Content-Type", "application/json");
                match r.send_string(&body) {
                    Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
                    other => panic!("{other:?}"),
                }
            })
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(error_of(&body)["message"].as_str().unwrap().contains("20000×20000"), "{body}");
    }
    assert!(s.rss_mib() < before + 64.0, "{} → {} MiB", before, s.rss_mib());
    // 1×20000: an aspect ratio Qwen2.5-VL cannot take is the client's error, not a 500.
    let (status, body) = post(&s, &chat_body("ships?", &png_url(1, 20_000), serde_json::json!({})), &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("aspect ratio"), "{body}");
    // Not an image, and an image whose pixels are cut short (found only when decoded, in the queue).
    let (status, body) = post(&s, &chat_body("ships?", "data:image/png;base64,aGVsbG8=", serde_json::json!({})), &[]);
    assert_eq!(status, 400, "{body}");
    let url = png_url(300, 200);
    let cut = {
        use base64::Engine as _;
        let b64 = url.trim_start_matches("data:image/png;base64,");
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() / 2]))
    };
    let (status, body) = post(&s, &chat_body("ships?", &cut, serde_json::json!({"max_tokens": 4})), &[]);
    assert_eq!(status, 400, "{body}");
    // A server-side pixel limit.
    let small = start(&["--addr", "127.0.0.1:0", "--max-image-pixels", "10000"]).unwrap();
    let (status, body) = post(&small, &chat_body("ships?", &png_url(101, 100), serde_json::json!({})), &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        post(&small, &chat_body("ships?", &png_url(100, 100), serde_json::json!({"max_tokens": 4})), &[]);
    assert_eq!(status, 200, "{body}");
    healthy(&mut s, None);
}

#[test]
fn invalid_requests_get_openai_errors_with_the_right_status() {
    let mut s = start(&["--addr", "127.0.0.1:0"]).unwrap();
    let url = png_url(56, 56);
    let cases: Vec<(String, u16, &str)> = vec![
        (chat_body("q", &url, serde_json::json!({"temperature": 5})), 400, "temperature"),
        (chat_body("q", &url, serde_json::json!({"temperature": -1})), 400, "temperature"),
        (chat_body("q", &url, serde_json::json!({"top_p": 1.5})), 400, "top_p"),
        (chat_body("q", &url, serde_json::json!({"top_p": 0})), 400, "top_p"),
        (chat_body("q", &url, serde_json::json!({"n": 3})), 400, "n"),
        (chat_body("q", &url, serde_json::json!({"temperature": "hot"})), 422, ""),
        (r#"{"messages": "hello"}"#.into(), 422, ""),
        (r#"{"messages": [{"role": "user", "content": "no image"}]}"#.into(), 400, ""),
        (r#"{"messages": [{"role": "robot", "content": "x"}]}"#.into(), 400, ""),
        (r#"{"messages": [}"#.into(), 400, ""),
        (String::new(), 400, ""),
    ];
    for (body, want, param) in &cases {
        let (status, reply) = post(&s, body, &[]);
        assert_eq!(status, *want, "{body:.200}: {reply}");
        let e = error_of(&reply);
        if !param.is_empty() {
            assert_eq!(e["param"], *param, "{reply}");
        }
    }
    // Not JSON by its Content-Type.
    let body = chat_body("q", &url, serde_json::json!({}));
    let r = ureq::post(&format!("{}/v1/chat/completions", s.url)).set("Content-Type", "text/plain").send_string(&body);
    match r {
        Err(ureq::Error::Status(400, resp)) => {
            assert!(error_of(&resp.into_string().unwrap())["message"].as_str().unwrap().contains("text/plain"));
        }
        other => panic!("{other:?}"),
    }
    // Unknown routes and methods: JSON errors too.
    let (status, body) = raw(&s.addr(), b"GET /v2/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404, "{body}");
    error_of(&body);
    let (status, body) = raw(&s.addr(), b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 405, "{body}");
    error_of(&body);
    // A chunked body (no Content-Length) over the limit: cut off while it streams in.
    let small = start(&["--addr", "127.0.0.1:0", "--max-body-mib", "1"]).unwrap();
    let mut c = TcpStream::connect(small.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
    for _ in 0..40 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    let _ = BufReader::new(&c).read_line(&mut reply);
    assert!(reply.contains(" 413 "), "{reply:?}");
    // Headers past 64 KiB.
    let big =
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n", "a".repeat(1 << 20));
    let (status, _) = raw(&s.addr(), big.as_bytes());
    assert!(status == 431 || status == 0, "{status}");
    healthy(&mut s, None);
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let mut s = start(&["--addr", "127.0.0.1:0", "--token", "s3cret"]).unwrap();
    for header in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret"] {
        let r = ureq::get(&format!("{}/v1/models", s.url)).set("Authorization", header).call();
        assert_eq!(r.unwrap().status(), 200, "{header}");
    }
    for header in ["Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret"] {
        match ureq::get(&format!("{}/v1/models", s.url)).set("Authorization", header).call() {
            Err(ureq::Error::Status(401, r)) => {
                error_of(&r.into_string().unwrap());
            }
            other => panic!("{header}: {other:?}"),
        }
    }
    healthy(&mut s, Some("s3cret"));
}

#[test]
fn slow_loris_idle_and_stalled_clients_are_cut_off_and_others_still_served() {
    let mut s =
        start(&["--addr", "127.0.0.1:0", "--header-timeout-s", "1", "--body-timeout-s", "2", "--max-connections", "8"])
            .unwrap();
    // Eight clients trickle their headers a byte at a time: each is closed.
    let loris: Vec<_> = (0..8)
        .map(|_| {
            let addr = s.addr();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                let t = Instant::now();
                for b in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                    if c.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                t.elapsed()
            })
        })
        .collect();
    // Meanwhile, all eight connections taken: a ninth client waits for a free one, then is served.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    healthy(&mut s, None);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    for l in loris {
        let held = l.join().unwrap();
        assert!(held < Duration::from_secs(10), "a slow client held its connection for {held:?}");
    }
    // An idle connection is closed.
    let mut idle = TcpStream::connect(s.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"), "{:?}", &buf[..n]);
    assert!(t.elapsed() < Duration::from_secs(5), "idle for {:?}", t.elapsed());
    // A body that stalls: 408 at the body deadline.
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t = Instant::now();
    c.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\"",
    )
    .unwrap();
    let mut reply = String::new();
    let _ = BufReader::new(&c).read_line(&mut reply);
    assert!(reply.contains(" 408 "), "{reply:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    healthy(&mut s, None);
}

#[test]
fn two_hundred_clients_at_once_each_get_an_answer() {
    let mut s = start(&["--addr", "127.0.0.1:0", "--max-queue", "16"]).unwrap();
    let before = s.rss_mib();
    let body = chat_body("where are the ships?", &png_url(112, 84), serde_json::json!({"max_tokens": 4}));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let (url, body) = (s.url.clone(), body.clone());
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    let r = ureq::get(&format!("{url}/v1/models")).timeout(Duration::from_secs(120)).call();
                    return r.map(|r| r.status()).unwrap_or_else(|e| panic!("{e}"));
                }
                let r = ureq::post(&format!("{url}/v1/chat/completions"))
                    .timeout(Duration::from_secs(300))
                    .set("Content-Type", "application/json")
                    .send_string(&body);
                match r {
                    Ok(r) => {
                        let v: serde_json::Value = r.into_json().unwrap();
                        assert_eq!(v["object"], "chat.completion");
                        200
                    }
                    Err(ureq::Error::Status(503, r)) => {
                        assert_eq!(error_of(&r.into_string().unwrap())["type"], "overloaded");
                        503
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = statuses.iter().filter(|&&c| c == 200).count();
    assert!(answered >= 100 + 16, "{answered} of 200 answered");
    healthy(&mut s, None);
    assert!(s.rss_mib() < before + RSS_SLACK_MIB, "{} → {} MiB", before, s.rss_mib());
}

/// A long generation (seconds): 3500 tokens, whatever the model says.
fn long_request(stream: bool) -> String {
    chat_body(
        "describe",
        &png_url(56, 56),
        serde_json::json!({"max_tokens": 3500, "stream": stream, "ignore_eos": true}),
    )
}

#[test]
fn clients_that_leave_stop_their_generation_streaming_or_not() {
    let mut s = start_with(&fixture("qwen2_5_vl_tiny"), &["--addr", "127.0.0.1:0"]).unwrap();
    // Not streamed: the client gives up waiting and closes.
    let body = long_request(false);
    let mut c = TcpStream::connect(s.addr()).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Leave early (whether its job is still queued or already generating, it must stop).
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    assert!(wait_for_log(&s, "client gone", Duration::from_secs(30)), "{}", s.log());
    // Streamed: the client reads two events and closes.
    let r = ureq::post(&format!("{}/v1/chat/completions", s.url))
        .set("Content-Type", "application/json")
        .send_string(&long_request(true))
        .unwrap();
    let mut lines = BufReader::new(r.into_reader()).lines();
    let mut events = 0;
    while events < 2 {
        if lines.next().unwrap().unwrap().starts_with("data: ") {
            events += 1;
        }
    }
    drop(lines);
    let log = s.log();
    let gone = |l: &str| l.matches("client gone").count();
    let t = Instant::now();
    while gone(&s.log()) < 2 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gone(&s.log()), 2, "before: {log}\nafter: {}", s.log());
    healthy(&mut s, None);
}
