//! Where a raster comes from, and how GDAL is handed its name.
//!
//! - Paths reach GDAL byte for byte (the `gdal` crate converts them lossily,
//!   so a Latin-1 file name from an old share became "No such file"): [`open`],
//!   [`create_vector`], [`create_u8`].
//! - URLs are read through GDAL's virtual file systems: `http(s)://` →
//!   `/vsicurl/`, `s3://` → `/vsis3/`, `gs://` → `/vsigs/`, `az://` →
//!   `/vsiaz/`; `/vsi…/` names pass as they are. Nothing is checked locally.
//! - A STAC item (`.json` path or URL) opens one of its assets: `ITEM#NAME`
//!   picks asset NAME, otherwise the `visual` asset or the first GeoTIFF.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use gdal::{Dataset, Driver, GdalOpenFlags};

use crate::error::{EngineError, Result};

/// The bytes GDAL takes for `path`.
pub fn c_path(path: &Path) -> gdal::errors::Result<CString> {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    Ok(CString::new(bytes)?)
}

fn last_gdal_error(method: &'static str) -> gdal::errors::GdalError {
    // SAFETY: CPLGetLastErrorMsg returns a valid NUL-terminated string owned by GDAL (thread-local).
    let msg = unsafe { std::ffi::CStr::from_ptr(gdal_sys::CPLGetLastErrorMsg()) }.to_string_lossy().into_owned();
    gdal::errors::GdalError::NullPointer { method_name: method, msg }
}

/// Opens `path` (byte-exact) with `flags`.
pub fn open(path: &Path, flags: &GdalOpenFlags) -> gdal::errors::Result<Dataset> {
    crate::gdal_init();
    let c = c_path(path)?;
    // SAFETY: `c` is a valid C string for the call; null lists are allowed by GDALOpenEx.
    let h =
        unsafe { gdal_sys::GDALOpenEx(c.as_ptr(), flags.bits(), std::ptr::null(), std::ptr::null(), std::ptr::null()) };
    if h.is_null() {
        return Err(last_gdal_error("GDALOpenEx"));
    }
    // SAFETY: a non-null handle from GDALOpenEx, owned by the Dataset from here on.
    Ok(unsafe { Dataset::from_c_dataset(h) })
}

/// Creates a vector dataset at `path` (byte-exact) with `driver`.
pub fn create_vector(driver: &Driver, path: &Path) -> gdal::errors::Result<Dataset> {
    let c = c_path(path)?;
    // SAFETY: valid driver handle and C string; 0×0×0 of GDT_Unknown is GDAL's "vector only".
    let h = unsafe {
        gdal_sys::GDALCreate(
            driver.c_driver(),
            c.as_ptr(),
            0,
            0,
            0,
            gdal_sys::GDALDataType::GDT_Unknown,
            std::ptr::null_mut(),
        )
    };
    if h.is_null() {
        return Err(last_gdal_error("GDALCreate"));
    }
    // SAFETY: a non-null handle from GDALCreate, owned by the Dataset from here on.
    Ok(unsafe { Dataset::from_c_dataset(h) })
}

/// Creates a `u8` raster of `w`×`h`×`bands` at `path` (byte-exact) with creation `options`.
pub fn create_u8(
    driver: &Driver,
    path: &Path,
    (w, h, bands): (usize, usize, usize),
    options: &gdal::raster::RasterCreationOptions,
) -> gdal::errors::Result<Dataset> {
    let c = c_path(path)?;
    let dim =
        |n: usize| i32::try_from(n).map_err(|e| gdal::errors::GdalError::BadArgument(format!("raster size {n}: {e}")));
    let (cw, ch, cb) = (dim(w)?, dim(h)?, dim(bands)?);
    // SAFETY: valid driver handle, C string and option list (GDAL copies what it keeps).
    let handle = unsafe {
        gdal_sys::GDALCreate(
            driver.c_driver(),
            c.as_ptr(),
            cw,
            ch,
            cb,
            gdal_sys::GDALDataType::GDT_Byte,
            options.as_ptr(),
        )
    };
    if handle.is_null() {
        return Err(last_gdal_error("GDALCreate"));
    }
    // SAFETY: a non-null handle from GDALCreate, owned by the Dataset from here on.
    Ok(unsafe { Dataset::from_c_dataset(handle) })
}

/// True for names GDAL reads over the network or through a virtual file system.
pub fn is_remote(path: &Path) -> bool {
    let s = path.as_os_str().as_encoded_bytes();
    s.starts_with(b"/vsi") || s.windows(3).any(|w| w == b"://")
}

/// True for anything [`super::Raster::open`] reads over the network or
/// through a STAC item: the engine opens those on a thread of their own.
pub fn is_remote_or_stac(path: &Path) -> bool {
    is_remote(path) || is_stac(path)
}

/// The GDAL name of a URL: `https://h/x.tif` → `/vsicurl/https://h/x.tif`,
/// `s3://b/k` → `/vsis3/b/k`; anything else unchanged.
///
/// ```
/// use std::path::Path;
/// use engine::raster::source::gdal_name;
/// assert_eq!(gdal_name(Path::new("https://h/a.tif")), Path::new("/vsicurl/https://h/a.tif"));
/// assert_eq!(gdal_name(Path::new("s3://bucket/a.tif")), Path::new("/vsis3/bucket/a.tif"));
/// assert_eq!(gdal_name(Path::new("/vsicurl/http://h/a.tif")), Path::new("/vsicurl/http://h/a.tif"));
/// assert_eq!(gdal_name(Path::new("data/a.tif")), Path::new("data/a.tif"));
/// ```
pub fn gdal_name(path: &Path) -> PathBuf {
    let Some(s) = path.to_str() else { return path.to_owned() };
    for (scheme, vsi) in [("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")] {
        if let Some(rest) = s.strip_prefix(scheme) {
            return PathBuf::from(format!("{vsi}{rest}"));
        }
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        return PathBuf::from(format!("/vsicurl/{s}"));
    }
    path.to_owned()
}

/// True when `path` names a STAC item (a `.json` file or URL, optionally `#asset`).
pub fn is_stac(path: &Path) -> bool {
    let Some(s) = path.to_str() else { return false };
    let base = s.split_once('#').map_or(s, |(b, _)| b);
    let base = base.split_once('?').map_or(base, |(b, _)| b);
    base.to_ascii_lowercase().ends_with(".json")
}

/// One asset of a STAC item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacAsset {
    pub name: String,
    pub href: String,
    pub media_type: Option<String>,
}

/// The raster assets of a STAC item, `visual` first, then GeoTIFFs, in the item's order.
pub fn stac_assets(item: &serde_json::Value) -> Vec<StacAsset> {
    let Some(assets) = item.get("assets").and_then(|a| a.as_object()) else { return Vec::new() };
    let mut out: Vec<StacAsset> = assets
        .iter()
        .filter_map(|(name, a)| {
            let href = a.get("href")?.as_str()?.to_owned();
            let media_type = a.get("type").and_then(|t| t.as_str()).map(str::to_owned);
            let raster = media_type.as_deref().is_some_and(|t| t.starts_with("image/tiff") || t.contains("geotiff"))
                || media_type.is_none() && [".tif", ".tiff"].iter().any(|e| href.to_ascii_lowercase().ends_with(e));
            raster.then(|| StacAsset { name: name.clone(), href, media_type })
        })
        .collect();
    out.sort_by_key(|a| a.name != "visual");
    out
}

/// Resolves an asset's `href` against the item's location (a URL or a file).
fn resolve_href(item: &str, href: &str) -> String {
    if href.contains("://") || href.starts_with('/') {
        return href.to_owned();
    }
    match item.rfind('/') {
        Some(i) => format!("{}{}", &item[..=i], href.trim_start_matches("./")),
        None => href.to_owned(),
    }
}

/// The raster a STAC item `ITEM[#asset]` points at (its GDAL name), reading
/// the item from a file or over HTTP(S).
pub fn stac_raster(path: &Path) -> Result<PathBuf> {
    let s = path.to_str().ok_or_else(|| EngineError::NotFound { path: path.to_owned() })?;
    let (item_ref, wanted) = s.split_once('#').map_or((s, None), |(i, a)| (i, Some(a)));
    let bad = |reason: String| EngineError::NotARaster { path: path.to_owned(), reason };
    let text = if item_ref.starts_with("http://") || item_ref.starts_with("https://") {
        let resp = ureq::get(item_ref)
            .timeout(std::time::Duration::from_secs(30))
            .call()
            .map_err(|e| bad(format!("cannot fetch the STAC item: {e}")))?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(resp.into_reader(), 16 << 20), &mut body)
            .map_err(|e| bad(format!("cannot read the STAC item: {e}")))?;
        body
    } else {
        std::fs::read_to_string(item_ref).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EngineError::NotFound { path: path.to_owned() },
            _ => bad(e.to_string()),
        })?
    };
    let item: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not a STAC item: {e}")))?;
    let assets = stac_assets(&item);
    let names = || assets.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ");
    let asset = match wanted {
        Some(name) => assets
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| bad(format!("the STAC item has no raster asset {name:?} (it has: {})", names())))?,
        None => assets.first().ok_or_else(|| bad("the STAC item has no GeoTIFF asset".into()))?,
    };
    Ok(gdal_name(Path::new(&resolve_href(item_ref, &asset.href))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stac_assets_prefer_visual_and_resolve_relative_hrefs() {
        let item = serde_json::json!({"type": "Feature", "assets": {
            "thumbnail": {"href": "t.png", "type": "image/png"},
            "B04": {"href": "./B04.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized"},
            "visual": {"href": "https://h/v.tif", "type": "image/tiff; application=geotiff"},
            "meta": {"href": "m.xml"}
        }});
        let a = stac_assets(&item);
        assert_eq!(a.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["visual", "B04"]);
        assert_eq!(resolve_href("https://h/items/x.json", "./B04.tif"), "https://h/items/B04.tif");
        assert_eq!(resolve_href("/data/x.json", "B04.tif"), "/data/B04.tif");
        assert_eq!(resolve_href("x.json", "B04.tif"), "B04.tif");
        assert!(is_stac(Path::new("https://h/x.json#B04")) && !is_stac(Path::new("a.tif")));
        assert!(is_remote(Path::new("/vsis3/b/k")) && is_remote(Path::new("https://h/a.tif")));
        assert!(!is_remote(Path::new("/data/a.tif")));
    }
}
