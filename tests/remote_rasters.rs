//! Rasters by URL, against nginx (Debian's, range requests) serving a
//! Cloud-Optimized GeoTIFF behind a proxy that adds latency to every request:
//! `http(s)://`, `/vsicurl/`, `s3://` (nginx standing in for the bucket), a
//! STAC item by URL or file; and the engine thread staying responsive while a
//! remote raster's tiles trickle in. Plus file names that are not UTF-8.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/cli.rs"]
mod cli;
use cli::{ok_json, root, rr};

fn sample() -> PathBuf {
    root().join("assets/samples/rotterdam_port_rgb_4p5m_spacenet6.tif")
}

/// nginx serving `dir` on a free loopback port; stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn nginx(dir: &Path, work: &Path) -> Nginx {
    let port = free_port();
    let log = work.join("access.log");
    let conf = format!(
        "master_process off; pid {w}/nginx.pid; error_log {w}/error.log; daemon off;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log {log}; client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w};\n\
           uwsgi_temp_path {w}; scgi_temp_path {w}; types {{ image/tiff tif; application/json json; }}\n\
           server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        w = work.display(),
        log = log.display(),
        root = dir.display(),
    );
    std::fs::write(work.join("nginx.conf"), conf).unwrap();
    // One process (master_process off), quiet: killing it leaves nothing holding our pipes.
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(work.join("nginx.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx { child, port, log }
}

/// A TCP proxy to `upstream` that holds every client write back `delay`:
/// each HTTP request (and so each range GDAL reads) costs that much more.
fn latency_proxy(upstream: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n @ 1..) = c_read.read(&mut buf) {
                    std::thread::sleep(delay);
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A 2000×2000 COG (the sample, upsampled: real pixels, several tiles and overviews) in `dir`.
fn make_cog(dir: &Path) -> PathBuf {
    let cog = dir.join("scene.tif");
    let out = Command::new("gdal_translate")
        .args(["-q", "-of", "COG", "-outsize", "2000", "2000", "-co", "BLOCKSIZE=256", "-co", "COMPRESS=DEFLATE"])
        .arg(sample())
        .arg(&cog)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cog
}

struct Site {
    _tmp: tempfile::TempDir,
    nginx: Nginx,
    /// Port of the latency proxy in front of nginx.
    slow: u16,
    cog: PathBuf,
    dir: PathBuf,
}

fn site(delay: Duration) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, work) = (tmp.path().join("www"), tmp.path().join("nginx"));
    std::fs::create_dir_all(dir.join("bucket")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let cog = make_cog(&dir.join("bucket"));
    let item = serde_json::json!({
        "type": "Feature", "stac_version": "1.0.0", "id": "scene",
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png"},
            "visual": {"href": "./scene.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["visual"]}
        }
    });
    std::fs::write(dir.join("bucket/item.json"), item.to_string()).unwrap();
    let nginx = nginx(&dir, &work);
    let slow = latency_proxy(nginx.port, delay);
    Site { _tmp: tmp, nginx, slow, cog, dir }
}

#[test]
fn rasters_open_by_url_vsicurl_s3_and_stac_item_through_range_requests() {
    let s = site(Duration::from_millis(20));
    let local = ok_json(&["info", s.cog.to_str().unwrap(), "--json"]);
    let url = format!("http://127.0.0.1:{}/bucket/scene.tif", s.slow);
    for name in [url.clone(), format!("/vsicurl/{url}")] {
        let remote = ok_json(&["info", &name, "--json"]);
        assert_eq!(remote["width"], local["width"], "{name}");
        assert_eq!(remote["geotransform"], local["geotransform"], "{name}");
        assert_eq!(remote["overviews"], local["overviews"], "{name}");
        assert_eq!(remote["path"], name.as_str(), "the raster keeps the name it was opened by");
    }
    // GDAL read byte ranges, not the whole file.
    let log = std::fs::read_to_string(&s.nginx.log).unwrap();
    assert!(log.contains(" 206 "), "no range requests in:\n{log}");
    // The same pixels as the local file.
    let (a, b) = (s.dir.join("a.png"), s.dir.join("b.png"));
    let window = ["--window", "0,0,2000,2000", "--size", "256x256"];
    assert!(
        rr(&[&["render", s.cog.to_str().unwrap(), "--out", a.to_str().unwrap()][..], &window[..]].concat())
            .status
            .success()
    );
    let out = rr(&[&["render", &url, "--out", b.to_str().unwrap()][..], &window[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // s3:// through GDAL's /vsis3/, nginx standing in for the bucket (path-style, unsigned).
    let out = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .args(["info", "s3://bucket/scene.tif", "--json"])
        .env("AWS_S3_ENDPOINT", format!("127.0.0.1:{}", s.slow))
        .env("AWS_HTTPS", "NO")
        .env("AWS_VIRTUAL_HOSTING", "FALSE")
        .env("AWS_NO_SIGN_REQUEST", "YES")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["width"], local["width"]);
    // A STAC item by URL: its visual asset (a relative href); by name; a missing asset named.
    let item = format!("http://127.0.0.1:{}/bucket/item.json", s.slow);
    assert_eq!(ok_json(&["info", &item, "--json"])["width"], local["width"]);
    assert_eq!(ok_json(&["info", &format!("{item}#visual"), "--json"])["width"], local["width"]);
    let out = rr(&["info", &format!("{item}#B04")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("B04") && err.contains("visual"), "{err}");
    // A STAC item file whose asset is a URL.
    let file = s.dir.join("item.json");
    let local_item = serde_json::json!({"type": "Feature", "assets": {"data": {"href": url, "type": "image/tiff"}}});
    std::fs::write(&file, local_item.to_string()).unwrap();
    assert_eq!(ok_json(&["info", file.to_str().unwrap(), "--json"])["width"], local["width"]);
    // Not there: a clear error naming the URL, not "file not found" on the local disk.
    let out = rr(&["info", &format!("http://127.0.0.1:{}/bucket/none.tif", s.slow)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("none.tif"), "{err}");
}

#[test]
fn the_engine_thread_serves_other_rasters_while_remote_tiles_trickle_in() {
    use engine::raster::RenderParams;
    use engine::tiles::TileKey;
    use engine::{Event, EventKind};
    // 150 ms per request: a screen of tiles takes seconds.
    let s = site(Duration::from_millis(150));
    let e = engine::Engine::spawn(engine::EngineConfig::default(), Arc::new(|| {}));
    let url = format!("http://127.0.0.1:{}/bucket/scene.tif", s.slow);
    let t = Instant::now();
    let remote_job = e.open(PathBuf::from(&url));
    let local_job = e.open(sample());
    let mut opened = std::collections::HashMap::new();
    while opened.len() < 2 {
        match e.recv_timeout(Duration::from_secs(30)).expect("engine answered") {
            Event { job, kind: EventKind::Opened { info, .. } } => {
                opened.insert(job, (info, t.elapsed()));
            }
            Event { kind: EventKind::Failed { error, .. }, .. } => panic!("{error}"),
            _ => {}
        }
    }
    // The local raster opened at once, not after the remote one.
    assert!(opened[&local_job].1 < opened[&remote_job].1, "{opened:?}");
    let params = RenderParams::default_for(&opened[&remote_job].0);
    let keys: Vec<TileKey> = (0..8).flat_map(|x| (0..8).map(move |y| TileKey { level: 0, x, y })).collect();
    let remote_tiles = e.request_tiles(remote_job, params, keys);
    // Meanwhile: the local raster's tiles. They must all arrive before the remote ones are done.
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let local_params = RenderParams::default_for(&opened[&local_job].0);
    let local_tiles = e.request_tiles(local_job, local_params, vec![TileKey { level: 0, x: 0, y: 0 }]);
    let (mut local_done, mut remote_seen, mut remote_done) = (None, 0, false);
    while !(local_done.is_some() && remote_done) {
        match e.recv_timeout(Duration::from_secs(60)).expect("engine answered") {
            Event { job, kind: EventKind::Tile { .. } } if job == remote_tiles => remote_seen += 1,
            Event { job, kind: EventKind::TilesDone } if job == local_tiles => {
                local_done = Some((t.elapsed(), remote_seen));
            }
            Event { job, kind: EventKind::TilesDone } if job == remote_tiles => remote_done = true,
            // The newer view replaced the remote one (one view at a time): ask again for it.
            Event { job, kind: EventKind::Cancelled } if job == remote_tiles => remote_done = true,
            Event { kind: EventKind::Failed { error, .. }, .. } => panic!("{error}"),
            _ => {}
        }
    }
    let (took, seen) = local_done.unwrap();
    assert!(took < Duration::from_millis(1500), "the local tile took {took:?}");
    assert!(seen < 64, "the local tile waited for all {seen} remote tiles");
}

#[test]
fn file_names_that_are_not_utf8_open_render_and_export() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    // "scène" in Latin-1: 0xE8 alone is not UTF-8.
    let name = std::ffi::OsStr::from_bytes(b"sc\xe8ne.tif");
    let raster = tmp.path().join(name);
    std::fs::copy(sample(), &raster).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_remote-reasoner")).arg("info").arg(&raster).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = tmp.path().join(std::ffi::OsStr::from_bytes(b"r\xe9sultat.png"));
    let out = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
        .arg("render")
        .arg(&raster)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success() && png.is_file(), "{}", String::from_utf8_lossy(&out.stderr));
    // A mask to polygonize, written by `segment`-style tools as a GeoTIFF beside it.
    let mask = tmp.path().join(std::ffi::OsStr::from_bytes(b"masque_\xe9.tif"));
    let made = Command::new("gdal_translate").args(["-q", "-b", "1"]).arg(&raster).arg(&mask).status().unwrap();
    assert!(made.success());
    for ext in ["shp", "gpkg", "geojson", "fgb"] {
        let mut out_name = b"r\xe9sultat.".to_vec();
        out_name.extend(ext.as_bytes());
        let target = tmp.path().join(std::ffi::OsStr::from_bytes(&out_name));
        let out = Command::new(env!("CARGO_BIN_EXE_remote-reasoner"))
            .args(["polygonize", "--mask"])
            .arg(&mask)
            .arg("--out")
            .arg(&target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{ext}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(target.is_file(), "{ext}: written under its exact name");
    }
    let names: Vec<Vec<u8>> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    // A lossy conversion would have written U+FFFD (EF BF BD) into a name.
    assert!(names.iter().all(|n| !n.windows(3).any(|w| w == [0xef, 0xbf, 0xbd])), "no lossy names: {names:?}");
    assert!(names.iter().any(|n| n == b"r\xe9sultat_boxes.geojson" || n == b"r\xe9sultat.shx"), "{names:?}");
}
