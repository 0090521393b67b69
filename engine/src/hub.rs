//! Getting checkpoints: downloads from the Hugging Face hub (or any server that
//! speaks its protocol, `HF_ENDPOINT`) through `hf-hub`, into the standard hub
//! cache (`models--org--name/snapshots/<commit>/…`), each file verified against
//! the content hash the hub names it by; and listing what is installed.

use std::path::{Path, PathBuf};

use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::Serialize;
use sha1::Digest as _;

use crate::error::{EngineError, Result};

/// The hub cache: `$RR_MODELS`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
/// (shared with other Hugging Face tools).
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RR_MODELS") {
        return dir.into();
    }
    Cache::from_env().path().clone()
}

/// Files of a repository worth downloading for inference.
fn wanted(name: &str) -> bool {
    let keep = [".json", ".safetensors", ".txt", ".model", ".tiktoken", ".jinja"];
    keep.iter().any(|ext| name.ends_with(ext)) && !name.contains('/')
}

/// Download progress, reported as bytes arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    pub file: String,
    pub file_index: usize,
    pub files: usize,
    pub file_bytes: u64,
    pub file_size: u64,
}

struct ProgressAdapter<'a> {
    state: PullProgress,
    f: &'a mut dyn FnMut(&PullProgress),
}

impl Progress for ProgressAdapter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.state.file_size = size as u64;
        self.state.file_bytes = 0;
        (self.f)(&self.state);
    }
    fn update(&mut self, size: usize) {
        self.state.file_bytes += size as u64;
        (self.f)(&self.state);
    }
    fn finish(&mut self) {}
}

/// What to download.
#[derive(Clone, Debug, Default)]
pub struct PullRequest {
    pub repo_id: String,
    pub revision: String,
    /// Hub cache directory (default: [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Server (default: `HF_ENDPOINT`, else huggingface.co).
    pub endpoint: Option<String>,
    /// The files to fetch; empty: a transformers checkpoint's inference files
    /// (which must include `config.json`).
    pub files: Vec<String>,
}

/// A file of a repository, with its size when the hub says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteFile {
    pub name: String,
    pub size: Option<u64>,
}

/// A checkpoint the workbench offers to download on its first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    pub title: &'static str,
    pub repo_id: &'static str,
    /// Empty: the repository's inference files (see [`PullRequest::files`]).
    pub files: &'static [&'static str],
}

/// The published RemoteReasoner checkpoint (Qwen2.5-VL-7B, bf16 safetensors).
pub const REMOTE_REASONER_7B: Offer =
    Offer { title: "RemoteReasoner-7B (reasoning, boxes)", repo_id: "1e12Leon/RemoteReasoner", files: &[] };

/// SAM 2.1 tiny, the checkpoint the reference pipeline uses by default.
pub const SAM2_1_TINY: Offer =
    Offer { title: "SAM 2.1 tiny (masks)", repo_id: "facebook/sam2.1-hiera-tiny", files: &["sam2.1_hiera_tiny.pt"] };

impl Offer {
    /// The download of this offer from `endpoint` into `cache_dir`.
    pub fn request(&self, cache_dir: Option<PathBuf>, endpoint: Option<String>) -> PullRequest {
        PullRequest {
            repo_id: self.repo_id.to_owned(),
            revision: "main".into(),
            cache_dir,
            endpoint,
            files: self.files.iter().map(|f| (*f).to_owned()).collect(),
        }
    }
}

fn hub_err(repo: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: PathBuf::from(repo), reason: format!("download failed: {e}") }
}

/// Checks a downloaded blob against the hash it is named by: SHA-256 for
/// LFS files (64 hex digits), the git blob SHA-1 for small files (40).
pub fn verify_blob(path: &Path, etag: &str) -> Result<()> {
    let read_err = |e: std::io::Error| EngineError::Model { path: path.to_owned(), reason: e.to_string() };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    let digest = match etag.len() {
        64 => {
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut file, &mut h).map_err(read_err)?;
            hex(&h.finalize())
        }
        40 => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            std::io::copy(&mut file, &mut h).map_err(read_err)?;
            hex(&h.finalize())
        }
        _ => return Ok(()), // not a content hash: nothing to check against
    };
    if digest != etag.to_ascii_lowercase() {
        return Err(EngineError::Model {
            path: path.to_owned(),
            reason: format!("content hash {digest} does not match the hub's {etag}: the download is corrupt"),
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn api_repo(req: &PullRequest) -> Result<hf_hub::api::sync::ApiRepo> {
    let cache_dir = req.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_dir)).with_progress(false).with_retries(3);
    if let Some(endpoint) = req.endpoint.clone().or_else(|| std::env::var("HF_ENDPOINT").ok()) {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| hub_err(&req.repo_id, e))?;
    Ok(api.repo(Repo::with_revision(req.repo_id.clone(), RepoType::Model, req.revision.clone())))
}

/// The hub's repository listing with blob sizes (`?blobs=true`).
#[derive(serde::Deserialize)]
struct Listing {
    siblings: Vec<ListedFile>,
}

#[derive(serde::Deserialize)]
struct ListedFile {
    rfilename: String,
    size: Option<u64>,
}

/// The files [`pull`] would fetch, with their sizes, asked of the hub without
/// downloading anything (the first-run dialog shows them).
pub fn plan(req: &PullRequest) -> Result<Vec<RemoteFile>> {
    let listing: Listing = api_repo(req)?
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| hub_err(&req.repo_id, e))?
        .into_json()
        .map_err(|e| hub_err(&req.repo_id, format!("unreadable repository listing: {e}")))?;
    let files: Vec<RemoteFile> = listing
        .siblings
        .into_iter()
        .filter(|f| if req.files.is_empty() { wanted(&f.rfilename) } else { req.files.contains(&f.rfilename) })
        .map(|f| RemoteFile { name: f.rfilename, size: f.size })
        .collect();
    if req.files.is_empty() && !files.iter().any(|f| f.name == "config.json") {
        return Err(hub_err(&req.repo_id, "the repository has no config.json"));
    }
    if let Some(missing) = req.files.iter().find(|w| !files.iter().any(|f| &&f.name == w)) {
        return Err(hub_err(&req.repo_id, format!("the repository has no {missing}")));
    }
    Ok(files)
}

/// Downloads the files [`plan`] lists and returns the snapshot directory, ready
/// for `--model` (or holding the named files). Files already in the cache are
/// verified (hashed again) and kept; interrupted downloads resume.
pub fn pull(req: &PullRequest, mut progress: impl FnMut(&PullProgress)) -> Result<PathBuf> {
    let files = plan(req)?;
    let repo = api_repo(req)?;
    let cache = Cache::new(req.cache_dir.clone().unwrap_or_else(default_cache_dir));
    let cached = cache.repo(Repo::with_revision(req.repo_id.clone(), RepoType::Model, req.revision.clone()));
    let mut snapshot = None;
    for (i, file) in files.iter().enumerate() {
        let name = &file.name;
        let state = PullProgress { file: name.clone(), file_index: i, files: files.len(), file_bytes: 0, file_size: 0 };
        let mut adapter = ProgressAdapter { state, f: &mut progress };
        // hf-hub's download fetches again what the cache holds; a partial
        // download (`blobs/<hash>.part`) it resumes with a range request.
        let path = match cached.get(name) {
            Some(path) => {
                let size = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
                adapter.init(size, name);
                adapter.update(size);
                path
            }
            None => {
                repo.download_with_progress(name, adapter).map_err(|e| hub_err(&req.repo_id, format!("{name}: {e}")))?
            }
        };
        let blob = std::fs::canonicalize(&path).map_err(|e| hub_err(&req.repo_id, e))?;
        let etag = blob.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Err(e) = verify_blob(&blob, &etag) {
            let _ = std::fs::remove_file(&blob);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        snapshot = path.parent().map(Path::to_owned);
    }
    snapshot.ok_or_else(|| hub_err(&req.repo_id, "nothing to download"))
}

/// An installed checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Installed {
    pub repo_id: String,
    pub revision: String,
    pub path: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// First 12 hex digits of a SHA-256 over the weight files' content hashes.
    pub weights_hash: String,
}

/// A short, stable fingerprint of a checkpoint's weights: SHA-256 over the
/// sorted (name, content hash) of its weights files — safetensors, and PyTorch
/// `.pt`/`.pth` (Meta's SAM 3 layout) — so whichever of them is loaded is
/// covered. In a hub snapshot the content hashes are the blob names the hub
/// verified; elsewhere each file is hashed.
pub fn weights_fingerprint(dir: &Path) -> Result<String> {
    let err = |e: std::io::Error| EngineError::Model { path: dir.to_owned(), reason: e.to_string() };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.push((name, path));
    }
    let weights = |n: &str| n.ends_with(".safetensors") || n.ends_with(".pt") || n.ends_with(".pth");
    let mut parts = Vec::new();
    for (name, path) in files {
        if !weights(&name) {
            continue;
        }
        let resolved = std::fs::canonicalize(&path).map_err(err)?;
        let blob_name = resolved.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let content = if blob_name.len() == 64 && blob_name.bytes().all(|b| b.is_ascii_hexdigit()) {
            blob_name
        } else {
            let mut h = sha2::Sha256::new();
            let mut f = std::fs::File::open(&resolved).map_err(err)?;
            std::io::copy(&mut f, &mut h).map_err(err)?;
            hex(&h.finalize())
        };
        parts.push(format!("{name}:{content}"));
    }
    parts.sort();
    let mut h = sha2::Sha256::new();
    h.update(parts.join("\n").as_bytes());
    Ok(hex(&h.finalize())[..12].to_owned())
}

/// Every snapshot in the hub cache that holds a `config.json`.
pub fn list(cache_dir: &Path) -> Result<Vec<Installed>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return Ok(out) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("models--") else { continue };
        let repo_id = id.replacen("--", "/", 1);
        let Ok(snapshots) = std::fs::read_dir(entry.path().join("snapshots")) else { continue };
        for snap in snapshots.flatten() {
            let path = snap.path();
            if !path.join("config.json").exists() {
                continue;
            }
            let (mut files, mut bytes) = (0, 0);
            for f in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                files += 1;
                bytes += std::fs::metadata(f.path()).map(|m| m.len()).unwrap_or(0);
            }
            out.push(Installed {
                repo_id: repo_id.clone(),
                revision: snap.file_name().to_string_lossy().into_owned(),
                weights_hash: weights_fingerprint(&path)?,
                path,
                files,
                bytes,
            });
        }
    }
    out.sort_by(|a, b| (&a.repo_id, &a.revision).cmp(&(&b.repo_id, &b.revision)));
    Ok(out)
}

/// A `--model` argument: a directory, or `org/name` of a checkpoint in the cache
/// (its `main` snapshot).
pub fn resolve_model(arg: &Path, cache_dir: &Path) -> PathBuf {
    if arg.is_dir() {
        return arg.to_owned();
    }
    let text = arg.to_string_lossy();
    if let Some((org, name)) = text.split_once('/')
        && !org.is_empty()
        && !name.contains('/')
    {
        let repo = cache_dir.join(format!("models--{org}--{name}"));
        if let Ok(commit) = std::fs::read_to_string(repo.join("refs/main")) {
            let snap = repo.join("snapshots").join(commit.trim());
            if snap.is_dir() {
                return snap;
            }
        }
    }
    arg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_checked_against_sha256_and_git_sha1() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        // `git hash-object` and `sha256sum` of "hello\n".
        verify_blob(&p, "ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        verify_blob(&p, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03").unwrap();
        let e = verify_blob(&p, "0000000000000000000000000000000000000000").unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
        verify_blob(&p, "W/\"not-a-hash\"").unwrap();
    }

    #[test]
    fn fingerprints_cover_the_weights_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        std::fs::write(d.join("sam3.pt"), b"meta weights").unwrap();
        let pt = weights_fingerprint(d).unwrap();
        std::fs::write(d.join("sam3.pt"), b"other weights").unwrap();
        assert_ne!(weights_fingerprint(d).unwrap(), pt, "a .pt alone is what is read: it is hashed");
        std::fs::write(d.join("model.safetensors"), b"hf weights").unwrap();
        let both = weights_fingerprint(d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"other hf weights").unwrap();
        assert_ne!(weights_fingerprint(d).unwrap(), both, "every weights file is covered, whichever is loaded");
        std::fs::write(d.join("notes.txt"), b"not weights").unwrap();
        let again = weights_fingerprint(d).unwrap();
        std::fs::write(d.join("notes.txt"), b"changed").unwrap();
        assert_eq!(weights_fingerprint(d).unwrap(), again, "other files are not weights");
    }

    #[test]
    fn only_inference_files_are_fetched() {
        assert!(wanted("config.json") && wanted("model-00001-of-00004.safetensors") && wanted("merges.txt"));
        assert!(!wanted("README.md") && !wanted(".gitattributes") && !wanted("pytorch_model.bin"));
        assert!(!wanted("onnx/model.json"));
    }
}
