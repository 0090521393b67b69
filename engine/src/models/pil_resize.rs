//! Pillow's `Image.resize` on 8-bit RGB, bit for bit: what transformers' Qwen2-VL
//! image processor (bicubic) and `segment_anything`'s `ResizeLongestSide`
//! (bilinear) feed their models. Separable convolution with the filter stretched
//! by the reduction factor, 22-bit fixed-point weights, each pass rounded to
//! 8 bits, and Pillow 13's order of the passes (vertical first when the height
//! shrinks by more than twice what the width does) — the rounding makes the
//! order visible in the pixels.
//!
//! Also torchvision's antialiased resize of `uint8` tensors (what transformers'
//! torchvision-backed processors, SAM 3's among them, feed their models): the
//! same filter and taps, but 16-bit weights at the largest precision that fits
//! (chosen per axis), and always the horizontal pass first.

/// Pillow's resampling filters we need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    /// Keys' cubic with a = −0.5.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => (1.0 - x).max(0.0),
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Whose fixed-point weights: Pillow's 22 bits, or torch's int16 ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fixed {
    Pillow,
    Torch,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first
/// input index and the tap count, and the fixed-point weights (`ksize` a row).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    precision: u32,
}

impl Coeffs {
    fn clip8(&self, v: i64) -> u8 {
        (v >> self.precision).clamp(0, 255) as u8
    }

    fn round(&self) -> i64 {
        1 << (self.precision - 1)
    }
}

/// Torch's `_compute_index_ranges_int16_weights`: the most bits such that the
/// largest weight, doubled, stays under 2¹⁵.
fn torch_precision(largest: f64) -> u32 {
    (0..22).find(|p| (0.5 + largest * f64::from(1u32 << (p + 1))) as i64 >= 1 << 15).unwrap_or(22)
}

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    coefficients_as(in_size, out_size, filter, Fixed::Pillow)
}

fn coefficients_as(in_size: usize, out_size: usize, filter: Filter, fixed: Fixed) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut normalised = vec![0f64; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; the clamp makes that equal to floor here.
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter.eval((x as f64 + xmin as f64 - center + 0.5) / filterscale);
            ww += *kx;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            normalised[xx * ksize + x] = if ww != 0.0 { kx / ww } else { kx };
        }
        bounds.push((xmin, xmax));
    }
    let precision = match fixed {
        Fixed::Pillow => PRECISION_BITS,
        Fixed::Torch => torch_precision(normalised.iter().copied().fold(0.0, f64::max)),
    };
    let scale = f64::from(1u32 << precision);
    let weights = normalised
        .iter()
        .map(|&w| if w < 0.0 { (-0.5 + w * scale) as i32 } else { (0.5 + w * scale) as i32 })
        .collect();
    Coeffs { ksize, bounds, weights, precision }
}

/// The horizontal pass over rows `first..first + rows` of `src` (`width` wide).
fn pass_horizontal(src: &[u8], width: usize, (first, rows): (usize, usize), c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; rows * out_w * 3];
    for y in 0..rows {
        let row = &src[(y + first) * width * 3..][..width * 3];
        let dst = &mut out[y * out_w * 3..][..out_w * 3];
        for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..][..xmax];
            for ch in 0..3 {
                let ss = k
                    .iter()
                    .enumerate()
                    .fold(c.round(), |ss, (x, &w)| ss + i64::from(row[(x + xmin) * 3 + ch]) * i64::from(w));
                dst[xx * 3 + ch] = c.clip8(ss);
            }
        }
    }
    out
}

/// The vertical pass of `src` (`width` wide), whose row 0 is source row `first`.
fn pass_vertical(src: &[u8], width: usize, first: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; c.bounds.len() * width * 3];
    for (yy, &(ymin, ymax)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..][..ymax];
        let ymin = ymin - first;
        for x in 0..width * 3 {
            let ss = k
                .iter()
                .enumerate()
                .fold(c.round(), |ss, (y, &w)| ss + i64::from(src[(y + ymin) * width * 3 + x]) * i64::from(w));
            out[yy * width * 3 + x] = c.clip8(ss);
        }
    }
    out
}

/// Interleaved RGB `w`×`h` → `nw`×`nh` (all non-zero), as
/// `Image.resize((nw, nh), filter)`.
pub fn resize_rgb8(data: &[u8], (w, h): (usize, usize), (nw, nh): (usize, usize), filter: Filter) -> Vec<u8> {
    let shrink_h = h as i64 - nh as i64;
    let horizontal_first = !(shrink_h > 0 && shrink_h > (w as i64 - nw as i64) * 2);
    match (nw != w, nh != h) {
        (false, false) => data.to_vec(),
        (true, false) => pass_horizontal(data, w, (0, h), &coefficients(w, nw, filter)),
        (false, true) => pass_vertical(data, w, 0, &coefficients(h, nh, filter)),
        (true, true) if horizontal_first => {
            let vert = coefficients(h, nh, filter);
            // Only the rows the vertical pass will read.
            let first = vert.bounds[0].0;
            let last = vert.bounds[nh - 1].0 + vert.bounds[nh - 1].1;
            let temp = pass_horizontal(data, w, (first, last - first), &coefficients(w, nw, filter));
            pass_vertical(&temp, nw, first, &vert)
        }
        (true, true) => {
            let temp = pass_vertical(data, w, 0, &coefficients(h, nh, filter));
            pass_horizontal(&temp, w, (0, nh), &coefficients(w, nw, filter))
        }
    }
}

/// Interleaved RGB `w`×`h` → `nw`×`nh` (all non-zero), as torchvision's
/// `resize(img_uint8, [nh, nw], antialias=True)` with bilinear interpolation.
pub fn resize_rgb8_torch(data: &[u8], (w, h): (usize, usize), (nw, nh): (usize, usize)) -> Vec<u8> {
    let across = |d: &[u8]| pass_horizontal(d, w, (0, h), &coefficients_as(w, nw, Filter::Bilinear, Fixed::Torch));
    let down = |d: &[u8], width| pass_vertical(d, width, 0, &coefficients_as(h, nh, Filter::Bilinear, Fixed::Torch));
    match (nw != w, nh != h) {
        (false, false) => data.to_vec(),
        (true, false) => across(data),
        (false, true) => down(data, w),
        (true, true) => down(&across(data), nw),
    }
}
