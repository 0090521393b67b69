//! Pixel-level reasoning: boxes become masks. `Segmenter` is what turns a prompt
//! (box, clicks, previous logits) into a mask on an image; SAM 2.1 is the real
//! one, the seeded watershed is what runs without weights. `pixel_task` is the
//! RemoteReasoner recipe: one prompt per box (box + positive centre point,
//! single-mask output), each mask kept, all OR-merged.

pub mod concept;
pub mod output;
pub mod watershed;

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use serde::{Deserialize, Serialize};

pub use crate::base::Mask;
use crate::base::PixelBox;
use crate::base::RgbImage;
use crate::base::Window;
use crate::cache::ByteLru;
use crate::error::{EngineError, Result};
use crate::models::EncoderPrecision;
use crate::models::sam_v1::{self, Backbone, SamV1};
use crate::models::sam2::{self, ImageEmbedding, Prediction, Prompt, Sam2};
use crate::models::trace::Trace;

/// Which method produced a mask: provenance for every result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// SAM 2.1 with the named geometry, e.g. `sam2.1_hiera_tiny`.
    Sam2(String),
    /// SAM v1 or MobileSAM, e.g. `sam_vit_b`, `mobile_sam`.
    SamV1(String),
    /// SAM 3 finding a concept's instances, e.g. `sam3`.
    Sam3(String),
    /// No checkpoint configured: seeded watershed on the colour gradient.
    WatershedFallback,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sam2(name) | Self::SamV1(name) | Self::Sam3(name) => write!(f, "{name}"),
            Self::WatershedFallback => write!(f, "watershed fallback (no SAM checkpoint)"),
        }
    }
}

/// One prompt's mask and what the segmenter says about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub mask: Mask,
    /// 256×256 logits to feed back for a refinement click (SAM only).
    pub low_res: Option<Vec<f32>>,
    pub iou: Option<f32>,
    pub object_score: Option<f32>,
}

/// Where an image comes from, so its encoding can be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub raster: u64,
    pub window: Window,
    /// Overview level the window was read at (0 = full resolution).
    pub level: u8,
}

/// Turns prompts on an image into masks.
pub trait Segmenter: Send {
    fn method(&self) -> Method;
    /// Makes `image` the one prompts refer to; `key` lets an encoder reuse work.
    /// Returns whether the image had to be encoded (false: taken from the cache).
    fn set_image(&mut self, key: Option<ImageKey>, image: &RgbImage) -> Result<bool>;
    /// Masks for prompts (pixels of the current image), one per prompt.
    fn segment(&mut self, prompts: &[Prompt]) -> Result<Vec<Segment>>;
}

/// Image encodings, bounded in bytes (a tiny-model encoding is 17 MB).
pub type EmbeddingCache = ByteLru<ImageKey, ImageEmbedding>;

/// A promptable Segment Anything model: SAM 2.1 (what RemoteReasoner uses) or
/// the SAM v1 / MobileSAM alternatives.
#[derive(Debug)]
pub enum SamModel {
    V2(Sam2),
    V1(SamV1),
}

impl SamModel {
    /// Loads any supported checkpoint (`.pt`/`.pth` or safetensors), telling the
    /// family apart by its tensor names.
    /// `precision` applies to SAM 2.1's image encoder.
    pub fn load(path: &Path, device: &Device, precision: EncoderPrecision) -> Result<Self> {
        let tensors = crate::models::read_checkpoint(path, device)?;
        if !Backbone::is_v1(&tensors) && !tensors.contains_key("sam_mask_decoder.iou_token.weight") {
            return Err(EngineError::Model {
                path: path.to_owned(),
                reason: "not a Segment Anything checkpoint: it has neither SAM 2.1's sam_mask_decoder.* nor SAM v1 / MobileSAM's mask_decoder.* tensors".into(),
            });
        }
        let model = if Backbone::is_v1(&tensors) {
            SamV1::from_tensors(tensors, device).map(Self::V1)
        } else {
            Sam2::from_tensors(tensors, device, precision).map(Self::V2)
        };
        model.map_err(|e| crate::models::at_path(e, path))
    }

    pub fn method(&self) -> Method {
        match self {
            Self::V2(m) => Method::Sam2(m.geometry.name().to_owned()),
            Self::V1(m) => Method::SamV1(m.backbone.name()),
        }
    }

    pub fn encode(&self, image: &RgbImage) -> Result<ImageEmbedding> {
        self.encode_traced(image, &mut Trace::off())
    }

    /// [`Self::encode`], recording the encoder's stages into `trace`.
    pub fn encode_traced(&self, image: &RgbImage, trace: &mut Trace) -> Result<ImageEmbedding> {
        match self {
            Self::V2(m) => m.encode_traced(image, trace),
            Self::V1(m) => m.encode_traced(image, trace),
        }
    }

    pub fn predict(&self, emb: &ImageEmbedding, prompts: &[Prompt], multimask: bool) -> Result<Vec<Prediction>> {
        self.predict_traced(emb, prompts, multimask, &mut Trace::off())
    }

    /// [`Self::predict`], recording the prompt encoder's and decoder's stages into `trace`.
    pub fn predict_traced(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        multimask: bool,
        trace: &mut Trace,
    ) -> Result<Vec<Prediction>> {
        match self {
            Self::V2(m) => m.predict_traced(emb, prompts, multimask, trace),
            Self::V1(m) => m.predict_traced(emb, prompts, multimask, trace),
        }
    }

    /// A prediction's low-res logits as a mask at the encoded image's size, with
    /// the model's own post-processing.
    pub fn mask(&self, emb: &ImageEmbedding, low_res: &[f32]) -> Mask {
        let (w, h) = emb.original;
        let data = match self {
            Self::V2(_) => sam2::upscale_mask(low_res, (w, h)),
            Self::V1(_) => sam_v1::upscale_mask(low_res, emb.input_size, (w, h)),
        };
        Mask { width: w, height: h, data }
    }
}

/// A SAM with an embedding cache.
#[derive(Debug)]
pub struct SamSegmenter {
    model: SamModel,
    pub cache: EmbeddingCache,
    current: Option<Arc<ImageEmbedding>>,
}

impl SamSegmenter {
    /// Default memory cap of the embedding cache (a tiny-model encoding is 17 MB).
    pub const DEFAULT_CACHE_BYTES: usize = 512 << 20;

    pub fn load(path: &Path, device: &Device, precision: EncoderPrecision) -> Result<Self> {
        Ok(Self::new(SamModel::load(path, device, precision)?))
    }

    pub fn new(model: SamModel) -> Self {
        Self { model, cache: EmbeddingCache::new(Self::DEFAULT_CACHE_BYTES), current: None }
    }
}

impl Segmenter for SamSegmenter {
    fn method(&self) -> Method {
        self.model.method()
    }

    fn set_image(&mut self, key: Option<ImageKey>, image: &RgbImage) -> Result<bool> {
        if let Some(k) = key
            && let Some(emb) = self.cache.get(&k)
            && emb.original == (image.width, image.height)
        {
            self.current = Some(emb);
            return Ok(false);
        }
        let emb = Arc::new(self.model.encode(image)?);
        if let Some(k) = key {
            self.cache.insert(k, emb.clone());
        }
        self.current = Some(emb);
        Ok(true)
    }

    fn segment(&mut self, prompts: &[Prompt]) -> Result<Vec<Segment>> {
        let emb =
            self.current.clone().ok_or_else(|| EngineError::InvalidRequest("no image set for segmentation".into()))?;
        // Prompts decode together when they have the same shape (the pixel task's boxes do).
        let same_shape = prompts.windows(2).all(|p| {
            p[0].points.len() == p[1].points.len()
                && p[0].bbox.is_some() == p[1].bbox.is_some()
                && p[0].mask_input.is_some() == p[1].mask_input.is_some()
        });
        let preds = if same_shape {
            self.model.predict(&emb, prompts, false)?
        } else {
            let mut all = Vec::with_capacity(prompts.len());
            for p in prompts {
                all.extend(self.model.predict(&emb, std::slice::from_ref(p), false)?);
            }
            all
        };
        Ok(preds
            .into_iter()
            .map(|p| Segment {
                mask: self.model.mask(&emb, &p.low_res),
                iou: Some(p.iou),
                object_score: p.object_score,
                low_res: Some(p.low_res),
            })
            .collect())
    }
}

/// The watershed fallback.
#[derive(Debug, Default)]
pub struct WatershedSegmenter {
    image: Option<(RgbImage, Vec<u16>)>,
}

impl Segmenter for WatershedSegmenter {
    fn method(&self) -> Method {
        Method::WatershedFallback
    }

    fn set_image(&mut self, _key: Option<ImageKey>, image: &RgbImage) -> Result<bool> {
        let g = watershed::gradient(image);
        self.image = Some((image.clone(), g));
        Ok(true)
    }

    fn segment(&mut self, prompts: &[Prompt]) -> Result<Vec<Segment>> {
        let (img, g) =
            self.image.as_ref().ok_or_else(|| EngineError::InvalidRequest("no image set for segmentation".into()))?;
        prompts
            .iter()
            .map(|p| {
                let bbox = p.bbox.ok_or_else(|| {
                    EngineError::InvalidRequest("the watershed fallback needs a box around the object".into())
                })?;
                let data = watershed::segment(img, g, bbox, &p.points);
                Ok(Segment {
                    mask: Mask { width: img.width, height: img.height, data },
                    low_res: None,
                    iou: None,
                    object_score: None,
                })
            })
            .collect()
    }
}

/// A segmenter from a checkpoint path, or the fallback without one.
pub fn load_segmenter(path: Option<&Path>, device: &Device, precision: EncoderPrecision) -> Result<Box<dyn Segmenter>> {
    Ok(match path {
        Some(p) => Box::new(SamSegmenter::load(p, device, precision)?),
        None => Box::new(WatershedSegmenter::default()),
    })
}

/// The pixel task's result.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelResult {
    /// Every box's mask, OR-merged.
    pub merged: Mask,
    /// One per box, in order.
    pub per_box: Vec<(PixelBox, Segment)>,
    pub method: Method,
    /// Whether the image was encoded for this call (false: the encoding was cached).
    pub encoded: bool,
}

/// Clips a box to a `width`×`height` image. `None` (with the reason) when nothing
/// of it is left: wholly outside, or no area.
pub fn clip_box(b: PixelBox, width: usize, height: usize) -> std::result::Result<PixelBox, String> {
    if !(b.x1.is_finite() && b.y1.is_finite() && b.x2.is_finite() && b.y2.is_finite()) {
        return Err("has a non-finite coordinate".into());
    }
    let (x1, x2) = (b.x1.min(b.x2), b.x1.max(b.x2));
    let (y1, y2) = (b.y1.min(b.y2), b.y1.max(b.y2));
    let c = PixelBox {
        x1: x1.clamp(0.0, width as f64),
        y1: y1.clamp(0.0, height as f64),
        x2: x2.clamp(0.0, width as f64),
        y2: y2.clamp(0.0, height as f64),
    };
    if c.width() <= 0.0 || c.height() <= 0.0 {
        return Err(if x2 - x1 <= 0.0 || y2 - y1 <= 0.0 {
            "has zero area".into()
        } else {
            format!("lies outside the {width}×{height} image")
        });
    }
    Ok(c)
}

/// RemoteReasoner's box → mask step: for each box (pixels of `image`), the box
/// plus a positive point at its centre, single-mask output; no boxes → an empty
/// mask and the segmenter is not run. Boxes are clipped to the image.
pub fn pixel_task(
    seg: &mut dyn Segmenter,
    key: Option<ImageKey>,
    image: &RgbImage,
    boxes: &[PixelBox],
) -> Result<PixelResult> {
    let (w, h) = (image.width, image.height);
    let method = seg.method();
    if boxes.is_empty() {
        return Ok(PixelResult { merged: Mask::empty(w, h), per_box: Vec::new(), method, encoded: false });
    }
    let clipped = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| clip_box(*b, w, h).map_err(|e| EngineError::InvalidRequest(format!("box {} {e}", i + 1))))
        .collect::<Result<Vec<_>>>()?;
    let prompts: Vec<Prompt> = clipped.iter().map(|b| box_prompt(*b, &[])).collect();
    let encoded = seg.set_image(key, image)?;
    let segments = seg.segment(&prompts)?;
    let merged = Mask::union(w, h, segments.iter().map(|s| &s.mask));
    Ok(PixelResult { merged, per_box: clipped.into_iter().zip(segments).collect(), method, encoded })
}

/// The prompt for a box (pixels of the image): with no points of its own,
/// RemoteReasoner's recipe — the box plus a positive point at its centre; with
/// points, the box and exactly those points, as `SAM2ImagePredictor.predict(box,
/// point_coords)` gets them. (Adding the centre to given points would prompt SAM
/// with a point the analyst never placed, twice when they placed it themselves.)
pub fn box_prompt(b: PixelBox, points: &[(f32, f32, bool)]) -> Prompt {
    let points = if points.is_empty() {
        let (cx, cy) = b.center();
        vec![(cx as f32, cy as f32, true)]
    } else {
        points.to_vec()
    };
    Prompt { bbox: Some([b.x1 as f32, b.y1 as f32, b.x2 as f32, b.y2 as f32]), points, mask_input: None }
}

/// A click on an existing mask: the box and centre point again, the new
/// positive/negative points, and the previous logits as the mask input (SAM);
/// the fallback re-floods with the extra seeds.
pub fn refine(
    seg: &mut dyn Segmenter,
    bbox: PixelBox,
    previous: Option<&Segment>,
    clicks: &[(f32, f32, bool)],
) -> Result<Segment> {
    let (cx, cy) = bbox.center();
    let mut points = vec![(cx as f32, cy as f32, true)];
    points.extend_from_slice(clicks);
    let prompt = Prompt {
        bbox: Some([bbox.x1 as f32, bbox.y1 as f32, bbox.x2 as f32, bbox.y2 as f32]),
        points,
        mask_input: previous.and_then(|p| p.low_res.clone()),
    };
    seg.segment(std::slice::from_ref(&prompt))?
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Internal("the segmenter returned no mask".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ByteSize;

    #[test]
    fn embedding_cache_evicts_least_recently_used_past_its_byte_cap() {
        let dev = Device::Cpu;
        let emb = || {
            Arc::new(ImageEmbedding {
                image: candle_core::Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &dev).unwrap(),
                high_res: Some((
                    candle_core::Tensor::zeros((1, 2, 2, 2), candle_core::DType::F32, &dev).unwrap(),
                    candle_core::Tensor::zeros((1, 2, 2, 2), candle_core::DType::F32, &dev).unwrap(),
                )),
                original: (8, 8),
                input_size: (1024, 1024),
                side: None,
            })
        };
        let one = emb().byte_size();
        assert_eq!(one, (16 + 8 + 8) * 4);
        let key = |x| ImageKey { raster: 1, window: Window { x, y: 0, width: 8, height: 8 }, level: 0 };
        let mut cache = EmbeddingCache::new(one * 2);
        cache.insert(key(0), emb());
        cache.insert(key(1), emb());
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recent
        cache.insert(key(2), emb());
        assert_eq!((cache.len(), cache.bytes()), (2, one * 2));
        assert!(cache.get(&key(1)).is_none() && cache.get(&key(0)).is_some() && cache.get(&key(2)).is_some());
    }

    #[test]
    fn boxes_are_clipped_or_refused_with_a_reason() {
        let b = |x1, y1, x2, y2| PixelBox { x1, y1, x2, y2 };
        assert_eq!(clip_box(b(-10.0, 5.0, 50.0, 200.0), 100, 80), Ok(b(0.0, 5.0, 50.0, 80.0)));
        assert_eq!(clip_box(b(50.0, 60.0, 10.0, 20.0), 100, 80), Ok(b(10.0, 20.0, 50.0, 60.0)));
        assert!(clip_box(b(200.0, 0.0, 300.0, 10.0), 100, 80).unwrap_err().contains("outside"));
        assert!(clip_box(b(5.0, 5.0, 5.0, 50.0), 100, 80).unwrap_err().contains("zero area"));
        assert!(clip_box(b(f64::NAN, 5.0, 5.0, 50.0), 100, 80).is_err());
    }

    #[test]
    fn no_boxes_give_an_empty_mask_without_running_the_segmenter() {
        struct Panics;
        impl Segmenter for Panics {
            fn method(&self) -> Method {
                Method::WatershedFallback
            }
            fn set_image(&mut self, _: Option<ImageKey>, _: &RgbImage) -> Result<bool> {
                panic!("must not run")
            }
            fn segment(&mut self, _: &[Prompt]) -> Result<Vec<Segment>> {
                panic!("must not run")
            }
        }
        let img = RgbImage::new(4, 3, vec![0; 36]).unwrap();
        let r = pixel_task(&mut Panics, None, &img, &[]).unwrap();
        assert_eq!((r.merged.count(), r.merged.width, r.merged.height, r.per_box.len()), (0, 4, 3, 0));
    }
}
