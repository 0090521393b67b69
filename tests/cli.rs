//! The `remote-reasoner` command line, run as a user runs it: `info` and `render`
//! on every shared sample, pixel parity with `gdal_translate`, and bad input.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared_dir() -> PathBuf {
    std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

fn samples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(shared_dir())
        .expect("../shared/data exists (or set RR_SHARED_DATA)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    v.sort();
    assert_eq!(v.len(), 9, "the nine shared samples");
    v
}

fn rr(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remote-reasoner")).args(args).output().expect("binary runs")
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

fn rgb_pixels(png: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

#[test]
fn info_json_has_the_documented_fields_for_every_sample() {
    for path in samples() {
        let out = rr(&[os("info"), path.as_os_str(), os("--json")]);
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["width", "height", "bands", "dtypes", "nodata", "crs_wkt", "epsg", "geotransform", "overviews"] {
            assert!(v.get(key).is_some(), "{}: no {key}", path.display());
        }
        assert!(v["width"].as_u64().unwrap() > 0);
        let bands = v["bands"].as_u64().unwrap() as usize;
        assert_eq!(v["dtypes"].as_array().unwrap().len(), bands);
        assert_eq!(v["nodata"].as_array().unwrap().len(), bands);
        assert_eq!(v["geotransform"].as_array().unwrap().len(), 6);
        assert!(v["epsg"].as_u64().is_some());
        assert!(
            v["crs_wkt"].as_str().unwrap().starts_with("PROJCS")
                || v["crs_wkt"].as_str().unwrap().starts_with("GEOGCS")
        );
        assert!(v["overviews"].is_array());
        // Geotransform matches GDAL's own report.
        let gdal = Command::new("gdalinfo").arg("-json").arg(&path).output().expect("gdalinfo (apt install gdal-bin)");
        let g: serde_json::Value = serde_json::from_slice(&gdal.stdout).unwrap();
        // (gdalinfo prints 16 significant digits, we print the exact double.)
        for (a, b) in v["geotransform"].as_array().unwrap().iter().zip(g["geoTransform"].as_array().unwrap()) {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{}: {a} vs {b}", path.display());
        }
        let text = rr(&[os("info"), path.as_os_str()]);
        assert!(String::from_utf8_lossy(&text.stdout).contains("EPSG:"));
    }
}

#[test]
fn render_stretch_none_is_pixel_identical_to_gdal_translate() {
    let dir = tempfile::tempdir().unwrap();
    let eight_bit_rgb = samples()
        .into_iter()
        .filter(|p| {
            let v: serde_json::Value =
                serde_json::from_slice(&rr(&[os("info"), p.as_os_str(), os("--json")]).stdout).unwrap();
            v["dtypes"][0] == "Byte" && v["bands"].as_u64().unwrap() >= 3
        })
        .collect::<Vec<_>>();
    assert_eq!(eight_bit_rgb.len(), 4, "{eight_bit_rgb:?}");
    for path in eight_bit_rgb {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let ours = dir.path().join(format!("{name}.ours.png"));
        let reference = dir.path().join(format!("{name}.gdal.png"));
        let out = rr(&[os("render"), path.as_os_str(), os("--out"), ours.as_os_str(), os("--stretch"), os("none")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st = Command::new("gdal_translate")
            .args(["-q", "-of", "PNG", "-b", "1", "-b", "2", "-b", "3"])
            .arg(&path)
            .arg(&reference)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(rgb_pixels(&ours), rgb_pixels(&reference), "{name}");

        // A window resampled to another size goes through the same nearest-neighbour path.
        let win = dir.path().join(format!("{name}.win.png"));
        let win_ref = dir.path().join(format!("{name}.win.gdal.png"));
        let out = rr(&[
            os("render"),
            path.as_os_str(),
            os("--out"),
            win.as_os_str(),
            os("--stretch"),
            os("none"),
            os("--window"),
            os("10,20,150,100"),
            os("--size"),
            os("75x50"),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st = Command::new("gdal_translate")
            .args([
                "-q", "-of", "PNG", "-b", "1", "-b", "2", "-b", "3", "-srcwin", "10", "20", "150", "100", "-outsize",
                "75", "50",
            ])
            .arg(&path)
            .arg(&win_ref)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(rgb_pixels(&win), rgb_pixels(&win_ref), "{name} window");
    }
}

#[test]
fn render_writes_rgba_only_when_something_is_transparent() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("andros.png");
    let andros = shared_dir().join("andros_bahamas_landsat7_rgb_300m.tif");
    let out = rr(&[os("render"), andros.as_os_str(), os("--out"), out_png.as_os_str(), os("--size"), os("200x180")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&out_png).unwrap();
    assert_eq!((img.width(), img.height()), (200, 180));
    assert!(img.color().has_alpha(), "nodata collar needs alpha");
    let grey = dir.path().join("pan.png");
    let pan = shared_dir().join("rotterdam_urban_pan_0p5m_spacenet6.tif");
    let out = rr(&[os("render"), pan.as_os_str(), os("--out"), grey.as_os_str(), os("--stretch"), os("percentile")]);
    assert!(out.status.success());
    let img = image::open(&grey).unwrap();
    assert!(!img.color().has_alpha());
    assert_eq!((img.width(), img.height()), (600, 600));
}

/// Runs a failing command and returns its one-line message.
fn failure(args: &[&std::ffi::OsStr]) -> String {
    let out = rr(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear message: {err}");
    err
}

#[test]
fn bad_input_exits_non_zero_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("nope.tif");
    let err = failure(&[os("info"), missing.as_os_str()]);
    assert!(err.contains("nope.tif") && err.contains("not found"), "{err}");

    let garbage = d.join("garbage.tif");
    std::fs::write(&garbage, vec![0x5a; 5000]).unwrap();
    let err = failure(&[os("info"), garbage.as_os_str()]);
    assert!(err.contains("garbage.tif") && err.contains("not a raster"), "{err}");
    let out_png = d.join("x.png");
    let err = failure(&[os("render"), garbage.as_os_str(), os("--out"), out_png.as_os_str()]);
    assert!(err.contains("garbage.tif"), "{err}");
    assert!(!out_png.exists(), "nothing written on failure");

    let text = d.join("notes.txt");
    std::fs::write(&text, "just some notes\n").unwrap();
    let err = failure(&[os("info"), text.as_os_str()]);
    assert!(err.contains("notes.txt") && err.contains("not a raster"), "{err}");

    let bytes = std::fs::read(shared_dir().join("las_vegas_residential_pan_0p3m_spacenet3.tif")).unwrap();
    let truncated = d.join("truncated.tif");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = failure(&[os("info"), truncated.as_os_str()]);
    assert!(err.contains("truncated.tif"), "{err}");
    let err = failure(&[os("render"), truncated.as_os_str(), os("--out"), out_png.as_os_str()]);
    assert!(err.contains("truncated.tif"), "{err}");
    assert!(!out_png.exists());

    // Unsupported: complex pixels cannot be displayed.
    let complex = d.join("complex.tif");
    let st = Command::new("gdal_translate")
        .args(["-q", "-ot", "CInt16"])
        .arg(shared_dir().join("rotterdam_port_rgb_4p5m_spacenet6.tif"))
        .arg(&complex)
        .status()
        .unwrap();
    assert!(st.success());
    let err = failure(&[os("info"), complex.as_os_str()]);
    assert!(err.contains("complex.tif") && err.contains("unsupported") && err.contains("CInt16"), "{err}");

    // Bad arguments on a good file.
    let port = shared_dir().join("rotterdam_port_rgb_4p5m_spacenet6.tif");
    let err = failure(&[
        os("render"),
        port.as_os_str(),
        os("--out"),
        out_png.as_os_str(),
        os("--window"),
        os("150,150,100,100"),
    ]);
    assert!(err.contains("outside") && err.contains("rotterdam_port"), "{err}");
    let err = failure(&[os("render"), port.as_os_str(), os("--out"), out_png.as_os_str(), os("--bands"), os("1,2,7")]);
    assert!(err.contains("band 7"), "{err}");
    let unwritable = d.join("no/such/dir/out.png");
    let err = failure(&[os("render"), port.as_os_str(), os("--out"), unwritable.as_os_str()]);
    assert!(err.contains("out.png"), "{err}");
}

/// Benchmarks live in `rr-bench` (tools/bench), not in the product: the
/// release binary neither links GDALPolygonize (only the contour benchmark
/// calls it) nor carries the benchmarks' help, and has no `bench` command.
#[test]
fn the_product_binary_carries_no_benchmark_code() {
    let product = Path::new(env!("CARGO_BIN_EXE_remote-reasoner"));
    let marks: [&[u8]; 2] = [b"GDALPolygonize", b"tile throughput vs GDAL"];
    let contains = |bin: &[u8], mark: &[u8]| bin.windows(mark.len()).any(|w| w == mark);
    let bytes = std::fs::read(product).unwrap();
    for mark in marks {
        assert!(!contains(&bytes, mark), "{} contains {:?}", product.display(), String::from_utf8_lossy(mark));
    }
    let help = rr(&[os("--help")]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.lines().any(|l| l.trim_start().starts_with("ask ")), "{help}");
    assert!(!help.lines().any(|l| l.trim_start().starts_with("bench")), "bench is not a subcommand: {help}");
    // The same check finds them in the benchmark binary when it was built beside it.
    let bench = product.with_file_name("rr-bench");
    if let Ok(bytes) = std::fs::read(&bench) {
        assert!(marks.iter().all(|m| contains(&bytes, m)), "{} lacks the benchmarks", bench.display());
    }
}

/// `--version` says which build this is: version, commit, GPU features, the GDAL
/// and PROJ it runs against, the CPU kernels it picked.
#[test]
fn version_names_the_build_commit_features_and_gdal() {
    let out = rr(&[os("--version")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("remote-reasoner {} (commit ", env!("CARGO_PKG_VERSION"))), "{text}");
    for part in ["GPU features: ", "GDAL 3.", "PROJ ", "CPU kernels: "] {
        assert!(text.contains(part), "no {part:?} in {text}");
    }
    let gdal = Command::new("gdal-config").arg("--version").output().ok();
    if let Some(g) = gdal.filter(|g| g.status.success()) {
        let v = String::from_utf8_lossy(&g.stdout).trim().to_owned();
        assert!(text.contains(&format!("GDAL {v}")), "gdal-config says {v}: {text}");
    }
    // Built from a checkout: its commit.
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok();
    if let Some(h) = head.filter(|h| h.status.success()) {
        let c = String::from_utf8_lossy(&h.stdout).trim().to_owned();
        assert!(text.contains(&format!("(commit {c})")), "HEAD is {c}: {text}");
    }
}

/// Shell completions and the man page come from the same clap definitions the
/// binary parses with (packaging installs them).
#[test]
fn completions_and_man_page_cover_the_subcommands() {
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef remote-reasoner"), ("fish", "complete -c remote-reasoner")]
    {
        let out = rr(&[os("completions"), os(shell)]);
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for sub in ["ask", "segment", "polygonize", "sweep", "serve"] {
            assert!(text.contains(sub), "{shell}: no {sub}");
        }
    }
    let out = rr(&[os("completions"), os("tcsh")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tcsh"));
    let out = rr(&[os("manpage")]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH remote-reasoner 1") && man.contains("polygonize"), "{}", &man[..man.len().min(400)]);
}
