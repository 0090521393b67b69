//! bf16 weights and activations for AVX-512 BF16's `vdpbf16ps`: each instruction
//! multiplies 16 pairs of bf16 inputs and adds them into 16 f32 sums, twice the
//! multiply-adds of an f32 FMA per cycle. SAM 2.1's image encoder is a few hundred
//! GFLOP of projections and attention; ONNX Runtime's f32 GEMM already runs near
//! this CPU's f32 peak, so reduced precision is the way past it. No crate offers a
//! `vdpbf16ps` GEMM (the `gemm` crate's f16 path converts to f32), hence this one.
//!
//! Inputs are rounded to bf16 (to nearest even) and products summed in f32: the
//! same arithmetic as PyTorch's bf16 autocast on CPUs with AMX/AVX-512 BF16. Where
//! the CPU lacks the instruction, the same arithmetic runs as plain loops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Source;
use crate::models::ops;

/// Outputs per packed group: one register of 16 f32 sums.
const LANES: usize = 16;
/// Rows of activations per tile (each weight load feeds them all).
const MR: usize = 8;
/// Groups per tile (each broadcast input pair feeds them all): 8 × 3 sums in registers.
const NG: usize = 3;
/// Rows per work item of [`Bf16Weight::matmul`]: their bf16 pairs stay in L2.
const ITEM_ROWS: usize = 64;

/// Rounds to bf16, to nearest even (as `vcvtne2ps2bf16`; NaN stays NaN).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    u32::from(half::bf16::from_f32(x).to_bits())
}

#[inline(always)]
fn lo(p: u32) -> f32 {
    f32::from_bits(p << 16)
}

#[inline(always)]
fn hi(p: u32) -> f32 {
    f32::from_bits(p & 0xffff_0000)
}

/// A `[n, k]` weight (outputs × inputs) in bf16, packed for `vdpbf16ps`: per group
/// of 16 outputs, per pair of inputs, per output one 32-bit word (two bf16).
#[derive(Clone)]
pub struct Bf16Weight {
    n: usize,
    k: usize,
    /// `k / 2` rounded up: the last pair's upper half is zero when `k` is odd.
    pairs: usize,
    packed: Vec<u32>,
}

impl std::fmt::Debug for Bf16Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Weight({}×{})", self.n, self.k)
    }
}

impl Bf16Weight {
    /// Rounds and packs `w`, row-major `[n, k]` as its checkpoint stores it.
    pub fn pack(w: Source<'_>, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        Self::build(n, k, |o, row| w.read(o * k, row))
    }

    /// The weight whose output `o`, input `i` is `v[i · ld + o]`: the transpose of
    /// a row-major `[k, n]` matrix (attention's values, multiplied from the left).
    pub fn pack_columns(v: &[f32], k: usize, n: usize, ld: usize) -> Self {
        assert!(k == 0 || v.len() >= (k - 1) * ld + n, "{k}×{n} columns at stride {ld} do not fit {}", v.len());
        Self::build(n, k, |o, row| {
            for (i, x) in row.iter_mut().enumerate() {
                *x = v[i * ld + o];
            }
        })
    }

    /// Packs from `row(o, buf)`, which fills `buf` with output `o`'s `k` inputs.
    fn build(n: usize, k: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let groups = n.div_ceil(LANES);
        let mut packed = vec![0u32; groups * pairs * LANES];
        if packed.is_empty() {
            return Self { n, k, pairs, packed };
        }
        let fill = |(g, out): (usize, &mut [u32])| {
            let mut buf = vec![0f32; pairs * 2];
            for lane in 0..LANES.min(n - g * LANES) {
                row(g * LANES + lane, &mut buf[..k]);
                for (p, xy) in buf.chunks_exact(2).enumerate() {
                    out[p * LANES + lane] = bf16_bits(xy[0]) | (bf16_bits(xy[1]) << 16);
                }
            }
        };
        if n * k >= 1 << 16 {
            packed.par_chunks_mut(pairs * LANES).enumerate().for_each(fill);
        } else {
            packed.chunks_mut(pairs * LANES).enumerate().for_each(fill);
        }
        Self { n, k, pairs, packed }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// `y = x · wᵀ (+ bias)`, then GELU if `gelu`, for `m` rows of `x`
    /// (row-major `[m, k]`) into `y` (`[m, n]`), on every core.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32], bias: Option<&[f32]>, gelu: bool) {
        assert_eq!(x.len(), m * self.k, "input of {m}×{} has {} values", self.k, x.len());
        assert_eq!(y.len(), m * self.n, "output of {m}×{} has {} values", self.n, y.len());
        if let Some(b) = bias {
            assert_eq!(b.len(), self.n, "bias of {} for {} outputs", b.len(), self.n);
        }
        let (k, n) = (self.k, self.n);
        y.par_chunks_mut(ITEM_ROWS * n.max(1)).enumerate().for_each(|(item, y)| {
            let rows = y.len() / n.max(1);
            let x = &x[item * ITEM_ROWS * k..][..rows * k];
            let a = Pairs::new(x, rows, k, k, 1.0);
            self.multiply(&a, y, n, bias);
            if gelu {
                ops::gelu_erf_slice(y);
            }
        });
    }

    /// `y = a · wᵀ (+ bias)` on the calling thread; `y`'s rows are `ldy` apart.
    pub(crate) fn multiply(&self, a: &Pairs, y: &mut [f32], ldy: usize, bias: Option<&[f32]>) {
        assert_eq!(a.pairs, self.pairs, "inputs of {} pairs for a weight of {}", a.pairs, self.pairs);
        assert!(a.rows == 0 || y.len() >= (a.rows - 1) * ldy + self.n, "output too short");
        let groups = self.n.div_ceil(LANES);
        let fast = has_bf16();
        for g in (0..groups).step_by(NG) {
            let ng = NG.min(groups - g);
            let cols = (self.n - g * LANES).min(ng * LANES);
            let b = &self.packed[g * self.pairs * LANES..];
            let bias = bias.map(|b| &b[g * LANES..]);
            for r0 in (0..a.rows).step_by(MR) {
                let rows = MR.min(a.rows - r0);
                let a = &a.data[r0 * a.pairs..][..MR * a.pairs];
                let y = &mut y[r0 * ldy + g * LANES..];
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512 F and BF16 (checked above); `a` holds MR
                    // rows (padded), `b` ng groups, `y` the rows × cols written (asserted).
                    unsafe {
                        match ng {
                            3 => avx512::tile::<3>(a, b, self.pairs, y, ldy, rows, cols, bias),
                            2 => avx512::tile::<2>(a, b, self.pairs, y, ldy, rows, cols, bias),
                            _ => avx512::tile::<1>(a, b, self.pairs, y, ldy, rows, cols, bias),
                        }
                    }
                    continue;
                }
                let _ = fast;
                tile_portable(a, b, self.pairs, y, ldy, rows, cols, bias);
            }
        }
    }
}

/// Activations rounded to bf16 and paired along the inputs, rows padded with
/// zeros to whole tiles.
pub(crate) struct Pairs {
    rows: usize,
    pairs: usize,
    data: Vec<u32>,
}

impl Pairs {
    /// `scale ·` the first `k` values of `rows` rows of `x`, `ld` apart.
    pub(crate) fn new(x: &[f32], rows: usize, k: usize, ld: usize, scale: f32) -> Self {
        let pairs = k.div_ceil(2);
        let mut data = vec![0u32; rows.div_ceil(MR) * MR * pairs];
        if pairs == 0 {
            return Self { rows, pairs, data };
        }
        for (r, out) in data.chunks_exact_mut(pairs).take(rows).enumerate() {
            let x = &x[r * ld..][..k];
            #[cfg(target_arch = "x86_64")]
            if has_bf16() {
                // SAFETY: the CPU has AVX-512 F and BF16 (checked just above).
                unsafe { avx512::pairs_row(x, scale, out) };
                continue;
            }
            pairs_row(x, scale, out);
        }
        Self { rows, pairs, data }
    }
}

fn pairs_row(x: &[f32], scale: f32, out: &mut [u32]) {
    for (p, o) in out.iter_mut().enumerate() {
        let at = |i: usize| x.get(i).map_or(0.0, |v| v * scale);
        *o = bf16_bits(at(2 * p)) | (bf16_bits(at(2 * p + 1)) << 16);
    }
}

/// One tile's arithmetic in plain loops (f32 products of the bf16 values).
#[allow(clippy::too_many_arguments)] // a kernel's operands
fn tile_portable(
    a: &[u32],
    b: &[u32],
    pairs: usize,
    y: &mut [f32],
    ldy: usize,
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
) {
    for r in 0..rows {
        let a = &a[r * pairs..][..pairs];
        for c in 0..cols {
            let (g, lane) = (c / LANES, c % LANES);
            let w = &b[g * pairs * LANES..];
            let mut s = 0f32;
            for (p, &x) in a.iter().enumerate() {
                let wp = w[p * LANES + lane];
                s += lo(x) * lo(wp) + hi(x) * hi(wp);
            }
            y[r * ldy + c] = s + bias.map_or(0.0, |b| b[c]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, MR};

    /// `MR` rows × `G` groups: per input pair one load of each group's 16 words,
    /// shared by every row, and one broadcast of each row's pair, shared by the groups.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)] // a kernel's operands
    pub(super) fn tile<const G: usize>(
        a: &[u32],
        b: &[u32],
        pairs: usize,
        y: &mut [f32],
        ldy: usize,
        rows: usize,
        cols: usize,
        bias: Option<&[f32]>,
    ) {
        assert!(a.len() >= MR * pairs && b.len() >= G * pairs * LANES);
        assert!(rows <= MR && cols <= G * LANES && (rows == 0 || y.len() >= (rows - 1) * ldy + cols));
        let mut acc = [[_mm512_setzero_ps(); G]; MR];
        let (a, b) = (a.as_ptr(), b.as_ptr());
        for p in 0..pairs {
            // SAFETY: p < pairs and the lengths asserted above; unaligned loads.
            let w: [__m512bh; G] = std::array::from_fn(|g| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add((g * pairs + p) * LANES).cast()))
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let x = unsafe { _mm512_set1_epi32(*a.add(r * pairs + p) as i32) };
                // SAFETY: a register of 32-bit words viewed as 32 bf16 (same size).
                let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(x) };
                for g in 0..G {
                    acc[g] = _mm512_dpbf16_ps(acc[g], x, w[g]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            for (g, v) in acc.iter().enumerate() {
                let n = cols.saturating_sub(g * LANES).min(LANES);
                if n == 0 {
                    continue;
                }
                let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                // SAFETY: the masked lanes lie inside `bias` and row r of `y` (asserted).
                unsafe {
                    let v = match bias {
                        Some(bias) => _mm512_add_ps(*v, _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(g * LANES))),
                        None => *v,
                    };
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(r * ldy + g * LANES), mask, v);
                }
            }
        }
    }

    /// One row of `scale · x` into bf16 pairs (`vcvtne2ps2bf16`: to nearest even).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn pairs_row(x: &[f32], scale: f32, out: &mut [u32]) {
        let s = _mm512_set1_ps(scale);
        let full = x.len() / 32;
        for c in 0..full {
            // SAFETY: 32 values from 32·c lie inside `x`; 16 words inside `out` (k ≤ 2·pairs).
            unsafe {
                let lo = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c * 32)), s);
                let hi = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c * 32 + 16)), s);
                let v = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(out.as_mut_ptr().add(c * 16).cast(), std::mem::transmute::<__m512bh, __m512i>(v));
            }
        }
        super::pairs_row(&x[full * 32..], scale, &mut out[full * 16..]);
    }
}

/// Whether `vdpbf16ps` runs here.
pub fn has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A linear layer in bf16 with its bias (and GELU) applied as each tile is
/// stored, run as a candle op on the last dimension of contiguous f32 input.
#[derive(Debug, Clone)]
pub struct Bf16Linear {
    weight: Bf16Weight,
    bias: Option<Vec<f32>>,
    gelu: bool,
}

impl Bf16Linear {
    /// From candle's float layer (`weight` `[n, k]`, optional `bias`).
    pub fn from_linear(linear: &candle_nn::Linear, gelu: bool) -> Result<Self> {
        let w = linear.weight().to_dtype(DType::F32)?.contiguous()?;
        let (n, k) = w.dims2()?;
        let values = w.flatten_all()?.to_vec1::<f32>()?;
        let bias = linear.bias().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
        Ok(Self { weight: Bf16Weight::pack(Source::F32(&values), n, k), bias, gelu })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else { candle_core::bail!("bf16 linear: f32 input expected") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bf16 linear: the input must be contiguous")
        };
        let (k, n) = (self.weight.in_dim(), self.weight.out_dim());
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("bf16 linear: input {:?} does not end in {k}", layout.shape())
        }
        let m = (end - start) / k.max(1);
        let mut y = vec![0f32; m * n];
        self.weight.matmul(&x[start..end], m, &mut y, self.bias.as_deref(), self.gelu);
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
}

/// Unmasked scaled dot-product attention with bf16 products (f32 sums and
/// softmax), for contiguous f32 (…, seq, dim) on the CPU: each batch entry's keys
/// and values packed once, then per 64 queries one pass for the scores, the
/// softmax in place, and one pass for the output.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    const ROWS: usize = 64;
    let Some(ops::AttentionShape { batch, n, d, s, dv, dims }) = ops::attention_shape(q, k, v)? else {
        return Tensor::zeros(ops::attention_out_dims(q, v)?, DType::F32, &candle_core::Device::Cpu);
    };
    let f32_vec = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    let (q, k, v) = (f32_vec(q)?, f32_vec(k)?, f32_vec(v)?);
    let mut out = vec![0f32; batch * n * dv];
    out.par_chunks_mut(n * dv).enumerate().for_each(|(b, out)| {
        let keys = Bf16Weight::pack(Source::F32(&k[b * s * d..][..s * d]), s, d);
        let values = Bf16Weight::pack_columns(&v[b * s * dv..][..s * dv], s, dv, dv);
        out.par_chunks_mut(ROWS * dv).enumerate().for_each(|(blk, out)| {
            let rows = out.len() / dv;
            let qb = &q[(b * n + blk * ROWS) * d..][..rows * d];
            let mut w = vec![0f32; rows * s];
            keys.multiply(&Pairs::new(qb, rows, d, d, scale), &mut w, s, None);
            ops::softmax_rows(&mut w, s);
            values.multiply(&Pairs::new(&w, rows, s, s, 1.0), out, dv, None);
        });
    });
    Tensor::from_vec(out, dims, &candle_core::Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::super::testing::random;
    use super::*;

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect()
    }

    /// The product of the bf16-rounded inputs, in f64.
    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (w, x) = (round(w), round(x));
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let s: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i])).sum();
                y[r * n + c] = (s + f64::from(bias.map_or(0.0, |b| b[c]))) as f32;
            }
        }
        y
    }

    #[test]
    fn every_tile_shape_matches_the_arithmetic() {
        // m not a multiple of the row tile, n not of 16 or 48, k odd; bias or not.
        for &(m, n, k) in &[(1, 37, 70), (9, 16, 33), (13, 50, 100), (1, 3, 5), (70, 96, 64), (8, 130, 7), (2, 5, 0)] {
            let (w, x, bias) = (random(n * k, 1), random(m * k, 2), random(n, 3));
            for bias in [None, Some(bias.as_slice())] {
                let want = reference(&w, n, k, &x, m, bias);
                let packed = Bf16Weight::pack(Source::F32(&w), n, k);
                let mut y = vec![f32::NAN; m * n];
                packed.matmul(&x, m, &mut y, bias, false);
                for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{m}×{n}×{k} [{i}]: {a} vs {b}");
                }
                // The plain loops agree with the dispatched kernel (checked above).
                let a = Pairs::new(&x, m, k, k, 1.0);
                let mut z = vec![f32::NAN; m * n];
                let groups = n.div_ceil(LANES);
                for g in 0..groups {
                    for r0 in (0..m).step_by(MR) {
                        tile_portable(
                            &a.data[r0 * a.pairs..],
                            &packed.packed[g * packed.pairs * LANES..],
                            packed.pairs,
                            &mut z[r0 * n + g * LANES..],
                            n,
                            MR.min(m - r0),
                            (n - g * LANES).min(LANES),
                            bias.map(|b| &b[g * LANES..]),
                        );
                    }
                }
                for (a, b) in z.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "portable {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn gelu_is_applied_after_the_bias() {
        let (m, n, k) = (3, 20, 9);
        let (w, x, bias) = (random(n * k, 4), random(m * k, 5), random(n, 6));
        let packed = Bf16Weight::pack(Source::F32(&w), n, k);
        let (mut plain, mut fused) = (vec![0f32; m * n], vec![0f32; m * n]);
        packed.matmul(&x, m, &mut plain, Some(&bias), false);
        packed.matmul(&x, m, &mut fused, Some(&bias), true);
        ops::gelu_erf_slice(&mut plain);
        assert_eq!(plain, fused);
    }

    #[test]
    fn columns_pack_the_transpose() {
        let (k, n, ld) = (7, 20, 23);
        let v = random(k * ld, 7);
        let t: Vec<f32> = (0..n).flat_map(|o| (0..k).map(|i| v[i * ld + o]).collect::<Vec<_>>()).collect();
        let (a, b) = (Bf16Weight::pack_columns(&v, k, n, ld), Bf16Weight::pack(Source::F32(&t), n, k));
        assert_eq!(a.packed, b.packed);
    }

    /// bf16 attention is the f32 one within bf16's rounding, on odd shapes.
    #[test]
    fn attention_is_close_to_f32() {
        let dev = candle_core::Device::Cpu;
        for &(b, n, s, d, dv) in &[(2, 70, 33, 24, 20), (1, 5, 130, 96, 96), (3, 1, 1, 8, 5)] {
            let t = |len: usize, seed: u64, shape: (usize, usize, usize)| {
                Tensor::from_vec(random(len, seed).iter().map(|v| v * 4.0).collect::<Vec<_>>(), shape, &dev).unwrap()
            };
            let (q, k, v) = (t(b * n * d, 1, (b, n, d)), t(b * s * d, 2, (b, s, d)), t(b * s * dv, 3, (b, s, dv)));
            let scale = 1.0 / (d as f32).sqrt();
            let want: Vec<f32> =
                ops::sdpa_f32(&q, &k, &v, scale, None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got: Vec<f32> = sdpa(&q, &k, &v, scale).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 0.03, "{b}×{n}×{s}×{d}: max |Δ| {diff}");
        }
    }
}
