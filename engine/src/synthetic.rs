//! Rasters made on the spot for tests and benchmarks: a huge GeoTIFF whose written
//! blocks follow a known pattern, so reads can be checked exactly. Tests write only
//! the block diagonals (sparse, seconds to make); benchmarks fill every block with
//! a textured pattern so that reads pay for real decompression.

use std::path::Path;

use gdal::raster::{Buffer, RasterCreationOptions};
use gdal::spatial_ref::SpatialRef;
use gdal::{DriverManager, GeoTransform as GdalGeoTransform};

use crate::error::{EngineError, Result};
use crate::overviews;
use crate::raster::gdal_reason;

/// Block (tile) size of the synthetic GeoTIFF.
pub const BLOCK: usize = 256;

/// The geotransform the synthetic raster gets: EPSG:32631, 0.5 m pixels.
pub const GEOTRANSFORM: [f64; 6] = [590_000.0, 0.5, 0.0, 5_760_000.0, 0.0, -0.5];

/// Value of band `band` (1-based) at pixel (x, y) inside a written block.
pub fn pattern(x: u64, y: u64, band: usize) -> u8 {
    (((x / 16 + y / 16) * 37 + band as u64 * 85) % 251) as u8 + 1
}

/// True when the block containing pixel (x, y) was written: the two diagonals of
/// the block grid. Every other block is sparse and reads as 0.
pub fn is_written(x: u64, y: u64, size: u64) -> bool {
    let (bx, by) = (x / BLOCK as u64, y / BLOCK as u64);
    let n = size.div_ceil(BLOCK as u64);
    bx == by || bx + by + 1 == n
}

/// Which blocks a synthetic raster has written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Only the two block diagonals, with [`pattern`]; the rest reads as 0.
    Diagonals,
    /// Every block, with [`textured`]: compresses about as well as real imagery.
    Dense,
}

/// [`pattern`] plus a few bits of hashed noise, so DEFLATE has real work to do.
pub fn textured(x: u64, y: u64, band: usize) -> u8 {
    let h = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ y.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).rotate_left(29);
    pattern(x, y, band).wrapping_add((h >> 59) as u8)
}

/// A sparse `size`×`size` GeoTIFF: see [`geotiff`] with [`Fill::Diagonals`].
pub fn sparse_geotiff(path: &Path, size: usize, bands: usize, with_overviews: bool) -> Result<()> {
    geotiff(path, size, bands, Fill::Diagonals, with_overviews)
}

/// Writes a `size`×`size`, `bands`-band Byte GeoTIFF (tiled 256, DEFLATE, EPSG:32631).
/// With `overviews`, also builds power-of-two overviews (nearest) into an `.ovr`.
pub fn geotiff(path: &Path, size: usize, bands: usize, fill: Fill, with_overviews: bool) -> Result<()> {
    crate::gdal_init();
    let err = |e: gdal::errors::GdalError| EngineError::Write { path: path.to_owned(), reason: gdal_reason(&e) };
    let driver = DriverManager::get_driver_by_name("GTiff").map_err(err)?;
    let options = RasterCreationOptions::from_iter([
        "TILED=YES",
        "BLOCKXSIZE=256",
        "BLOCKYSIZE=256",
        "COMPRESS=DEFLATE",
        "SPARSE_OK=TRUE",
        "INTERLEAVE=PIXEL",
        "BIGTIFF=IF_SAFER",
    ]);
    let mut ds = driver.create_with_band_type_with_options::<u8, _>(path, size, size, bands, &options).map_err(err)?;
    let gt: GdalGeoTransform = GEOTRANSFORM;
    ds.set_geo_transform(&gt).map_err(err)?;
    ds.set_spatial_ref(&SpatialRef::from_epsg(32631).map_err(err)?).map_err(err)?;
    let n = size.div_ceil(BLOCK);
    let blocks: Vec<(usize, usize)> = match fill {
        Fill::Diagonals => (0..n).flat_map(|i| [(i, i), (n - 1 - i, i)]).collect(),
        Fill::Dense => (0..n).flat_map(|by| (0..n).map(move |bx| (bx, by))).collect(),
    };
    let value = match fill {
        Fill::Diagonals => pattern,
        Fill::Dense => textured,
    };
    // Block by block, every band of a block in turn: a pixel-interleaved block is
    // then compressed once, not once per band.
    for &(bx, by) in &blocks {
        let (x0, y0) = (bx * BLOCK, by * BLOCK);
        let (w, h) = (BLOCK.min(size - x0), BLOCK.min(size - y0));
        for b in 1..=bands {
            let data: Vec<u8> =
                (0..h).flat_map(|y| (0..w).map(move |x| value((x0 + x) as u64, (y0 + y) as u64, b))).collect();
            let mut buf = Buffer::new((w, h), data);
            ds.rasterband(b).map_err(err)?.write((x0 as isize, y0 as isize), (w, h), &mut buf).map_err(err)?;
        }
    }
    ds.close().map_err(err)?;
    if with_overviews {
        let factors = overviews::default_factors(size as u64, size as u64);
        overviews::build_overviews(path, &factors, "NEAREST", |_| true)?;
    }
    Ok(())
}

/// splitmix64: a deterministic stream for synthetic data (no RNG dependency).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A `size`×`size` object mask (1 = object) with about `objects` blobs on a
/// jittered grid: ellipses with wavy outlines, half of them with a hole, a
/// third of those with an island in the hole — what SAM masks of buildings,
/// tanks and ships look like to a polygonizer. Deterministic for a `seed`.
pub fn object_mask(size: usize, objects: usize, seed: u64) -> Vec<u8> {
    let mut m = vec![0u8; size * size];
    let mut s = seed;
    let mut unit = || (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
    let per_side = (objects as f64).sqrt().ceil().max(1.0) as usize;
    let cell = size as f64 / per_side as f64;
    for i in 0..objects {
        let (gx, gy) = ((i % per_side) as f64, (i / per_side) as f64);
        let (rx, ry) = (cell * (0.15 + 0.25 * unit()), cell * (0.15 + 0.25 * unit()));
        let (cx, cy) = ((gx + 0.5 + 0.2 * (unit() - 0.5)) * cell, (gy + 0.5 + 0.2 * (unit() - 0.5)) * cell);
        let (wave, phase, angle) = (0.08 + 0.1 * unit(), unit() * 6.3, unit() * 3.1);
        let hole = unit() < 0.5;
        let island = hole && unit() < 0.33;
        let (sa, ca) = angle.sin_cos();
        let (x0, x1) = ((cx - cell / 2.0).max(0.0) as usize, ((cx + cell / 2.0) as usize).min(size));
        let (y0, y1) = ((cy - cell / 2.0).max(0.0) as usize, ((cy + cell / 2.0) as usize).min(size));
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                let (u, v) = ((dx * ca + dy * sa) / rx, (-dx * sa + dy * ca) / ry);
                let r = u.hypot(v);
                let edge = 1.0 + wave * (5.0 * v.atan2(u) + phase).sin();
                let inside = r < edge && !(hole && r < 0.45 * edge && !(island && r < 0.15));
                if inside {
                    m[y * size + x] = 1;
                }
            }
        }
    }
    m
}

/// Writes `mask` (0/1) as a DEFLATE GeoTIFF on [`GEOTRANSFORM`] in EPSG:32631.
pub fn write_mask_geotiff(path: &Path, size: usize, mask: Vec<u8>) -> Result<()> {
    crate::gdal_init();
    let err = |e: gdal::errors::GdalError| EngineError::Write { path: path.to_owned(), reason: gdal_reason(&e) };
    let driver = DriverManager::get_driver_by_name("GTiff").map_err(err)?;
    let options = RasterCreationOptions::from_iter(["COMPRESS=DEFLATE", "TILED=YES"]);
    let mut ds = driver.create_with_band_type_with_options::<u8, _>(path, size, size, 1, &options).map_err(err)?;
    ds.set_geo_transform(&GEOTRANSFORM).map_err(err)?;
    ds.set_spatial_ref(&SpatialRef::from_epsg(32631).map_err(err)?).map_err(err)?;
    let mut band = ds.rasterband(1).map_err(err)?;
    band.write((0, 0), (size, size), &mut Buffer::new((size, size), mask)).map_err(err)?;
    ds.close().map_err(err)
}
