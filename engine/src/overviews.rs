//! Building overviews (reduced-resolution copies) for rasters that have none, so
//! that zoomed-out views of large rasters read a few blocks instead of the whole file.

use std::ffi::{CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use gdal::{DatasetOptions, GdalOpenFlags};

use crate::error::{EngineError, Result};
use crate::raster::gdal_reason;
use crate::tiles::TILE_SIZE;

/// Power-of-two decimation factors down to the level where the raster fits one tile.
pub fn default_factors(width: u64, height: u64) -> Vec<i32> {
    let mut factors = Vec::new();
    let mut f = 2i32;
    while (width.max(height) as f64 / f64::from(f / 2)) > f64::from(TILE_SIZE) && f <= 1 << 20 {
        factors.push(f);
        f *= 2;
    }
    factors
}

/// Where GDAL puts the external overviews of a read-only dataset.
pub fn ovr_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".ovr");
    PathBuf::from(s)
}

/// Builds external (`.ovr`) overviews for the raster at `path`, leaving the raster
/// itself untouched. `progress(fraction)` is called as GDAL works; returning
/// `false` cancels, and a cancelled or failed build removes the partial `.ovr`.
pub fn build_overviews(
    path: &Path,
    factors: &[i32],
    resampling: &str,
    mut progress: impl FnMut(f64) -> bool,
) -> Result<()> {
    crate::gdal_init();
    let ovr = ovr_path(path);
    let had_ovr = ovr.exists();
    let write_err = |reason: String| EngineError::Write { path: ovr.clone(), reason };
    let options = DatasetOptions {
        open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY,
        ..Default::default()
    };
    let ds = crate::raster::source::open(path, &options.open_flags)
        .map_err(|e| EngineError::NotARaster { path: path.to_owned(), reason: gdal_reason(&e) })?;
    if factors.is_empty() {
        return Ok(());
    }
    let c_resampling = CString::new(resampling).map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
    // GDAL writes external overviews uncompressed by default: about a third of the
    // *uncompressed* raster. DEFLATE keeps the .ovr near the size of the raster.
    let _compression = ThreadConfig::set(&[("COMPRESS_OVERVIEW", "DEFLATE"), ("INTERLEAVE_OVERVIEW", "PIXEL")]);
    let mut cb: &mut dyn FnMut(f64) -> bool = &mut progress;
    let mut factors = factors.to_vec();
    // SAFETY: the dataset handle is valid while `ds` lives; `cb` outlives the call
    // and is only touched by `progress_trampoline` on this thread.
    let rv = unsafe {
        gdal_sys::GDALBuildOverviews(
            ds.c_dataset(),
            c_resampling.as_ptr(),
            factors.len() as c_int,
            factors.as_mut_ptr(),
            0,
            std::ptr::null_mut(),
            Some(progress_trampoline),
            (&raw mut cb).cast::<c_void>(),
        )
    };
    let closed = ds.close();
    let outcome = if rv != gdal_sys::CPLErr::CE_None {
        // SAFETY: reads GDAL's thread-local last-error message.
        let msg = unsafe { std::ffi::CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) }.to_string_lossy().into_owned();
        if msg.to_lowercase().contains("interrupt") || msg.to_lowercase().contains("user terminated") {
            Err(EngineError::Cancelled)
        } else {
            Err(write_err(msg))
        }
    } else {
        closed.map_err(|e| write_err(gdal_reason(&e)))
    };
    if outcome.is_err() && !had_ovr {
        let _ = std::fs::remove_file(&ovr);
    }
    outcome
}

/// GDAL configuration options set on this thread for as long as the guard lives.
struct ThreadConfig(&'static [(&'static str, &'static str)]);

impl ThreadConfig {
    fn set(options: &'static [(&'static str, &'static str)]) -> Self {
        for (key, value) in options {
            // Only fails for keys with a NUL byte, which these have not.
            let _ = gdal::config::set_thread_local_config_option(key, value);
        }
        Self(options)
    }
}

impl Drop for ThreadConfig {
    fn drop(&mut self) {
        for (key, _) in self.0 {
            let _ = gdal::config::clear_thread_local_config_option(key);
        }
    }
}

unsafe extern "C" fn progress_trampoline(complete: f64, _msg: *const c_char, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `&mut &mut dyn FnMut` passed by `build_overviews`.
    let cb = unsafe { &mut *data.cast::<&mut dyn FnMut(f64) -> bool>() };
    // A panic must not unwind into C: treat it as a cancel.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(complete))) {
        Ok(true) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_factors_stop_at_one_tile() {
        assert!(default_factors(200, 200).is_empty());
        assert_eq!(default_factors(512, 100), vec![2]);
        assert_eq!(default_factors(20_000, 20_000), vec![2, 4, 8, 16, 32, 64, 128]);
    }
}
