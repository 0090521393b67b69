//! The real window: `remote-reasoner FILE --screenshot PNG` under Xvfb, with both
//! renderers (wgpu through Mesa's lavapipe, glow through llvmpipe). The map must
//! show the raster's own pixels, exactly (magnified with nearest filtering).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif")
}

/// The raster's colours as GDAL reads them, independent of the engine.
fn raster_colours(path: &Path) -> HashSet<[u8; 3]> {
    let ds = gdal::Dataset::open(path).unwrap();
    let (w, h) = ds.raster_size();
    let bands: Vec<Vec<u8>> = (1..=3)
        .map(|b| ds.rasterband(b).unwrap().read_as::<u8>((0, 0), (w, h), (w, h), None).unwrap().data().to_vec())
        .collect();
    (0..w * h).map(|i| [bands[0][i], bands[1][i], bands[2][i]]).collect()
}

fn screenshot(renderer: &str, out: &Path) -> image::RgbImage {
    let runtime = tempfile::tempdir().unwrap(); // Mesa wants a private XDG_RUNTIME_DIR
    let status = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(["--renderer", renderer])
        .arg(sample())
        .arg("--screenshot")
        .arg(out)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .status()
        .expect("xvfb-run is needed for the real-window test: apt-get install xvfb xauth");
    assert!(status.success(), "{renderer}: the window did not produce a screenshot ({status})");
    image::open(out).unwrap().to_rgb8()
}

#[test]
fn real_window_shows_the_sample_with_both_renderers() {
    let colours = raster_colours(&sample());
    let dir = tempfile::tempdir().unwrap();
    for renderer in ["wgpu", "glow"] {
        let shot = screenshot(renderer, &dir.path().join(format!("{renderer}.png")));
        assert!(shot.width() >= 1000 && shot.height() >= 600, "{renderer}: {}×{}", shot.width(), shot.height());
        // A block well inside the fitted map (between the side panels, above the features table).
        let (x0, y0) = (shot.width() / 2 - shot.width() / 8, shot.height() / 4);
        let (mut total, mut exact) = (0, 0);
        for y in y0..y0 + shot.height() / 3 {
            for x in x0..x0 + shot.width() / 4 {
                total += 1;
                exact += usize::from(colours.contains(&shot.get_pixel(x, y).0));
            }
        }
        let share = exact as f64 / f64::from(total);
        assert!(share > 0.97, "{renderer}: only {:.1} % of the map's pixels are raster colours", share * 100.0);
    }
}
