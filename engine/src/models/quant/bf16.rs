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
        Self::build(n, k, |g, lanes, row, stage| {
            for lane in 0..lanes {
                w.read((g * LANES + lane) * k, &mut row[..k]);
                for (i, &x) in row[..k].iter().enumerate() {
                    stage[i * LANES + lane] = x;
                }
            }
        })
    }

    /// The weight whose output `o` is `v[o · ld ..][.. k]` (keys read in place).
    pub fn pack_rows(v: &[f32], n: usize, k: usize, ld: usize) -> Self {
        assert!(n == 0 || v.len() >= (n - 1) * ld + k, "{n} rows of {k} at stride {ld} do not fit {}", v.len());
        Self::build(n, k, |g, lanes, _, stage| {
            for lane in 0..lanes {
                for (i, &x) in v[(g * LANES + lane) * ld..][..k].iter().enumerate() {
                    stage[i * LANES + lane] = x;
                }
            }
        })
    }

    /// The weight whose output `o`, input `i` is `v[i · ld + o]`: the transpose of
    /// a row-major `[k, n]` matrix (attention's values, multiplied from the left).
    pub fn pack_columns(v: &[f32], k: usize, n: usize, ld: usize) -> Self {
        assert!(k == 0 || v.len() >= (k - 1) * ld + n, "{k}×{n} columns at stride {ld} do not fit {}", v.len());
        Self::build(n, k, |g, lanes, _, stage| {
            for i in 0..k {
                stage[i * LANES..][..lanes].copy_from_slice(&v[i * ld + g * LANES..][..lanes]);
            }
        })
    }

    /// Packs group by group: `stage(g, lanes, scratch, stage)` writes input `i` of
    /// the group's output `lane` to `stage[i · 16 + lane]` (the rest stays zero),
    /// so that each pair of inputs converts as two whole registers.
    fn build(n: usize, k: usize, stage: impl Fn(usize, usize, &mut [f32], &mut [f32]) + Sync) -> Self {
        let pairs = k.div_ceil(2);
        let groups = n.div_ceil(LANES);
        let mut packed = vec![0u32; groups * pairs * LANES];
        if packed.is_empty() {
            return Self { n, k, pairs, packed };
        }
        let init = || (vec![0f32; k], vec![0f32; pairs * 2 * LANES]);
        let fill = |(row, st): &mut (Vec<f32>, Vec<f32>), (g, out): (usize, &mut [u32])| {
            let lanes = LANES.min(n - g * LANES);
            if lanes < LANES {
                st.fill(0.0);
            }
            stage(g, lanes, row, st);
            pack_staged(st, out);
        };
        if n * k >= 1 << 16 {
            packed.par_chunks_mut(pairs * LANES).enumerate().for_each_init(init, fill);
        } else {
            let mut scratch = init();
            packed.chunks_mut(pairs * LANES).enumerate().for_each(|item| fill(&mut scratch, item));
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
            self.rows_into(&x[item * ITEM_ROWS * k..][..rows * k], rows, y, bias, gelu);
        });
    }

    /// [`Self::matmul`] of a few rows on the calling thread.
    fn rows_into(&self, x: &[f32], rows: usize, y: &mut [f32], bias: Option<&[f32]>, gelu: bool) {
        self.multiply(&Pairs::new(x, rows, self.k, self.k, 1.0), y, self.n, bias);
        if gelu {
            ops::gelu_erf_slice(y);
        }
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

    /// [`super::pack_staged`]: each pair of 16-value registers rounded
    /// (`vcvtneps2bf16`) and interleaved into 16 words.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn pack_staged(stage: &[f32], out: &mut [u32]) {
        let pairs = out.len() / LANES;
        assert!(stage.len() >= pairs * 2 * LANES);
        for p in 0..pairs {
            // SAFETY: 32 values from 32·p lie inside `stage`, 16 words from 16·p inside `out`.
            unsafe {
                let a = _mm512_cvtneps_pbh(_mm512_loadu_ps(stage.as_ptr().add(p * 2 * LANES)));
                let b = _mm512_cvtneps_pbh(_mm512_loadu_ps(stage.as_ptr().add(p * 2 * LANES + LANES)));
                let a = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(a));
                let b = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(b));
                let w = _mm512_or_si512(a, _mm512_slli_epi32::<16>(b));
                _mm512_storeu_si512(out.as_mut_ptr().add(p * LANES).cast(), w);
            }
        }
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

    /// Packs `[n, k]` from where it lies (a mapped checkpoint, say).
    pub fn pack(weight: Source<'_>, n: usize, k: usize, bias: Option<Vec<f32>>, gelu: bool) -> Result<Self> {
        if bias.as_ref().is_some_and(|b| b.len() != n) {
            candle_core::bail!("bf16 linear: a bias for {} outputs, {n} expected", bias.map_or(0, |b| b.len()))
        }
        Ok(Self { weight: Bf16Weight::pack(weight, n, k), bias, gelu })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// `next(self(x))` over 64-row items on every core, each item's hidden rows
    /// never leaving the cache: an MLP's 4×-wide hidden layer (100 MB at SAM's
    /// first stage) is neither written out whole nor faulted in fresh.
    pub fn then(&self, next: &Self, x: &Tensor) -> Result<Tensor> {
        let (k, hidden, n) = (self.weight.k, self.weight.n, next.weight.n);
        let mut dims = x.dims().to_vec();
        if dims.last() != Some(&k) || next.weight.k != hidden {
            candle_core::bail!("bf16 mlp: input {:?} through {k}→{hidden} then {}→{n}", x.shape(), next.weight.k)
        }
        let m = x.elem_count() / k.max(1);
        let mut y = vec![0f32; m * n];
        ops::with_f32(x, |x| {
            y.par_chunks_mut(ITEM_ROWS * n.max(1)).enumerate().for_each(|(item, y)| {
                let rows = y.len() / n.max(1);
                let mut h = vec![0f32; rows * hidden];
                self.weight.rows_into(
                    &x[item * ITEM_ROWS * k..][..rows * k],
                    rows,
                    &mut h,
                    self.bias.as_deref(),
                    self.gelu,
                );
                next.weight.rows_into(&h, rows, y, next.bias.as_deref(), next.gelu);
            });
        })?;
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Tensor::from_vec(y, dims, x.device())
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

/// `out[p · 16 + lane]` = the bf16 pair of `stage[2p · 16 + lane]` and
/// `stage[(2p + 1) · 16 + lane]`.
fn pack_staged(stage: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if has_bf16() {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked just above).
        return unsafe { avx512::pack_staged(stage, out) };
    }
    for (o, st) in out.chunks_exact_mut(LANES).zip(stage.chunks_exact(2 * LANES)) {
        let (a, b) = st.split_at(LANES);
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = bf16_bits(a) | (bf16_bits(b) << 16);
        }
    }
}

/// Unmasked scaled dot-product attention with bf16 products (f32 sums and
/// softmax), for contiguous f32 (…, seq, dim) on the CPU: [`sdpa_heads`] with
/// one head per batch entry.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let Some(ops::AttentionShape { batch, n, d, s, dv, dims }) = ops::attention_shape(q, k, v)? else {
        return Tensor::zeros(ops::attention_out_dims(q, v)?, DType::F32, &candle_core::Device::Cpu);
    };
    let out = ops::with_f32(q, |q| {
        ops::with_f32(k, |k| {
            ops::with_f32(v, |v| {
                let (q, k, v) = (HeadRows::packed(q, n, d), HeadRows::packed(k, s, d), HeadRows::packed(v, s, dv));
                sdpa_heads(q, k, v, batch, 1, (d, dv), scale)
            })
        })
    })????;
    Tensor::from_vec(out, dims, &candle_core::Device::Cpu)
}

/// Where attention reads one operand: row `r` of batch entry `b` starts at
/// `data[b · batch_stride + r · ld]`, its heads side by side — so queries, keys
/// and values are read straight out of a fused `qkv` projection, uncopied.
#[derive(Clone, Copy, Debug)]
pub struct HeadRows<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    /// Values from one row to the next (at least the heads' total width).
    pub ld: usize,
    pub batch_stride: usize,
}

impl<'a> HeadRows<'a> {
    /// Batch entries of `rows` rows of `ld` values, one after another.
    pub fn packed(data: &'a [f32], rows: usize, ld: usize) -> Self {
        Self { data, rows, ld, batch_stride: rows * ld }
    }

    /// Checks that `batch` entries of `heads` heads `width` wide fit.
    fn check(&self, what: &str, batch: usize, heads: usize, width: usize) -> Result<()> {
        let row = heads * width;
        let fits = batch == 0
            || self.rows == 0
            || ((self.rows == 1 || row <= self.ld)
                && (batch - 1) * self.batch_stride + (self.rows - 1) * self.ld + row <= self.data.len());
        if !fits {
            candle_core::bail!(
                "attention: {what} of {batch} × {} rows × {heads} heads × {width} do not fit {} values at stride {}",
                self.rows,
                self.data.len(),
                self.ld
            )
        }
        Ok(())
    }

    /// Head `h` (of heads `width` wide) of batch entry `b`, from its first row on.
    fn head(&self, b: usize, h: usize, width: usize) -> &[f32] {
        &self.data[b * self.batch_stride + h * width..]
    }
}

/// Attention of `heads` heads (queries and keys `d` wide, values `dv`) over
/// `batch` entries with bf16 products: per entry, each head's keys and values
/// packed once; then per 64 queries and head, one pass for the scores, the
/// exponentials in place, one pass for the output, and the division by each
/// row's sum on that narrower output. Returns `[batch, q.rows, heads · dv]`.
pub fn sdpa_heads(
    q: HeadRows,
    k: HeadRows,
    v: HeadRows,
    batch: usize,
    heads: usize,
    (d, dv): (usize, usize),
    scale: f32,
) -> Result<Vec<f32>> {
    const ROWS: usize = 64;
    q.check("queries", batch, heads, d)?;
    k.check("keys", batch, heads, d)?;
    v.check("values", batch, heads, dv)?;
    if k.rows != v.rows {
        candle_core::bail!("attention: {} keys but {} values", k.rows, v.rows)
    }
    let (n, s, width) = (q.rows, k.rows, heads * dv);
    let mut out = vec![0f32; batch * n * width];
    if out.is_empty() || s == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(n * width).enumerate().for_each(|(b, out)| {
        let packed: Vec<_> = (0..heads)
            .into_par_iter()
            .map(|h| {
                (
                    Bf16Weight::pack_rows(k.head(b, h, d), s, d, k.ld),
                    Bf16Weight::pack_columns(v.head(b, h, dv), s, dv, v.ld),
                )
            })
            .collect();
        out.par_chunks_mut(ROWS * width).enumerate().for_each(|(blk, out)| {
            let rows = out.len() / width;
            let mut w = vec![0f32; rows * s];
            let mut inv = vec![0f32; rows];
            for (h, (keys, values)) in packed.iter().enumerate() {
                let qb = &q.head(b, h, d)[blk * ROWS * q.ld..];
                keys.multiply(&Pairs::new(qb, rows, d, q.ld, scale), &mut w, s, None);
                ops::exp_rows(&mut w, s, &mut inv);
                let out = &mut out[h * dv..];
                values.multiply(&Pairs::new(&w, rows, s, s, 1.0), out, width, None);
                for (r, inv) in inv.iter().enumerate() {
                    out[r * width..][..dv].iter_mut().for_each(|v| *v *= inv);
                }
            }
        });
    });
    Ok(out)
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

    /// Heads read in place from a fused `[b, n, 3 · heads · hd]` projection (and
    /// separately stored queries) equal attention on the split, transposed heads.
    #[test]
    fn heads_read_in_place_match_split_heads() {
        let dev = candle_core::Device::Cpu;
        for &(b, n, heads, hd) in &[(2, 37, 3, 16), (1, 130, 2, 24), (3, 1, 4, 8)] {
            let width = heads * hd;
            let qkv = random(b * n * 3 * width, 7).iter().map(|v| v * 4.0).collect::<Vec<_>>();
            let t = Tensor::from_vec(qkv.clone(), (b, n, 3, heads, hd), &dev).unwrap();
            let part =
                |i| t.narrow(2, i, 1).unwrap().squeeze(2).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
            let scale = 1.0 / (hd as f32).sqrt();
            let want = ops::sdpa_f32(&part(0), &part(1), &part(2), scale, None).unwrap();
            let want: Vec<f32> = want.transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let at = |o: usize| HeadRows { data: &qkv[o..], rows: n, ld: 3 * width, batch_stride: n * 3 * width };
            let got = sdpa_heads(at(0), at(width), at(2 * width), b, heads, (hd, hd), scale).unwrap();
            let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 0.03, "{b}×{n}×{heads}×{hd}: max |Δ| {diff}");
            // The same queries stored on their own.
            let q: Vec<f32> = part(0).transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let got = sdpa_heads(HeadRows::packed(&q, n, width), at(width), at(2 * width), b, heads, (hd, hd), scale);
            assert_eq!(got.unwrap(), sdpa_heads(at(0), at(width), at(2 * width), b, heads, (hd, hd), scale).unwrap());
        }
    }

    #[test]
    fn operands_that_do_not_fit_are_an_error() {
        let v = vec![0f32; 100];
        let rows = HeadRows::packed(&v, 10, 10);
        assert!(sdpa_heads(rows, rows, rows, 1, 2, (6, 5), 1.0).is_err(), "12 wide rows in a stride of 10");
        assert!(sdpa_heads(rows, rows, rows, 2, 1, (10, 10), 1.0).is_err(), "a second batch entry past the end");
        assert_eq!(sdpa_heads(rows, rows, rows, 1, 2, (5, 5), 1.0).unwrap().len(), 100);
    }

    /// An MLP fused per row item equals its two layers one after the other.
    #[test]
    fn fused_mlp_equals_two_layers() {
        let dev = candle_core::Device::Cpu;
        let layer = |n: usize, k: usize, seed: u64, gelu: bool| {
            let w = Tensor::from_vec(random(n * k, seed), (n, k), &dev).unwrap();
            let b = Tensor::from_vec(random(n, seed + 1), n, &dev).unwrap();
            Bf16Linear::from_linear(&candle_nn::Linear::new(w, Some(b)), gelu).unwrap()
        };
        let (fc1, fc2) = (layer(40, 12, 1, true), layer(12, 40, 3, false));
        let x = Tensor::from_vec(random(2 * 75 * 12, 9), (2, 75, 12), &dev).unwrap();
        let want: Vec<f32> = fc2.forward(&fc1.forward(&x).unwrap()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let got = fc1.then(&fc2, &x).unwrap();
        assert_eq!(got.dims(), &[2, 75, 12]);
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        assert!(fc2.then(&fc2, &x).is_err(), "12 → 40 cannot feed 12 → 40");
    }
}
