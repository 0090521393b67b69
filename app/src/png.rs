//! PNG files written whole or not at all (the CLI's `render`, the GUI's
//! `--screenshot`).

use std::path::Path;

use anyhow::Context;

/// Writes RGB when every pixel is opaque (as `gdal_translate` would), RGBA otherwise;
/// through a temporary file renamed into place, so a failure never leaves half a PNG.
pub fn write_png_atomic(path: &Path, img: &engine::raster::RgbaImage) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        if img.is_opaque() {
            let rgb: Vec<u8> = img.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            image::save_buffer_with_format(
                &tmp,
                &rgb,
                img.width,
                img.height,
                image::ExtendedColorType::Rgb8,
                image::ImageFormat::Png,
            )?;
        } else {
            image::save_buffer_with_format(
                &tmp,
                &img.rgba,
                img.width,
                img.height,
                image::ExtendedColorType::Rgba8,
                image::ImageFormat::Png,
            )?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("{}: cannot write PNG", path.display()))
}
