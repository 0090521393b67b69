//! Mask → polygons along pixel edges.
//!
//! Every boundary between a foreground and a background pixel is a unit edge of
//! the pixel grid; we follow those edges with the foreground on the left (in
//! pixel coordinates, y down), keep only the corners where the boundary turns,
//! and assemble the closed rings into polygons with holes.
//!
//! **Connectivity**: foreground is 4-connected (pixels that touch only at a
//! corner are separate polygons, as `gdal_polygonize`'s default), so background
//! is 8-connected. At such a corner ("saddle") the tracer turns so that it stays
//! on the current pixel. A ring that passes a saddle twice is split there into
//! simple rings, so every ring is simple and parts touch only at points: two
//! polygons meeting at a corner, or a hole touching its shell or another hole at
//! one point — all valid OGC geometry.
//!
//! Because every vertex is a pixel corner, every pixel centre lies strictly
//! inside or outside the result: rasterising it with the pixel-centre rule gives
//! back the mask exactly.

use std::collections::HashMap;

use geo::{Coord, LineString, Polygon};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};

/// Directions: east, south, west, north (pixel coordinates, y down).
const DX: [i64; 4] = [1, 0, -1, 0];
const DY: [i64; 4] = [0, 1, 0, -1];

/// The mask with a one-pixel background border, one byte (0/1) per pixel, so
/// the tracer never checks bounds.
struct Padded {
    data: Vec<u8>,
    /// Padded row length: width + 2.
    pw: usize,
}

impl Padded {
    fn new(width: usize, height: usize, fill_row: impl Fn(usize, &mut [u8])) -> Self {
        let pw = width + 2;
        let mut data = vec![0u8; pw * (height + 2)];
        for y in 0..height {
            let start = (y + 1) * pw + 1;
            fill_row(y, &mut data[start..start + width]);
        }
        Self { data, pw }
    }

    /// Index of the pixel up-left of vertex (vx, vy); the other three are +1, +pw, +pw+1.
    #[inline]
    fn tl(&self, vx: i64, vy: i64) -> usize {
        vy as usize * self.pw + vx as usize
    }
}

/// A traced ring: its turning vertices (pixel corners), in tracing order.
type Ring = Vec<(u32, u32)>;

/// Twice the signed area (shoelace, y down). Exteriors are negative, holes positive.
fn area2(ring: &[(u32, u32)]) -> i64 {
    let n = ring.len();
    let mut s = 0i64;
    for i in 0..n {
        let (x0, y0) = ring[i];
        let (x1, y1) = ring[(i + 1) % n];
        s += i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0);
    }
    s
}

/// Crossing-number test for a point that is never on the ring (pixel centres vs. pixel-edge rings).
fn contains(ring: &[(u32, u32)], px: f64, py: f64) -> bool {
    let n = ring.len();
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = (f64::from(ring[i].0), f64::from(ring[i].1));
        let (xj, yj) = (f64::from(ring[j].0), f64::from(ring[j].1));
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

struct Tracer<'a> {
    img: &'a Padded,
    width: usize,
    /// One bit per horizontal unit edge, `vy * width + x`: already traced.
    visited: Vec<u64>,
}

impl Tracer<'_> {
    #[inline]
    fn mark(&mut self, i: usize) {
        self.visited[i / 64] |= 1 << (i % 64);
    }

    #[inline]
    fn is_marked(&self, i: usize) -> bool {
        self.visited[i / 64] & (1 << (i % 64)) != 0
    }

    /// Follows the ring that contains the horizontal edge `x` of vertex row `vy`.
    /// Returns its turning vertices and whether it passed a saddle.
    fn trace(&mut self, x: usize, vy: usize) -> (Ring, bool) {
        let p = &self.img.data;
        let pw = self.img.pw;
        let above_fg = p[vy * pw + x + 1] != 0;
        // The first edge, from its start vertex to (cx, cy), in direction d.
        let (mut cx, mut cy, mut d) =
            if above_fg { (x as i64 + 1, vy as i64, 0usize) } else { (x as i64, vy as i64, 2) };
        self.mark(vy * self.width + x);
        let (sx, sy, sd) = (cx, cy, d);
        // Ahead-left / ahead-right pixel offsets from the up-left pixel, per direction.
        let al = [1, pw + 1, pw, 0];
        let ar = [pw + 1, pw, 0, 1];
        let mut ring = Vec::new();
        let mut saddle = false;
        loop {
            let tl = self.img.tl(cx, cy);
            let ahead_left = p[tl + al[d]] != 0;
            let ahead_right = p[tl + ar[d]] != 0;
            let nd = if !ahead_left {
                saddle |= ahead_right;
                (d + 3) % 4 // left: around the pixel we follow (also at a saddle: 4-connectivity)
            } else if !ahead_right {
                d // straight on
            } else {
                (d + 1) % 4 // right
            };
            if nd != d {
                ring.push((cx as u32, cy as u32));
            }
            match nd {
                0 => self.mark(cy as usize * self.width + cx as usize),
                2 => self.mark(cy as usize * self.width + cx as usize - 1),
                _ => {}
            }
            cx += DX[nd];
            cy += DY[nd];
            d = nd;
            if (cx, cy, d) == (sx, sy, sd) {
                return (ring, saddle);
            }
        }
    }
}

/// Splits a ring at vertices it visits twice (only saddles can repeat) into simple rings.
fn split_at_repeats(ring: Ring, out: &mut Vec<Ring>) {
    let mut stack: Ring = Vec::with_capacity(ring.len());
    let mut pos: HashMap<(u32, u32), usize> = HashMap::new();
    for v in ring {
        if let Some(&i) = pos.get(&v) {
            // Close the loop v … (top of stack): it leaves the stack, v stays.
            let sub: Ring = stack.drain(i..).collect();
            for u in &sub[1..] {
                pos.remove(u);
            }
            out.push(sub);
            stack.push(v);
        } else {
            pos.insert(v, stack.len());
            stack.push(v);
        }
    }
    out.push(stack);
}

/// A point strictly inside a hole ring: the centre of the background pixel to
/// the right of its first edge.
fn hole_probe(ring: &[(u32, u32)]) -> (f64, f64) {
    let (x0, y0) = (f64::from(ring[0].0), f64::from(ring[0].1));
    // Unit direction of the (axis-aligned) first edge. Not `f64::signum`: it gives 1 for 0.
    let sign = |a: u32, b: u32| f64::from(i8::from(b > a) - i8::from(b < a));
    let (dx, dy) = (sign(ring[0].0, ring[1].0), sign(ring[0].1, ring[1].1));
    // Middle of the first unit step, then half a pixel to the right (y down: right of (dx,dy) is (-dy,dx)).
    (x0 + 0.5 * dx - 0.5 * dy, y0 + 0.5 * dy + 0.5 * dx)
}

/// Polygons (pixel-corner coordinates of the mask, y down) and their vertex count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traced {
    pub polygons: Vec<Polygon<f64>>,
    /// Turning vertices over all rings (closing points not counted).
    pub vertices: usize,
}

fn line_string(ring: &[(u32, u32)]) -> LineString<f64> {
    let mut coords: Vec<Coord<f64>> = Vec::with_capacity(ring.len() + 1);
    coords.extend(ring.iter().map(|&(x, y)| Coord { x: f64::from(x), y: f64::from(y) }));
    coords.push(coords[0]);
    LineString::new(coords)
}

fn polygonize_padded(img: &Padded, width: usize, height: usize) -> Traced {
    let mut tracer = Tracer { img, width, visited: vec![0; (width * (height + 1)).div_ceil(64)] };
    let pw = img.pw;
    let mut rings: Vec<Ring> = Vec::new();
    // Scan every vertex row for horizontal boundary edges not yet traced,
    // comparing eight pixels at a time.
    for vy in 0..=height {
        let above = &img.data[vy * pw + 1..vy * pw + 1 + width];
        let below = &img.data[(vy + 1) * pw + 1..(vy + 1) * pw + 1 + width];
        let mut x = 0;
        for (a, b) in above.chunks(8).zip(below.chunks(8)) {
            let differ = if a.len() == 8 {
                let (a8, b8): ([u8; 8], [u8; 8]) = (a.try_into().unwrap_or_default(), b.try_into().unwrap_or_default());
                u64::from_ne_bytes(a8) != u64::from_ne_bytes(b8)
            } else {
                a != b
            };
            if differ {
                for i in 0..a.len() {
                    if a[i] != b[i] && !tracer.is_marked(vy * width + x + i) {
                        let (ring, saddle) = tracer.trace(x + i, vy);
                        if saddle {
                            split_at_repeats(ring, &mut rings);
                        } else {
                            rings.push(ring);
                        }
                    }
                }
            }
            x += a.len();
        }
    }
    assemble(rings)
}

/// Exterior rings (negative area) become polygons; each hole goes to the
/// smallest exterior that contains it.
fn assemble(rings: Vec<Ring>) -> Traced {
    let vertices = rings.iter().map(Vec::len).sum();
    let mut exteriors: Vec<(Ring, i64)> = Vec::new();
    let mut holes: Vec<Ring> = Vec::new();
    for r in rings {
        let a = area2(&r);
        if a < 0 {
            exteriors.push((r, -a));
        } else {
            holes.push(r);
        }
    }
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); exteriors.len()];
    if !holes.is_empty() {
        let boxes: Vec<GeomWithData<Rectangle<[f64; 2]>, usize>> = exteriors
            .iter()
            .enumerate()
            .map(|(i, (r, _))| {
                let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
                for &(x, y) in r {
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
                let rect = Rectangle::from_corners([f64::from(x0), f64::from(y0)], [f64::from(x1), f64::from(y1)]);
                GeomWithData::new(rect, i)
            })
            .collect();
        let tree = RTree::bulk_load(boxes);
        for (h, ring) in holes.iter().enumerate() {
            let (px, py) = hole_probe(ring);
            let owner = tree
                .locate_in_envelope_intersecting(&AABB::from_point([px, py]))
                .map(|g| g.data)
                .filter(|&i| contains(&exteriors[i].0, px, py))
                .min_by_key(|&i| exteriors[i].1);
            // A hole always has an owner: the mask is padded with background.
            if let Some(i) = owner {
                owned[i].push(h);
            }
        }
    }
    let polygons = exteriors
        .iter()
        .zip(owned)
        .map(|((ext, _), hs)| Polygon::new(line_string(ext), hs.iter().map(|&h| line_string(&holes[h])).collect()))
        .collect();
    Traced { polygons, vertices }
}

/// Polygons of the `true` pixels of a row-major `width`×`height` mask.
///
/// ```
/// use engine::contour::polygonize_bool;
/// // A 3×3 ring of pixels around a hole.
/// let m = [true, true, true, true, false, true, true, true, true];
/// let t = polygonize_bool(3, 3, &m);
/// assert_eq!(t.polygons.len(), 1);
/// assert_eq!(t.polygons[0].interiors().len(), 1);
/// assert_eq!(t.vertices, 8);
/// ```
pub fn polygonize_bool(width: usize, height: usize, data: &[bool]) -> Traced {
    assert_eq!(data.len(), width * height, "mask size");
    let img = Padded::new(width, height, |y, row| {
        for (o, &v) in row.iter_mut().zip(&data[y * width..(y + 1) * width]) {
            *o = u8::from(v);
        }
    });
    polygonize_padded(&img, width, height)
}

/// Polygons of the non-zero pixels of a row-major `width`×`height` byte raster.
pub fn polygonize_u8(width: usize, height: usize, data: &[u8]) -> Traced {
    assert_eq!(data.len(), width * height, "mask size");
    let img = Padded::new(width, height, |y, row| {
        for (o, &v) in row.iter_mut().zip(&data[y * width..(y + 1) * width]) {
            *o = u8::from(v != 0);
        }
    });
    polygonize_padded(&img, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{Area, Contains};

    fn mask(rows: &[&str]) -> (usize, usize, Vec<bool>) {
        let w = rows[0].len();
        (w, rows.len(), rows.iter().flat_map(|r| r.bytes().map(|b| b == b'#')).collect())
    }

    fn raster_back(t: &Traced, w: usize, h: usize) -> Vec<bool> {
        let mut out = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                let c = geo::Point::new(x as f64 + 0.5, y as f64 + 0.5);
                out[y * w + x] = t.polygons.iter().any(|p| p.contains(&c));
            }
        }
        out
    }

    #[test]
    fn single_pixel_is_a_unit_square() {
        let (w, h, m) = mask(&["...", ".#.", "..."]);
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), 1);
        assert_eq!(t.polygons[0].unsigned_area(), 1.0);
        assert_eq!(t.vertices, 4);
    }

    #[test]
    fn diagonal_pixels_are_two_polygons_touching_at_a_point() {
        let (w, h, m) = mask(&["#.", ".#"]);
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), 2);
        assert_eq!(raster_back(&t, w, h), m);
    }

    #[test]
    fn hole_touching_the_shell_at_a_corner_is_split_off() {
        // The hole at (1,1) reaches the outside only through the corner at (1,1)-(0,0)? No:
        // a closed ring with one diagonal gap: background (2,2) touches (3,3) at a corner.
        let (w, h, m) = mask(&["###.", "#.#.", "##.#", "...#"]);
        let t = polygonize_bool(w, h, &m);
        assert_eq!(raster_back(&t, w, h), m);
        for p in &t.polygons {
            for r in std::iter::once(p.exterior()).chain(p.interiors()) {
                let mut pts: Vec<_> = r.0[..r.0.len() - 1].iter().map(|c| (c.x as i64, c.y as i64)).collect();
                let n = pts.len();
                pts.sort_unstable();
                pts.dedup();
                assert_eq!(pts.len(), n, "ring visits a vertex twice");
            }
        }
    }

    #[test]
    fn island_in_a_hole_is_its_own_polygon() {
        let (w, h, m) = mask(&["#####", "#...#", "#.#.#", "#...#", "#####"]);
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), 2);
        let outer = t.polygons.iter().find(|p| p.interiors().len() == 1).unwrap();
        assert_eq!(outer.unsigned_area(), 16.0);
        assert_eq!(raster_back(&t, w, h), m);
    }

    #[test]
    fn island_touching_its_hole_at_a_corner() {
        let (w, h, m) = mask(&[
            "...####.....",
            ".##...#.....",
            ".#.#..#.....",
            ".#....#.....",
            ".###..###...",
            "...##...#...",
            "....#.###...",
            "....###.....",
        ]);
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), 2);
        let island = t.polygons.iter().find(|p| p.unsigned_area() == 1.0).unwrap();
        assert!(island.interiors().is_empty());
        assert_eq!(raster_back(&t, w, h), m);
    }

    #[test]
    fn checkerboard_round_trips() {
        let (w, h) = (7, 5);
        let m: Vec<bool> = (0..w * h).map(|i| (i % w + i / w) % 2 == 0).collect();
        let t = polygonize_bool(w, h, &m);
        assert_eq!(t.polygons.len(), m.iter().filter(|&&v| v).count());
        assert_eq!(raster_back(&t, w, h), m);
    }
}
