//! What the contour tests share: GDAL rasterising geometries back onto a grid.

use gdal::DriverManager;
use gdal::raster::Buffer;
use gdal::vector::Geometry;

/// GDAL rasterises `geoms` (map coordinates) on a `w`×`h` raster with geotransform
/// `gt`, pixel-centre rule; `true` where a geometry was burnt.
pub fn rasterize(w: usize, h: usize, gt: &[f64; 6], geoms: &[Geometry]) -> Vec<bool> {
    let driver = DriverManager::get_driver_by_name("MEM").unwrap();
    let mut ds = driver.create_with_band_type::<u8, _>("", w, h, 1).unwrap();
    ds.set_geo_transform(gt).unwrap();
    if !geoms.is_empty() {
        gdal::raster::rasterize(&mut ds, &[1], geoms, &vec![1.0; geoms.len()], None).unwrap();
    }
    let buf: Buffer<u8> = ds.rasterband(1).unwrap().read_as((0, 0), (w, h), (w, h), None).unwrap();
    buf.data().iter().map(|&v| v != 0).collect()
}
