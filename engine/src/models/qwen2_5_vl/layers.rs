//! Building blocks shared by the vision tower and the language model.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::models::quant::int4::Int4Weight;
use crate::models::quant::int8::Int8Weight;

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
        quantize: Option<GgmlDType>,
    ) -> Result<Self> {
        let Some(q) = quantize else {
            return Ok(Self::Float(candle_nn::linear_b(in_dim, out_dim, bias, vb)?));
        };
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        if matches!(q, GgmlDType::Q8_0 | GgmlDType::Q4K) && weight.device().is_cpu() {
            // Packed straight from the tensor's storage: no second f32 copy of a
            // weight as large as the 545M-value lm_head.
            let w = weight.to_dtype(DType::F32)?.contiguous()?;
            let (storage, layout) = w.storage_and_layout();
            let (candle_core::Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) =
                (&*storage, layout.contiguous_offsets())
            else {
                candle_core::bail!("quantized projection: the weight did not load as contiguous f32")
            };
            let values = &values[start..end];
            let weight = if q == GgmlDType::Q8_0 {
                CpuQuant::Int8(Arc::new(Int8Weight::new(values, out_dim, in_dim)))
            } else {
                CpuQuant::Int4(Arc::new(Int4Weight::new(values, out_dim, in_dim)))
            };
            return Ok(Self::Cpu { weight, bias });
        }
        let qtensor = Arc::new(QTensor::quantize(&weight.to_dtype(DType::F32)?, q)?);
        Ok(Self::Quantized { weight: QMatMul::from_arc(qtensor.clone())?, qtensor, bias })
    }
}

impl Module for Proj {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(l) => l.forward(xs),
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

/// `down(act(gate(x)) · up(x))`: with biases in the vision tower, without (and
/// optionally quantized) in the language model.
#[derive(Debug, Clone)]
pub(crate) struct GatedMlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
    act: candle_nn::Activation,
}

impl GatedMlp {
    pub(crate) fn new(
        hidden: usize,
        inter: usize,
        bias: bool,
        act: &str,
        vb: VarBuilder,
        quantize: Option<GgmlDType>,
    ) -> Result<Self> {
        let act = match act {
            "silu" | "swish" => candle_nn::Activation::Silu,
            "gelu_pytorch_tanh" => candle_nn::Activation::GeluPytorchTanh,
            "gelu" => candle_nn::Activation::Gelu,
            other => candle_core::bail!("unsupported activation {other:?}"),
        };
        Ok(Self {
            gate_proj: Proj::new(hidden, inter, bias, vb.pp("gate_proj"), quantize)?,
            up_proj: Proj::new(hidden, inter, bias, vb.pp("up_proj"), quantize)?,
            down_proj: Proj::new(inter, hidden, bias, vb.pp("down_proj"), quantize)?,
            act,
        })
    }
}

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}
