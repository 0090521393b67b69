//! PyTorch checkpoints (`torch.save` zip archives) read without running pickle
//! code: candle's pickle interpreter lists the tensors (it only understands the
//! opcodes a state dict needs and builds no Python objects), and the storages are
//! read here, honouring each tensor's dtype, storage offset and strides.
//!
//! The archive is opened with its offset fixed at 0 (torch's archives start at
//! byte 0): the zip crate's own archive-offset detection rejected a valid 156 MB
//! SAM 2.1 checkpoint written by torch 2.15 ("Invalid Central Directory header"),
//! and candle's `read_pth_tensor_info` opens archives that way.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::pickle::TensorInfo;
use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};

fn bad(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Model { path: path.to_owned(), reason: format!("not a readable PyTorch checkpoint: {reason}") }
}

fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
    zip::ZipArchive::with_config(config, std::io::BufReader::new(file)).map_err(|e| bad(path, e))
}

/// The tensors the pickled state dict (under `key`) describes.
fn tensor_infos(path: &Path, key: Option<&str>) -> Result<Vec<TensorInfo>> {
    use candle_core::pickle::{Object, Stack};
    let mut zip = open_zip(path)?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let mut stack = Stack::empty();
    let entry = zip.by_name(&pkl).map_err(|e| bad(path, e))?;
    stack.read_loop(&mut std::io::BufReader::new(entry)).map_err(|e| bad(path, e))?;
    let mut obj = stack.finalize().map_err(|e| bad(path, e))?;
    if let Some(key) = key
        && let Object::Dict(entries) = &obj
        && let Some(i) = entries.iter().position(|(k, _)| *k == Object::Unicode(key.to_owned()))
        && let Object::Dict(mut entries) = obj
    {
        obj = entries.swap_remove(i).1;
    }
    let Object::Dict(entries) = obj else { return Err(bad(path, "no state dict")) };
    let mut infos = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if let Some(info) = value.into_tensor_info(name, &dir).map_err(|e| bad(path, e))? {
            infos.push(info);
        }
    }
    Ok(infos)
}

/// Every tensor of the state dict stored under `key` (e.g. `"model"`, as SAM 2.1
/// checkpoints hold it), or of the top-level dict when `key` is `None` or the
/// file has no such entry (plain state dicts, as SAM v1 and MobileSAM ship).
pub fn read(path: &Path, key: Option<&str>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let infos = tensor_infos(path, key)?;
    if infos.is_empty() {
        return Err(bad(path, "it holds no tensors"));
    }
    let mut zip = open_zip(path)?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = HashMap::with_capacity(infos.len());
    for info in infos {
        let storage = match storages.get(&info.path) {
            Some(s) => s.clone(),
            None => {
                let mut entry = zip.by_name(&info.path).map_err(|e| bad(path, format!("{}: {e}", info.path)))?;
                let mut bytes = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut bytes).map_err(|e| bad(path, e))?;
                let n = bytes.len() / info.dtype.size_in_bytes();
                let s = Tensor::from_raw_buffer(&bytes, info.dtype, &[n], &Device::Cpu).map_err(|e| bad(path, e))?;
                storages.insert(info.path.clone(), s.clone());
                s
            }
        };
        let tensor = strided(&storage, &info.layout).map_err(|e| bad(path, format!("{}: {e}", info.name)))?;
        out.insert(info.name, tensor.to_device(device)?);
    }
    Ok(out)
}

/// The elements of a 1-D `storage` that `layout` (shape, strides in elements,
/// start offset in bytes, as candle's reader reports it) selects.
fn strided(storage: &Tensor, layout: &candle_core::Layout) -> candle_core::Result<Tensor> {
    let shape = layout.shape().dims().to_vec();
    let numel: usize = shape.iter().product();
    let start = layout.start_offset() / storage.dtype().size_in_bytes();
    if layout.is_contiguous() {
        return storage.narrow(0, start, numel)?.reshape(shape);
    }
    let strides = layout.stride();
    let mut index = Vec::with_capacity(numel);
    let mut pos = vec![0usize; shape.len()];
    for _ in 0..numel {
        index.push((start + pos.iter().zip(strides).map(|(p, s)| p * s).sum::<usize>()) as u32);
        for d in (0..shape.len()).rev() {
            pos[d] += 1;
            if pos[d] < shape[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    let index = Tensor::from_vec(index, numel, storage.device())?;
    let dtype = storage.dtype();
    // index_select has no kernel for every dtype: gather through f32 when needed.
    let gathered = match dtype {
        DType::F16 | DType::BF16 => storage.to_dtype(DType::F32)?.index_select(&index, 0)?.to_dtype(dtype)?,
        _ => storage.index_select(&index, 0)?,
    };
    gathered.reshape(shape)
}
