//! The tile pyramid: which full-resolution window a tile covers at which level,
//! which tiles a view needs, and an LRU cache of rendered tiles with a memory cap.

use serde::{Deserialize, Serialize};

use crate::base::Window;
use crate::cache::{ByteLru, ByteSize};

/// Edge length of a tile in output pixels.
pub const TILE_SIZE: u32 = 256;

/// One tile of the pyramid. At `level` L one output pixel covers 2^L × 2^L source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TileKey {
    pub level: u8,
    pub x: u32,
    pub y: u32,
}

/// The shape of a raster's tile pyramid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pyramid {
    pub width: u64,
    pub height: u64,
}

impl Pyramid {
    pub fn new(width: u64, height: u64) -> Self {
        Self { width, height }
    }

    /// Coarsest level: the one at which the whole raster fits in a single tile.
    pub fn max_level(&self) -> u8 {
        let mut level = 0u8;
        let mut extent = self.width.max(self.height).max(1);
        while extent > u64::from(TILE_SIZE) && level < 40 {
            extent = extent.div_ceil(2);
            level += 1;
        }
        level
    }

    /// Size of the raster in output pixels at `level`.
    pub fn level_size(&self, level: u8) -> (u64, u64) {
        let f = 1u64 << level;
        (self.width.div_ceil(f), self.height.div_ceil(f))
    }

    /// Number of tile columns and rows at `level`.
    pub fn tile_counts(&self, level: u8) -> (u32, u32) {
        let (w, h) = self.level_size(level);
        let t = u64::from(TILE_SIZE);
        (w.div_ceil(t) as u32, h.div_ceil(t) as u32)
    }

    /// The source window a tile covers (clipped to the raster) and the output size
    /// it is rendered at. `None` for a tile outside the pyramid.
    pub fn tile_window(&self, key: TileKey) -> Option<(Window, (u32, u32))> {
        if key.level > self.max_level() {
            return None;
        }
        let (cols, rows) = self.tile_counts(key.level);
        if key.x >= cols || key.y >= rows {
            return None;
        }
        let f = 1u64 << key.level;
        let span = u64::from(TILE_SIZE) * f;
        let x = u64::from(key.x) * span;
        let y = u64::from(key.y) * span;
        let width = span.min(self.width - x);
        let height = span.min(self.height - y);
        let out = (width.div_ceil(f) as u32, height.div_ceil(f) as u32);
        Some((Window { x, y, width, height }, out))
    }

    /// The level to draw at for a zoom of `screen_px_per_source_px` (1 = 1:1):
    /// the finest level whose pixels are not smaller than a screen pixel.
    pub fn level_for_zoom(&self, screen_px_per_source_px: f64) -> u8 {
        if !(screen_px_per_source_px.is_finite() && screen_px_per_source_px > 0.0) {
            return self.max_level();
        }
        let level = (1.0 / screen_px_per_source_px).log2().floor().max(0.0);
        (level as u8).min(self.max_level())
    }

    /// Tiles at `level` that intersect the source-pixel rectangle [x0,x1)×[y0,y1),
    /// ordered from the centre outwards so the middle of the view fills first.
    pub fn tiles_in_rect(&self, level: u8, x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<TileKey> {
        let span = f64::from(TILE_SIZE) * (1u64 << level) as f64;
        let (cols, rows) = self.tile_counts(level);
        let clamp = |v: f64, n: u32| (v / span).floor().clamp(0.0, f64::from(n)) as u32;
        let (tx0, tx1) = (clamp(x0, cols), clamp(x1 + span - 1e-9, cols));
        let (ty0, ty1) = (clamp(y0, rows), clamp(y1 + span - 1e-9, rows));
        let mut keys: Vec<TileKey> =
            (ty0..ty1).flat_map(|y| (tx0..tx1).map(move |x| TileKey { level, x, y })).collect();
        let (cx, cy) = ((x0 + x1) / 2.0 / span, (y0 + y1) / 2.0 / span);
        keys.sort_by(|a, b| {
            let d = |k: &TileKey| (f64::from(k.x) + 0.5 - cx).powi(2) + (f64::from(k.y) + 0.5 - cy).powi(2);
            d(a).total_cmp(&d(b))
        });
        keys
    }
}

/// A rendered tile: straight (not premultiplied) RGBA8, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    pub key: TileKey,
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl ByteSize for Tile {
    fn byte_size(&self) -> usize {
        self.rgba.len() + size_of::<Self>()
    }
}

/// What a cached tile is keyed by: raster, render parameters and position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub raster: u64,
    /// Hash of the render parameters the tile was made with.
    pub params: u64,
    pub tile: TileKey,
}

/// The viewer's rendered tiles, bounded by bytes.
pub type TileCache = ByteLru<CacheKey, Tile>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn max_level_fits_whole_raster_in_one_tile() {
        assert_eq!(Pyramid::new(200, 200).max_level(), 0);
        assert_eq!(Pyramid::new(256, 10).max_level(), 0);
        assert_eq!(Pyramid::new(257, 10).max_level(), 1);
        assert_eq!(Pyramid::new(20_000, 20_000).max_level(), 7); // 20000/128 = 156.25 ≤ 256
        let p = Pyramid::new(20_000, 20_000);
        assert_eq!(p.tile_counts(p.max_level()), (1, 1));
    }

    #[test]
    fn edge_tiles_are_clipped_and_output_rounds_up() {
        let p = Pyramid::new(1000, 600);
        let (w, out) = p.tile_window(TileKey { level: 0, x: 3, y: 2 }).unwrap();
        assert_eq!(w, Window { x: 768, y: 512, width: 232, height: 88 });
        assert_eq!(out, (232, 88));
        let (w, out) = p.tile_window(TileKey { level: 1, x: 1, y: 1 }).unwrap();
        assert_eq!(w, Window { x: 512, y: 512, width: 488, height: 88 });
        assert_eq!(out, (244, 44));
        let (w, out) = p.tile_window(TileKey { level: 2, x: 0, y: 0 }).unwrap();
        assert_eq!((w.width, w.height, out), (1000, 600, (250, 150)));
        assert!(p.tile_window(TileKey { level: 0, x: 4, y: 0 }).is_none());
        assert!(p.tile_window(TileKey { level: 9, x: 0, y: 0 }).is_none());
    }

    #[test]
    fn tiles_cover_the_raster_exactly_once() {
        let p = Pyramid::new(1000, 600);
        for level in 0..=p.max_level() {
            let (cols, rows) = p.tile_counts(level);
            let mut area = 0;
            for y in 0..rows {
                for x in 0..cols {
                    let (w, _) = p.tile_window(TileKey { level, x, y }).unwrap();
                    area += w.width * w.height;
                }
            }
            assert_eq!(area, 1000 * 600, "level {level}");
        }
    }

    #[test]
    fn level_for_zoom_picks_finest_sufficient_level() {
        let p = Pyramid::new(20_000, 20_000);
        assert_eq!(p.level_for_zoom(4.0), 0);
        assert_eq!(p.level_for_zoom(1.0), 0);
        assert_eq!(p.level_for_zoom(0.75), 0);
        assert_eq!(p.level_for_zoom(0.5), 1);
        assert_eq!(p.level_for_zoom(0.3), 1);
        assert_eq!(p.level_for_zoom(0.25), 2);
        assert_eq!(p.level_for_zoom(1e-6), p.max_level());
        assert_eq!(p.level_for_zoom(0.0), p.max_level());
    }

    #[test]
    fn tiles_in_rect_are_clipped_and_centre_first() {
        let p = Pyramid::new(1000, 600);
        let keys = p.tiles_in_rect(0, -500.0, -500.0, 2000.0, 2000.0);
        assert_eq!(keys.len(), 4 * 3);
        assert_eq!(p.tiles_in_rect(0, 300.0, 300.0, 500.0, 400.0).len(), 1);
        assert_eq!(p.tiles_in_rect(0, 200.0, 300.0, 300.0, 400.0).len(), 2);
        let keys = p.tiles_in_rect(0, 0.0, 0.0, 1000.0, 600.0);
        assert!(matches!(keys[0], TileKey { x: 1 | 2, y: 1, .. }));
        assert!(p.tiles_in_rect(0, 2000.0, 0.0, 3000.0, 10.0).is_empty());
    }

    #[test]
    fn cache_respects_memory_cap_and_lru_order() {
        let tile =
            |x| Arc::new(Tile { key: TileKey { level: 0, x, y: 0 }, width: 16, height: 16, rgba: vec![0; 1024] });
        let one = tile(0).byte_size();
        let mut cache = TileCache::new(one * 3);
        let key = |x, raster| CacheKey { raster, params: 0, tile: TileKey { level: 0, x, y: 0 } };
        for x in 0..3 {
            cache.insert(key(x, 1), tile(x));
        }
        assert!(cache.get(&key(0, 1)).is_some()); // 0 is now most recent
        cache.insert(key(3, 2), tile(3));
        assert_eq!(cache.len(), 3);
        assert!(cache.bytes() <= cache.cap_bytes());
        assert!(cache.get(&key(1, 1)).is_none(), "least recently used evicted");
        assert!(cache.get(&key(0, 1)).is_some());
        cache.remove_where(|k| k.raster == 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), one);
    }
}
