//! Contrast stretch: maps raw band values (any data type) to display bytes.

use serde::{Deserialize, Serialize};

/// How raw values become 0–255 display values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Stretch {
    /// Values are rounded and clamped to 0–255 (8-bit data is shown as is).
    None,
    /// Each band's minimum → 0 and maximum → 255.
    MinMax,
    /// Each band's `lo` and `hi` percentiles (e.g. 2 and 98) → 0 and 255.
    Percentile { lo: f64, hi: f64 },
}

impl Stretch {
    /// The usual 2–98 % percentile stretch.
    pub const PERCENTILE_2_98: Self = Self::Percentile { lo: 2.0, hi: 98.0 };

    /// Short lowercase name, as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::MinMax => "minmax",
            Self::Percentile { .. } => "percentile",
        }
    }

    /// A sensible default for a band type: bytes are shown as they are,
    /// wider types need a stretch to be visible at all.
    pub fn default_for(is_byte: bool) -> Self {
        if is_byte { Self::None } else { Self::PERCENTILE_2_98 }
    }

    /// The (lo, hi) input range for one band under this stretch.
    pub fn range(&self, stats: &BandSample) -> (f64, f64) {
        match *self {
            Self::None => (0.0, 255.0),
            Self::MinMax => (stats.min(), stats.max()),
            Self::Percentile { lo, hi } => (stats.percentile(lo), stats.percentile(hi)),
        }
    }
}

impl std::str::FromStr for Stretch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "minmax" => Ok(Self::MinMax),
            "percentile" => Ok(Self::PERCENTILE_2_98),
            other => Err(format!("unknown stretch '{other}' (expected none, minmax or percentile)")),
        }
    }
}

/// A linear map from a value range onto 0–255, precomputed for the hot loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearMap {
    lo: f64,
    scale: f64,
}

impl LinearMap {
    /// Maps `lo` → 0 and `hi` → 255; a flat range maps everything to 0 (or 255 above it).
    pub fn new(lo: f64, hi: f64) -> Self {
        let span = hi - lo;
        let scale = if span.abs() > f64::EPSILON * lo.abs().max(1.0) { 255.0 / span } else { f64::INFINITY };
        Self { lo, scale }
    }

    /// The identity map used by [`Stretch::None`].
    pub fn identity() -> Self {
        Self { lo: 0.0, scale: 1.0 }
    }

    /// Display byte for a finite value (round half away from zero, clamp).
    #[inline]
    pub fn apply(&self, v: f64) -> u8 {
        let d = v - self.lo;
        let scaled = if self.scale.is_infinite() { if d > 0.0 { 255.0 } else { 0.0 } } else { d * self.scale };
        scaled.round().clamp(0.0, 255.0) as u8
    }
}

/// A sorted sample of a band's valid values (nodata and NaN removed), read once
/// from an overview or a decimated read; percentiles and min/max come from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BandSample {
    sorted: Vec<f64>,
}

impl BandSample {
    /// Builds a sample, dropping NaN and `nodata` values.
    pub fn new(mut values: Vec<f64>, nodata: Option<f64>) -> Self {
        values.retain(|v| v.is_finite() && Some(*v) != nodata);
        values.sort_unstable_by(f64::total_cmp);
        Self { sorted: values }
    }

    /// Number of valid values in the sample.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True when the band had no valid value in the sample.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Smallest valid value (0 when empty).
    pub fn min(&self) -> f64 {
        self.sorted.first().copied().unwrap_or(0.0)
    }

    /// Largest valid value (0 when empty).
    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(0.0)
    }

    /// The `p`-th percentile (0–100), linear interpolation between order statistics
    /// (numpy's default `linear` method).
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
        let i = rank.floor() as usize;
        let frac = rank - i as f64;
        let a = self.sorted[i];
        let b = self.sorted[(i + 1).min(n - 1)];
        a + (b - a) * frac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        // numpy.percentile(np.arange(1, 11), [2, 50, 98]) == [1.18, 5.5, 9.82]
        let s = BandSample::new((1..=10).map(f64::from).collect(), None);
        assert!((s.percentile(2.0) - 1.18).abs() < 1e-12);
        assert!((s.percentile(50.0) - 5.5).abs() < 1e-12);
        assert!((s.percentile(98.0) - 9.82).abs() < 1e-12);
        assert_eq!((s.min(), s.max()), (1.0, 10.0));
    }

    #[test]
    fn sample_drops_nan_and_nodata() {
        let s = BandSample::new(vec![0.0, f64::NAN, 5.0, 0.0, 7.0], Some(0.0));
        assert_eq!(s.len(), 2);
        assert_eq!((s.min(), s.max()), (5.0, 7.0));
        assert!(BandSample::new(vec![f64::NAN], None).is_empty());
    }

    #[test]
    fn linear_map_endpoints_and_clamping() {
        let m = LinearMap::new(100.0, 1100.0);
        assert_eq!(m.apply(100.0), 0);
        assert_eq!(m.apply(1100.0), 255);
        assert_eq!(m.apply(600.0), 128); // 127.5 rounds away from zero
        assert_eq!(m.apply(-5.0), 0);
        assert_eq!(m.apply(1e9), 255);
        let id = LinearMap::identity();
        assert_eq!((id.apply(0.0), id.apply(37.0), id.apply(255.0), id.apply(300.0)), (0, 37, 255, 255));
    }

    #[test]
    fn flat_range_does_not_divide_by_zero() {
        let m = LinearMap::new(5.0, 5.0);
        assert_eq!((m.apply(4.0), m.apply(5.0), m.apply(6.0)), (0, 0, 255));
    }

    #[test]
    fn stretch_parses_cli_names() {
        assert_eq!("none".parse::<Stretch>(), Ok(Stretch::None));
        assert_eq!("percentile".parse::<Stretch>(), Ok(Stretch::PERCENTILE_2_98));
        assert!("gamma".parse::<Stretch>().is_err());
    }
}
