//! Tensor operations shared by the model ports.

use candle_core::{D, DType, Result, Tensor};

/// Queries per block in long attentions: the score matrix of one block
/// (batch × heads × block × keys) stays a few tens of MB instead of the gigabyte a
/// whole 4096-token image needs, which measured 10× faster on CPU.
const QUERY_BLOCK: usize = 256;

/// Scaled dot-product attention without a mask, softmax in `f32`; `q`, `k`, `v`
/// are (…, seq, head_dim) and long query sequences are processed in blocks.
/// Contiguous f32 on the CPU goes through [`sdpa_f32`] (fused).
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    if q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32) {
        return sdpa_f32(q, k, v, scale as f32, None);
    }
    let dtype = q.dtype();
    let kt = k.t()?;
    let block = |q: &Tensor| -> Result<Tensor> {
        let w = (q.matmul(&kt)? * scale)?;
        let w = candle_nn::ops::softmax_last_dim(&w.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
        w.matmul(v)
    };
    let axis = q.rank() - 2;
    let n = q.dim(axis)?;
    // Only long query × key products need blocking (a few MB of scores are fine).
    if n <= QUERY_BLOCK * 2 || n * k.dim(axis)? <= 1 << 22 {
        return block(q);
    }
    let parts = (0..n)
        .step_by(QUERY_BLOCK)
        .map(|start| block(&q.narrow(axis, start, QUERY_BLOCK.min(n - start))?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, axis)
}

/// Query rows per work item of [`sdpa_f32`]: their scores against every key
/// (64 × 4096 × 4 B = 1 MB for SAM's global attention) stay in cache.
const FUSED_ROWS: usize = 64;

/// [`sdpa`] for f32 on the CPU, fused: each work item (one batch entry, 64
/// queries) computes its scores with one GEMM, the softmax in place, and its
/// output with a second GEMM: no score tensor, no separate scale/exp/sum passes,
/// every core busy even when each matrix is small (SAM's 8×8 windows).
///
/// With `causal = Some((past, period))`, query row `r` of each batch entry is
/// token `r % period` after `past` cached ones and sees keys `0..=past + r % period`
/// (`period` > the rows when queries are not stacked; GQA stacks the query heads
/// sharing a key head along the rows, so each repeats every `period` rows).
pub fn sdpa_f32(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, causal: Option<(usize, usize)>) -> Result<Tensor> {
    use rayon::prelude::*;
    let Some(AttentionShape { batch, n, d, s, dv, dims }) = attention_shape(q, k, v)? else {
        return Tensor::zeros(attention_out_dims(q, v)?, DType::F32, &candle_core::Device::Cpu);
    };
    let f32_vec = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    let (q, k, v) = (f32_vec(q)?, f32_vec(k)?, f32_vec(v)?);
    let mut out = vec![0f32; batch * n * dv];
    let blocks = n.div_ceil(FUSED_ROWS).max(1);
    out.par_chunks_mut(n * dv).enumerate().for_each(|(b, out)| {
        out.par_chunks_mut(FUSED_ROWS * dv).enumerate().take(blocks).for_each(|(blk, out)| {
            let r0 = blk * FUSED_ROWS;
            let rows = out.len() / dv.max(1);
            let (qb, kb, vb) = (&q[(b * n + r0) * d..], &k[b * s * d..], &v[b * s * dv..]);
            let mut w = vec![0f32; rows * s];
            // Scores: w = scale · qb · kbᵀ (kb read as its transpose: column stride d).
            gemm_into(&mut w, qb, kb, (rows, s, d), (1, d), scale);
            match causal {
                None => softmax_rows(&mut w, s),
                Some((past, period)) => {
                    for (i, row) in w.chunks_exact_mut(s).enumerate() {
                        let seen = (past + (r0 + i) % period.max(1) + 1).min(s);
                        softmax_rows(&mut row[..seen], seen);
                        row[seen..].fill(0.0);
                    }
                }
            }
            gemm_into(out, &w, vb, (rows, dv, s), (dv, 1), 1.0);
        });
    });
    Tensor::from_vec(out, dims, &candle_core::Device::Cpu)
}

/// The sizes of an attention over (…, seq, dim) tensors, checked against each other.
pub(crate) struct AttentionShape {
    pub batch: usize,
    /// Queries per batch entry.
    pub n: usize,
    /// Query/key width.
    pub d: usize,
    /// Keys per batch entry.
    pub s: usize,
    /// Value width.
    pub dv: usize,
    /// The output's dims: q's with the last replaced by `dv`.
    pub dims: Vec<usize>,
}

/// q's dims with the last replaced by v's width.
pub(crate) fn attention_out_dims(q: &Tensor, v: &Tensor) -> Result<Vec<usize>> {
    let mut dims = q.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = v.dim(v.rank().saturating_sub(1))?;
    }
    Ok(dims)
}

/// Checks `q`, `k`, `v` are (…, seq, dim) and agree; `None` when there is nothing
/// to attend to or nothing asked (the output is then zeros: a softmax over no keys
/// is undefined).
pub(crate) fn attention_shape(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<AttentionShape>> {
    let rank = q.rank();
    if rank < 2 || k.rank() != rank || v.rank() != rank {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} are not (…, seq, dim)", q.shape(), k.shape(), v.shape())
    }
    let (n, d) = (q.dim(rank - 2)?, q.dim(rank - 1)?);
    let (s, dv) = (k.dim(rank - 2)?, v.dim(rank - 1)?);
    let batch = q.elem_count() / (n * d).max(1);
    if k.dim(rank - 1)? != d
        || v.dim(rank - 2)? != s
        || k.elem_count() != batch * s * d
        || v.elem_count() != batch * s * dv
    {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not match", q.shape(), k.shape(), v.shape())
    }
    if batch * n * dv == 0 || s == 0 {
        return Ok(None);
    }
    Ok(Some(AttentionShape { batch, n, d, s, dv, dims: attention_out_dims(q, v)? }))
}

/// `dst` (m × n, row-major) = `beta` · `lhs` (m × k, row-major) · `rhs`, where
/// `rhs`'s element (i, j) is at `i · rhs_rs + j · rhs_cs`; on the calling thread.
fn gemm_into(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, n, k): (usize, usize, usize),
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k, "gemm: {m}×{n}×{k} does not fit its buffers");
    assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs, "gemm: rhs too short");
    // SAFETY: the asserts above keep every element the strides reach inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Softmax of each row of `len` values, in place.
pub(crate) fn softmax_rows(w: &mut [f32], len: usize) {
    exp_rows_dispatch(w, len, None);
}

/// Softmax of each row without its division: `e^(w − max)` in place, and each
/// row's `1 / Σ` into `inv_sums`, for a caller that scales a smaller product.
pub(crate) fn exp_rows(w: &mut [f32], len: usize, inv_sums: &mut [f32]) {
    exp_rows_dispatch(w, len, Some(inv_sums));
}

fn exp_rows_dispatch(w: &mut [f32], len: usize, inv_sums: Option<&mut [f32]>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { exp_rows_avx512(w, len, inv_sums) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { exp_rows_avx2(w, len, inv_sums) };
    }
    exp_rows_portable(w, len, inv_sums);
}

/// [`exp_rows_portable`] compiled for AVX-512 (16 lanes of [`exp_fast`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_rows_avx512(w: &mut [f32], len: usize, inv_sums: Option<&mut [f32]>) {
    exp_rows_portable(w, len, inv_sums);
}

/// [`exp_rows_portable`] compiled for AVX2 (8 lanes of [`exp_fast`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_rows_avx2(w: &mut [f32], len: usize, inv_sums: Option<&mut [f32]>) {
    exp_rows_portable(w, len, inv_sums);
}

/// Per row: the maximum, then `e^(v − max)` and their sum, then either the
/// division or `1 / Σ` into `inv_sums[row]`.
#[inline(always)]
fn exp_rows_portable(w: &mut [f32], len: usize, mut inv_sums: Option<&mut [f32]>) {
    const LANES: usize = 16;
    for (r, row) in w.chunks_exact_mut(len).enumerate() {
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in lane_max.iter_mut().zip(c) {
                *m = m.max(v);
            }
        }
        let max = chunks.remainder().iter().chain(&lane_max).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut lane_sum = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (acc, v) in lane_sum.iter_mut().zip(c) {
                *v = exp_fast(*v - max);
                *acc += *v;
            }
        }
        let mut sum: f32 = lane_sum.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_fast(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        match inv_sums.as_deref_mut() {
            Some(out) => out[r] = inv,
            None => row.iter_mut().for_each(|v| *v *= inv),
        }
    }
}

/// `eˣ` for x ≤ 0 (softmax after subtracting the maximum) to within a few ulp:
/// Cephes' `expf` polynomial after reduction by powers of two, branch-free so
/// that it vectorises; 0 below −87.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // Plain products and sums (no `mul_add`: without FMA that is a libm call).
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from the integer in `t`'s low mantissa bits (ROUND's bits + n): integer
    // arithmetic that vectorises, where `n as i32` (saturating) goes lane by lane.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    y * f32::from_bits(biased << 23)
}
/// `erf` to within 1.5e-7 (Abramowitz & Stegun 7.1.26), branch-free apart from
/// the sign, so it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_72) * t + 0.254_829_6)
            * t
            * exp_fast(-x * x);
    y.copysign(x)
}

/// Exact (erf) GELU over an f32 tensor, on every core: candle's own `gelu_erf`
/// took 4.6 ns per element here, the largest cost of a SAM decoder call.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    if x.dtype() != DType::F32 {
        return x.gelu_erf();
    }
    let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    v.par_chunks_mut(1 << 14).for_each(gelu_erf_slice);
    Tensor::from_vec(v, x.shape(), x.device())
}

/// Exact (erf) GELU in place, on the calling thread.
pub(crate) fn gelu_erf_slice(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { gelu_erf_avx512(v) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { gelu_erf_avx2(v) };
    }
    gelu_erf_portable(v);
}

/// [`gelu_erf_portable`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn gelu_erf_avx512(v: &mut [f32]) {
    gelu_erf_portable(v);
}

/// [`gelu_erf_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_avx2(v: &mut [f32]) {
    gelu_erf_portable(v);
}

#[inline(always)]
fn gelu_erf_portable(v: &mut [f32]) {
    for e in v {
        *e = 0.5 * *e * (1.0 + erf(*e * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Runs `f` on the values of `t` as one f32 slice, borrowed where `t` already
/// is contiguous f32 on the CPU (a copy otherwise).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = if t.dtype() == DType::F32 { t.contiguous()? } else { t.to_dtype(DType::F32)?.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((start, end))) => Ok(f(&v[start..end])),
        _ => {
            drop(storage);
            Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
        }
    }
}

/// 2×2 max pooling, stride 2, of channels-last (B, H, W, C) (odd edges dropped,
/// as torch's `max_pool2d(2)`): one pass over the input, where candle's pooling
/// wants channels first and costs two transposing copies.
pub fn max_pool_2x2_nhwc(x: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return x.permute((0, 3, 1, 2))?.max_pool2d(2)?.permute((0, 2, 3, 1))?.contiguous();
    }
    let mut out = vec![0f32; b * oh * ow * c];
    with_f32(x, |v| {
        out.par_chunks_mut((ow * c).max(1)).enumerate().for_each(|(row, out)| {
            let (bi, i) = (row / oh.max(1), row % oh.max(1));
            let top = &v[((bi * h + 2 * i) * w) * c..];
            let bottom = &top[w * c..];
            for (j, o) in out.chunks_exact_mut(c.max(1)).enumerate() {
                let at = 2 * j * c;
                for (ch, o) in o.iter_mut().enumerate() {
                    let (a, b) = (top[at + ch].max(top[at + c + ch]), bottom[at + ch].max(bottom[at + c + ch]));
                    *o = a.max(b);
                }
            }
        });
    })?;
    Tensor::from_vec(out, (b, oh, ow, c), x.device())
}

/// Channels-first LayerNorm of (B, C, H, W) over C, through candle's fused
/// last-axis kernel.
pub fn layer_norm_channels(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let y = candle_nn::ops::layer_norm(&x.permute((0, 2, 3, 1))?.contiguous()?, weight, bias, eps)?;
    y.permute((0, 3, 1, 2))?.contiguous()
}

/// Separable resampling weights for one axis: per output index, the first input
/// index and the normalised tap weights.
pub type AxisWeights = Vec<(usize, Vec<f32>)>;

/// Antialiased bilinear weights, as torch's `interpolate(..., antialias=True)`
/// and torchvision's `Resize` compute them (the triangle filter stretched by the
/// reduction factor; plain bilinear, align_corners=False, when enlarging).
pub fn bilinear_aa_weights(input: usize, output: usize) -> AxisWeights {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
            let xmax = ((center + support + 0.5).trunc() as i64).min(input as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f64 - center + 0.5) * invscale).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let total: f64 = w.iter().sum();
            (xmin, w.iter().map(|v| if total != 0.0 { (v / total) as f32 } else { *v as f32 }).collect())
        })
        .collect()
}

/// Plain bilinear weights (align_corners=False, no antialias), as torch's
/// `interpolate(mode="bilinear")`.
pub fn bilinear_weights(input: usize, output: usize) -> AxisWeights {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let x0 = (src.floor() as usize).min(input - 1);
            let x1 = (x0 + 1).min(input - 1);
            let t = src - x0 as f32;
            if x1 == x0 { (x0, vec![1.0]) } else { (x0, vec![1.0 - t, t]) }
        })
        .collect()
}

/// Bicubic weights (A = −0.75, align_corners=False, edge taps clamped), as
/// torch's `interpolate(mode="bicubic")`; returned with absolute tap indices.
pub fn bicubic_taps(input: usize, output: usize) -> Vec<[(usize, f32); 4]> {
    const A: f32 = -0.75;
    let scale = input as f32 / output as f32;
    let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    (0..output)
        .map(|i| {
            let src = (i as f32 + 0.5) * scale - 0.5;
            let x0 = src.floor();
            let t = src - x0;
            let w = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
            let at = |k: i64| (x0 as i64 + k).clamp(0, input as i64 - 1) as usize;
            [(at(-1), w[0]), (at(0), w[1]), (at(1), w[2]), (at(2), w[3])]
        })
        .collect()
}

/// Resamples planes of `h`×`w` floats (`planes` of them, contiguous) with
/// separable weights: width first, then height.
pub fn resample_planes(
    data: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    rows: &AxisWeights,
    cols: &AxisWeights,
) -> Vec<f32> {
    let (oh, ow) = (rows.len(), cols.len());
    let mut out = vec![0f32; planes * oh * ow];
    let mut tmp = vec![0f32; h * ow];
    for p in 0..planes {
        let src = &data[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            for (x, (x0, wx)) in cols.iter().enumerate() {
                tmp[y * ow + x] = wx.iter().enumerate().map(|(k, wk)| wk * src[y * w + x0 + k]).sum();
            }
        }
        let dst = &mut out[p * oh * ow..(p + 1) * oh * ow];
        for (y, (y0, wy)) in rows.iter().enumerate() {
            for x in 0..ow {
                dst[y * ow + x] = wy.iter().enumerate().map(|(k, wk)| wk * tmp[(y0 + k) * ow + x]).sum();
            }
        }
    }
    out
}

/// Pads (B, H, W, C) to multiples of `ws` and cuts it into (B·nW, ws, ws, C).
pub fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = if ph > 0 || pw > 0 { x.pad_with_zeros(1, 0, ph)?.pad_with_zeros(2, 0, pw)? } else { x.clone() };
    let (hp, wp) = (h + ph, w + pw);
    let x = x.reshape((b, hp / ws, ws, wp / ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?;
    Ok((x.contiguous()?.reshape(((), ws, ws, c))?, (hp, wp)))
}

/// The inverse of [`window_partition`], cropped back to (h, w).
pub fn window_unpartition(x: &Tensor, ws: usize, (hp, wp): (usize, usize), (h, w): (usize, usize)) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let b = x.dim(0)? / (hp * wp / ws / ws);
    let x = x.reshape((b, hp / ws, wp / ws, ws, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?;
    let x = x.reshape((b, hp, wp, c))?;
    if hp > h || wp > w { x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous() } else { Ok(x) }
}

/// A 3×3 convolution with stride 1 and padding 1 of (B, C, H, W) f32 on the
/// CPU, as nine accumulated matrix products over the zero-padded input read at
/// shifted offsets: each output row is computed over the padded width and the
/// two extra columns dropped. Candle's im2col would first copy 9·C·H·W floats
/// (764 MB for SAM 3's pixel decoder at 288²) for the same products.
pub fn conv3x3_same(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if (wc, kh, kw) != (c, 3, 3) || b * c * h * w * o == 0 {
        candle_core::bail!("conv3x3_same: weight {:?} for input {:?}", weight.dims(), x.dims());
    }
    if let Some(bias) = bias
        && bias.dims() != [o]
    {
        candle_core::bail!("conv3x3_same: bias {:?} for {o} output channels", bias.dims());
    }
    let xv = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // (3, 3, O, C): one O×C matrix per kernel tap.
    let taps = weight.to_dtype(DType::F32)?.permute((2, 3, 0, 1))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let bias = bias.map(|t| t.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
    let (pw, plane, n) = (w + 2, (h + 2) * (w + 2), h * (w + 2));
    // Two spare zeros: the dropped columns of the last channel read past its plane.
    let mut padded = vec![0f32; c * plane + 2];
    let mut acc = vec![0f32; o * n];
    let mut out = vec![0f32; b * o * h * w];
    let threads = rayon::current_num_threads();
    for bi in 0..b {
        for ci in 0..c {
            for y in 0..h {
                let src = &xv[((bi * c + ci) * h + y) * w..][..w];
                padded[ci * plane + (y + 1) * pw + 1..][..w].copy_from_slice(src);
            }
        }
        for (t, off) in (0..3).flat_map(|dy| (0..3).map(move |dx| dy * pw + dx)).enumerate() {
            let lhs = &taps[t * o * c..(t + 1) * o * c];
            let rhs = &padded[off..];
            assert!(rhs.len() > (c - 1) * plane + n - 1, "conv3x3_same: padded input too short");
            // SAFETY: lhs holds o×c values, acc o×n, and the assert keeps every
            // element of rhs the strides (plane, 1) reach inside it.
            unsafe {
                gemm::gemm(
                    o,
                    n,
                    c,
                    acc.as_mut_ptr(),
                    1,
                    n as isize,
                    t > 0,
                    lhs.as_ptr(),
                    1,
                    c as isize,
                    rhs.as_ptr(),
                    1,
                    plane as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
        }
        for oi in 0..o {
            let add = bias.as_ref().map_or(0.0, |v| v[oi]);
            for y in 0..h {
                let dst = &mut out[((bi * o + oi) * h + y) * w..][..w];
                for (d, s) in dst.iter_mut().zip(&acc[oi * n + y * pw..][..w]) {
                    *d = s + add;
                }
            }
        }
    }
    Tensor::from_vec(out, (b, o, h, w), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv3x3_same_matches_candle() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 5, 7, 9), &dev).unwrap();
        let w = Tensor::randn(0f32, 1f32, (4, 5, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1f32, 4, &dev).unwrap();
        let conv = candle_nn::Conv2d::new(
            w.clone(),
            Some(bias.clone()),
            candle_nn::Conv2dConfig { padding: 1, ..Default::default() },
        );
        let want = candle_core::Module::forward(&conv, &x).unwrap();
        let got = conv3x3_same(&x, &w, Some(&bias)).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
        assert!(conv3x3_same(&x, &Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap(), None).is_err());
        assert!(conv3x3_same(&x, &w, Some(&Tensor::zeros(3, DType::F32, &dev).unwrap())).is_err());
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=1_000_000 {
            let x = -100.0 * i as f32 / 1e6;
            let (got, want) = (exp_fast(x), x.exp());
            if want > f32::MIN_POSITIVE * 2.0 {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert!(got <= 2.0 * f32::MIN_POSITIVE, "e^{x}: {got}");
            }
        }
        assert!(worst < 4e-7, "largest relative error {worst:e}");
    }

    /// The fused attention equals the plain matmul → softmax → matmul on odd
    /// shapes: rows not a multiple of the work item, more keys than queries,
    /// value width ≠ key width, two batch axes, large scores.
    #[test]
    fn fused_attention_equals_the_plain_one() {
        let dev = candle_core::Device::Cpu;
        for (b, h, n, s, d, dv, spread) in
            [(1, 1, 7, 7, 5, 5, 1.0), (2, 3, 130, 200, 24, 16, 4.0), (1, 4, 64, 64, 96, 96, 30.0)]
        {
            let q = (Tensor::randn(0f32, 1.0, (b, h, n, d), &dev).unwrap() * spread).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, h, s, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, h, s, dv), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let got = sdpa_f32(&q, &k, &v, scale as f32, None).unwrap();
            let w = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
            let want = candle_nn::ops::softmax_last_dim(&w).unwrap().matmul(&v).unwrap();
            assert_eq!(got.dims(), want.dims());
            let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 2e-5, "{:?}: {err}", (b, h, n, s, d, dv));
        }
    }

    /// Causal by position, with keys already cached and query heads stacked (GQA):
    /// equals the plain attention under an additive −∞ mask.
    #[test]
    fn fused_causal_attention_equals_the_masked_one() {
        let dev = candle_core::Device::Cpu;
        let (kv, rep, l, past, d) = (2, 3, 70, 9, 16);
        let s = past + l;
        let q = Tensor::randn(0f32, 1.0, (1, kv, rep * l, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, kv, s, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, kv, s, d), &dev).unwrap();
        let got = sdpa_f32(&q, &k, &v, 0.25, Some((past, l))).unwrap();
        let mask: Vec<f32> = (0..rep * l)
            .flat_map(|r| (0..s).map(move |j| if j <= past + r % l { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (rep * l, s), &dev).unwrap();
        let w = (q.matmul(&k.t().unwrap()).unwrap() * 0.25).unwrap().broadcast_add(&mask).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&w).unwrap().matmul(&v).unwrap();
        let err = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 2e-5, "{err}");
    }

    #[test]
    fn fast_gelu_matches_candles_exact_one() {
        let x = Tensor::arange(-800i64, 800, &candle_core::Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let x = (x / 100.0).unwrap();
        let d = (gelu_erf(&x).unwrap() - x.gelu_erf().unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 2e-6);
    }

    #[test]
    fn resampling_weights_sum_to_one_and_match_simple_cases() {
        for (i, o) in [(500, 1024), (1024, 256), (7, 256), (340, 1024)] {
            for (_, w) in bilinear_aa_weights(i, o) {
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
            for taps in bicubic_taps(i, o) {
                assert!((taps.iter().map(|t| t.1).sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        // torch.nn.functional.interpolate(..., mode="bilinear", antialias=True) gives
        // [1.7143, 3.2857] for [1, 2, 3, 4] → 2 and [1.4915, 4.5, 7.5085] for 0..10 → 3.
        let aa = |v: &[f32], o: usize| {
            resample_planes(v, 1, (1, v.len()), &bilinear_aa_weights(1, 1), &bilinear_aa_weights(v.len(), o))
        };
        for (got, want) in aa(&[1.0, 2.0, 3.0, 4.0], 2).iter().zip([1.714_285_7, 3.285_714_3]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        let ten: Vec<f32> = (0..10).map(|v| v as f32).collect();
        for (got, want) in aa(&ten, 3).iter().zip([1.4915, 4.5, 7.5085]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert_eq!(bilinear_weights(2, 4)[1], (0, vec![0.75, 0.25]));
        let up = resample_planes(&[0.0, 4.0], 1, (1, 2), &bilinear_weights(1, 1), &bilinear_weights(2, 4));
        assert_eq!(up, [0.0, 1.0, 3.0, 4.0]);
    }

    /// Channels-last pooling equals candle's channels-first pooling, odd edges
    /// dropped.
    #[test]
    fn channels_last_max_pool_matches_candle() {
        let dev = candle_core::Device::Cpu;
        for &(b, h, w, c) in &[(2, 6, 8, 3), (1, 7, 5, 16), (1, 3, 2, 2)] {
            let x = Tensor::randn(0f32, 1.0, (b, h, w, c), &dev).unwrap();
            let want = x.permute((0, 3, 1, 2)).unwrap().max_pool2d(2).unwrap().permute((0, 2, 3, 1)).unwrap();
            let got = max_pool_2x2_nhwc(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let (got, want): (Vec<f32>, Vec<f32>) =
                (got.flatten_all().unwrap().to_vec1().unwrap(), want.flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(got, want, "{b}×{h}×{w}×{c}");
        }
    }

    /// The exponentials with the sums kept aside, divided afterwards, are the softmax.
    #[test]
    fn exp_rows_defer_the_softmax_division() {
        let mut a: Vec<f32> = (0..3 * 37).map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0).collect();
        let mut b = a.clone();
        softmax_rows(&mut a, 37);
        let mut inv = [0f32; 3];
        exp_rows(&mut b, 37, &mut inv);
        for (r, (a, b)) in a.chunks(37).zip(b.chunks(37)).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y * inv[r]).abs() <= 1e-7 + 1e-6 * x, "row {r}: {x} vs {}", y * inv[r]);
            }
            assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
