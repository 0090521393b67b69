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

/// The tensors the pickled state dict (under `key`) describes whose names `keep`
/// accepts (the others are not even decoded: a storage type candle does not
/// know, as a complex RoPE table, is no error when unwanted).
fn tensor_infos(path: &Path, key: Option<&str>, keep: &dyn Fn(&str) -> bool) -> Result<Vec<TensorInfo>> {
    use candle_core::pickle::{Object, Stack};
    let mut zip = open_zip(path)?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad(path, "no data.pkl in the archive"))?;
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let mut stack = Stack::empty();
    let mut pickle = Vec::new();
    let entry = zip.by_name(&pkl).map_err(|e| bad(path, e))?;
    entry.take(MAX_PICKLE + 1).read_to_end(&mut pickle).map_err(|e| bad(path, e))?;
    if pickle.len() as u64 > MAX_PICKLE {
        return Err(bad(path, format!("its data.pkl is over {} MiB", MAX_PICKLE >> 20)));
    }
    check_pickle(&pickle).map_err(|e| bad(path, e))?;
    stack.read_loop(&mut std::io::Cursor::new(&pickle)).map_err(|e| bad(path, e))?;
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
        if let Object::Unicode(n) = &name
            && !keep(n)
        {
            continue;
        }
        if let Some(info) = value.into_tensor_info(name, &dir).map_err(|e| bad(path, e))? {
            infos.push(info);
        }
    }
    Ok(infos)
}

/// Every tensor of the state dict stored under `key` (e.g. `"model"`, as SAM 2.1
/// checkpoints hold it), or of the top-level dict when `key` is `None` or the
/// file has no such entry (plain state dicts, as SAM v1 and MobileSAM ship).
/// A state dict's pickle is kilobytes to a few megabytes; more is not a checkpoint.
const MAX_PICKLE: u64 = 256 << 20;

/// Walks the opcodes candle's pickle reader knows and checks that every length
/// it would allocate for (a string's) fits in the bytes that remain: candle
/// allocates first, so a 4 KB file declaring a 4 GB string would take the
/// process down (found by fuzzing, `tests/fixtures/fuzz/pt_reader`). Opcodes it
/// does not know end the walk: candle refuses them itself.
fn check_pickle(p: &[u8]) -> std::result::Result<(), String> {
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> std::result::Result<usize, String> {
        let start = *i;
        *i = start.checked_add(n).filter(|&e| e <= p.len()).ok_or("the pickle ends inside an instruction")?;
        Ok(start)
    };
    let le = |b: &[u8]| b.iter().rev().fold(0usize, |v, &x| (v << 8) | usize::from(x));
    while i < p.len() {
        let op = p[i];
        i += 1;
        match op {
            // b'.' (STOP) ends the pickle; other opcodes carry no text to bound.
            0x80 | b'q' | b'h' | b'K' => drop(take(&mut i, 1)?),
            b'M' => drop(take(&mut i, 2)?),
            b'r' | b'j' | b'J' => drop(take(&mut i, 4)?),
            b'G' => drop(take(&mut i, 8)?),
            b'X' => {
                let at = take(&mut i, 4)?;
                let len = le(&p[at..at + 4]);
                take(&mut i, len).map_err(|_short| format!("a string of {len} bytes where {} remain", p.len() - i))?;
            }
            0x8a => {
                let at = take(&mut i, 1)?;
                take(&mut i, usize::from(p[at]))?;
            }
            b'c' => {
                for _ in 0..2 {
                    let nl = p[i..].iter().position(|&b| b == b'\n').ok_or("a global without its line end")?;
                    i += nl + 1;
                }
            }
            b')' | b'R' | b'(' | b't' | b'Q' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | b'N' | b's' | b'u' | b'}' | b'd'
            | b'b' | 0x81 | b']' | b'a' | b'e' => {}
            _ => return Ok(()),
        }
    }
    Ok(())
}

pub fn read(path: &Path, key: Option<&str>, device: &Device) -> Result<HashMap<String, Tensor>> {
    read_where(path, key, device, &|_| true)
}

/// [`read`], only the tensors whose names `keep` accepts (the rest is not read).
pub fn read_where(
    path: &Path,
    key: Option<&str>,
    device: &Device,
    keep: &dyn Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>> {
    let infos = tensor_infos(path, key, keep)?;
    if infos.is_empty() {
        return Err(bad(path, "it holds no tensors of the model being loaded"));
    }
    let mut zip = open_zip(path)?;
    let file_len = std::fs::metadata(path).map_err(|e| bad(path, e))?.len();
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = HashMap::with_capacity(infos.len());
    for info in infos {
        let storage = match storages.get(&info.path) {
            Some(s) => s.clone(),
            None => {
                let entry = zip.by_name(&info.path).map_err(|e| bad(path, format!("{}: {e}", info.path)))?;
                // The sizes in a zip are the file's word, not facts: torch stores entries
                // uncompressed, so one cannot hold more than the file (allow 64× for a
                // compressed one), and no more than the declared size is read.
                let size = entry.size();
                if size > file_len.saturating_mul(64) {
                    return Err(bad(path, format!("{} claims {size} bytes in a file of {file_len}", info.path)));
                }
                let mut bytes = Vec::with_capacity(size.min(file_len) as usize);
                entry.take(size).read_to_end(&mut bytes).map_err(|e| bad(path, e))?;
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
    // Check the view against its storage before allocating for it: the layout comes from the file.
    let last =
        shape.iter().zip(strides).try_fold(start, |acc, (&n, &s)| acc.checked_add(n.saturating_sub(1).checked_mul(s)?));
    if last.is_none_or(|l| l >= storage.elem_count()) || numel > u32::MAX as usize {
        return Err(candle_core::Error::Msg(format!(
            "a view of shape {shape:?} with strides {strides:?} from offset {start} reaches past its {} stored values",
            storage.elem_count()
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_declaring_more_than_they_hold_are_refused_before_allocating() {
        // PROTO 2, BINUNICODE of 0xFFFF_FFF0 bytes with 3 present, STOP.
        let mut p = vec![0x80, 2, b'X'];
        p.extend(0xFFFF_FFF0u32.to_le_bytes());
        p.extend(b"abc.");
        let e = check_pickle(&p).unwrap_err();
        assert!(e.contains("4294967280"), "{e}");
        // A well-formed one: PROTO 2, EMPTY_DICT, BINUNICODE "ab", BININT1 7, SETITEM, STOP.
        let ok = [0x80, 2, b'}', b'X', 2, 0, 0, 0, b'a', b'b', b'K', 7, b's', b'.'];
        assert!(check_pickle(&ok).is_ok());
        assert!(check_pickle(&[b'J', 1, 2]).is_err(), "cut inside an instruction");
    }

    #[test]
    fn views_past_their_storage_are_refused() {
        let storage = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap();
        let ok = candle_core::Layout::new((2, 3).into(), vec![1, 2], 0);
        assert_eq!(strided(&storage, &ok).unwrap().dims(), &[2, 3]);
        let past = candle_core::Layout::new((2, 3).into(), vec![1, 3], 0);
        assert!(strided(&storage, &past).is_err());
        let huge = candle_core::Layout::new((1 << 40, 1 << 30).into(), vec![1, 1 << 20], 0);
        assert!(strided(&storage, &huge).is_err());
    }
}
