//! A project file (GeoPackage) as the workbench opens it: a project or a
//! named error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("rr-fuzz-gpkg-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("project.gpkg");
    std::fs::write(&path, data).expect("temp file");
    let _ = engine::project::is_project(&path);
    let _ = engine::project::load(&path);
});
