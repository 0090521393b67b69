//! Rasters through GDAL: open, describe, and read windows at any overview level
//! into display RGBA (band mapping, contrast stretch, nodata/alpha transparency).

pub mod reader;
pub mod source;
pub mod stretch;

use std::cell::{OnceCell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gdal::raster::{ColorInterpretation, GdalDataType, RasterBand, ResampleAlg};
use gdal::{Dataset, GdalOpenFlags};
use serde::{Deserialize, Serialize};

use crate::base::Window;
use crate::error::{EngineError, Result};
use crate::geo::GeoTransform;
use crate::tiles::{Pyramid, Tile, TileKey};
pub use stretch::{BandSample, LinearMap, Stretch};

/// Longest side of the decimated read that stretch statistics are computed from.
const SAMPLE_EXTENT: usize = 512;

/// Everything the app shows about a raster, and what `info --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RasterInfo {
    #[serde(with = "crate::path_serde")]
    pub path: PathBuf,
    pub driver: String,
    pub width: u64,
    pub height: u64,
    /// Number of bands.
    pub bands: usize,
    /// GDAL data type name per band ("Byte", "UInt16", "Float64", …).
    pub dtypes: Vec<String>,
    /// Nodata value per band, if any.
    pub nodata: Vec<Option<f64>>,
    /// GDAL colour interpretation per band ("Red", "Gray", "Alpha", "Undefined", …).
    pub color_interp: Vec<String>,
    pub crs_wkt: Option<String>,
    pub epsg: Option<u32>,
    /// Human name of the CRS, e.g. "WGS 84 / UTM zone 31N".
    pub crs_name: Option<String>,
    /// True when the CRS is geographic (coordinates in degrees).
    pub crs_geographic: bool,
    /// GDAL-order geotransform; `None` when the raster is not georeferenced.
    pub geotransform: Option<[f64; 6]>,
    /// Overview sizes (width, height) of band 1, finest first.
    pub overviews: Vec<(u64, u64)>,
    pub block_size: (usize, usize),
}

impl RasterInfo {
    /// The geotransform, or pixel coordinates when there is none.
    pub fn transform(&self) -> GeoTransform {
        self.geotransform.map(GeoTransform).unwrap_or_default()
    }

    pub fn pyramid(&self) -> Pyramid {
        Pyramid::new(self.width, self.height)
    }

    /// 1-based index of the band GDAL labels as alpha, if any.
    pub fn alpha_band(&self) -> Option<usize> {
        self.color_interp.iter().position(|c| c == "Alpha").map(|i| i + 1)
    }

    /// "EPSG:32631" when known, the CRS name otherwise, "no CRS" without one.
    pub fn crs_label(&self) -> String {
        match (self.epsg, &self.crs_name) {
            (Some(code), _) => format!("EPSG:{code}"),
            (None, Some(name)) => name.clone(),
            (None, None) => "no CRS".to_owned(),
        }
    }
}

/// Which bands feed the display channels (1-based band numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BandMapping {
    Grey(usize),
    Rgb([usize; 3]),
}

impl BandMapping {
    /// Bands labelled red/green/blue if present, else the first three non-alpha
    /// bands, else band 1 as grey.
    pub fn default_for(info: &RasterInfo) -> Self {
        let find = |name: &str| info.color_interp.iter().position(|c| c == name).map(|i| i + 1);
        if let (Some(r), Some(g), Some(b)) = (find("Red"), find("Green"), find("Blue")) {
            return Self::Rgb([r, g, b]);
        }
        let colour: Vec<usize> = (1..=info.bands).filter(|b| Some(*b) != info.alpha_band()).collect();
        match colour.as_slice() {
            [r, g, b, ..] => Self::Rgb([*r, *g, *b]),
            [grey, ..] => Self::Grey(*grey),
            [] => Self::Grey(1),
        }
    }

    /// The bands read, in display-channel order.
    pub fn bands(&self) -> Vec<usize> {
        match *self {
            Self::Grey(b) => vec![b],
            Self::Rgb(rgb) => rgb.to_vec(),
        }
    }
}

/// How a window is turned into display pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderParams {
    pub bands: BandMapping,
    pub stretch: Stretch,
}

impl RenderParams {
    /// Default mapping, and a stretch suited to the data type.
    pub fn default_for(info: &RasterInfo) -> Self {
        let bands = BandMapping::default_for(info);
        let all_byte = bands.bands().iter().all(|b| info.dtypes.get(b - 1).is_some_and(|t| t == "Byte"));
        Self { bands, stretch: Stretch::default_for(all_byte) }
    }

    /// A stable hash, to key cached tiles by the parameters they were made with.
    pub fn cache_hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.bands.hash(&mut h);
        match self.stretch {
            Stretch::None => 0u8.hash(&mut h),
            Stretch::MinMax => 1u8.hash(&mut h),
            Stretch::Percentile { lo, hi } => {
                2u8.hash(&mut h);
                lo.to_bits().hash(&mut h);
                hi.to_bits().hash(&mut h);
            }
        }
        h.finish()
    }
}

/// A rendered RGBA8 image (straight alpha, row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl RgbaImage {
    /// True when every pixel is fully opaque.
    pub fn is_opaque(&self) -> bool {
        self.rgba.chunks_exact(4).all(|p| p[3] == 255)
    }
}

/// One band's pixels in the narrowest type that holds them.
enum Plane {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F64(Vec<f64>),
}

impl Plane {
    fn get(&self, i: usize) -> f64 {
        match self {
            Self::U8(v) => f64::from(v[i]),
            Self::U16(v) => f64::from(v[i]),
            Self::F64(v) => v[i],
        }
    }
}

/// An open raster. Owns its GDAL dataset, so it lives on one thread at a time
/// (GDAL 3.6 datasets are `Send`, not `Sync`).
#[derive(Debug)]
pub struct Raster {
    ds: Dataset,
    info: RasterInfo,
    /// Per band, the stretch sample, computed on first use.
    samples: Vec<OnceCell<BandSample>>,
    /// Lookup tables of recent stretches: a 16-bit table is as large as a tile,
    /// so it is built once per stretch, not once per tile.
    luts: RefCell<Vec<(LinearMap, Arc<[u8]>)>>,
}

impl Raster {
    /// Opens a raster read-only, with errors that name the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        crate::gdal_init();
        let path = path.as_ref();
        // A STAC item opens its asset; URLs go through GDAL's virtual file systems.
        let gdal_path = if source::is_stac(path) { source::stac_raster(path)? } else { source::gdal_name(path) };
        if !source::is_remote(&gdal_path) {
            match std::fs::metadata(&gdal_path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(EngineError::NotFound { path: path.to_owned() });
                }
                Err(e) => return Err(EngineError::NotARaster { path: path.to_owned(), reason: e.to_string() }),
                Ok(m) if m.is_file() && m.len() == 0 => {
                    return Err(EngineError::NotARaster { path: path.to_owned(), reason: "empty file".into() });
                }
                Ok(_) => {}
            }
        }
        let flags =
            GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR;
        let ds = source::open(&gdal_path, &flags)
            .map_err(|e| EngineError::NotARaster { path: path.to_owned(), reason: gdal_reason(&e) })?;
        let info = describe(&ds, path)?;
        let samples = (0..info.bands).map(|_| OnceCell::new()).collect();
        Ok(Self { ds, info, samples, luts: RefCell::default() })
    }

    pub fn info(&self) -> &RasterInfo {
        &self.info
    }

    /// The display bytes of integer values `0..len` under `map`, cached.
    fn lut(&self, map: LinearMap, len: usize) -> Arc<[u8]> {
        const KEEP: usize = 8;
        let mut luts = self.luts.borrow_mut();
        if let Some((_, lut)) = luts.iter().find(|(m, lut)| *m == map && lut.len() == len) {
            return lut.clone();
        }
        let lut: Arc<[u8]> = (0..len).map(|x| map.apply(x as f64)).collect();
        if luts.len() == KEEP {
            luts.remove(0);
        }
        luts.push((map, lut.clone()));
        lut
    }

    pub fn path(&self) -> &Path {
        &self.info.path
    }

    fn band(&self, index: usize) -> Result<RasterBand<'_>> {
        if index == 0 || index > self.info.bands {
            return Err(EngineError::InvalidRequest(format!(
                "band {index} does not exist ({} has {} band{})",
                self.info.path.display(),
                self.info.bands,
                if self.info.bands == 1 { "" } else { "s" }
            )));
        }
        self.ds.rasterband(index).map_err(|e| self.read_error(&e))
    }

    fn read_error(&self, e: &gdal::errors::GdalError) -> EngineError {
        EngineError::Read { path: self.info.path.clone(), reason: gdal_reason(e) }
    }

    /// The stretch sample of a band: a decimated read of the whole band (GDAL takes
    /// it from the best overview when there is one), without nodata and NaN.
    pub fn band_sample(&self, index: usize) -> Result<&BandSample> {
        let cell = self
            .samples
            .get(index.wrapping_sub(1))
            .ok_or_else(|| EngineError::InvalidRequest(format!("band {index} does not exist")))?;
        if let Some(s) = cell.get() {
            return Ok(s);
        }
        let band = self.band(index)?;
        let (w, h) = (self.info.width as usize, self.info.height as usize);
        let f = (w.max(h) as f64 / SAMPLE_EXTENT as f64).max(1.0);
        let out = (((w as f64 / f).round() as usize).max(1), ((h as f64 / f).round() as usize).max(1));
        let buf = band
            .read_as::<f64>((0, 0), (w, h), out, Some(ResampleAlg::NearestNeighbour))
            .map_err(|e| self.read_error(&e))?;
        let sample = BandSample::new(buf.data().to_vec(), self.info.nodata[index - 1]);
        Ok(cell.get_or_init(|| sample))
    }

    /// Reads `window` (full-resolution pixels) resampled to `out` pixels and turns it
    /// into display RGBA. This is the one path every tile, the viewer and the CLI's
    /// `render` go through. Downsampled reads use GDAL overviews when present and a
    /// nearest-neighbour decimated read otherwise.
    pub fn render_window(&self, window: Window, out: (u32, u32), params: &RenderParams) -> Result<RgbaImage> {
        if !window.fits(self.info.width, self.info.height) {
            return Err(EngineError::InvalidRequest(format!(
                "window {},{},{},{} lies outside the {}×{} raster {}",
                window.x,
                window.y,
                window.width,
                window.height,
                self.info.width,
                self.info.height,
                self.info.path.display()
            )));
        }
        if out.0 == 0 || out.1 == 0 || u64::from(out.0) * u64::from(out.1) > 1 << 28 {
            return Err(EngineError::InvalidRequest(format!("output size {}×{} is not usable", out.0, out.1)));
        }
        let (ow, oh) = (out.0 as usize, out.1 as usize);
        let n = ow * oh;
        let bands = params.bands.bands();
        for &b in &bands {
            self.band(b)?; // names the raster and its band count when `b` is out of range
        }
        let mut channels: Vec<Vec<u8>> = Vec::with_capacity(bands.len());
        // Per pixel: every mapped band holds its nodata value (only if all have one).
        let mut all_nodata: Option<Vec<bool>> =
            bands.iter().all(|b| self.info.nodata[b - 1].is_some()).then(|| vec![true; n]);
        let mut nan: Option<Vec<bool>> = None;
        for &b in &bands {
            let map = match params.stretch {
                Stretch::None => LinearMap::identity(),
                s => {
                    let (lo, hi) = s.range(self.band_sample(b)?);
                    LinearMap::new(lo, hi)
                }
            };
            let plane = self.read_plane(b, window, (ow, oh))?;
            let nodata = self.info.nodata[b - 1];
            if let (Some(mask), Some(nd)) = (all_nodata.as_mut(), nodata) {
                for (i, m) in mask.iter_mut().enumerate() {
                    *m &= plane.get(i) == nd;
                }
            }
            let display = match plane {
                Plane::U8(v) if map == LinearMap::identity() => v,
                Plane::U8(v) => {
                    let lut = self.lut(map, 256);
                    v.iter().map(|&x| lut[usize::from(x)]).collect()
                }
                Plane::U16(v) => {
                    let lut = self.lut(map, 1 << 16);
                    v.iter().map(|&x| lut[usize::from(x)]).collect()
                }
                Plane::F64(v) => {
                    if v.iter().any(|x| x.is_nan()) {
                        let mask = nan.get_or_insert_with(|| vec![false; n]);
                        for (m, x) in mask.iter_mut().zip(&v) {
                            *m |= x.is_nan();
                        }
                    }
                    v.iter().map(|&x| map.apply(x)).collect()
                }
            };
            channels.push(display);
        }
        let alpha = self.read_alpha(window, (ow, oh), &bands)?;

        // One straight pass per concern, so each loop is simple enough to vectorise.
        let mut rgba = vec![255u8; n * 4];
        match channels.as_slice() {
            [g] => {
                for (px, &v) in rgba.chunks_exact_mut(4).zip(g) {
                    px[..3].fill(v);
                }
            }
            [r, g, b] => {
                for (((px, &r), &g), &b) in rgba.chunks_exact_mut(4).zip(r).zip(g).zip(b) {
                    px[..3].copy_from_slice(&[r, g, b]);
                }
            }
            other => return Err(EngineError::Internal(format!("{} display channels", other.len()))),
        }
        if let Some(alpha) = &alpha {
            for (px, &a) in rgba.chunks_exact_mut(4).zip(alpha) {
                px[3] = a;
            }
        }
        for mask in [&all_nodata, &nan].into_iter().flatten() {
            for (px, &transparent) in rgba.chunks_exact_mut(4).zip(mask) {
                if transparent {
                    px[3] = 0;
                }
            }
        }
        Ok(RgbaImage { width: out.0, height: out.1, rgba })
    }

    /// Reads one band's window in its own type where that allows a lookup table.
    fn read_plane(&self, b: usize, window: Window, out: (usize, usize)) -> Result<Plane> {
        let band = self.band(b)?;
        let win = ((window.x as isize, window.y as isize), (window.width as usize, window.height as usize));
        let nearest = Some(ResampleAlg::NearestNeighbour);
        let err = |e: gdal::errors::GdalError| self.read_error(&e);
        Ok(match band.band_type() {
            GdalDataType::UInt8 => {
                Plane::U8(band.read_as::<u8>(win.0, win.1, out, nearest).map_err(err)?.into_shape_and_vec().1)
            }
            GdalDataType::UInt16 => {
                Plane::U16(band.read_as::<u16>(win.0, win.1, out, nearest).map_err(err)?.into_shape_and_vec().1)
            }
            _ => Plane::F64(band.read_as::<f64>(win.0, win.1, out, nearest).map_err(err)?.into_shape_and_vec().1),
        })
    }

    /// Alpha from an alpha band or a per-dataset mask, when the raster has one.
    fn read_alpha(&self, window: Window, out: (usize, usize), mapped: &[usize]) -> Result<Option<Vec<u8>>> {
        let win = ((window.x as isize, window.y as isize), (window.width as usize, window.height as usize));
        if let Some(a) = self.info.alpha_band().filter(|a| !mapped.contains(a)) {
            let band = self.band(a)?;
            let is_byte = band.band_type() == GdalDataType::UInt8;
            let buf = band
                .read_as::<f64>(win.0, win.1, out, Some(ResampleAlg::NearestNeighbour))
                .map_err(|e| self.read_error(&e))?;
            let data = buf.into_shape_and_vec().1;
            return Ok(Some(
                data.into_iter()
                    .map(|v| {
                        if is_byte {
                            v as u8
                        } else if v > 0.0 {
                            255
                        } else {
                            0
                        }
                    })
                    .collect(),
            ));
        }
        let band = self.band(mapped[0])?;
        let flags = band.mask_flags().map_err(|e| self.read_error(&e))?;
        if flags.is_per_dataset() && !flags.is_nodata() && !flags.is_all_valid() {
            let mask = band.open_mask_band().map_err(|e| self.read_error(&e))?;
            let buf = mask
                .read_as::<u8>(win.0, win.1, out, Some(ResampleAlg::NearestNeighbour))
                .map_err(|e| self.read_error(&e))?;
            return Ok(Some(buf.into_shape_and_vec().1));
        }
        Ok(None)
    }

    /// Renders one tile of the pyramid.
    pub fn render_tile(&self, key: TileKey, params: &RenderParams) -> Result<Tile> {
        let (window, out) = self
            .info
            .pyramid()
            .tile_window(key)
            .ok_or_else(|| EngineError::InvalidRequest(format!("tile {key:?} is outside the raster")))?;
        let img = self.render_window(window, out, params)?;
        Ok(Tile { key, width: img.width, height: img.height, rgba: img.rgba })
    }
}

/// Reads the metadata of an open dataset.
fn describe(ds: &Dataset, path: &Path) -> Result<RasterInfo> {
    let not_raster = |reason: String| EngineError::NotARaster { path: path.to_owned(), reason };
    let bands = ds.raster_count();
    if bands == 0 {
        return Err(not_raster("it has no raster bands".into()));
    }
    let (width, height) = ds.raster_size();
    let mut dtypes = Vec::with_capacity(bands);
    let mut nodata = Vec::with_capacity(bands);
    let mut color_interp = Vec::with_capacity(bands);
    for b in 1..=bands {
        let band = ds.rasterband(b).map_err(|e| not_raster(gdal_reason(&e)))?;
        let t = band.band_type();
        // SAFETY: the band handle is valid for the lifetime of `band`.
        let type_name = unsafe {
            let ordinal = gdal_sys::GDALGetRasterDataType(band.c_rasterband());
            std::ffi::CStr::from_ptr(gdal_sys::GDALGetDataTypeName(ordinal)).to_string_lossy().into_owned()
        };
        if t == GdalDataType::Unknown {
            return Err(EngineError::Unsupported {
                path: path.to_owned(),
                reason: format!("band {b} has data type {type_name}, which cannot be displayed"),
            });
        }
        dtypes.push(type_name);
        nodata.push(band.no_data_value());
        color_interp.push(match band.color_interpretation() {
            ColorInterpretation::AlphaBand => "Alpha".to_owned(),
            c => c.name(),
        });
    }
    let band1 = ds.rasterband(1).map_err(|e| not_raster(gdal_reason(&e)))?;
    let mut overviews = Vec::new();
    for i in 0..band1.overview_count().unwrap_or(0).max(0) as usize {
        if let Ok(ov) = band1.overview(i) {
            let (w, h) = ov.size();
            overviews.push((w as u64, h as u64));
        }
    }
    let (crs_wkt, epsg, crs_name, crs_geographic) = match ds.spatial_ref() {
        Ok(srs) => {
            let epsg = match (srs.auth_name().as_deref(), srs.auth_code()) {
                (Some("EPSG"), Ok(code)) => u32::try_from(code).ok(),
                _ => {
                    let mut guess = srs.clone();
                    guess
                        .auto_identify_epsg()
                        .ok()
                        .and_then(|()| guess.auth_code().ok())
                        .and_then(|c| u32::try_from(c).ok())
                }
            };
            (srs.to_wkt().ok(), epsg, srs.name(), srs.is_geographic())
        }
        Err(_) => (None, None, None, false),
    };
    Ok(RasterInfo {
        path: path.to_owned(),
        driver: ds.driver().short_name(),
        width: width as u64,
        height: height as u64,
        bands,
        dtypes,
        nodata,
        color_interp,
        crs_wkt: crs_wkt.filter(|w| !w.is_empty()),
        epsg,
        crs_name,
        crs_geographic,
        geotransform: ds.geo_transform().ok(),
        overviews,
        block_size: band1.block_size(),
    })
}

/// GDAL's own message for an error, without the Rust wrapper's noise.
pub(crate) fn gdal_reason(e: &gdal::errors::GdalError) -> String {
    match e {
        gdal::errors::GdalError::CplError { msg, .. } | gdal::errors::GdalError::NullPointer { msg, .. }
            if !msg.is_empty() =>
        {
            msg.trim().to_owned()
        }
        gdal::errors::GdalError::NullPointer { .. } => "format not recognised".to_owned(),
        gdal::errors::GdalError::BadArgument(msg) => msg.clone(),
        gdal::errors::GdalError::FfiNulError(_) => "the name holds a NUL byte".to_owned(),
        other => other.to_string(),
    }
}
