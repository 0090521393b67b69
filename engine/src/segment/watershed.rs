//! The segmenter used when no SAM checkpoint is configured: a seeded watershed
//! on the colour gradient inside the box. The box centre (and positive clicks)
//! seed the object, the margin around the box (and negative clicks) the
//! background; Meyer's priority flood grows both along the weakest edges.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::base::RgbImage;

/// Colour gradient magnitude (Sobel per channel after a 3×3 binomial blur,
/// largest channel), as u16 priorities.
pub fn gradient(img: &RgbImage) -> Vec<u16> {
    let (w, h) = (img.width, img.height);
    let at = |x: isize, y: isize, c: usize| -> i32 {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        i32::from(img.data[(y * w + x) * 3 + c])
    };
    // Blur: [1 2 1]ᵀ[1 2 1] / 16.
    let mut blurred = vec![0i32; w * h * 3];
    for y in 0..h as isize {
        for x in 0..w as isize {
            for c in 0..3 {
                let mut s = 0;
                for (dy, ky) in [(-1, 1), (0, 2), (1, 1)] {
                    for (dx, kx) in [(-1, 1), (0, 2), (1, 1)] {
                        s += ky * kx * at(x + dx, y + dy, c);
                    }
                }
                blurred[(y as usize * w + x as usize) * 3 + c] = s;
            }
        }
    }
    let b = |x: isize, y: isize, c: usize| -> i32 {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        blurred[(y * w + x) * 3 + c]
    };
    let mut out = vec![0u16; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut best = 0i64;
            for c in 0..3 {
                let gx = b(x + 1, y - 1, c) + 2 * b(x + 1, y, c) + b(x + 1, y + 1, c)
                    - b(x - 1, y - 1, c)
                    - 2 * b(x - 1, y, c)
                    - b(x - 1, y + 1, c);
                let gy = b(x - 1, y + 1, c) + 2 * b(x, y + 1, c) + b(x + 1, y + 1, c)
                    - b(x - 1, y - 1, c)
                    - 2 * b(x, y - 1, c)
                    - b(x + 1, y - 1, c);
                best = best.max(i64::from(gx) * i64::from(gx) + i64::from(gy) * i64::from(gy));
            }
            // Blurred values carry a factor 16, the Sobel another 4: scale back to 0–~1443.
            out[y as usize * w + x as usize] = ((best as f64).sqrt() / 64.0).min(f64::from(u16::MAX)) as u16;
        }
    }
    out
}

/// Object pixels inside `bbox` (x1, y1, x2, y2 in pixels, clipped to the image)
/// by seeded watershed; `points` are extra (x, y, positive) seeds.
pub fn segment(img: &RgbImage, grad: &[u16], bbox: [f32; 4], points: &[(f32, f32, bool)]) -> Vec<bool> {
    let (w, h) = (img.width, img.height);
    let clampx = |v: f32| (v.floor().max(0.0) as usize).min(w);
    let clampy = |v: f32| (v.floor().max(0.0) as usize).min(h);
    let (bx1, by1, bx2, by2) = (clampx(bbox[0]), clampy(bbox[1]), clampx(bbox[2].ceil()), clampy(bbox[3].ceil()));
    let mut mask = vec![false; w * h];
    if bx2 <= bx1 || by2 <= by1 {
        return mask;
    }
    let (bw, bh) = (bx2 - bx1, by2 - by1);
    // Work in the box plus a margin; the margin is background.
    let margin = (bw.max(bh) / 10).max(4);
    let (cx1, cy1) = (bx1.saturating_sub(margin), by1.saturating_sub(margin));
    let (cx2, cy2) = ((bx2 + margin).min(w), (by2 + margin).min(h));
    let (cw, ch) = (cx2 - cx1, cy2 - cy1);
    const FG: u8 = 1;
    const BG: u8 = 2;
    let mut label = vec![0u8; cw * ch];
    let inside = |x: usize, y: usize| x >= bx1 && x < bx2 && y >= by1 && y < by2;
    let mut any_bg = false;
    for y in cy1..cy2 {
        for x in cx1..cx2 {
            if !inside(x, y) {
                label[(y - cy1) * cw + x - cx1] = BG;
                any_bg = true;
            }
        }
    }
    if !any_bg {
        // The box fills the image: its outermost pixels stand for the background.
        for y in by1..by2 {
            for x in bx1..bx2 {
                if x == bx1 || y == by1 || x + 1 == bx2 || y + 1 == by2 {
                    label[(y - cy1) * cw + x - cx1] = BG;
                }
            }
        }
    }
    let mut disk = |x: f32, y: f32, r: f32, l: u8| {
        let (x0, y0) = (x - r, y - r);
        for yy in (y0.floor().max(0.0) as usize)..((y + r).ceil().max(0.0) as usize).min(h) {
            for xx in (x0.floor().max(0.0) as usize)..((x + r).ceil().max(0.0) as usize).min(w) {
                let (dx, dy) = (xx as f32 + 0.5 - x, yy as f32 + 0.5 - y);
                if dx * dx + dy * dy <= r * r && xx >= cx1 && xx < cx2 && yy >= cy1 && yy < cy2 {
                    label[(yy - cy1) * cw + xx - cx1] = l;
                }
            }
        }
    };
    let (mx, my) = ((bx1 + bx2) as f32 / 2.0, (by1 + by2) as f32 / 2.0);
    disk(mx, my, (bw.min(bh) as f32 * 0.15).max(1.0), FG);
    for &(x, y, positive) in points {
        disk(x, y, 3.0, if positive { FG } else { BG });
    }
    // Meyer's flood: grow every label from its seeds, lowest gradient first.
    let mut heap = BinaryHeap::new();
    let mut order = 0u64;
    for y in 0..ch {
        for x in 0..cw {
            if label[y * cw + x] != 0 {
                heap.push(Reverse((0u16, order, x, y)));
                order += 1;
            }
        }
    }
    while let Some(Reverse((_, _, x, y))) = heap.pop() {
        let l = label[y * cw + x];
        for (dx, dy) in [(-1isize, 0isize), (1, 0), (0, -1), (0, 1)] {
            let (nx, ny) = (x as isize + dx, y as isize + dy);
            if nx < 0 || ny < 0 || nx >= cw as isize || ny >= ch as isize {
                continue;
            }
            let (nx, ny) = (nx as usize, ny as usize);
            if label[ny * cw + nx] == 0 {
                label[ny * cw + nx] = l;
                heap.push(Reverse((grad[(ny + cy1) * w + nx + cx1], order, nx, ny)));
                order += 1;
            }
        }
    }
    for y in by1..by2 {
        for x in bx1..bx2 {
            mask[y * w + x] = label[(y - cy1) * cw + x - cx1] == FG;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright disk of radius 20 on a dark, slightly textured background.
    fn disk_image() -> RgbImage {
        let (w, h) = (100, 80);
        let data = (0..w * h)
            .flat_map(|i| {
                let (x, y) = ((i % w) as f32 + 0.5, (i / w) as f32 + 0.5);
                let inside = (x - 45.0).powi(2) + (y - 40.0).powi(2) <= 400.0;
                let noise = ((i * 7919) % 13) as u8;
                if inside { [200 + noise, 180 + noise, 60] } else { [40 + noise, 70, 30 + noise] }
            })
            .collect();
        RgbImage::new(w, h, data).unwrap()
    }

    #[test]
    fn watershed_finds_the_disk_in_a_loose_box() {
        let img = disk_image();
        let g = gradient(&img);
        let mask = segment(&img, &g, [15.0, 12.0, 78.0, 70.0], &[]);
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        for y in 0..80 {
            for x in 0..100 {
                let inside = (x as f32 + 0.5 - 45.0).powi(2) + (y as f32 + 0.5 - 40.0).powi(2) <= 400.0;
                match (mask[y * 100 + x], inside) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    _ => {}
                }
            }
        }
        let iou = f64::from(tp) / f64::from(tp + fp + fn_);
        assert!(iou > 0.9, "IoU {iou} ({tp} {fp} {fn_})");
        // Nothing outside the box.
        assert!(mask.iter().enumerate().all(|(i, &m)| !m || ((i % 100) >= 15 && (i % 100) < 78)));
    }

    #[test]
    fn clicks_steer_the_result_and_degenerate_boxes_are_empty() {
        let img = disk_image();
        let g = gradient(&img);
        // A negative click on the disk's centre and a positive one on the background flip it.
        let flipped = segment(&img, &g, [15.0, 12.0, 78.0, 70.0], &[(45.0, 40.0, false), (20.0, 15.0, true)]);
        assert!(!flipped[40 * 100 + 45] && flipped[15 * 100 + 20]);
        assert!(segment(&img, &g, [50.0, 50.0, 50.0, 60.0], &[]).iter().all(|m| !m));
        // A box over the whole image still separates the disk.
        let whole = segment(&img, &g, [0.0, 0.0, 100.0, 80.0], &[]);
        assert!(whole[40 * 100 + 45] && !whole[2 * 100 + 2]);
    }
}
