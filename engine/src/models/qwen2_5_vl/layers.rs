//! Building blocks shared by the vision tower and the language model.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub(crate) use crate::models::quant::linear::{Proj, QuantTable, Quantize, Raw};

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

impl Module for GatedMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.apply(&self.act)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}
