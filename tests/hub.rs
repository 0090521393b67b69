//! `models pull` against a local HTTP server that speaks the Hugging Face hub
//! protocol (repository info, `resolve` with ranges, LFS files redirected to a
//! content-addressed store): the real download path, hashes verified, and the
//! pulled checkpoint loads and answers.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;

use engine::hub::{self, PullRequest};
use sha2::Digest as _;

#[path = "common/hub_server.rs"]
mod hub_server;
use hub_server::{COMMIT, checkpoint_files, fixture, serve};

/// The pull of `repo`'s inference files from `hub` into `cache`.
fn request(repo: &str, hub: &hub_server::Hub, cache: &Path) -> PullRequest {
    PullRequest {
        repo_id: repo.into(),
        revision: "main".into(),
        cache_dir: Some(cache.to_owned()),
        endpoint: Some(hub.url.clone()),
        files: Vec::new(),
    }
}

#[test]
fn pull_downloads_verifies_lists_and_the_model_answers() {
    let hub = serve("acme/tiny-reasoner", checkpoint_files(), None);
    let cache = tempfile::tempdir().unwrap();
    let req = request("acme/tiny-reasoner", &hub, cache.path());
    let mut seen = Vec::new();
    let snapshot = hub::pull(&req, |p| seen.push(p.clone())).unwrap();
    assert_eq!(snapshot, cache.path().join("models--acme--tiny-reasoner/snapshots").join(COMMIT));
    assert!(!snapshot.join("README.md").exists(), "only inference files are fetched");
    let weights = seen.iter().rfind(|p| p.file == "model.safetensors").unwrap();
    assert_eq!(weights.file_bytes, weights.file_size, "progress reaches the end");
    assert_eq!(weights.file_size, std::fs::metadata(fixture().join("model.safetensors")).unwrap().len());

    // Pulling again finds everything in place.
    assert_eq!(hub::pull(&req, |_| {}).unwrap(), snapshot);

    let installed = hub::list(cache.path()).unwrap();
    assert_eq!(installed.len(), 1);
    assert_eq!((installed[0].repo_id.as_str(), installed[0].revision.as_str()), ("acme/tiny-reasoner", COMMIT));
    assert_eq!(installed[0].files, 5);
    assert_eq!(installed[0].weights_hash.len(), 12);
    // The fingerprint from hub hashes equals the one computed from the bytes.
    assert_eq!(installed[0].weights_hash, hub::weights_fingerprint(&fixture()).unwrap());
    assert_eq!(hub::resolve_model(Path::new("acme/tiny-reasoner"), cache.path()), snapshot);

    let mut r = engine::reasoner::Reasoner::load(&snapshot, &Default::default()).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif");
    let raster = engine::raster::Raster::open(&sample).unwrap();
    let params = engine::raster::RenderParams::default_for(raster.info());
    let view = engine::pipeline::read_window(&raster, engine::base::Window::full(200, 200), &params, 802_816).unwrap();
    let rgb = view.image;
    let a = r
        .ask(&rgb, engine::base::Goal::Region, "where are the ships?", &Default::default(), |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(a.boxes_resized.len(), 2);
}

#[test]
fn a_corrupt_download_is_refused_and_removed() {
    let hub = serve("acme/broken", checkpoint_files(), Some("model.safetensors"));
    let cache = tempfile::tempdir().unwrap();
    let req = request("acme/broken", &hub, cache.path());
    let e = hub::pull(&req, |_| {}).unwrap_err().to_string();
    assert!(e.contains("corrupt"), "{e}");
    let blobs = cache.path().join("models--acme--broken/blobs");
    let left: Vec<_> =
        std::fs::read_dir(&blobs).unwrap().flatten().filter(|f| f.metadata().unwrap().len() > 100_000).collect();
    assert!(left.is_empty(), "corrupt blob removed");

    let missing = PullRequest { repo_id: "acme/absent".into(), ..req };
    let e = hub::pull(&missing, |_| {}).unwrap_err().to_string();
    assert!(e.contains("acme/absent") && e.contains("download failed"), "{e}");
}

#[test]
fn plan_lists_sizes_and_named_files_are_pulled_alone() {
    let files: std::collections::HashMap<String, Vec<u8>> = [
        ("sam2.1_hiera_tiny.pt".to_string(), vec![7u8; 300_000]),
        ("sam2.1_hiera_t.yaml".to_string(), b"model: {}\n".to_vec()),
    ]
    .into_iter()
    .collect();
    let hub = serve("facebook/sam2.1-hiera-tiny", files, None);
    let cache = tempfile::tempdir().unwrap();
    let offer = hub::SAM2_1_TINY;
    let req = offer.request(Some(cache.path().to_owned()), Some(hub.url.clone()));
    let plan = hub::plan(&req).unwrap();
    assert_eq!(plan, vec![hub::RemoteFile { name: "sam2.1_hiera_tiny.pt".into(), size: Some(300_000) }]);
    let snapshot = hub::pull(&req, |_| {}).unwrap();
    assert_eq!(std::fs::read(snapshot.join("sam2.1_hiera_tiny.pt")).unwrap(), vec![7u8; 300_000]);
    assert!(!snapshot.join("sam2.1_hiera_t.yaml").exists(), "only the named file");

    // A named file the repository lacks is an error naming both.
    let absent = PullRequest { files: vec!["sam2.1_hiera_large.pt".into()], ..req.clone() };
    let e = hub::plan(&absent).unwrap_err().to_string();
    assert!(e.contains("facebook/sam2.1-hiera-tiny") && e.contains("no sam2.1_hiera_large.pt"), "{e}");
    // Without named files a repository must be a transformers checkpoint.
    let whole = PullRequest { files: Vec::new(), ..req };
    let e = hub::plan(&whole).unwrap_err().to_string();
    assert!(e.contains("no config.json"), "{e}");
}

/// An interrupted download resumes where it stopped (a range request from the
/// partial file's length), and a second pull fetches nothing again.
#[test]
fn an_interrupted_download_resumes_and_a_finished_one_is_not_fetched_again() {
    let hub = serve("acme/tiny-reasoner", checkpoint_files(), None);
    let cache = tempfile::tempdir().unwrap();
    let req = request("acme/tiny-reasoner", &hub, cache.path());
    // What a killed download leaves: the first part of the weights beside the blobs.
    let weights = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let sha: String = sha2::Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect();
    let blobs = cache.path().join("models--acme--tiny-reasoner/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = weights.len() / 2;
    std::fs::write(blobs.join(format!("{sha}.part")), &weights[..half]).unwrap();

    let snapshot = hub::pull(&req, |_| {}).unwrap();
    assert_eq!(std::fs::read(snapshot.join("model.safetensors")).unwrap(), weights, "resumed to the same bytes");
    let ranges: Vec<String> = hub.log.lock().unwrap().iter().map(|(_, r)| r.clone()).collect();
    assert!(ranges.contains(&format!("bytes={half}-")), "{ranges:?}");

    hub.log.lock().unwrap().clear();
    assert_eq!(hub::pull(&req, |_| {}).unwrap(), snapshot);
    let fetched: Vec<_> = hub.log.lock().unwrap().iter().filter(|(p, _)| !p.starts_with("/api/")).cloned().collect();
    assert!(fetched.is_empty(), "nothing fetched again: {fetched:?}");
}
