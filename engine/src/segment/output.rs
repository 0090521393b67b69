//! Writing masks: PNG (0/255), or a GeoTIFF georeferenced like the raster window
//! the mask was made on. Writes go to a temporary file renamed into place, so a
//! failed write never leaves half a file or clobbers the previous one.

use std::path::{Path, PathBuf};

use gdal::raster::{Buffer, RasterCreationOptions};
use gdal::spatial_ref::SpatialRef;

use super::Mask;
use crate::error::{EngineError, Result};
use crate::raster::gdal_reason;

/// Where a mask sits in a raster's map coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Georef {
    pub geotransform: [f64; 6],
    pub crs_wkt: Option<String>,
}

impl Georef {
    /// The georeferencing of a mask of `mask_size` pixels made on `window` of a
    /// raster with `raster_gt`: shifted to the window, scaled if it was read decimated.
    pub fn for_window(
        raster_gt: [f64; 6],
        crs_wkt: Option<String>,
        window: crate::tiles::Window,
        mask_size: (usize, usize),
    ) -> Self {
        let g = raster_gt;
        let (x, y) = (window.x as f64, window.y as f64);
        let sx = window.width as f64 / mask_size.0 as f64;
        let sy = window.height as f64 / mask_size.1 as f64;
        Self {
            geotransform: [
                g[0] + x * g[1] + y * g[2],
                g[1] * sx,
                g[2] * sy,
                g[3] + x * g[4] + y * g[5],
                g[4] * sx,
                g[5] * sy,
            ],
            crs_wkt,
        }
    }
}

fn temp_beside(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| EngineError::Write { path: path.to_owned(), reason: "not a file name".into() })?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

/// True for `.tif`/`.tiff` paths.
pub fn is_geotiff(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"))
}

/// Writes `mask` as 0/255: a GeoTIFF (DEFLATE) for `.tif`/`.tiff` paths —
/// georeferenced when `georef` is given — a PNG otherwise.
pub fn write_mask(path: &Path, mask: &Mask, georef: Option<&Georef>) -> Result<()> {
    let tmp = temp_beside(path)?;
    let err = |reason: String| EngineError::Write { path: path.to_owned(), reason };
    let bytes: Vec<u8> = mask.data.iter().map(|&v| if v { 255 } else { 0 }).collect();
    let result = if is_geotiff(path) {
        write_geotiff(&tmp, mask.width, mask.height, bytes, georef).map_err(|e| err(gdal_reason(&e)))
    } else {
        image::save_buffer_with_format(
            &tmp,
            &bytes,
            mask.width as u32,
            mask.height as u32,
            image::ExtendedColorType::L8,
            image::ImageFormat::Png,
        )
        .map_err(|e| err(e.to_string()))
    };
    let result = result.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| err(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_geotiff(path: &Path, w: usize, h: usize, bytes: Vec<u8>, georef: Option<&Georef>) -> gdal::errors::Result<()> {
    crate::gdal_init();
    let driver = gdal::DriverManager::get_driver_by_name("GTiff")?;
    let options = RasterCreationOptions::from_iter(["COMPRESS=DEFLATE", "TILED=YES"]);
    let mut ds = driver.create_with_band_type_with_options::<u8, _>(path, w, h, 1, &options)?;
    if let Some(g) = georef {
        ds.set_geo_transform(&g.geotransform)?;
        if let Some(wkt) = &g.crs_wkt {
            ds.set_spatial_ref(&SpatialRef::from_wkt(wkt)?)?;
        }
    }
    let mut band = ds.rasterband(1)?;
    band.write((0, 0), (w, h), &mut Buffer::new((w, h), bytes))?;
    ds.close()
}
