//! The paper's Mask2Contour product: the outer contours of a mask drawn 3 px
//! black on white, as the authors' `cv2.findContours(mask, RETR_EXTERNAL,
//! CHAIN_APPROX_SIMPLE)` + `drawContours(..., thickness=3)`. Kept to compare
//! with the paper's figures; GIS work uses the polygons.
//!
//! OpenCV's outer border of an 8-connected component is its pixels 4-adjacent
//! to the background that reaches the image frame (only the extreme outer
//! contours: components inside holes are skipped, holes are not drawn).
//! OpenCV's `thickness=3` line covers more than 3 pixels: measured on its output,
//! every pixel within 2 pixels (Euclidean) of a contour point is drawn (5 px
//! across), which is the stamp used here. Pixel-identical to OpenCV 5.0 on the
//! test fixture (`tools/make_contour_fixtures.py`) and on the 4096² benchmark
//! mask (`tools/bench_contours.py` reports the agreement).

use std::collections::VecDeque;

use super::super::segment::Mask;

/// Offsets within 2 pixels of a contour point: what `thickness=3` draws.
const STAMP: [(i64, i64); 13] =
    [(0, -2), (-1, -1), (0, -1), (1, -1), (-2, 0), (-1, 0), (0, 0), (1, 0), (2, 0), (-1, 1), (0, 1), (1, 1), (0, 2)];

/// Line map of `mask`: `true` = black (contour), `false` = white.
pub fn line_map(mask: &Mask) -> Mask {
    let (w, h) = (mask.width, mask.height);
    let pw = w + 2;
    let fg = |x: usize, y: usize| x >= 1 && y >= 1 && x <= w && y <= h && mask.data[(y - 1) * w + x - 1];
    // Background 4-connected to the frame (OpenCV treats the frame as background).
    let mut outside = vec![false; pw * (h + 2)];
    let mut queue = VecDeque::new();
    outside[0] = true;
    queue.push_back((0usize, 0usize));
    while let Some((x, y)) = queue.pop_front() {
        let neighbours = [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)];
        for (nx, ny) in neighbours {
            if nx < pw && ny < h + 2 && !outside[ny * pw + nx] && !fg(nx, ny) {
                outside[ny * pw + nx] = true;
                queue.push_back((nx, ny));
            }
        }
    }
    let mut out = Mask::empty(w, h);
    for y in 1..=h {
        for x in 1..=w {
            let border = fg(x, y)
                && (outside[y * pw + x - 1]
                    || outside[y * pw + x + 1]
                    || outside[(y - 1) * pw + x]
                    || outside[(y + 1) * pw + x]);
            if border {
                for (dx, dy) in STAMP {
                    let (sx, sy) = (x as i64 - 1 + dx, y as i64 - 1 + dy);
                    if sx >= 0 && sy >= 0 && (sx as usize) < w && (sy as usize) < h {
                        out.data[sy as usize * w + sx as usize] = true;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_contour_only_three_pixels_wide() {
        // 9×9 square with a 3×3 hole holding a 1-pixel island, in a 15×15 mask.
        let (w, h) = (15, 15);
        let mut m = Mask::empty(w, h);
        for y in 3..12 {
            for x in 3..12 {
                m.data[y * w + x] = !(6..9).contains(&x) || !(6..9).contains(&y);
            }
        }
        m.data[7 * w + 7] = true;
        let l = line_map(&m);
        // The border row y=3 is drawn 5 px wide, as OpenCV does for thickness 3.
        for y in 1..=5 {
            assert!((4..=10).all(|x| l.data[y * w + x]), "row {y}");
        }
        assert!(!l.data[7] && !l.data[6 * w + 7]);
        // Hole and island are not drawn.
        assert!(!l.data[7 * w + 7] && !l.data[6 * w + 6]);
    }
}
