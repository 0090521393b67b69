//! Engine integration tests over the nine real GeoTIFFs in `../shared/data` and
//! rasters generated here with GDAL (huge sparse, non-georeferenced, broken).

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::base::Window;
use engine::raster::{BandMapping, Raster, RenderParams, Stretch};
use engine::tiles::TileKey;
use engine::{Engine, EngineConfig, EngineError, Event, EventKind};

/// `../shared/data` beside the repository, or `$RR_SHARED_DATA`.
fn shared(name: &str) -> PathBuf {
    let dir = std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let p = dir.join(name);
    assert!(p.exists(), "shared sample {} missing (set RR_SHARED_DATA)", p.display());
    p
}

struct Expect {
    file: &'static str,
    size: (u64, u64),
    dtypes: &'static [&'static str],
    epsg: u32,
    nodata: Option<f64>,
}

const SAMPLES: &[Expect] = &[
    Expect {
        file: "andros_bahamas_landsat7_rgb_300m.tif",
        size: (791, 718),
        dtypes: &["Byte"; 3],
        epsg: 32618,
        nodata: Some(0.0),
    },
    Expect {
        file: "atlanta_residential_pan_0p5m_spacenet4.tif",
        size: (900, 900),
        dtypes: &["UInt16"],
        epsg: 32616,
        nodata: Some(0.0),
    },
    Expect {
        file: "colorado_springs_cars_hro_0p15m.tif",
        size: (383, 232),
        dtypes: &["Byte"; 3],
        epsg: 26913,
        nodata: None,
    },
    Expect {
        file: "grenada_landsat8_rgb_uint16_60m.tif",
        size: (438, 500),
        dtypes: &["UInt16"; 3],
        epsg: 32620,
        nodata: None,
    },
    Expect {
        file: "las_vegas_residential_pan_0p3m_spacenet3.tif",
        size: (1300, 1300),
        dtypes: &["UInt16"],
        epsg: 4326,
        nodata: None,
    },
    Expect {
        file: "rotterdam_port_rgb_4p5m_spacenet6.tif",
        size: (200, 200),
        dtypes: &["Byte"; 3],
        epsg: 32631,
        nodata: None,
    },
    Expect {
        file: "rotterdam_urban_bgrn_1m_spacenet6.tif",
        size: (300, 300),
        dtypes: &["Float64"; 4],
        epsg: 32631,
        nodata: None,
    },
    Expect {
        file: "rotterdam_urban_pan_0p5m_spacenet6.tif",
        size: (600, 600),
        dtypes: &["UInt16"],
        epsg: 32631,
        nodata: None,
    },
    Expect { file: "sf_bay_ships_rapideye_5m.tif", size: (692, 332), dtypes: &["Byte"; 4], epsg: 32610, nodata: None },
];

fn alpha_at(img: &engine::raster::RgbaImage, x: u32, y: u32) -> u8 {
    img.rgba[((y * img.width + x) * 4 + 3) as usize]
}

#[test]
fn all_shared_samples_open_describe_and_render() {
    for e in SAMPLES {
        let r = Raster::open(shared(e.file)).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        let info = r.info();
        assert_eq!((info.width, info.height), e.size, "{}", e.file);
        assert_eq!(info.dtypes, e.dtypes, "{}", e.file);
        assert_eq!(info.epsg, Some(e.epsg), "{}", e.file);
        assert!(info.nodata.iter().all(|n| *n == e.nodata), "{}: {:?}", e.file, info.nodata);
        assert!(info.crs_wkt.as_deref().is_some_and(|w| w.contains("AUTHORITY")), "{}", e.file);
        assert!(info.geotransform.is_some(), "{}", e.file);
        assert_eq!(info.crs_geographic, e.epsg == 4326, "{}", e.file);

        // Full-resolution render with the default params, and a decimated one.
        let params = RenderParams::default_for(info);
        let full = r
            .render_window(Window::full(info.width, info.height), (info.width as u32, info.height as u32), &params)
            .unwrap();
        assert_eq!(full.rgba.len() as u64, info.width * info.height * 4);
        let distinct: std::collections::HashSet<&[u8]> = full.rgba.chunks_exact(4).collect();
        assert!(distinct.len() > 100, "{}: only {} distinct colours: stretch failed?", e.file, distinct.len());
        let top = info.pyramid().max_level();
        let tile = r.render_tile(TileKey { level: top, x: 0, y: 0 }, &params).unwrap();
        assert!(tile.width <= 256 && tile.height <= 256);
    }
}

#[test]
fn nodata_collar_and_alpha_band_become_transparent() {
    // Andros: nodata 0 collar around a rotated scene.
    let r = Raster::open(shared("andros_bahamas_landsat7_rgb_300m.tif")).unwrap();
    let params = RenderParams::default_for(r.info());
    let img = r.render_window(Window::full(791, 718), (791, 718), &params).unwrap();
    assert_eq!(alpha_at(&img, 0, 0), 0, "collar corner is transparent");
    assert_eq!(alpha_at(&img, 395, 359), 255, "scene centre is opaque");
    let transparent = img.rgba.chunks_exact(4).filter(|p| p[3] == 0).count();
    assert!(transparent > 50_000 && transparent < 400_000, "{transparent}");

    // SF Bay: band 4 is alpha; the clip footprint leaves transparent corners.
    let r = Raster::open(shared("sf_bay_ships_rapideye_5m.tif")).unwrap();
    assert_eq!(r.info().alpha_band(), Some(4));
    let params = RenderParams::default_for(r.info());
    assert_eq!(params.bands, BandMapping::Rgb([1, 2, 3]));
    assert_eq!(params.stretch, Stretch::None);
    let img = r.render_window(Window::full(692, 332), (692, 332), &params).unwrap();
    let transparent = img.rgba.chunks_exact(4).filter(|p| p[3] == 0).count();
    assert!(transparent > 0, "alpha band ignored");
    assert_eq!(alpha_at(&img, 346, 166), 255);
}

#[test]
fn percentile_stretch_spreads_sixteen_bit_and_float_data() {
    for (file, bands) in [
        ("grenada_landsat8_rgb_uint16_60m.tif", BandMapping::Rgb([1, 2, 3])),
        ("rotterdam_urban_bgrn_1m_spacenet6.tif", BandMapping::Rgb([3, 2, 1])),
        ("rotterdam_urban_pan_0p5m_spacenet6.tif", BandMapping::Grey(1)),
    ] {
        let r = Raster::open(shared(file)).unwrap();
        let (w, h) = (r.info().width, r.info().height);
        let params = RenderParams { bands, stretch: Stretch::PERCENTILE_2_98 };
        let img = r.render_window(Window::full(w, h), (w as u32, h as u32), &params).unwrap();
        let n = (w * h) as f64;
        let red: Vec<u8> = img.rgba.chunks_exact(4).map(|p| p[0]).collect();
        let at0 = red.iter().filter(|v| **v == 0).count() as f64 / n;
        let at255 = red.iter().filter(|v| **v == 255).count() as f64 / n;
        // About 2 % of pixels sit below the 2nd percentile and 2 % above the 98th.
        assert!((0.005..0.06).contains(&at0), "{file}: {at0}");
        assert!((0.005..0.06).contains(&at255), "{file}: {at255}");
    }
    // Without a stretch, Landsat DNs (≥ 6000) all clamp to white.
    let r = Raster::open(shared("grenada_landsat8_rgb_uint16_60m.tif")).unwrap();
    let none = RenderParams { bands: BandMapping::Rgb([1, 2, 3]), stretch: Stretch::None };
    let raw = r.render_window(Window::full(438, 500), (438, 500), &none).unwrap();
    assert!(raw.rgba.chunks_exact(4).all(|p| p == [255, 255, 255, 255]));
}

#[test]
fn geographic_crs_is_reported_in_degrees() {
    let r = Raster::open(shared("las_vegas_residential_pan_0p3m_spacenet3.tif")).unwrap();
    let gt = r.info().transform();
    let (lon, lat) = gt.pixel_to_world(0.0, 0.0);
    assert!((lon + 115.2338076).abs() < 1e-6 && (lat - 36.1423377).abs() < 1e-6);
    assert!((gt.0[1] - 2.7e-6).abs() < 1e-9);
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.tif");
    let err = Raster::open(&missing).unwrap_err();
    assert!(matches!(err, EngineError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("missing.tif"));

    let garbage = dir.path().join("garbage.tif");
    std::fs::write(&garbage, b"this is not a GeoTIFF at all, just text\n".repeat(50)).unwrap();
    let err = Raster::open(&garbage).unwrap_err();
    assert!(matches!(err, EngineError::NotARaster { .. }), "{err}");
    assert!(err.to_string().contains("garbage.tif") && err.to_string().contains("not recognized"), "{err}");

    let empty = dir.path().join("empty.tif");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Raster::open(&empty).unwrap_err(), EngineError::NotARaster { .. }));

    // Truncated: the header survives, the pixel data does not.
    let bytes = std::fs::read(shared("atlanta_residential_pan_0p5m_spacenet4.tif")).unwrap();
    let truncated = dir.path().join("truncated.tif");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let failure = match Raster::open(&truncated) {
        Err(e) => e,
        Ok(r) => r
            .render_window(Window::full(900, 900), (900, 900), &RenderParams::default_for(r.info()))
            .expect_err("reading a truncated file must fail"),
    };
    assert!(failure.to_string().contains("truncated.tif"), "{failure}");

    // Bad requests are errors too, not panics.
    let r = Raster::open(shared("rotterdam_port_rgb_4p5m_spacenet6.tif")).unwrap();
    let p = RenderParams::default_for(r.info());
    assert!(r.render_window(Window { x: 150, y: 0, width: 100, height: 10 }, (10, 10), &p).is_err());
    let bad_band = RenderParams { bands: BandMapping::Grey(9), ..p };
    assert!(r.render_window(Window::full(200, 200), (10, 10), &bad_band).unwrap_err().to_string().contains("band 9"));
}

#[test]
fn non_georeferenced_png_has_no_transform_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("plain.png");
    let data: Vec<u8> = (0..64 * 48).flat_map(|i| [(i % 64) as u8 * 4, (i / 64) as u8 * 5, 77]).collect();
    image::save_buffer(&png, &data, 64, 48, image::ExtendedColorType::Rgb8).unwrap();
    let r = Raster::open(&png).unwrap();
    let info = r.info();
    assert_eq!((info.driver.as_str(), info.width, info.height, info.bands), ("PNG", 64, 48, 3));
    assert_eq!(info.geotransform, None);
    assert_eq!(info.epsg, None);
    assert_eq!(info.transform().pixel_to_world(3.0, 4.0), (3.0, 4.0));
    let img = r.render_window(Window::full(64, 48), (64, 48), &RenderParams::default_for(info)).unwrap();
    assert_eq!(&img.rgba[..4], &[0, 0, 77, 255]);
    let i = (10 * 64 + 5) * 4;
    assert_eq!(&img.rgba[i..i + 4], &[20, 50, 77, 255]);
}

/// The 20000×20000 sparse GeoTIFF: overviews, exact tile contents, engine jobs.
#[test]
fn huge_sparse_geotiff_with_overviews_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.tif");
    const SIZE: usize = 20_000;
    engine::synthetic::sparse_geotiff(&path, SIZE, 3, false).unwrap();

    let engine = Engine::spawn(EngineConfig::default(), Arc::new(|| {}));
    let next = |engine: &Engine| engine.recv_timeout(Duration::from_secs(120)).expect("engine answered");
    engine.open(&path);
    let (raster, info) = match next(&engine) {
        Event { kind: EventKind::Opened { raster, info, .. }, .. } => (raster, info),
        other => panic!("{other:?}"),
    };
    assert!(info.overviews.is_empty());
    assert_eq!(info.epsg, Some(32631));

    // Cancel an overview build at once: no .ovr left behind.
    let job = engine.build_overviews(raster);
    engine.cancel(job);
    loop {
        match next(&engine) {
            Event { job: j, kind: EventKind::Cancelled } if j == job => break,
            Event { kind: EventKind::Progress { .. }, .. } => {}
            other => panic!("expected cancellation, got {other:?}"),
        }
    }
    assert!(!engine::overviews::ovr_path(&path).exists(), "partial .ovr removed");

    // Build for real: progress, then the reopened raster has 7 levels.
    let job = engine.build_overviews(raster);
    let mut progress = Vec::new();
    let info = loop {
        match next(&engine) {
            Event { job: j, kind: EventKind::Progress { fraction, .. } } if j == job => progress.push(fraction),
            Event { job: j, kind: EventKind::OverviewsBuilt { info, .. } } if j == job => break info,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(info.overviews.len(), 7);
    let ovr = gdal::Dataset::open(engine::overviews::ovr_path(&path)).unwrap();
    use gdal::Metadata as _;
    assert_eq!(ovr.metadata_item("COMPRESSION", "IMAGE_STRUCTURE").as_deref(), Some("DEFLATE"), "compressed .ovr");
    assert_eq!(info.overviews[0], (10_000, 10_000));
    assert!(progress.len() >= 3 && progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");

    // Tiles: a written block at full resolution matches the pattern exactly; a sparse one is 0.
    let params = RenderParams { bands: BandMapping::Rgb([1, 2, 3]), stretch: Stretch::None };
    let written = TileKey { level: 0, x: 40, y: 40 };
    let sparse = TileKey { level: 0, x: 10, y: 40 };
    let top = TileKey { level: info.pyramid().max_level(), x: 0, y: 0 };
    let job = engine.request_tiles(raster, params, vec![written, sparse, top]);
    let mut got = std::collections::HashMap::new();
    loop {
        match next(&engine) {
            Event { job: j, kind: EventKind::Tile { tile, .. } } if j == job => {
                got.insert(tile.key, tile);
            }
            Event { job: j, kind: EventKind::TilesDone } if j == job => break,
            other => panic!("{other:?}"),
        }
    }
    let t = &got[&written];
    for (x, y) in [(0u64, 0u64), (17, 200), (255, 255)] {
        let i = ((y * 256 + x) * 4) as usize;
        let (sx, sy) = (40 * 256 + x, 40 * 256 + y);
        let want: Vec<u8> = (1..=3).map(|b| engine::synthetic::pattern(sx, sy, b)).collect();
        assert_eq!(&t.rgba[i..i + 3], want.as_slice(), "pixel {sx},{sy}");
    }
    assert!(got[&sparse].rgba.chunks_exact(4).all(|p| p == [0, 0, 0, 255]));
    assert_eq!((got[&top].width, got[&top].height), (157, 157));
    assert!(got[&top].rgba.chunks_exact(4).any(|p| p[0] != 0), "overview carries the diagonal");

    // Coalescing: a second request replaces the first; the first reports Cancelled.
    let many: Vec<TileKey> = (0..60).map(|i| TileKey { level: 0, x: i, y: i }).collect();
    let first = engine.request_tiles(raster, params, many);
    let second = engine.request_tiles(raster, params, vec![TileKey { level: 0, x: 70, y: 70 }]);
    let (mut first_tiles, mut first_cancelled) = (0, false);
    loop {
        match next(&engine) {
            Event { job, kind: EventKind::Tile { .. } } if job == first => first_tiles += 1,
            Event { job, kind: EventKind::Cancelled } if job == first => first_cancelled = true,
            Event { job, kind: EventKind::Tile { .. } } if job == second => {}
            Event { job, kind: EventKind::TilesDone } if job == second => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(first_cancelled && first_tiles < 60, "first: {first_tiles} tiles, cancelled {first_cancelled}");

    // A cached tile is answered straight from the cache, identical.
    let job = engine.request_tiles(raster, params, vec![written]);
    match next(&engine) {
        Event { job: j, kind: EventKind::Tile { tile, .. } } if j == job => assert_eq!(tile.rgba, got[&written].rgba),
        other => panic!("{other:?}"),
    }
}
