//! Building blocks shared by the vision tower and the language model.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub(crate) use crate::models::quant::linear::{Proj, QuantTable, Quantize, Raw, SharedFiles};

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
        quantize: Option<&Quantize>,
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

/// Rows per pass of [`GatedMlp`]: its three intermediates are 4–5× wider than
/// the input (4096 patches × 3420 × 4 B = 56 MB each in the vision tower, 94 MB
/// in a 1,240-token prefill); in blocks they stay a few MB and are reused
/// instead of freshly mapped (first-touch page faults were a tenth of the time).
const MLP_ROWS: usize = 512;

impl GatedMlp {
    fn rows(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let hidden = xs.dim(candle_core::D::Minus1)?;
        let n = xs.elem_count() / hidden.max(1);
        if n <= MLP_ROWS * 2 || !xs.device().is_cpu() {
            return self.rows(xs);
        }
        let flat = xs.reshape((n, hidden))?;
        let parts = (0..n)
            .step_by(MLP_ROWS)
            .map(|start| self.rows(&flat.narrow(0, start, MLP_ROWS.min(n - start))?))
            .collect::<Result<Vec<_>>>()?;
        let out = Tensor::cat(&parts, 0)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out.dim(1)?;
        }
        out.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};

    use super::*;

    /// Long inputs go through in row blocks: the same values as in one pass,
    /// the same shape as the input (a leading batch axis kept).
    #[test]
    fn mlp_in_row_blocks_equals_one_pass() {
        let dev = Device::Cpu;
        let (hidden, inter) = (24, 40);
        let w = |o: usize, i: usize| Tensor::randn(0f32, 0.2, (o, i), &dev).unwrap();
        let weights = HashMap::from([
            ("gate_proj.weight".to_owned(), w(inter, hidden)),
            ("up_proj.weight".to_owned(), w(inter, hidden)),
            ("down_proj.weight".to_owned(), w(hidden, inter)),
        ]);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let mlp = GatedMlp::new(hidden, inter, false, "silu", vb, None).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (1, 3 * MLP_ROWS + 7, hidden), &dev).unwrap();
        let blocked = mlp.forward(&xs).unwrap();
        assert_eq!(blocked.dims(), xs.dims());
        let whole = mlp.rows(&xs).unwrap();
        let d = (blocked - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
