//! Headless subcommands: `info`, `render`, `overviews` (and the definitions of all).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use engine::base::Window;
use engine::raster::{Raster, RasterInfo, RenderParams, Stretch};

use super::args::{parse_bands, parse_size, parse_window};

#[derive(Debug, Args)]
pub struct InfoArgs {
    pub file: PathBuf,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    pub file: PathBuf,
    /// Output PNG (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Source window in full-resolution pixels: x,y,width,height (default: whole raster).
    #[arg(long)]
    pub window: Option<String>,
    /// Output size WIDTHxHEIGHT (default: the window's size).
    #[arg(long)]
    pub size: Option<String>,
    /// Bands, 1-based: r,g,b or a single band for grey (default: the raster's colour bands).
    #[arg(long)]
    pub bands: Option<String>,
    /// none | minmax | percentile (2–98 %). Default: none for 8-bit, percentile otherwise.
    #[arg(long)]
    pub stretch: Option<Stretch>,
}

#[derive(Debug, Args)]
pub struct OverviewArgs {
    pub file: PathBuf,
    /// Resampling: nearest, average, bilinear, cubic, mode …
    #[arg(long, default_value = "average")]
    pub resampling: String,
}

/// Opens a raster and checks that its pixels can be read, so `info` also catches
/// truncated files whose header is intact.
fn open_checked(path: &Path) -> anyhow::Result<Raster> {
    let raster = Raster::open(path)?;
    for b in 1..=raster.info().bands {
        raster.band_sample(b)?;
    }
    Ok(raster)
}

pub fn info(args: &InfoArgs) -> anyhow::Result<()> {
    let raster = open_checked(&args.file)?;
    let info = raster.info();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, info)?;
        writeln!(out)?;
    } else {
        write_info_text(&mut out, info)?;
    }
    Ok(())
}

fn write_info_text(out: &mut impl Write, info: &RasterInfo) -> std::io::Result<()> {
    writeln!(out, "File:       {}", info.path.display())?;
    writeln!(out, "Driver:     {}", info.driver)?;
    writeln!(out, "Size:       {} x {} px, {} band(s)", info.width, info.height, info.bands)?;
    for b in 0..info.bands {
        let nodata = info.nodata[b].map(|v| format!(", nodata {v}")).unwrap_or_default();
        writeln!(out, "Band {}:     {} {}{nodata}", b + 1, info.dtypes[b], info.color_interp[b])?;
    }
    writeln!(out, "CRS:        {}", info.crs_name.as_deref().unwrap_or("none"))?;
    writeln!(out, "EPSG:       {}", info.epsg.map_or_else(|| "unknown".into(), |c| c.to_string()))?;
    match info.geotransform {
        Some(gt) => writeln!(out, "Transform:  {gt:?}")?,
        None => writeln!(out, "Transform:  none (not georeferenced)")?,
    }
    let ovr: Vec<String> = info.overviews.iter().map(|(w, h)| format!("{w}x{h}")).collect();
    writeln!(out, "Overviews:  {}", if ovr.is_empty() { "none".into() } else { ovr.join(", ") })?;
    Ok(())
}

pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let raster = Raster::open(&args.file)?;
    let info = raster.info();
    let window = match &args.window {
        Some(w) => parse_window(w)?,
        None => Window::full(info.width, info.height),
    };
    let size = match &args.size {
        Some(s) => parse_size(s)?,
        None => (
            u32::try_from(window.width).context("window too wide to render at full size; pass --size")?,
            u32::try_from(window.height).context("window too tall to render at full size; pass --size")?,
        ),
    };
    let mut params = RenderParams::default_for(info);
    if let Some(b) = &args.bands {
        params.bands = parse_bands(b)?;
    }
    if let Some(s) = args.stretch {
        params.stretch = s;
    }
    let img = raster.render_window(window, size, &params)?;
    crate::png::write_png_atomic(&args.out, &img)
}

pub fn overviews(args: &OverviewArgs) -> anyhow::Result<()> {
    let raster = Raster::open(&args.file)?;
    let factors = engine::overviews::default_factors(raster.info().width, raster.info().height);
    drop(raster);
    if factors.is_empty() {
        println!("{}: small enough to need no overviews", args.file.display());
        return Ok(());
    }
    let mut last = 0;
    engine::overviews::build_overviews(&args.file, &factors, &args.resampling.to_uppercase(), |f| {
        let pct = (f * 100.0) as u32;
        if pct >= last + 10 {
            last = pct;
            eprint!("{pct}% ");
        }
        true
    })?;
    eprintln!();
    println!(
        "{}: wrote {} ({} levels)",
        args.file.display(),
        engine::overviews::ovr_path(&args.file).display(),
        factors.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::raster::BandMapping;

    #[test]
    fn argument_parsers() {
        assert_eq!(parse_window("1,2,30,40").unwrap(), Window { x: 1, y: 2, width: 30, height: 40 });
        assert!(parse_window("1,2,3").is_err());
        assert!(parse_window("a,b,c,d").is_err());
        assert_eq!(parse_size("256x128").unwrap(), (256, 128));
        assert!(parse_size("0x10").is_err());
        assert_eq!(parse_bands("3,2,1").unwrap(), BandMapping::Rgb([3, 2, 1]));
        assert_eq!(parse_bands("4").unwrap(), BandMapping::Grey(4));
        assert!(parse_bands("1,2").is_err());
    }
}
