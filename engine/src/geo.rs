//! Affine georeferencing: GDAL's six-term geotransform and its inverse.

use serde::{Deserialize, Serialize};

/// GDAL's affine geotransform, in GDAL order:
/// `x = gt[0] + col*gt[1] + row*gt[2]`, `y = gt[3] + col*gt[4] + row*gt[5]`,
/// where (col, row) are pixel coordinates of a pixel *corner* (0,0 = top-left corner).
///
/// Rotation terms (`gt[2]`, `gt[4]`) are honoured everywhere.
///
/// ```
/// use engine::geo::GeoTransform;
/// let gt = GeoTransform([500_000.0, 2.0, 0.0, 4_000_000.0, 0.0, -2.0]);
/// assert_eq!(gt.pixel_to_world(10.0, 5.0), (500_020.0, 3_999_990.0));
/// let (c, r) = gt.world_to_pixel(500_020.0, 3_999_990.0).unwrap();
/// assert!((c - 10.0).abs() < 1e-9 && (r - 5.0).abs() < 1e-9);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeoTransform(pub [f64; 6]);

impl GeoTransform {
    /// What GDAL reports for a raster without georeferencing: map units = pixels, y down.
    pub const IDENTITY: Self = Self([0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    /// Pixel (col, row) → map (x, y) in the raster's CRS units.
    pub fn pixel_to_world(&self, col: f64, row: f64) -> (f64, f64) {
        let g = &self.0;
        (g[0] + col * g[1] + row * g[2], g[3] + col * g[4] + row * g[5])
    }

    /// Map (x, y) → pixel (col, row); `None` if the transform is singular.
    pub fn world_to_pixel(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        self.inverse().map(|inv| inv.pixel_to_world(x, y))
    }

    /// The inverse affine transform (map → pixel), as GDAL's `GDALInvGeoTransform`.
    pub fn inverse(&self) -> Option<Self> {
        let g = &self.0;
        let det = g[1] * g[5] - g[2] * g[4];
        let scale = g[1].abs().max(g[2].abs()).max(g[4].abs()).max(g[5].abs());
        if !det.is_finite() || det.abs() <= 1e-15 * scale * scale || det == 0.0 {
            return None;
        }
        let inv_det = 1.0 / det;
        let a = g[5] * inv_det;
        let b = -g[2] * inv_det;
        let d = -g[4] * inv_det;
        let e = g[1] * inv_det;
        Some(Self([(g[2] * g[3] - g[0] * g[5]) * inv_det, a, b, (-g[1] * g[3] + g[0] * g[4]) * inv_det, d, e]))
    }

    /// True when there are no rotation/shear terms.
    pub fn is_north_up(&self) -> bool {
        self.0[2] == 0.0 && self.0[4] == 0.0
    }

    /// Ground size of one pixel along the column and row directions (always positive).
    pub fn pixel_size(&self) -> (f64, f64) {
        let g = &self.0;
        (g[1].hypot(g[4]), g[2].hypot(g[5]))
    }
}

impl Default for GeoTransform {
    fn default() -> Self {
        Self::IDENTITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn singular_transform_has_no_inverse() {
        assert!(GeoTransform([0.0, 1.0, 2.0, 0.0, 0.5, 1.0]).inverse().is_none());
        assert!(GeoTransform([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]).inverse().is_none());
    }

    #[test]
    fn rotated_transform_matches_hand_computation() {
        // 30° rotation, 2 m pixels.
        let (s, c) = 30f64.to_radians().sin_cos();
        let gt = GeoTransform([100.0, 2.0 * c, -2.0 * s, 200.0, 2.0 * s, 2.0 * c]);
        let (x, y) = gt.pixel_to_world(1.0, 0.0);
        assert!(close(x, 100.0 + 2.0 * c, 1e-12) && close(y, 200.0 + 2.0 * s, 1e-12));
        assert!(!gt.is_north_up());
        let (px, py) = gt.pixel_size();
        assert!(close(px, 2.0, 1e-12) && close(py, 2.0, 1e-12));
    }

    proptest! {
        #[test]
        fn pixel_world_pixel_round_trip(
            ox in -1e7f64..1e7, oy in -1e7f64..1e7,
            res in 1e-6f64..1e3, aspect in 0.2f64..5.0,
            angle in -180f64..180.0, shear in -0.3f64..0.3,
            col in -1e5f64..1e5, row in -1e5f64..1e5,
        ) {
            let (s, c) = angle.to_radians().sin_cos();
            let (rx, ry) = (res, res * aspect);
            let gt = GeoTransform([ox, rx * c, -ry * s + shear * rx, oy, rx * s, -ry * c]);
            prop_assume!(gt.inverse().is_some());
            let (x, y) = gt.pixel_to_world(col, row);
            let (c2, r2) = gt.world_to_pixel(x, y).unwrap();
            // Tolerance relative to the magnitude of the coordinates involved.
            let tol = 1e-6 * (1.0 + (ox.abs() + oy.abs()) / res);
            prop_assert!((c2 - col).abs() <= tol, "col {col} -> {c2}");
            prop_assert!((r2 - row).abs() <= tol, "row {row} -> {r2}");
        }

        #[test]
        fn inverse_of_inverse_is_identity(
            ox in -1e6f64..1e6, oy in -1e6f64..1e6, res in 0.01f64..100.0, angle in -90f64..90.0,
        ) {
            let (s, c) = angle.to_radians().sin_cos();
            let gt = GeoTransform([ox, res * c, -res * s, oy, res * s, -res * c]);
            let back = gt.inverse().unwrap().inverse().unwrap();
            for i in 0..6 {
                prop_assert!(close(gt.0[i], back.0[i], 1e-9));
            }
        }
    }
}
