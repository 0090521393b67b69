//! Image preprocessing identical to transformers' Qwen2.5-VL image processor
//! (`Qwen2VLImageProcessor`): `smart_resize`, Pillow's bicubic resize, rescale and
//! normalise in `f32`, then the patch layout the vision tower expects.
//!
//! The resize is Pillow's bit for bit ([`crate::models::pil_resize`]), because
//! the checkpoint was trained and evaluated on Pillow-resized images.

use serde::{Deserialize, Serialize};

use crate::base::RgbImage;
use crate::error::{EngineError, Result};
use crate::models::pil_resize::{self, Filter};

/// The processor settings of a checkpoint (`preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessorConfig {
    #[serde(default = "default_min_pixels")]
    pub min_pixels: usize,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_merge_size")]
    pub merge_size: usize,
    #[serde(default = "default_temporal_patch_size")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "default_std")]
    pub image_std: [f32; 3],
}

fn default_min_pixels() -> usize {
    56 * 56
}
fn default_max_pixels() -> usize {
    28 * 28 * 1280
}
fn default_patch_size() -> usize {
    14
}
fn default_merge_size() -> usize {
    2
}
fn default_temporal_patch_size() -> usize {
    2
}
fn default_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn default_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: default_min_pixels(),
            max_pixels: default_max_pixels(),
            patch_size: default_patch_size(),
            merge_size: default_merge_size(),
            temporal_patch_size: default_temporal_patch_size(),
            image_mean: default_mean(),
            image_std: default_std(),
        }
    }
}

/// The pixel budget RemoteReasoner was trained with (≤ 1024 visual tokens).
pub const TRAINING_MAX_PIXELS: usize = 802_816;

/// Qwen2.5-VL's lower pixel budget (56²).
pub const MIN_PIXELS: usize = 3136;

impl PreprocessorConfig {
    /// Side length that resized images are multiples of (28 for Qwen2.5-VL).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// Qwen2.5-VL's `smart_resize`: the (height, width) the model sees, multiples of
/// `factor`, with a pixel count in `[min_pixels, max_pixels]` and the aspect ratio
/// kept as well as that allows.
///
/// ```
/// use engine::reasoner::processor::smart_resize;
/// assert_eq!(smart_resize(200, 200, 28, 3136, 802_816).unwrap(), (196, 196));
/// assert_eq!(smart_resize(2000, 1000, 28, 3136, 802_816).unwrap(), (1260, 616));
/// ```
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(EngineError::InvalidRequest(format!("cannot resize an image of {width}×{height}")));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(EngineError::InvalidRequest(format!(
            "image of {width}×{height}: aspect ratio over 200 is not supported by Qwen2.5-VL"
        )));
    }
    // Python's round() rounds halves to even; transformers does not floor this
    // first guess at `factor` (a side under 14 px rounds to 0 and takes the
    // `min_pixels` branch).
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Resizes like Pillow's `Image.resize((w, h), Image.BICUBIC)` on an RGB image.
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> Result<RgbImage> {
    if out_w == 0 || out_h == 0 || img.width == 0 || img.height == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "cannot resize {}×{} to {out_w}×{out_h}",
            img.width, img.height
        )));
    }
    let data = pil_resize::resize_rgb8(&img.data, (img.width, img.height), (out_w, out_h), Filter::Bicubic);
    RgbImage::new(out_w, out_h, data)
}

/// What the vision tower takes: flattened patches and the (t, h, w) patch grid.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessedImage {
    /// `grid_t·grid_h·grid_w` rows of `channels·temporal_patch·patch·patch` values.
    pub pixel_values: Vec<f32>,
    pub patch_dim: usize,
    /// (t, h, w) in patches.
    pub grid_thw: [usize; 3],
    /// (width, height) of the resized image: the frame the model's boxes are in.
    pub resized: (usize, usize),
    /// (width, height) of the image given.
    pub original: (usize, usize),
}

impl ProcessedImage {
    /// Number of `<|image_pad|>` tokens the image takes in the prompt.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.grid_thw.iter().product::<usize>() / (merge_size * merge_size)
    }
}

/// Resizes (when needed), normalises and lays out an image exactly as
/// `Qwen2VLImageProcessor` does with its default settings.
#[allow(clippy::needless_range_loop)] // the loops spell out transformers' axis order
pub fn preprocess(img: &RgbImage, cfg: &PreprocessorConfig) -> Result<ProcessedImage> {
    let (h, w) = smart_resize(img.height, img.width, cfg.factor(), cfg.min_pixels, cfg.max_pixels)?;
    let resized = if (w, h) == (img.width, img.height) { img.clone() } else { resize_bicubic(img, w, h)? };
    // rescale: f64 multiply then cast to f32; normalize: f32 arithmetic.
    let scale = 1.0f64 / 255.0;
    let plane: Vec<[f32; 3]> = resized
        .data
        .chunks_exact(3)
        .map(|p| {
            let mut v = [0f32; 3];
            for (c, out) in v.iter_mut().enumerate() {
                let x = (f64::from(p[c]) * scale) as f32;
                *out = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            v
        })
        .collect();
    let (ps, ms, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (h / ps, w / ps);
    let patch_dim = 3 * tp * ps * ps;
    let mut out = Vec::with_capacity(gh * gw * patch_dim);
    // transformers: reshape (t, tp, c, gh/ms, ms, ps, gw/ms, ms, ps)
    // and transpose (0, 3, 6, 4, 7, 2, 1, 5, 8). A single image is repeated over tp.
    for bh in 0..gh / ms {
        for bw in 0..gw / ms {
            for mh in 0..ms {
                for mw in 0..ms {
                    for c in 0..3 {
                        for _t in 0..tp {
                            for py in 0..ps {
                                let y = (bh * ms + mh) * ps + py;
                                for px in 0..ps {
                                    let x = (bw * ms + mw) * ps + px;
                                    out.push(plane[y * w + x][c]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ProcessedImage {
        pixel_values: out,
        patch_dim,
        grid_thw: [1, gh, gw],
        resized: (w, h),
        original: (img.width, img.height),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_follows_the_reference_rules() {
        // Expected values are transformers' smart_resize on the same arguments.
        // Already multiples of 28: unchanged.
        assert_eq!(smart_resize(168, 224, 28, 3136, TRAINING_MAX_PIXELS).unwrap(), (168, 224));
        // Round to the nearest multiple, halves to even (Python's round): 42/28 = 1.5 → 2, 70/28 = 2.5 → 2.
        assert_eq!(smart_resize(42, 70, 28, 56, 1 << 30).unwrap(), (56, 56));
        // A side rounding to 0 takes the min_pixels branch, as in transformers.
        assert_eq!(smart_resize(10, 1000, 28, 3136, TRAINING_MAX_PIXELS).unwrap(), (28, 560));
        // Too many pixels: scaled down, floored to multiples of 28.
        let (h, w) = smart_resize(4000, 3000, 28, 3136, TRAINING_MAX_PIXELS).unwrap();
        assert!(h * w <= TRAINING_MAX_PIXELS && h % 28 == 0 && w % 28 == 0);
        assert_eq!((h, w), (1008, 756)); // transformers' smart_resize(4000, 3000, ...)
        // Too few pixels: scaled up, ceiled.
        assert_eq!(smart_resize(20, 30, 28, 3136, TRAINING_MAX_PIXELS).unwrap(), (56, 84));
        assert!(smart_resize(1, 500, 28, 3136, TRAINING_MAX_PIXELS).is_err());
        assert!(smart_resize(0, 5, 28, 3136, TRAINING_MAX_PIXELS).is_err());
    }

    #[test]
    fn bicubic_keeps_a_flat_image_flat_and_an_identity_size_exact() {
        let flat = RgbImage::new(37, 23, [10u8, 200, 77].repeat(37 * 23)).unwrap();
        for (w, h) in [(56, 28), (12, 9), (37, 50)] {
            let r = resize_bicubic(&flat, w, h).unwrap();
            assert!(r.data.chunks_exact(3).all(|p| p == [10, 200, 77]), "{w}x{h}");
        }
        let grad = RgbImage::new(8, 4, (0..8 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect()).unwrap();
        assert_eq!(resize_bicubic(&grad, 8, 4).unwrap(), grad);
    }

    #[test]
    fn patch_layout_groups_merge_windows_and_repeats_time() {
        let cfg = PreprocessorConfig { patch_size: 2, merge_size: 2, temporal_patch_size: 2, ..Default::default() };
        // 4×4 image, values encode the pixel index in the red channel.
        let data: Vec<u8> = (0..16u8).flat_map(|i| [i * 10, 0, 0]).collect();
        let img = RgbImage::new(4, 4, data).unwrap();
        let cfg = PreprocessorConfig { min_pixels: 16, max_pixels: 16, ..cfg };
        let p = preprocess(&img, &cfg).unwrap();
        assert_eq!(p.grid_thw, [1, 2, 2]);
        assert_eq!(p.patch_dim, 3 * 2 * 2 * 2);
        let red = |v: f32| ((v * cfg.image_std[0] + cfg.image_mean[0]) * 255.0).round() as u8 / 10;
        // First patch = top-left 2×2 pixels (0,1,4,5), twice (temporal), red channel first.
        let first: Vec<u8> = p.pixel_values[..8].iter().map(|&v| red(v)).collect();
        assert_eq!(first, [0, 1, 4, 5, 0, 1, 4, 5]);
        // Second patch (same merge window, next column) = pixels 2,3,6,7.
        let second: Vec<u8> = p.pixel_values[24..28].iter().map(|&v| red(v)).collect();
        assert_eq!(second, [2, 3, 6, 7]);
        assert_eq!(p.num_tokens(2), 1);
    }
}
