//! Every export format and project saves replace the old files as one: the
//! writer is killed (SIGKILL, injected by strace) at each rename it makes, the
//! next start recovers, and what is on disk must then read exactly as the old
//! set or the new one, with no staging folder left behind.
//!
//! The writer is this test binary itself, re-run as a child (`child_writer`).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use engine::edit::WorkFeature;
use engine::export::{ExportOptions, Format};
use engine::features::Provenance;
use gdal::vector::LayerAccess;
use geo::{MultiPolygon, Polygon, Rect};

/// `n` squares, sized by `n` so the old and the new set differ in every file.
fn features(n: usize) -> Vec<WorkFeature> {
    let provenance =
        Arc::new(Provenance { task: "contour".into(), query: format!("set of {n}"), ..Default::default() });
    (0..n)
        .map(|i| {
            let (x, s) = (i as f64 * 20.0, 5.0 + n as f64);
            let poly: Polygon<f64> = Rect::new((x, 0.0), (x + s, s)).to_polygon();
            let mut f = WorkFeature::new(Some([x, 0.0, x + s, s]), MultiPolygon::new(vec![poly]), provenance.clone());
            f.id = i as u64 + 1;
            f
        })
        .collect()
}

const GT: [f64; 6] = [600_000.0, 0.5, 0.0, 5_750_000.0, 0.0, -0.5];

/// The child: writes set `RR_N` to `RR_OUT` as `RR_KIND` (a format or
/// "project"), or, for `RR_KIND=recover`, recovers as a fresh start does.
#[test]
fn child_writer() {
    let Ok(kind) = std::env::var("RR_KIND") else { return };
    if kind == "recover" {
        engine::atomic::recover();
        return;
    }
    let out = PathBuf::from(std::env::var_os("RR_OUT").unwrap());
    let n: usize = std::env::var("RR_N").unwrap().parse().unwrap();
    let features = features(n);
    if kind == "project" {
        let meta = engine::project::ProjectMeta {
            raster: Some("/data/x.tif".into()),
            geotransform: Some(GT),
            ..Default::default()
        };
        engine::project::save(&out, &meta, &features).unwrap();
    } else {
        let set = engine::edit::feature_set(&features, Some(engine::geo::GeoTransform(GT)), None);
        let opts = ExportOptions { format: Format::from_path(&out), ..Default::default() };
        engine::export::export(&out, &set, &opts, &mut |_, _| true).unwrap();
    }
}

/// Runs the child; with `kill_at`, strace kills it at that rename. True when it completed.
fn run_child(kind: &str, out: &Path, n: usize, state: &Path, kill_at: Option<usize>) -> bool {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match kill_at {
        Some(k) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2", "-e"])
                .arg(format!("inject=rename,renameat,renameat2:signal=SIGKILL:when={k}"))
                .arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let status = cmd
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env("RR_KIND", kind)
        .env("RR_OUT", out)
        .env("RR_N", n.to_string())
        .env("XDG_STATE_HOME", state)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    status.success()
}

/// What a set reads as: per layer, (fid, geometry, attributes but the time of writing).
fn read_set(path: &Path, kind: &str) -> Result<Vec<String>, String> {
    let mut files = vec![path.to_owned()];
    if !matches!(kind, "gpkg" | "project") {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        files.push(path.with_file_name(format!("{stem}_boxes.{kind}")));
    }
    let mut out = Vec::new();
    for f in files {
        let ds = gdal::Dataset::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for mut layer in ds.layers() {
            let name = layer.name();
            let mut rows = Vec::new();
            for feat in layer.features() {
                let geom = feat.geometry().map(|g| g.wkt().unwrap_or_default()).unwrap_or_default();
                let mut attrs = Vec::new();
                for (field, value) in feat.fields() {
                    // When it was written differs from run to run; what was written must not.
                    let value = format!("{value:?}");
                    let value = value.split("saved_at").next().unwrap_or_default();
                    if !field.starts_with("created") {
                        attrs.push(format!("{field}={value}"));
                    }
                }
                rows.push(format!("{name} {} {geom} {}", feat.fid().unwrap_or(0), attrs.join(",")));
            }
            rows.sort();
            out.extend(rows);
        }
    }
    Ok(out)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".export-") || n.contains(".tmp"))
        .collect()
}

/// Kills the writer at every rename and checks old-or-new after recovery.
fn kill_at_every_rename(kind: &str) {
    assert!(Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success()), "strace is needed");
    let root = tempfile::tempdir().unwrap();
    let ext = if kind == "project" { "gpkg" } else { kind };
    let name = format!("scène.{ext}");
    let (old_dir, new_dir) = (root.path().join("old"), root.path().join("new"));
    for (dir, n) in [(&old_dir, 3), (&new_dir, 5)] {
        std::fs::create_dir(dir).unwrap();
        assert!(run_child(kind, &dir.join(&name), n, &root.path().join("state"), None));
    }
    let old = read_set(&old_dir.join(&name), ext).unwrap();
    let new = read_set(&new_dir.join(&name), ext).unwrap();
    assert_ne!(old, new);
    let mut kills = 0;
    for k in 1..=40 {
        let dir = root.path().join(format!("k{k}"));
        let state = root.path().join(format!("state{k}"));
        std::fs::create_dir(&dir).unwrap();
        for e in std::fs::read_dir(&old_dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        let target = dir.join(&name);
        let completed = run_child(kind, &target, 5, &state, Some(k));
        if !completed {
            kills += 1;
            // The next start recovers (from its journal, wherever the folder is).
            assert!(run_child("recover", &target, 0, &state, None));
        }
        let now = read_set(&target, ext).unwrap_or_else(|e| panic!("{kind}: killed at rename {k}: unreadable: {e}"));
        assert!(
            now == old || now == new,
            "{kind}: killed at rename {k}: neither the old set nor the new one:\n{now:#?}"
        );
        assert!(leftovers(&dir).is_empty(), "{kind}: killed at rename {k}: left {:?}", leftovers(&dir));
        let journal = state.join("remote-reasoner/exports");
        let entries = std::fs::read_dir(&journal).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries, 0, "{kind}: killed at rename {k}: journal entries left");
        if completed {
            assert_eq!(now, new);
            break;
        }
    }
    // The manifest and the file(s): GeoPackages are one file, the other formats a set of two or more.
    let least = if ext == "gpkg" { 2 } else { 3 };
    assert!(kills >= least, "{kind}: only {kills} renames to kill at");
}

#[test]
fn shapefile_sets_are_replaced_as_one() {
    kill_at_every_rename("shp");
}

#[test]
fn geopackages_are_replaced_as_one() {
    kill_at_every_rename("gpkg");
}

#[test]
fn geojson_pairs_are_replaced_as_one() {
    kill_at_every_rename("geojson");
}

#[test]
fn flatgeobuf_pairs_are_replaced_as_one() {
    kill_at_every_rename("fgb");
}

#[test]
fn projects_are_replaced_as_one() {
    kill_at_every_rename("project");
}

#[test]
fn stale_staging_folders_are_removed_by_the_next_export() {
    let dir = tempfile::tempdir().unwrap();
    // What a killed export left: a folder of a dead process (PID 0 never is one), 10 MB of it.
    let stale = dir.path().join(".x.gpkg.export-0-12345");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("x.gpkg"), vec![0u8; 10 << 20]).unwrap();
    let set = engine::edit::feature_set(&features(2), Some(engine::geo::GeoTransform(GT)), None);
    let out = dir.path().join("y.geojson");
    engine::export::export(&out, &set, &ExportOptions::default(), &mut |_, _| true).unwrap();
    assert!(!stale.exists(), "the stale folder is gone");
    assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
}

#[test]
fn a_shapefile_replaced_by_one_without_a_crs_loses_its_old_prj() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.shp");
    let wkt = gdal::spatial_ref::SpatialRef::from_epsg(32631).unwrap().to_wkt().unwrap();
    let gt = Some(engine::geo::GeoTransform(GT));
    let opts = ExportOptions::default();
    let with_crs = engine::edit::feature_set(&features(2), gt, Some(wkt));
    engine::export::export(&out, &with_crs, &opts, &mut |_, _| true).unwrap();
    assert!(out.with_extension("prj").exists());
    let without = engine::edit::feature_set(&features(3), gt, None);
    engine::export::export(&out, &without, &opts, &mut |_, _| true).unwrap();
    assert!(!out.with_extension("prj").exists(), "a stale .prj would misplace the new shapes");
    assert!(!dir.path().join("x_boxes.prj").exists());
    assert_eq!(read_set(&out, "shp").unwrap().len(), 6);
}
