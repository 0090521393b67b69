//! Replacing a set of files as one (a Shapefile's `.shp`/`.shx`/`.dbf`/…, a
//! layer and its `_boxes` companion, a GeoPackage), so that a kill at any
//! instant ends in the old set or the new one, never a mix.
//!
//! 1. The new files are written into a staging folder beside the target,
//!    `.NAME.export-PID-NANOS/`, registered in the user's state directory.
//! 2. When they are complete and synced, a manifest is renamed into the
//!    folder: the commit point. It lists the files to move and the stale
//!    sidecars to remove.
//! 3. The files are renamed into place, the stale ones removed, the folder
//!    and its registration deleted.
//!
//! A kill before 2 leaves the old set; the folder is deleted by the next
//! export into that folder or the next start of the program ([`recover`]).
//! A kill after 2 may leave a mix for that moment; the next export or start
//! rolls it forward to the new set. Folders of exports still running (their
//! process alive) are left alone.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

const MANIFEST: &str = "MANIFEST";
const MARK: &str = ".export-";

/// Where staging folders are registered: `$XDG_STATE_HOME/remote-reasoner/exports`.
pub fn journal_dir() -> PathBuf {
    crate::state_dir().join("exports")
}

/// Hex of a name's bytes: manifests hold any file name, UTF-8 or not.
fn hex(name: &OsStr) -> String {
    name.as_encoded_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<OsString> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    bytes.map(os_from_bytes)
}

/// A name from the bytes [`hex`] and [`register`] wrote.
#[cfg(unix)]
fn os_from_bytes(bytes: Vec<u8>) -> OsString {
    std::os::unix::ffi::OsStringExt::from_vec(bytes)
}

#[cfg(not(unix))]
fn os_from_bytes(bytes: Vec<u8>) -> OsString {
    OsString::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable across a power cut; best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A staging folder for one replacement; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    parent: PathBuf,
    target: PathBuf,
    registration: Option<PathBuf>,
}

impl Staging {
    /// Creates the folder beside `target`, after finishing or removing what
    /// earlier killed runs left in that folder.
    pub fn new(target: &Path) -> Result<Self> {
        let werr = |reason: String| EngineError::Write { path: target.to_owned(), reason };
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let name = target.file_name().ok_or_else(|| werr("not a file name".into()))?;
        recover_dir(&parent);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut dir_name = OsString::from(".");
        dir_name.push(name);
        dir_name.push(format!("{MARK}{}-{nanos}", std::process::id()));
        if let Ok(mut l) = live().lock() {
            l.insert(dir_name.clone());
        }
        let dir = parent.join(dir_name);
        // Registered before it exists: a kill at any later instant is found at the next start.
        let registration = register(&dir, nanos);
        let staging = Self { dir, parent, target: target.to_owned(), registration };
        std::fs::create_dir(&staging.dir)
            .map_err(|e| werr(format!("cannot create a staging folder beside it: {e}")))?;
        Ok(staging)
    }

    /// The folder the new files are written into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves every file of the folder into place (the main `target` last) and
    /// removes the files named `stale` (old sidecars the new set lacks) beside
    /// it; returns the files now in place.
    pub fn commit(mut self, stale: &[OsString]) -> Result<Vec<PathBuf>> {
        let werr = |reason: String| EngineError::Write { path: self.target.clone(), reason };
        let mut names: Vec<OsString> = std::fs::read_dir(&self.dir)
            .map_err(|e| werr(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        let main = self.target.file_name().map(OsStr::to_owned);
        names.sort_by_key(|n| (Some(n) == main.as_ref(), n.clone()));
        for n in &names {
            let f = std::fs::File::open(self.dir.join(n)).map_err(|e| werr(e.to_string()))?;
            f.sync_all().map_err(|e| werr(format!("cannot sync {}: {e}", n.to_string_lossy())))?;
        }
        let mut manifest = String::from("remote-reasoner staging manifest 1\n");
        for n in &names {
            manifest.push_str(&format!("move {}\n", hex(n)));
        }
        // Never a file of the new set.
        for n in stale.iter().filter(|n| !names.contains(n)) {
            manifest.push_str(&format!("remove {}\n", hex(n)));
        }
        let tmp = self.dir.join(format!("{MANIFEST}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(|e| werr(e.to_string()))?;
        f.write_all(manifest.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| werr(e.to_string()))?;
        drop(f);
        sync_dir(&self.dir);
        // The commit point: from here on the new set wins, even after a kill.
        std::fs::rename(&tmp, self.dir.join(MANIFEST)).map_err(|e| werr(e.to_string()))?;
        sync_dir(&self.dir);
        let placed = roll_forward(&self.dir, &self.parent).map_err(werr)?;
        self.unregister();
        Ok(placed)
    }

    fn unregister(&mut self) {
        if let Some(r) = self.registration.take() {
            let _ = std::fs::remove_file(r);
        }
        if let (Some(name), Ok(mut l)) = (self.dir.file_name(), live().lock()) {
            l.remove(name);
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.unregister();
    }
}

/// Records a staging folder in the journal so that the next start finds it
/// (one small write: an entry cut short names no staging folder and is dropped).
fn register(dir: &Path, nanos: u128) -> Option<PathBuf> {
    let journal = journal_dir();
    std::fs::create_dir_all(&journal).ok()?;
    let dir = std::path::absolute(dir).ok()?;
    let entry = journal.join(format!("{}-{nanos}", std::process::id()));
    let mut f = std::fs::File::create(&entry).ok()?;
    f.write_all(dir.as_os_str().as_encoded_bytes()).ok()?;
    Some(entry)
}

/// Finishes a committed folder: moves what is left, removes the stale files
/// and the folder. Returns the files in place.
fn roll_forward(dir: &Path, parent: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| format!("cannot read its manifest: {e}"))?;
    let mut lines = text.lines();
    if lines.next() != Some("remote-reasoner staging manifest 1") {
        return Err("unknown manifest format".into());
    }
    let mut placed = Vec::new();
    for line in lines {
        let (op, name) = line.split_once(' ').ok_or("bad manifest line")?;
        let name = unhex(name).ok_or("bad manifest name")?;
        if Path::new(&name).components().count() != 1 || name.is_empty() {
            return Err("bad manifest name".into());
        }
        let dst = parent.join(&name);
        match op {
            "move" => {
                let src = dir.join(&name);
                if src.exists() {
                    std::fs::rename(&src, &dst)
                        .map_err(|e| format!("cannot move {} into place: {e}", dst.display()))?;
                }
                placed.push(dst);
            }
            "remove" => {
                let _ = std::fs::remove_file(&dst);
            }
            _ => return Err(format!("unknown manifest operation {op:?}")),
        }
    }
    sync_dir(parent);
    let _ = std::fs::remove_dir_all(dir);
    Ok(placed)
}

/// The PID in a staging folder's name, `.NAME.export-PID-NANOS`.
fn staging_pid(name: &OsStr) -> Option<u32> {
    let bytes = name.as_encoded_bytes();
    let at = bytes.windows(MARK.len()).rposition(|w| w == MARK.as_bytes())?;
    let rest = std::str::from_utf8(&bytes[at + MARK.len()..]).ok()?;
    let (pid, nanos) = rest.split_once('-')?;
    nanos.parse::<u128>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` (not this one) still runs: its export is in progress.
fn running_elsewhere(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    proc.is_dir() && proc.join(pid.to_string()).exists()
}

/// This process's staging folders in use (by name): another thread's export in
/// progress. A folder with our PID but not here was left by an earlier process
/// that had the same PID.
fn live() -> &'static std::sync::Mutex<std::collections::HashSet<OsString>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<OsString>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Whether the staging folder `name` is being written by this process or another.
fn in_progress(name: &OsStr, pid: u32) -> bool {
    running_elsewhere(pid) || live().lock().is_ok_and(|l| l.contains(name))
}

/// Finishes or removes one staging folder left by a dead process.
fn recover_one(dir: &Path) -> bool {
    let Some(name) = dir.file_name() else { return false };
    let Some(pid) = staging_pid(name) else { return false };
    if in_progress(name, pid) || !dir.is_dir() {
        return false;
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    if dir.join(MANIFEST).is_file() {
        match roll_forward(dir, parent) {
            Ok(files) => tracing::info!(?files, "finished an export that was interrupted after its commit"),
            Err(e) => tracing::warn!("{}: cannot finish an interrupted export: {e}", dir.display()),
        }
    } else {
        tracing::info!("{}: removing what an interrupted export left", dir.display());
        let _ = std::fs::remove_dir_all(dir);
    }
    true
}

/// Finishes or removes the staging folders in `parent` whose process is gone.
pub fn recover_dir(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(b".") && e.path().is_dir())
        .filter(|e| recover_one(&e.path()))
        .count()
}

/// At start-up: finishes or removes every registered staging folder whose
/// process is gone, wherever it is.
pub fn recover() -> usize {
    let journal = journal_dir();
    let Ok(entries) = std::fs::read_dir(&journal) else { return 0 };
    let mut done = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let entry = e.path();
        let Ok(bytes) = std::fs::read(&entry) else { continue };
        let dir = PathBuf::from(os_from_bytes(bytes));
        match dir.file_name().and_then(staging_pid) {
            Some(pid) if dir.file_name().is_some_and(|n| in_progress(n, pid)) => continue,
            Some(_) => {}
            None => {
                // Cut short, or not ours: it names no staging folder.
                let _ = std::fs::remove_file(&entry);
                continue;
            }
        }
        if recover_one(&dir) {
            done += 1;
        }
        if !dir.exists() {
            let _ = std::fs::remove_file(&entry);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_pids_parse() {
        for n in ["a.shp", "é ü.gpkg", ""] {
            assert_eq!(unhex(&hex(OsStr::new(n))).unwrap(), OsString::from(n));
        }
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
        assert_eq!(staging_pid(OsStr::new(".x.shp.export-123-456")), Some(123));
        assert_eq!(staging_pid(OsStr::new(".x.export-y.shp.export-7-8")), Some(7));
        assert_eq!(staging_pid(OsStr::new(".x.shp.export-123")), None);
        assert_eq!(staging_pid(OsStr::new(".git")), None);
    }

    /// Two writers in one process, in one folder (a save while an autosave runs):
    /// the second's clean-up leaves the first's staging folder alone; a folder
    /// with our PID that no writer holds (a PID reused after a crash) goes.
    #[test]
    fn another_threads_export_in_progress_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Staging::new(&tmp.path().join("a.gpkg")).unwrap();
        std::fs::write(first.dir().join("a.gpkg"), "new").unwrap();
        let stale = tmp.path().join(format!(".b.gpkg{MARK}{}-1", std::process::id()));
        std::fs::create_dir(&stale).unwrap();
        let second = Staging::new(&tmp.path().join("c.gpkg")).unwrap();
        assert!(first.dir().join("a.gpkg").exists(), "the first export's files are still there");
        assert!(!stale.exists(), "a folder no writer of ours holds was removed");
        assert_eq!(first.commit(&[]).unwrap(), [tmp.path().join("a.gpkg")]);
        drop(second);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_committed_folder_is_rolled_forward_and_an_uncommitted_one_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        std::fs::write(p.join("x.shp"), "old").unwrap();
        std::fs::write(p.join("x.prj"), "old").unwrap();
        // Committed by a dead process (PID 0 is never a user process), one file already moved.
        let done = p.join(".x.shp.export-0-1");
        std::fs::create_dir(&done).unwrap();
        std::fs::write(done.join("x.dbf"), "new").unwrap();
        std::fs::write(p.join("x.shx"), "new").unwrap();
        let manifest = format!(
            "remote-reasoner staging manifest 1\nmove {}\nmove {}\nremove {}\n",
            hex(OsStr::new("x.shx")),
            hex(OsStr::new("x.dbf")),
            hex(OsStr::new("x.prj"))
        );
        std::fs::write(done.join(MANIFEST), manifest).unwrap();
        // Not committed.
        let cut = p.join(".y.gpkg.export-0-2");
        std::fs::create_dir(&cut).unwrap();
        std::fs::write(cut.join("y.gpkg"), "partial").unwrap();
        assert_eq!(recover_dir(p), 2);
        assert_eq!(std::fs::read_to_string(p.join("x.dbf")).unwrap(), "new");
        assert!(!p.join("x.prj").exists() && !done.exists() && !cut.exists() && !p.join("y.gpkg").exists());
        // A folder whose process runs (this one is not "elsewhere", PID 1 is) is left alone.
        let live = p.join(".z.fgb.export-1-3");
        std::fs::create_dir(&live).unwrap();
        assert_eq!(recover_dir(p), 0);
        assert!(live.exists());
    }
}
