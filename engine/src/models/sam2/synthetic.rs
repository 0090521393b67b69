//! Seeded weights for tests and benchmarks, identical to those
//! `tools/make_sam2_fixtures.py` gives PyTorch: value i of a tensor is
//! `centre + amplitude · (2·U(offset + i) − 1)` with `U` a counter-based
//! splitmix64 stream. A real checkpoint (156 MB for tiny) never needs committing.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Deserialize)]
struct Spec {
    seed: u64,
    golden: u64,
    tensors: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    offset: u64,
    centre: f64,
    amplitude: f64,
}

/// `U(n)` in [0, 1).
pub fn splitmix_uniform(seed: u64, golden: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add((n + 1).wrapping_mul(golden));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The tensors a `weights.json` describes.
pub fn weights_from_spec(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Model { path: path.to_owned(), reason: e.to_string() })?;
    let spec: Spec =
        serde_json::from_str(&text).map_err(|e| EngineError::Model { path: path.to_owned(), reason: e.to_string() })?;
    let mut out = HashMap::with_capacity(spec.tensors.len());
    for e in spec.tensors {
        let n: usize = e.shape.iter().product();
        let values: Vec<f32> = (0..n as u64)
            .map(|i| {
                (e.centre + e.amplitude * (2.0 * splitmix_uniform(spec.seed, spec.golden, e.offset + i) - 1.0)) as f32
            })
            .collect();
        out.insert(e.name, Tensor::from_vec(values, e.shape, device)?);
    }
    Ok(out)
}

/// Writes the tensors a `weights.json` describes as a safetensors checkpoint at
/// `out`: a seeded model file that loads through the same path as a user's.
pub fn save_checkpoint(spec: &Path, out: &Path) -> Result<()> {
    let weights = weights_from_spec(spec, &Device::Cpu)?;
    candle_core::safetensors::save(&weights, out)
        .map_err(|e| EngineError::Model { path: out.to_owned(), reason: e.to_string() })
}
