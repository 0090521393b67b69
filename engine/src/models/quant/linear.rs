//! A linear layer whose weight is float or quantised (our CPU kernels, or
//! candle's elsewhere), and a token-embedding table quantised by rows: how every
//! model's projections load when a quantized precision is asked for.

use std::sync::Arc;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::Source;
use super::bf16::{self, Bf16Linear};
use super::int4::Int4Weight;
use super::int8::Int8Weight;

/// How projections are quantised as they load, and where their bytes are.
#[derive(Clone)]
pub(crate) struct Quantize {
    pub dtype: GgmlDType,
    /// The checkpoint's mapped tensors: on the CPU a projection is packed straight
    /// from them, block by block, so no float copy of it is ever made.
    raw: Option<Arc<Raw>>,
}

/// Mapped safetensors and the name a `VarBuilder` path has in them.
pub(crate) struct Raw {
    pub files: Arc<MmapedSafetensors>,
    pub rename: Box<dyn Fn(&str) -> String + Send + Sync>,
}

/// The same mapped files as a `VarBuilder` backend, so the float tensors and the
/// packed projections come from one mapping (candle implements the backend for
/// the files themselves, not for a shared handle).
pub(crate) struct SharedFiles(pub Arc<MmapedSafetensors>);

impl candle_nn::var_builder::SimpleBackend for SharedFiles {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
        candle_nn::var_builder::SimpleBackend::get(&*self.0, s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &candle_core::Device) -> Result<Tensor> {
        candle_nn::var_builder::SimpleBackend::get_unchecked(&*self.0, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        candle_nn::var_builder::SimpleBackend::contains_tensor(&*self.0, name)
    }
}

impl std::fmt::Debug for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Quantize({:?}, raw: {})", self.dtype, self.raw.is_some())
    }
}

impl Quantize {
    pub(crate) fn new(dtype: GgmlDType, raw: Option<Raw>) -> Self {
        Self { dtype, raw: raw.map(Arc::new) }
    }

    /// The same source at another format (the vision tower keeps 8 bits).
    pub(crate) fn with_dtype(&self, dtype: GgmlDType) -> Self {
        Self { dtype, raw: self.raw.clone() }
    }

    /// Runs `f` on `name` (`[n, k]`) as the mapped file holds it, if it is there
    /// as a float tensor of that shape.
    fn with_raw<R>(&self, name: &str, n: usize, k: usize, f: impl FnOnce(Source<'_>) -> R) -> Result<Option<R>> {
        let Some(raw) = &self.raw else { return Ok(None) };
        let Ok(view) = raw.files.get(&(raw.rename)(name)) else { return Ok(None) };
        if view.shape() != [n, k] {
            candle_core::bail!("{name}: shape {:?} in the checkpoint, [{n}, {k}] expected", view.shape())
        }
        let source = match DType::try_from(view.dtype())? {
            DType::BF16 => Source::Bf16(view.data()),
            DType::F16 => Source::F16(view.data()),
            DType::F32 => Source::F32Bytes(view.data()),
            _ => return Ok(None),
        };
        Ok(Some(f(source)))
    }

    /// Runs `f` on `name` (`[n, k]`): from the mapped file, or loaded through `vb`.
    fn with_weight<R>(&self, vb: &VarBuilder, n: usize, k: usize, f: impl FnOnce(Source<'_>) -> R) -> Result<R> {
        let mut f = Some(f);
        let name = format!("{}.weight", vb.prefix());
        if let Some(r) = self.with_raw(&name, n, k, |s| f.take().map(|f| f(s)))?.flatten() {
            return Ok(r);
        }
        let w = vb.get((n, k), "weight")?.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("{name}: the weight did not load as contiguous f32 on the CPU")
        };
        let f = f.take().expect("called at most once");
        Ok(f(Source::F32(&values[start..end])))
    }

    fn pack(&self, source: Source<'_>, n: usize, k: usize) -> CpuQuant {
        if self.dtype == GgmlDType::Q4K {
            CpuQuant::Int4(Arc::new(Int4Weight::pack(source, n, k)))
        } else {
            CpuQuant::Int8(Arc::new(Int8Weight::pack(source, n, k)))
        }
    }
}

/// Rows of input from which a quantized projection dequantizes its weight and
/// runs a float GEMM instead of the quantized vector kernel (prefill).
const DEQUANTIZE_FROM_ROWS: usize = 16;

/// A projection whose weight is a float tensor, or quantized (e.g. Q8_0) to
/// halve-or-better the bytes decoding reads per token on CPU.
#[derive(Debug, Clone)]
pub(crate) enum Proj {
    Float(candle_nn::Linear),
    Quantized {
        weight: QMatMul,
        qtensor: Arc<QTensor>,
        bias: Option<Tensor>,
    },
    /// Q8_0 or Q4_K on the CPU: our kernels ([`crate::models::quant`]), for one
    /// row (decode) and many (prefill).
    Cpu {
        weight: CpuQuant,
        bias: Option<Tensor>,
    },
    /// bf16 through AVX-512 BF16 (`Quantize` at `GgmlDType::BF16` on a CPU that
    /// has it): the vision tower's wide products, bias added as tiles are stored.
    Bf16(Arc<Bf16Linear>),
}

/// A weight for [`crate::models::quant`], run as a candle op on the last dimension.
#[derive(Debug, Clone)]
pub(crate) enum CpuQuant {
    Int8(Arc<Int8Weight>),
    Int4(Arc<Int4Weight>),
}

impl CpuQuant {
    fn dims(&self) -> (usize, usize) {
        match self {
            Self::Int8(w) => (w.in_dim(), w.out_dim()),
            Self::Int4(w) => (w.in_dim(), w.out_dim()),
        }
    }
}

impl CustomOp1 for CpuQuant {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else { candle_core::bail!("quantized projection: f32 input expected") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized projection: the input must be contiguous")
        };
        let (k, n) = self.dims();
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("quantized projection: input {:?} does not end in {k}", layout.shape())
        }
        let m = (end - start) / k;
        let mut y = vec![0f32; m * n];
        match self {
            Self::Int8(w) => w.matmul(&x[start..end], m, &mut y),
            Self::Int4(w) => w.matmul(&x[start..end], m, &mut y),
        }
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

impl Proj {
    pub(crate) fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        quantize: Option<&Quantize>,
    ) -> Result<Self> {
        let Some(q) = quantize else {
            return Ok(Self::Float(candle_nn::linear_b(in_dim, out_dim, bias, vb)?));
        };
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        if q.dtype == GgmlDType::BF16 && vb.device().is_cpu() && bf16::has_bf16() {
            let b = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            let linear =
                q.with_weight(&vb, out_dim, in_dim, |source| Bf16Linear::pack(source, out_dim, in_dim, b, false))?;
            return Ok(Self::Bf16(Arc::new(linear?)));
        }
        let ours = matches!(q.dtype, GgmlDType::Q8_0 | GgmlDType::Q4K) && vb.device().is_cpu();
        if ours {
            let weight = q.with_weight(&vb, out_dim, in_dim, |source| q.pack(source, out_dim, in_dim))?;
            return Ok(Self::Cpu { weight, bias });
        }
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let qtensor = Arc::new(QTensor::quantize(&weight.to_dtype(DType::F32)?, q.dtype)?);
        Ok(Self::Quantized { weight: QMatMul::from_arc(qtensor.clone())?, qtensor, bias })
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(l) => l.forward(xs),
            Self::Bf16(l) => l.forward(xs),
            Self::Cpu { weight, bias } => {
                let ys = xs.contiguous()?.apply_op1_no_bwd(weight)?;
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
            Self::Quantized { weight, qtensor, bias } => {
                let rows = xs.elem_count() / xs.dim(D::Minus1)?;
                let ys = if rows >= DEQUANTIZE_FROM_ROWS {
                    // Many rows: a float GEMM on the dequantized weight beats the vector kernel.
                    let w = qtensor.dequantize(xs.device())?;
                    candle_nn::Linear::new(w, None).forward(xs)?
                } else {
                    weight.forward(&xs.contiguous()?)?
                };
                match bias {
                    Some(b) => ys.broadcast_add(b),
                    None => Ok(ys),
                }
            }
        }
    }
}

/// A token-embedding table quantised by rows with candle's GGML blocks and looked
/// up a row at a time: the 7B's table is 1.1 GB in bf16, 0.31 GB as Q4_K (what
/// llama.cpp's Q4_K_M keeps), 0.58 GB as Q8_0.
#[derive(Clone)]
pub(crate) struct QuantTable {
    vocab: usize,
    hidden: usize,
    blocks: TableBlocks,
}

#[derive(Clone)]
enum TableBlocks {
    Q8(Arc<Vec<BlockQ8_0>>),
    Q4K(Arc<Vec<BlockQ4K>>),
}

impl std::fmt::Debug for QuantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.blocks {
            TableBlocks::Q8(_) => "Q8_0",
            TableBlocks::Q4K(_) => "Q4_K",
        };
        write!(f, "QuantTable({}×{}, {kind})", self.vocab, self.hidden)
    }
}

impl QuantTable {
    /// Quantises `vb`'s `weight` (`[vocab, hidden]`) as `q` asks (Q4_K where rows
    /// split into its 256-value blocks, else Q8_0; `None` if not even into 32s).
    pub(crate) fn new(vocab: usize, hidden: usize, vb: &VarBuilder, q: &Quantize) -> Result<Option<Self>> {
        let blocks = if q.dtype == GgmlDType::Q4K && hidden.is_multiple_of(BlockQ4K::BLCK_SIZE) {
            q.with_weight(vb, vocab, hidden, |s| TableBlocks::Q4K(Arc::new(quantize_table(s, vocab, hidden))))?
        } else if hidden.is_multiple_of(BlockQ8_0::BLCK_SIZE) {
            q.with_weight(vb, vocab, hidden, |s| TableBlocks::Q8(Arc::new(quantize_table(s, vocab, hidden))))?
        } else {
            return Ok(None);
        };
        Ok(Some(Self { vocab, hidden, blocks }))
    }

    /// The rows of `ids` (any shape) as f32, shaped `ids.shape() × hidden`.
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let mut out = vec![0f32; flat.len() * self.hidden];
        for (&id, row) in flat.iter().zip(out.chunks_exact_mut(self.hidden)) {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {}", self.vocab)
            }
            match &self.blocks {
                TableBlocks::Q8(b) => dequantize_row(b, id, row),
                TableBlocks::Q4K(b) => dequantize_row(b, id, row),
            }
        }
        let mut dims = ids.dims().to_vec();
        dims.push(self.hidden);
        Tensor::from_vec(out, dims, ids.device())
    }
}

/// Every row of `source` in GGML blocks of `T`, rows in parallel.
fn quantize_table<T: GgmlType>(source: Source<'_>, vocab: usize, hidden: usize) -> Vec<T> {
    let per_row = hidden / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); vocab * per_row];
    blocks.par_chunks_mut(per_row).enumerate().for_each(|(row, out)| {
        let mut buf = vec![0f32; hidden];
        source.read(row * hidden, &mut buf);
        T::from_float(&buf, out);
    });
    blocks
}

fn dequantize_row<T: GgmlType>(blocks: &[T], id: usize, row: &mut [f32]) {
    let per_row = row.len() / T::BLCK_SIZE;
    T::to_float(&blocks[id * per_row..(id + 1) * per_row], row);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;

    /// Rows looked up from the quantised table are the table's rows to within the
    /// format's rounding, in the shape of the ids; an id past the vocabulary is an error.
    #[test]
    fn quantized_table_looks_up_rows_and_refuses_unknown_ids() {
        let (vocab, hidden) = (40, 512);
        let values = crate::models::quant::testing::random(vocab * hidden, 3);
        let table = Tensor::from_vec(values.clone(), (vocab, hidden), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(HashMap::from([("weight".to_owned(), table)]), DType::F32, &Device::Cpu);
        for (dtype, tolerance) in [(GgmlDType::Q8_0, 0.005), (GgmlDType::Q4K, 0.04)] {
            let t = QuantTable::new(vocab, hidden, &vb, &Quantize::new(dtype, None)).unwrap().unwrap();
            let ids = Tensor::new(&[[3u32, 39, 0]], &Device::Cpu).unwrap();
            let rows = t.forward(&ids).unwrap();
            assert_eq!(rows.dims(), [1, 3, hidden]);
            let rows: Vec<f32> = rows.flatten_all().unwrap().to_vec1().unwrap();
            for (i, id) in [3, 39, 0].into_iter().enumerate() {
                let want = &values[id * hidden..(id + 1) * hidden];
                let err = rows[i * hidden..(i + 1) * hidden]
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err > 0.0 && err < tolerance, "{dtype:?} row {id}: max |Δ| {err}");
            }
            let e = t.forward(&Tensor::new(&[40u32], &Device::Cpu).unwrap()).unwrap_err().to_string();
            assert!(e.contains("token id 40") && e.contains("vocabulary of 40"), "{e}");
        }
        // Rows Q4_K cannot split (96: not a multiple of 256) are kept as Q8_0; rows
        // not even a multiple of 32 stay float (`None`).
        for (hidden, kind) in [(96, Some("Q8_0")), (40, None)] {
            let table = Tensor::zeros((vocab, hidden), DType::F32, &Device::Cpu).unwrap();
            let vb = VarBuilder::from_tensors(HashMap::from([("weight".to_owned(), table)]), DType::F32, &Device::Cpu);
            let t = QuantTable::new(vocab, hidden, &vb, &Quantize::new(GgmlDType::Q4K, None)).unwrap();
            assert_eq!(t.map(|t| format!("{t:?}").contains(kind.unwrap_or("-"))), kind.map(|_| true));
        }
    }
}
