//! A local HTTP server speaking the Hugging Face hub protocol (repository
//! info, `resolve` with ranges, LFS files redirected to a content-addressed
//! store), serving the tiny trained checkpoint: `models pull` and the
//! workbench's download are tested against it, never against a mock.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha1::Digest as _;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_5_vl_tiny_trained")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A file as the hub describes it: small files by git blob SHA-1, LFS files by SHA-256.
struct Served {
    body: Vec<u8>,
    etag: String,
    lfs: bool,
}

pub struct Hub {
    server: Arc<tiny_http::Server>,
    pub url: String,
    /// Every file request served: its path and `Range` header.
    pub log: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `repo` with `files`; `corrupt` names a file whose bytes differ from its hash.
pub fn serve(repo: &'static str, files: HashMap<String, Vec<u8>>, corrupt: Option<&'static str>) -> Hub {
    serve_repos(vec![(repo, files)], corrupt)
}

/// A file of a repository as the hub lists it (with its size when asked `?blobs=true`).
fn listing(served: &HashMap<String, Served>, with_sizes: bool) -> String {
    let siblings: Vec<_> = served
        .iter()
        .map(|(k, f)| {
            if with_sizes {
                serde_json::json!({"rfilename": k, "size": f.body.len()})
            } else {
                serde_json::json!({"rfilename": k})
            }
        })
        .collect();
    serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string()
}

/// Files as served: each with the hash the hub names it by.
fn served_files(files: HashMap<String, Vec<u8>>, corrupt: Option<&str>) -> HashMap<String, Served> {
    let mut served = HashMap::new();
    for (name, body) in files {
        let lfs = name.ends_with(".safetensors") || name.ends_with(".pt");
        let etag = if lfs {
            hex(&sha2::Sha256::digest(&body))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", body.len()).as_bytes());
            h.update(&body);
            hex(&h.finalize())
        };
        let mut body = body;
        if corrupt == Some(name.as_str()) {
            body[100] ^= 0xff;
        }
        served.insert(name, Served { body, etag, lfs });
    }
    served
}

/// Serves several repositories from one server, as the hub does.
pub fn serve_repos(repos: Vec<(&'static str, HashMap<String, Vec<u8>>)>, corrupt: Option<&'static str>) -> Hub {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let repos: Vec<(&str, HashMap<String, Served>)> =
        repos.into_iter().map(|(repo, files)| (repo, served_files(files, corrupt))).collect();
    let (srv, base) = (server.clone(), url.clone());
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    let thread = std::thread::spawn(move || {
        for req in srv.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_owned();
            let range = req.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.to_string());
            seen.lock().unwrap().push((path.clone(), range.unwrap_or_default()));
            let with_sizes = req.url().contains("blobs=true");
            let header =
                |name: &str, value: &str| tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap();
            if let Some((_, served)) = repos.iter().find(|(r, _)| path == format!("/api/models/{r}/revision/main")) {
                let _ = req.respond(
                    tiny_http::Response::from_string(listing(served, with_sizes))
                        .with_header(header("Content-Type", "application/json")),
                );
                continue;
            }
            let mut found = (None, false);
            for (repo, served) in &repos {
                if let Some(f) = path.strip_prefix(&format!("/{repo}/resolve/main/")) {
                    found = (served.get(f), false);
                } else if let Some(sha) = path.strip_prefix("/cdn/")
                    && let Some(f) = served.values().find(|s| s.etag == sha)
                {
                    found = (Some(f), true);
                }
                if found.0.is_some() {
                    break;
                }
            }
            let (file, from_cdn) = found;
            let Some(file) = file else {
                let _ = req.respond(tiny_http::Response::from_string("not found").with_status_code(404));
                continue;
            };
            if file.lfs && !from_cdn {
                // The hub answers LFS files with a redirect to a content-addressed store.
                let resp = tiny_http::Response::empty(302)
                    .with_header(header("Location", &format!("{base}/cdn/{}", file.etag)))
                    .with_header(header("X-Linked-Etag", &format!("\"{}\"", file.etag)))
                    .with_header(header("X-Repo-Commit", COMMIT));
                let _ = req.respond(resp);
                continue;
            }
            let start: usize = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Range"))
                .and_then(|h| {
                    h.value
                        .as_str()
                        .strip_prefix("bytes=")
                        .and_then(|r| r.split('-').next())
                        .and_then(|s| s.parse().ok())
                })
                .unwrap_or(0);
            let end = if req.headers().iter().any(|h| h.field.equiv("Range") && h.value.as_str() == "bytes=0-0") {
                1
            } else {
                file.body.len()
            };
            let chunk = file.body[start.min(file.body.len())..end].to_vec();
            let resp = tiny_http::Response::from_data(chunk)
                .with_status_code(206)
                .with_header(header(
                    "Content-Range",
                    &format!("bytes {start}-{}/{}", end.saturating_sub(1), file.body.len()),
                ))
                .with_header(header("ETag", &format!("\"{}\"", file.etag)))
                .with_header(header("X-Repo-Commit", COMMIT));
            let _ = req.respond(resp);
        }
    });
    Hub { server, url, log, thread: Some(thread) }
}

pub fn checkpoint_files() -> HashMap<String, Vec<u8>> {
    ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(fixture().join(n)).unwrap()))
        .chain([("README.md".to_string(), b"# not downloaded\n".to_vec())])
        .collect()
}
