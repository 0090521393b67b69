//! Model ports (candle) and what loading a Hugging Face checkpoint directory takes:
//! devices, dtypes, single or sharded safetensors, a memory check before loading.

// candle's convention: constructors take `VarBuilder` by value (it is a cheap handle).
#![allow(clippy::needless_pass_by_value)]

pub mod ops;
pub mod pil_resize;
pub mod pth;
pub mod quant;
pub mod qwen2_5_vl;
pub mod sam2;
pub mod sam3;
pub mod sam_v1;
pub mod tiny_vit;
pub mod trace;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, index) = s.split_once(':').unwrap_or((s, "0"));
        let index: usize = index.parse().map_err(|e| format!("bad device index in {s:?}: {e}"))?;
        match kind {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(index)),
            "metal" => Ok(Self::Metal(index)),
            _ => Err(format!("unknown device {s:?} (expected cpu, cuda[:N] or metal[:N])")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device; a GPU the build has no support for is a clear error.
    pub fn open(self) -> Result<Device> {
        let unavailable = |what: &str, e: candle_core::Error| {
            EngineError::InvalidRequest(format!(
                "{what} is not available ({e}); this build supports {}",
                if cfg!(feature = "cuda") {
                    "cpu and cuda"
                } else if cfg!(feature = "metal") {
                    "cpu and metal"
                } else {
                    "cpu only (build with --features cuda or metal)"
                }
            ))
        };
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) => Device::new_cuda(i).map_err(|e| unavailable(&self.to_string(), e)),
            Self::Metal(i) => Device::new_metal(i).map_err(|e| unavailable(&self.to_string(), e)),
        }
    }
}

/// How a model's weights are held and computed: a float dtype, or the language
/// model's projections quantized (activations and the vision tower in f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Float(DType),
    /// GGML Q8_0: 8-bit weights in blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// GGML Q4_K: 4-bit k-quants (4.5 bits per weight).
    Q4K,
}

impl Precision {
    /// The float dtype of activations and unquantized weights.
    pub fn dtype(self) -> DType {
        match self {
            Self::Float(d) => d,
            Self::Q8_0 | Self::Q4K => DType::F32,
        }
    }

    pub fn quantized(self) -> Option<candle_core::quantized::GgmlDType> {
        match self {
            Self::Float(_) => None,
            Self::Q8_0 => Some(candle_core::quantized::GgmlDType::Q8_0),
            Self::Q4K => Some(candle_core::quantized::GgmlDType::Q4K),
        }
    }

    /// Bytes the weights take: the `quantizable` ones of the `params` at the
    /// quantized rates (the vision tower's in bf16 where this CPU multiplies bf16
    /// natively, else at Q8_0), the rest in the float dtype.
    pub fn bytes_needed(self, params: u64, quantizable: Quantizable) -> u64 {
        self.bytes_needed_with(params, quantizable, quant::bf16::has_bf16())
    }

    /// [`Self::bytes_needed`] with the vision tower in bf16 or not.
    pub fn bytes_needed_with(self, params: u64, quantizable: Quantizable, vision_bf16: bool) -> u64 {
        let Quantizable { text, vision } = quantizable;
        let float = self.dtype().size_in_bytes() as u64;
        let rest = params.saturating_sub(text + vision) * float;
        let vision = if vision_bf16 { vision * 2 } else { vision * 34 / 32 };
        match self {
            Self::Float(_) => params * float,
            Self::Q8_0 => rest + text * 34 / 32 + vision,
            // Q4_K as our CPU kernel packs it: 4.625 bits per weight.
            Self::Q4K => rest + text * 148 / 256 + vision,
        }
    }
}

/// The arithmetic of an image encoder's projections and attention (SAM 2.1's
/// Hiera trunk). Products in bf16 with f32 sums run twice the multiply-adds per
/// cycle of f32 on CPUs with AVX-512 BF16; masks move by a fraction of a percent
/// of their pixels (`tests/sam2_parity.rs` bounds it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderPrecision {
    /// bf16 where the CPU multiplies bf16 natively, f32 elsewhere (and on GPUs).
    #[default]
    Auto,
    /// f32 throughout: what the reference computes.
    F32,
    /// bf16 products, f32 sums (plain loops where the CPU lacks AVX-512 BF16: slow).
    Bf16,
}

impl EncoderPrecision {
    /// Whether projections and attention run in bf16 on `device`.
    pub fn bf16_on(self, device: &Device) -> bool {
        match self {
            Self::Auto => device.is_cpu() && quant::bf16::has_bf16(),
            Self::F32 => false,
            Self::Bf16 => device.is_cpu(),
        }
    }
}

impl std::str::FromStr for EncoderPrecision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown encoder precision '{s}' (auto, f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for EncoderPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// Parameter counts that a quantized [`Precision`] shrinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantizable {
    /// The language model's projections, head and embedding table.
    pub text: u64,
    /// The vision tower's projections (kept at 8 bits).
    pub vision: u64,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Float(DType::F32) => write!(f, "f32"),
            Self::Float(DType::BF16) => write!(f, "bf16"),
            Self::Float(DType::F16) => write!(f, "f16"),
            Self::Float(d) => write!(f, "{d:?}"),
            Self::Q8_0 => write!(f, "q8_0"),
            Self::Q4K => write!(f, "q4k"),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            other => parse_dtype(other)
                .map(Self::Float)
                .map_err(|_unknown| format!("unknown precision {s:?} (expected f32, bf16, f16, q8_0 or q4k)")),
        }
    }
}

/// The precision to load with when the user does not choose, from measurements
/// on this project's CPU benchmark (BENCHMARKS.md): candle computes f32 several
/// times faster than bf16 on CPU, and Q8_0 projections decode faster still while
/// taking a quarter of the memory; so f32 when the whole model fits with room to
/// spare, Q8_0 otherwise. GPUs use bf16.
pub fn default_precision(device: &Device, params: u64, quantizable: Quantizable) -> Precision {
    if !device.is_cpu() {
        return Precision::Float(DType::BF16);
    }
    let f32_bytes = Precision::Float(DType::F32).bytes_needed(params, quantizable);
    match available_memory() {
        Some(free) if f32_bytes + (2 << 30) > free => Precision::Q8_0,
        _ => Precision::Float(DType::F32),
    }
}

/// Parses "f32", "bf16", "f16".
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(format!("unknown dtype {s:?} (expected f32, bf16 or f16)")),
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Refuses to load weights of `need` bytes (held as `what`) when they would not
/// fit in the memory available now (with 10 % and 512 MiB to spare).
pub fn check_memory(dir: &Path, need: u64, what: &str) -> Result<()> {
    if let Some(free) = available_memory() {
        let budget = free.saturating_sub(512 << 20) / 10 * 9;
        if need > budget {
            return Err(EngineError::Model {
                path: dir.to_owned(),
                reason: format!(
                    "{:.1} GB of {what} weights do not fit in the {:.1} GB of memory available; \
                     use --precision q8_0 or q4k, a GPU, or free memory",
                    need as f64 / 1e9,
                    free as f64 / 1e9
                ),
            });
        }
    }
    Ok(())
}

/// The safetensors files of a checkpoint: `model.safetensors`, or every shard
/// named in `model.safetensors.index.json` (each checked to exist).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |reason: String| EngineError::Model { path: dir.to_owned(), reason };
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(|e| err(format!("cannot read {}: {e}", index.display())))?;
        let parsed: Index =
            serde_json::from_str(&text).map_err(|e| err(format!("model.safetensors.index.json: {e}")))?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        let files: Vec<PathBuf> = shards.into_iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(err(format!("shard {} named in the index is missing", missing.display())));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(err("no model.safetensors or model.safetensors.index.json".into()))
}

/// Every tensor name in the files, to tell checkpoint layouts apart.
pub fn tensor_names(files: &[PathBuf]) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for f in files {
        // SAFETY: the file is mapped read-only and only its header is read here.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }
            .map_err(|e| EngineError::Model { path: f.clone(), reason: format!("not a safetensors file: {e}") })?;
        names.extend(st.tensors().into_iter().map(|(n, _)| n));
    }
    Ok(names)
}

/// Reads a JSON file of a checkpoint into `T`, naming the file on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Model {
        path: path.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::NotFound { "missing".into() } else { e.to_string() },
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Model { path: path.to_owned(), reason: e.to_string() })
}

/// Every tensor of a single-file checkpoint: a PyTorch `torch.save` archive
/// (read without executing pickle code; a state dict at the top level or under
/// `"model"`) or safetensors, told apart by their first bytes.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    read_checkpoint_where(path, device, |_| true)
}

/// [`read_checkpoint`], only the tensors whose names `keep` accepts: a file
/// holding more than one model (SAM 3's image model and video tracker) costs
/// only the memory of the part used.
pub fn read_checkpoint_where(
    path: &Path,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>> {
    let err = |reason: String| EngineError::Model { path: path.to_owned(), reason };
    if !path.is_file() {
        return Err(EngineError::NotFound { path: path.to_owned() });
    }
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(path).map_err(|e| err(e.to_string()))?, &mut head)
        .map_err(|_short| err("file too short to be a checkpoint".into()))?;
    if &head == b"PK\x03\x04" {
        pth::read_where(path, Some("model"), device, &keep)
    } else {
        // SAFETY: mapped read-only while the wanted tensors are copied out.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
            .map_err(|e| err(format!("neither a PyTorch checkpoint nor safetensors: {e}")))?;
        st.tensors()
            .into_iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, view)| {
                let t = candle_core::safetensors::Load::load(&view, device).map_err(|e| err(format!("{name}: {e}")))?;
                Ok((name, t))
            })
            .collect()
    }
}

/// Puts the checkpoint's path on a model error raised while building from tensors.
pub fn at_path(e: EngineError, path: &Path) -> EngineError {
    match e {
        EngineError::Model { reason, .. } => EngineError::Model { path: path.to_owned(), reason },
        other => other,
    }
}

/// The message of an error without the backtrace candle appends when
/// `RUST_BACKTRACE` is set: what an analyst should read.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda:1".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("metal".parse::<DeviceChoice>(), Ok(DeviceChoice::Metal(0)));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("cuda:0") && e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn memory_check_refuses_impossible_sizes_with_numbers() {
        let e = check_memory(Path::new("/m"), 1 << 52, "f32").unwrap_err().to_string();
        assert!(e.contains("/m") && e.contains("GB") && e.contains("do not fit"), "{e}");
        check_memory(Path::new("/m"), 4000, "f32").unwrap();
        // The published 7B: 33 GB in f32, 8.8 GB as Q8_0, 5.1 GB as Q4_K with its vision at
        // Q8_0; 0.63 GB more with the vision tower in bf16.
        let params = 8_292_166_656;
        let quantizable = Quantizable { text: 7_615_283_200, vision: 674_529_280 };
        assert_eq!(Precision::Float(DType::F32).bytes_needed(params, quantizable), 33_168_666_624);
        assert_eq!(Precision::Q8_0.bytes_needed_with(params, quantizable, false), 8_817_342_464);
        assert_eq!(Precision::Q4K.bytes_needed_with(params, quantizable, false), 5_128_689_664);
        assert_eq!(Precision::Q4K.bytes_needed_with(params, quantizable, true), 5_761_060_864);
        let native = Precision::Q4K.bytes_needed_with(params, quantizable, quant::bf16::has_bf16());
        assert_eq!(Precision::Q4K.bytes_needed(params, quantizable), native);
        assert_eq!("q8_0".parse::<Precision>(), Ok(Precision::Q8_0));
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Float(DType::BF16)));
        assert!("int3".parse::<Precision>().is_err());
    }

    #[test]
    fn missing_weights_and_shards_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = safetensors_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no model.safetensors"), "{e}");
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let e = safetensors_files(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model-00001-of-00002.safetensors") && e.contains("missing"), "{e}");
    }
}
