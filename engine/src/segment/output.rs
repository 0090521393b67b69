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
        window: crate::base::Window,
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
    let mut ds = crate::raster::source::create_u8(&driver, path, (w, h, 1), &options)?;
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

/// A mask file read back: non-zero pixels (not nodata) are the object.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskFile {
    pub width: usize,
    pub height: usize,
    /// 1 = object, 0 = not, row-major.
    pub data: Vec<u8>,
    pub georef: Option<Georef>,
}

/// Reads band 1 of any raster GDAL opens as a mask (non-zero = object; the
/// band's nodata value counts as background).
pub fn read_mask(path: &Path) -> Result<MaskFile> {
    crate::gdal_init();
    if !path.exists() {
        return Err(EngineError::NotFound { path: path.to_owned() });
    }
    let not_raster =
        |e: gdal::errors::GdalError| EngineError::NotARaster { path: path.to_owned(), reason: gdal_reason(&e) };
    let flags = gdal::GdalOpenFlags::GDAL_OF_RASTER | gdal::GdalOpenFlags::GDAL_OF_READONLY;
    let ds = crate::raster::source::open(path, &flags).map_err(not_raster)?;
    if ds.raster_count() == 0 {
        return Err(EngineError::NotARaster { path: path.to_owned(), reason: "it has no raster band".into() });
    }
    let (width, height) = ds.raster_size();
    let band = ds.rasterband(1).map_err(not_raster)?;
    let nodata = band.no_data_value();
    let read_err = |e: gdal::errors::GdalError| EngineError::Read { path: path.to_owned(), reason: gdal_reason(&e) };
    let size = (width, height);
    // Masks are bytes; anything else is read as f64 (no 8× copy for the usual case).
    let data = if band.band_type() == gdal::raster::GdalDataType::UInt8 {
        let nodata = nodata.filter(|v| (0.0..=255.0).contains(v) && v.fract() == 0.0).map(|v| v as u8);
        let buf: Buffer<u8> = band.read_as((0, 0), size, size, None).map_err(read_err)?;
        buf.into_shape_and_vec().1.into_iter().map(|v| u8::from(v != 0 && Some(v) != nodata)).collect()
    } else {
        let buf: Buffer<f64> = band.read_as((0, 0), size, size, None).map_err(read_err)?;
        buf.data().iter().map(|&v| u8::from(v != 0.0 && Some(v) != nodata && !v.is_nan())).collect()
    };
    let georef = ds.geo_transform().ok().map(|gt| Georef {
        geotransform: gt,
        crs_wkt: ds.spatial_ref().ok().and_then(|s| s.to_wkt().ok()).filter(|w| !w.is_empty()),
    });
    Ok(MaskFile { width, height, data, georef })
}
