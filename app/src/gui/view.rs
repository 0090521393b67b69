//! Where the raster sits on screen: a pan/zoom transform between source pixels
//! and screen points. Pure math, no egui state, so it is unit-tested directly.

use egui::{Pos2, Rect, Vec2, pos2};

/// Screen points per source pixel are kept in this range.
const MAX_ZOOM: f64 = 64.0;

/// The map view: which source pixel is at the centre of the map rectangle and how
/// many screen points one source pixel spans.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewTransform {
    /// Source-pixel coordinates (continuous, 0,0 = top-left corner) at the centre of the map.
    pub center: [f64; 2],
    /// Screen points per source pixel.
    pub zoom: f64,
}

impl Default for ViewTransform {
    fn default() -> Self {
        Self { center: [0.0, 0.0], zoom: 1.0 }
    }
}

impl ViewTransform {
    /// Whole raster visible and centred in `rect`.
    pub fn fit(width: u64, height: u64, rect: Rect) -> Self {
        let (w, h) = (width.max(1) as f64, height.max(1) as f64);
        let zoom = (f64::from(rect.width()) / w).min(f64::from(rect.height()) / h);
        Self { center: [w / 2.0, h / 2.0], zoom: zoom.clamp(1e-6, MAX_ZOOM) }
    }

    /// One source pixel per physical screen pixel, keeping the centre.
    pub fn one_to_one(self, pixels_per_point: f32) -> Self {
        Self { zoom: 1.0 / f64::from(pixels_per_point.max(0.1)), ..self }
    }

    /// Source pixel (continuous) under a screen position.
    pub fn screen_to_source(&self, rect: Rect, p: Pos2) -> [f64; 2] {
        let c = rect.center();
        [self.center[0] + f64::from(p.x - c.x) / self.zoom, self.center[1] + f64::from(p.y - c.y) / self.zoom]
    }

    /// Screen position of a source pixel coordinate.
    pub fn source_to_screen(&self, rect: Rect, s: [f64; 2]) -> Pos2 {
        let c = rect.center();
        pos2(c.x + ((s[0] - self.center[0]) * self.zoom) as f32, c.y + ((s[1] - self.center[1]) * self.zoom) as f32)
    }

    /// Moves the view with the pointer: a drag of `delta` points moves the image by `delta`.
    pub fn pan(&mut self, delta: Vec2) {
        self.center[0] -= f64::from(delta.x) / self.zoom;
        self.center[1] -= f64::from(delta.y) / self.zoom;
    }

    /// Zooms by `factor`, keeping the source pixel under `anchor` where it is.
    /// `min_zoom` stops zooming out past the point where the raster becomes a speck.
    pub fn zoom_at(&mut self, rect: Rect, anchor: Pos2, factor: f64, min_zoom: f64) {
        if !(factor.is_finite() && factor > 0.0) {
            return;
        }
        let before = self.screen_to_source(rect, anchor);
        self.zoom = (self.zoom * factor).clamp(min_zoom.min(MAX_ZOOM), MAX_ZOOM);
        let after = self.screen_to_source(rect, anchor);
        self.center[0] += before[0] - after[0];
        self.center[1] += before[1] - after[1];
    }

    /// The source-pixel rectangle [x0,x1)×[y0,y1) the map rectangle shows.
    pub fn visible_source(&self, rect: Rect) -> [f64; 4] {
        let a = self.screen_to_source(rect, rect.min);
        let b = self.screen_to_source(rect, rect.max);
        [a[0], a[1], b[0], b[1]]
    }

    /// Smallest zoom allowed for a raster: it stays at least ~64 points across.
    pub fn min_zoom_for(width: u64, height: u64) -> f64 {
        64.0 / width.max(height).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect() -> Rect {
        Rect::from_min_size(pos2(100.0, 50.0), egui::vec2(800.0, 600.0))
    }

    #[test]
    fn fit_centres_and_shows_everything() {
        let v = ViewTransform::fit(2000, 1000, rect());
        assert_eq!(v.zoom, 0.4);
        let [x0, y0, x1, y1] = v.visible_source(rect());
        assert!(x0 <= 0.0 && y0 <= 0.0 && x1 >= 2000.0 && y1 >= 1000.0);
        assert_eq!(v.source_to_screen(rect(), [1000.0, 500.0]), rect().center());
    }

    #[test]
    fn screen_source_round_trip() {
        let v = ViewTransform { center: [123.5, 77.25], zoom: 3.0 };
        let p = pos2(321.0, 222.0);
        let s = v.screen_to_source(rect(), p);
        let back = v.source_to_screen(rect(), s);
        assert!((back - p).length() < 1e-3);
    }

    #[test]
    fn zoom_keeps_the_pixel_under_the_cursor() {
        let mut v = ViewTransform { center: [500.0, 500.0], zoom: 1.0 };
        let anchor = pos2(700.0, 120.0);
        let before = v.screen_to_source(rect(), anchor);
        v.zoom_at(rect(), anchor, 2.5, 0.01);
        let after = v.screen_to_source(rect(), anchor);
        assert!((before[0] - after[0]).abs() < 1e-9 && (before[1] - after[1]).abs() < 1e-9);
        assert_eq!(v.zoom, 2.5);
        v.zoom_at(rect(), anchor, 1e9, 0.01);
        assert_eq!(v.zoom, MAX_ZOOM);
        v.zoom_at(rect(), anchor, 1e-12, 0.01);
        assert_eq!(v.zoom, 0.01);
    }

    #[test]
    fn pan_moves_image_with_pointer() {
        let mut v = ViewTransform { center: [500.0, 500.0], zoom: 2.0 };
        let p = v.source_to_screen(rect(), [10.0, 20.0]);
        v.pan(egui::vec2(30.0, -8.0));
        let q = v.source_to_screen(rect(), [10.0, 20.0]);
        assert!(((q - p) - egui::vec2(30.0, -8.0)).length() < 1e-4);
    }

    #[test]
    fn one_to_one_uses_physical_pixels() {
        let v = ViewTransform::default().one_to_one(2.0);
        assert_eq!(v.zoom, 0.5);
    }
}
