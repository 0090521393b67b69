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
