//! Intermediate tensors of a forward pass, by stage name, for parity reports
//! against the reference implementations (`tools/parity_report.py`). Recording
//! is off unless a caller asks for it, so the product path pays nothing.

use candle_core::Tensor;

/// Named stage outputs in the order they were produced; a no-op when disabled.
#[derive(Debug, Default)]
pub struct Trace {
    stages: Option<Vec<(String, Tensor)>>,
}

impl Trace {
    /// A trace that records.
    pub fn recording() -> Self {
        Self { stages: Some(Vec::new()) }
    }

    /// A trace that records nothing.
    pub fn off() -> Self {
        Self { stages: None }
    }

    pub fn is_on(&self) -> bool {
        self.stages.is_some()
    }

    /// Keeps `t` under `name` when recording (a cheap handle clone).
    pub fn record(&mut self, name: impl Into<String>, t: &Tensor) {
        if let Some(s) = &mut self.stages {
            s.push((name.into(), t.clone()));
        }
    }

    /// The recorded stages (empty when off).
    pub fn into_stages(self) -> Vec<(String, Tensor)> {
        self.stages.unwrap_or_default()
    }
}
