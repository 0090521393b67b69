//! 4-bit weights as Q4_K quantises them: super-blocks of 256 inputs, each of 8
//! blocks of 32 with a 6-bit scale and a 6-bit minimum, the super-block's f16
//! `d` and `dmin` scaling those (w ≈ d·sc·q − dmin·m, q in 0…15; 4.625 bits per
//! weight as packed here). The 4-bit values are the unsigned operand of
//! `vpdpbusd` as they are; the minimum comes off through Σ activations per block.

use rayon::prelude::*;

use super::{BLOCK, Kernels, LANES, ROWS, Rows, Source, TILE, quantize_rows};

/// Inputs per super-block.
pub const SUPER: usize = 256;
/// Blocks per super-block.
const SUBS: usize = SUPER / BLOCK;
/// Bytes of one group's super-block of 4-bit values: 256 inputs × 16 outputs / 2.
const GROUP_SUPER: usize = SUPER * LANES / 2;

/// A `[n, k]` weight (outputs × inputs), quantised to 4 bits and packed.
#[derive(Clone)]
pub struct Int4Weight {
    n: usize,
    k: usize,
    supers: usize,
    /// Per group of 16 outputs, per super-block, per block, per pair of 4-input
    /// steps, per output: 4 bytes, the first step's values in the low nibbles.
    quants: Vec<u8>,
    /// Per group, per super-block, per block, per output: the 6-bit scale and minimum.
    sc: Vec<u8>,
    mn: Vec<u8>,
    /// Per group, per super-block, per output.
    d: Vec<half::f16>,
    dmin: Vec<half::f16>,
}

impl std::fmt::Debug for Int4Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int4Weight({}×{})", self.n, self.k)
    }
}

/// `v` as an f16 no smaller than it (a scale that still covers the range).
fn f16_up(v: f32) -> half::f16 {
    let h = half::f16::from_f32(v);
    if h.to_f32() < v { half::f16::from_bits(h.to_bits() + 1) } else { h }
}

/// A block's scale and minimum refined by least squares: values assigned to
/// 0…15 with the current pair, then the pair that fits those best, twice (as
/// ggml's Q4_K search does, in fewer steps). The minimum stays ≥ 0 (stored unsigned).
fn fit_block(x: &[f32], mut s: f32, mut m: f32) -> (f32, f32) {
    for _ in 0..2 {
        if s <= 0.0 {
            break;
        }
        let (mut sq, mut sx, mut sqq, mut sqx) = (0f64, 0f64, 0f64, 0f64);
        for &v in x {
            let q = f64::from(((v + m) / s).round().clamp(0.0, 15.0));
            let v = f64::from(v);
            (sq, sx, sqq, sqx) = (sq + q, sx + v, sqq + q * q, sqx + q * v);
        }
        let len = x.len() as f64;
        let var = sqq - sq * sq / len;
        if var <= 0.0 {
            break;
        }
        let slope = (sqx - sq * sx / len) / var;
        let offset = (sq * slope - sx) / len; // x ≈ slope·q − offset
        if slope <= 0.0 {
            break;
        }
        (s, m) = (slope as f32, (offset as f32).max(0.0));
    }
    (s, m)
}

/// One output's super-block: the 4-bit values, 6-bit scales and minima, `d`,
/// `dmin`. Each block starts from its range (minimum ≤ 0, 15 steps to its
/// maximum), refined by [`fit_block`]; the super-block's `d`/`dmin` then cover
/// the largest scale and minimum in 6 bits.
fn quantize_super(x: &[f32; SUPER]) -> ([u8; SUPER], [u8; SUBS], [u8; SUBS], half::f16, half::f16) {
    let mut scale = [0f32; SUBS];
    let mut min = [0f32; SUBS];
    for (j, block) in x.chunks_exact(BLOCK).enumerate() {
        let lo = block.iter().fold(0f32, |m, &v| m.min(v));
        let hi = block.iter().fold(f32::MIN, |m, &v| m.max(v));
        (scale[j], min[j]) = fit_block(block, (hi - lo).max(0.0) / 15.0, -lo);
    }
    let near6 = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 };
    let d = f16_up(scale.iter().fold(0f32, |m, &v| m.max(v)) / 63.0);
    let dmin = f16_up(min.iter().fold(0f32, |m, &v| m.max(v)) / 63.0);
    let sc: [u8; SUBS] = std::array::from_fn(|j| near6(scale[j], d.to_f32()));
    let mn: [u8; SUBS] = std::array::from_fn(|j| near6(min[j], dmin.to_f32()));
    let mut q = [0u8; SUPER];
    for j in 0..SUBS {
        let (s, m) = (d.to_f32() * f32::from(sc[j]), dmin.to_f32() * f32::from(mn[j]));
        for i in j * BLOCK..(j + 1) * BLOCK {
            q[i] = if s > 0.0 { ((x[i] + m) / s).round().clamp(0.0, 15.0) as u8 } else { 0 };
        }
    }
    (q, sc, mn, d, dmin)
}

impl Int4Weight {
    /// Quantises and packs `w`, row-major `[n, k]`.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack(Source::F32(w), n, k)
    }

    /// Quantises and packs `w` as its checkpoint stores it, groups in parallel.
    pub fn pack(w: Source<'_>, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let supers = k.div_ceil(SUPER);
        let groups = n.div_ceil(LANES);
        let mut out = Self {
            n,
            k,
            supers,
            quants: vec![0; groups * supers * GROUP_SUPER],
            sc: vec![0; groups * supers * SUBS * LANES],
            mn: vec![0; groups * supers * SUBS * LANES],
            d: vec![half::f16::ZERO; groups * supers * LANES],
            dmin: vec![half::f16::ZERO; groups * supers * LANES],
        };
        let per_group = (supers * GROUP_SUPER, supers * SUBS * LANES, supers * LANES);
        out.quants
            .par_chunks_mut(per_group.0)
            .zip(out.sc.par_chunks_mut(per_group.1))
            .zip(out.mn.par_chunks_mut(per_group.1))
            .zip(out.d.par_chunks_mut(per_group.2))
            .zip(out.dmin.par_chunks_mut(per_group.2))
            .enumerate()
            .for_each(|(g, ((((quants, scs), mns), ds), dmins))| {
                let mut x = [0f32; SUPER];
                for lane in 0..LANES.min(n - g * LANES) {
                    for s in 0..supers {
                        w.block(g * LANES + lane, k, s * SUPER, &mut x);
                        let (q, sc, mn, d, dmin) = quantize_super(&x);
                        ds[s * LANES + lane] = d;
                        dmins[s * LANES + lane] = dmin;
                        for j in 0..SUBS {
                            scs[(s * SUBS + j) * LANES + lane] = sc[j];
                            mns[(s * SUBS + j) * LANES + lane] = mn[j];
                            for pair in 0..4 {
                                for byte in 0..4 {
                                    let at = j * BLOCK + pair * 8 + byte;
                                    let packed = q[at] | (q[at + 4] << 4);
                                    quants[s * GROUP_SUPER + (j * 4 + pair) * LANES * 4 + lane * 4 + byte] = packed;
                                }
                            }
                        }
                    }
                }
            });
        out
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes the weight occupies (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        self.quants.len() + self.sc.len() + self.mn.len() + (self.d.len() + self.dmin.len()) * 2
    }

    /// The weight as it is stored, dequantised (`[n, k]`).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for row in 0..self.n {
            let (g, lane) = (row / LANES, row % LANES);
            for i in 0..self.k {
                let (s, j, within) = (i / SUPER, (i % SUPER) / BLOCK, i % BLOCK);
                let gs = g * self.supers + s;
                let (pair, half_, byte) = (within / 8, (within % 8) / 4, within % 4);
                let b = self.quants[gs * GROUP_SUPER + (j * 4 + pair) * LANES * 4 + lane * 4 + byte];
                let q = if half_ == 0 { b & 15 } else { b >> 4 };
                let sc = f32::from(self.sc[(gs * SUBS + j) * LANES + lane]);
                let mn = f32::from(self.mn[(gs * SUBS + j) * LANES + lane]);
                let (d, dmin) = (self.d[gs * LANES + lane].to_f32(), self.dmin[gs * LANES + lane].to_f32());
                w[row * self.k + i] = d * sc * f32::from(q) - dmin * mn;
            }
        }
        w
    }

    /// `y = x · wᵀ` for `m` rows of `x` (row-major `[m, k]`) into `y` (`[m, n]`).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input of {m}×{} has {} values", self.k, x.len());
        let rows = quantize_rows(x, m, self.k, self.supers * SUBS);
        super::run(self, &rows, self.n, m, y);
    }
}

/// The kernels of this format ([`super::run`] picks one per CPU).
impl Kernels for Int4Weight {
    #[inline(always)]
    fn portable(&self, x: &Rows, (g, ng): (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]) {
        let w = self;
        for j in 0..ng {
            for s in 0..w.supers {
                let gs = (g + j) * w.supers + s;
                let packed = &w.quants[gs * GROUP_SUPER..][..GROUP_SUPER];
                for sub in 0..SUBS {
                    for (r, acc_row) in acc.iter_mut().enumerate().take(tile) {
                        let row = r0 + r;
                        let b = s * SUBS + sub;
                        let a = &x.quants[(row * x.blocks + b) * BLOCK..][..BLOCK];
                        let mut sums = [0i32; LANES];
                        for pair in 0..4 {
                            let p = &packed[(sub * 4 + pair) * LANES * 4..][..LANES * 4];
                            for (lane, sum) in sums.iter_mut().enumerate() {
                                for byte in 0..4 {
                                    let v = p[lane * 4 + byte];
                                    *sum += i32::from(v & 15) * i32::from(a[pair * 8 + byte]);
                                    *sum += i32::from(v >> 4) * i32::from(a[pair * 8 + 4 + byte]);
                                }
                            }
                        }
                        let i = row * x.blocks + b;
                        let (da, asum) = (x.scales[i], x.sums[i] as f32);
                        for lane in 0..LANES {
                            let sc =
                                f32::from(w.sc[(gs * SUBS + sub) * LANES + lane]) * w.d[gs * LANES + lane].to_f32();
                            let mn =
                                f32::from(w.mn[(gs * SUBS + sub) * LANES + lane]) * w.dmin[gs * LANES + lane].to_f32();
                            acc_row[j * LANES + lane] += da * (sums[lane] as f32 * sc - asum * mn);
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni(&self, x: &Rows, (g, ng): (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]) {
        // SAFETY: the caller checked the CPU's features.
        unsafe {
            if ng == 2 {
                vnni::groups::<2>(self, x, g, r0, tile, acc);
            } else {
                vnni::groups::<1>(self, x, g, r0, tile, acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP_SUPER, Int4Weight, LANES, ROWS, Rows, SUBS, TILE};

    /// Bytes ahead of the load that each group's stream is prefetched.
    const PREFETCH: usize = 1024;

    /// [`super::Kernels::portable`] with `vpdpbusd` on `G` groups: per pair of 4-input steps
    /// one 64-byte load per group, split into its low and high nibbles, each
    /// shared by every row of the tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn groups<const G: usize>(
        w: &Int4Weight,
        x: &Rows,
        g: usize,
        r0: usize,
        tile: usize,
        acc: &mut [[f32; TILE]; ROWS],
    ) {
        let nibble = _mm512_set1_epi8(15);
        let mut facc = [[_mm512_setzero_ps(); G]; ROWS];
        for s in 0..w.supers {
            let gs: [usize; G] = std::array::from_fn(|j| (g + j) * w.supers + s);
            // SAFETY: 16 f16 per group and super-block; unaligned loads.
            let d: [__m512; G] = std::array::from_fn(|j| {
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.d[gs[j] * LANES..].as_ptr().cast()) })
            });
            let dmin: [__m512; G] = std::array::from_fn(|j| {
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(w.dmin[gs[j] * LANES..].as_ptr().cast()) })
            });
            for sub in 0..SUBS {
                let b = s * SUBS + sub;
                let mut iacc = [[_mm512_setzero_si512(); G]; ROWS];
                for pair in 0..4 {
                    let at = (sub * 4 + pair) * LANES * 4;
                    for &gs in &gs {
                        // A group's super-blocks lie one after another: fetch ahead within its
                        // stream (decode waits on these loads more than on arithmetic).
                        let ahead = w.quants.as_ptr().wrapping_add(gs * GROUP_SUPER + at + PREFETCH);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    // SAFETY: each group's super-block holds GROUP_SUPER bytes; unaligned loads.
                    let v: [__m512i; G] = std::array::from_fn(|j| unsafe {
                        _mm512_loadu_si512(w.quants[gs[j] * GROUP_SUPER + at..].as_ptr().cast())
                    });
                    let lo: [__m512i; G] = std::array::from_fn(|j| _mm512_and_si512(v[j], nibble));
                    let hi: [__m512i; G] =
                        std::array::from_fn(|j| _mm512_and_si512(_mm512_srli_epi16::<4>(v[j]), nibble));
                    for (r, ia) in iacc.iter_mut().enumerate().take(tile) {
                        let a0 = _mm512_set1_epi32(x.word(r0 + r, b * BLOCK + pair * 8));
                        let a1 = _mm512_set1_epi32(x.word(r0 + r, b * BLOCK + pair * 8 + 4));
                        for j in 0..G {
                            ia[j] = _mm512_dpbusd_epi32(ia[j], lo[j], a0);
                            ia[j] = _mm512_dpbusd_epi32(ia[j], hi[j], a1);
                        }
                    }
                }
                let sc: [__m512; G] = std::array::from_fn(|j| {
                    // SAFETY: 16 six-bit scales per group, block and super-block.
                    let v = unsafe { _mm_loadu_si128(w.sc[(gs[j] * SUBS + sub) * LANES..].as_ptr().cast()) };
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)), d[j])
                });
                let mn: [__m512; G] = std::array::from_fn(|j| {
                    // SAFETY: as above, the minima.
                    let v = unsafe { _mm_loadu_si128(w.mn[(gs[j] * SUBS + sub) * LANES..].as_ptr().cast()) };
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)), dmin[j])
                });
                for (r, (fa, ia)) in facc.iter_mut().zip(iacc).enumerate().take(tile) {
                    let i = (r0 + r) * x.blocks + b;
                    let da = _mm512_set1_ps(x.scales[i]);
                    let dsum = _mm512_set1_ps(x.scales[i] * x.sums[i] as f32);
                    for j in 0..G {
                        fa[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[j]), _mm512_mul_ps(sc[j], da), fa[j]);
                        fa[j] = _mm512_fnmadd_ps(mn[j], dsum, fa[j]);
                    }
                }
            }
        }
        for (out, fa) in acc.iter_mut().zip(facc).take(tile) {
            for (j, v) in fa.iter().enumerate() {
                // SAFETY: `out` holds G × 16 f32.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j * LANES), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::random;
    use super::super::{GROUPS, quantize_block, quantize_rows};
    use super::*;

    /// The stored (dequantised) weight · the quantised input, in f64.
    fn reference(w: &Int4Weight, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (w.n, w.k);
        let deq = w.dequantize();
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            let mut a = Vec::with_capacity(k);
            for chunk in x[r * k..(r + 1) * k].chunks(BLOCK) {
                let mut buf = [0f32; BLOCK];
                buf[..chunk.len()].copy_from_slice(chunk);
                let mut q = [0i8; BLOCK];
                let d = quantize_block(&buf, &mut q);
                a.extend(q.iter().take(chunk.len()).map(|&v| f64::from(v) * f64::from(d)));
            }
            for c in 0..n {
                y[r * n + c] =
                    deq[c * k..(c + 1) * k].iter().zip(&a).map(|(p, q)| f64::from(*p) * q).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_the_arithmetic_on_odd_shapes() {
        for &(m, n, k) in &[(1, 37, 300), (7, 16, 256), (13, 50, 100), (1, 3, 5), (6, 64, 512), (2, 80, 96)] {
            let (w, x) = (random(n * k, 5), random(m * k, 6));
            let packed = Int4Weight::new(&w, n, k);
            let want = reference(&packed, &x, m);
            let mut y = vec![0f32; m * n];
            packed.matmul(&x, m, &mut y);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{m}×{n}×{k} [{i}]: {a} vs {b}");
            }
            let rows = quantize_rows(&x, m, k, packed.supers * SUBS);
            let groups = n.div_ceil(LANES);
            for g in (0..groups).step_by(GROUPS) {
                let ng = GROUPS.min(groups - g);
                for r0 in (0..m).step_by(ROWS) {
                    let tile = ROWS.min(m - r0);
                    let mut a = [[0f32; TILE]; ROWS];
                    packed.portable(&rows, (g, ng), r0, tile, &mut a);
                    for (r, row) in a.iter().enumerate().take(tile) {
                        for (c, v) in row.iter().enumerate().take((n - g * LANES).min(TILE)) {
                            let want = want[(r0 + r) * n + g * LANES + c];
                            assert!((v - want).abs() <= 1e-4 * (1.0 + want.abs()), "{v} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_stored_weight_is_close_and_the_product_too() {
        let (m, n, k) = (3, 32, 512);
        let (w, x) = (random(n * k, 7), random(m * k, 8));
        let packed = Int4Weight::new(&w, n, k);
        // 4 bits over a block's range (~1): steps of ~1/15, errors within half a step
        // plus the 6-bit scale's rounding.
        let err = packed.dequantize().iter().zip(&w).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        assert!(err < 0.06, "{err}");
        let mut y = vec![0f32; m * n];
        packed.matmul(&x, m, &mut y);
        // Rounding to 1/15 of a block's range: ~7 % of a uniform weight's spread.
        let (mut err, mut norm) = (0f64, 0f64);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                err += f64::from(y[r * n + c] - exact).powi(2);
                norm += f64::from(exact).powi(2);
            }
        }
        assert!((err / norm).sqrt() < 0.1, "relative error {}", (err / norm).sqrt());
        assert_eq!(packed.bytes() * 8, n * k * 37 / 8, "4.625 bits per weight");
    }
}

#[cfg(test)]
mod versus_candle {
    use super::super::testing::random;
    use super::*;

    /// Our Q4_K-style rounding is no worse than candle's (ggml's) Q4_K on the same weights.
    #[test]
    fn rounding_error_at_most_ggml_q4k() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (n, k) = (64, 1024);
        // Gaussian-ish weights at an init scale, as a checkpoint has them.
        let w: Vec<f32> = random(n * k, 11)
            .chunks(4)
            .flat_map(|c| {
                let s: f32 = c.iter().sum::<f32>() * 0.04;
                [s, -s * 0.5, s * 0.25, c[0] * 0.02]
            })
            .collect();
        let ours = Int4Weight::new(&w, n, k).dequantize();
        let t = candle_core::Tensor::from_vec(w.clone(), (n, k), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let theirs = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rms =
            |v: &[f32]| (v.iter().zip(&w).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        eprintln!("rms error: ours {:e}, ggml q4k {:e}", rms(&ours), rms(&theirs));
        assert!(rms(&ours) <= rms(&theirs) * 1.05, "ours {} vs ggml {}", rms(&ours), rms(&theirs));
    }
}
