//! What the SAM parity tests share: reading the fixture cases written by
//! `tools/make_sam2_fixtures.py` and `tools/make_sam_v1_fixtures.py`, and comparing.

use std::path::Path;

use engine::base::RgbImage;
use engine::models::sam2::{ImageEmbedding, Prompt};
use serde_json::Value;

pub fn rgb_png(path: &Path) -> RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    RgbImage::new(img.width() as usize, img.height() as usize, img.into_raw()).unwrap()
}

pub fn mask_png(path: &Path) -> Vec<bool> {
    image::open(path).unwrap().to_luma8().into_raw().into_iter().map(|v| v > 127).collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A case's prompts: one per box, with its points and labels (1 positive).
pub fn prompts(case: &Value) -> Vec<Prompt> {
    let boxes = case["boxes"].as_array().unwrap();
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let b = f32s(b);
            let labels = case["labels"][i].as_array().unwrap();
            Prompt {
                bbox: Some([b[0], b[1], b[2], b[3]]),
                points: case["points"][i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(labels)
                    .map(|(p, l)| {
                        let p = f32s(p);
                        (p[0], p[1], l.as_i64().unwrap() == 1)
                    })
                    .collect(),
                mask_input: None,
            }
        })
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn agreement(a: &[bool], b: &[bool]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Channels 0–3 of the image embedding at row 10, column 20 (what the fixtures record).
pub fn embed_sample(emb: &ImageEmbedding) -> Vec<f32> {
    emb.image
        .get(0)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap()
        .narrow(1, 10, 1)
        .unwrap()
        .narrow(2, 20, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
