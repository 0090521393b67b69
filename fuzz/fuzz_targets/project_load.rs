//! A project file (GeoPackage) as the workbench opens it. The body is in `fuzz/entries.rs`, shared with
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

/// A folder of this process for the input as a file.
fn scratch(kind: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rr-fuzz-{kind}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fuzz_target!(|data: &[u8]| {
    entries::project_load(data, &scratch("gpkg"));
});
