//! Int8 weights as Q8_0 quantises them (one f16 scale per 32 inputs, values in
//! −127…127). `vpdpbusd` multiplies unsigned by signed bytes, so the weights are
//! stored +128 (0…254) and each block's sum is corrected by 128 × Σ activations.

use rayon::prelude::*;

use super::{BLOCK, Kernels, LANES, ROWS, Rows, Source, TILE, quantize_block, quantize_rows};

/// Bytes of one packed block of one group: 32 inputs × 16 outputs.
const GROUP_BLOCK: usize = BLOCK * LANES;

/// A `[n, k]` weight (outputs × inputs), quantised and packed.
#[derive(Clone)]
pub struct Int8Weight {
    n: usize,
    k: usize,
    blocks: usize,
    /// Per group of 16 outputs, per block, per step of 4 inputs, per output: 4 bytes, +128.
    quants: Vec<u8>,
    /// Per group, per block, per output: the block's scale.
    scales: Vec<half::f16>,
}

impl std::fmt::Debug for Int8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Weight({}×{})", self.n, self.k)
    }
}

impl Int8Weight {
    /// Quantises and packs `w`, row-major `[n, k]`.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack(Source::F32(w), n, k)
    }

    /// Quantises and packs `w` as its checkpoint stores it, groups in parallel.
    pub fn pack(w: Source<'_>, n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let blocks = k.div_ceil(BLOCK);
        let groups = n.div_ceil(LANES);
        let mut quants = vec![128u8; groups * blocks * GROUP_BLOCK];
        let mut scales = vec![half::f16::ZERO; groups * blocks * LANES];
        quants.par_chunks_mut(blocks * GROUP_BLOCK).zip(scales.par_chunks_mut(blocks * LANES)).enumerate().for_each(
            |(g, (quants, scales))| {
                let mut q = [0i8; BLOCK];
                let mut x = [0f32; BLOCK];
                for lane in 0..LANES.min(n - g * LANES) {
                    let row = g * LANES + lane;
                    for b in 0..blocks {
                        w.block(row, k, b * BLOCK, &mut x);
                        scales[b * LANES + lane] = half::f16::from_f32(quantize_block(&x, &mut q));
                        let base = b * GROUP_BLOCK;
                        for (i, &v) in q.iter().enumerate() {
                            let (step, byte) = (i / 4, i % 4);
                            quants[base + step * LANES * 4 + lane * 4 + byte] = (i16::from(v) + 128) as u8;
                        }
                    }
                }
            },
        );
        Self { n, k, blocks, quants, scales }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Bytes the weight occupies (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        self.quants.len() + self.scales.len() * 2
    }

    /// `y = x · wᵀ` for `m` rows of `x` (row-major `[m, k]`) into `y` (`[m, n]`).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "input of {m}×{} has {} values", self.k, x.len());
        let rows = quantize_rows(x, m, self.k, self.blocks);
        super::run(self, &rows, self.n, m, y);
    }
}

/// The kernels of this format ([`super::run`] picks one per CPU).
impl Kernels for Int8Weight {
    #[inline(always)]
    fn portable(&self, x: &Rows, (g, ng): (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]) {
        let w = self;
        let blocks = w.blocks;
        for j in 0..ng {
            for b in 0..blocks {
                let packed = &w.quants[((g + j) * blocks + b) * GROUP_BLOCK..][..GROUP_BLOCK];
                let scales = &w.scales[((g + j) * blocks + b) * LANES..][..LANES];
                for (r, acc_row) in acc.iter_mut().enumerate().take(tile) {
                    let row = r0 + r;
                    let a = &x.quants[(row * x.blocks + b) * BLOCK..][..BLOCK];
                    let mut sums = [0i32; LANES];
                    for step in 0..BLOCK / 4 {
                        let p = &packed[step * LANES * 4..][..LANES * 4];
                        for (lane, s) in sums.iter_mut().enumerate() {
                            for byte in 0..4 {
                                *s += i32::from(p[lane * 4 + byte]) * i32::from(a[step * 4 + byte]);
                            }
                        }
                    }
                    let i = row * x.blocks + b;
                    let (da, off) = (x.scales[i], 128 * x.sums[i]);
                    for lane in 0..LANES {
                        acc_row[j * LANES + lane] += (sums[lane] - off) as f32 * (scales[lane].to_f32() * da);
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

    use super::{BLOCK, GROUP_BLOCK, Int8Weight, LANES, ROWS, Rows, TILE};

    /// Bytes ahead of the load that each group's stream is prefetched.
    const PREFETCH: usize = 1024;

    /// [`super::Kernels::portable`] with `vpdpbusd` on `G` groups: per step of 4 inputs one
    /// load of each group's 64 weight bytes, shared by every row of the tile, and
    /// one broadcast of each row's 4 inputs, shared by the groups.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn groups<const G: usize>(
        w: &Int8Weight,
        x: &Rows,
        g: usize,
        r0: usize,
        tile: usize,
        acc: &mut [[f32; TILE]; ROWS],
    ) {
        let blocks = w.blocks;
        let mut facc = [[_mm512_setzero_ps(); G]; ROWS];
        for b in 0..blocks {
            let packed: [&[u8]; G] =
                std::array::from_fn(|j| &w.quants[((g + j) * blocks + b) * GROUP_BLOCK..][..GROUP_BLOCK]);
            let mut iacc = [[_mm512_setzero_si512(); G]; ROWS];
            for step in 0..BLOCK / 4 {
                for p in &packed {
                    // A group's blocks lie one after another: fetch ahead within its stream
                    // (decode waits on these loads more than on arithmetic).
                    _mm_prefetch::<_MM_HINT_T0>(p.as_ptr().wrapping_add(step * LANES * 4 + PREFETCH).cast());
                }
                // SAFETY: each packed block holds 8 steps of 64 bytes; unaligned loads.
                let wv: [__m512i; G] = std::array::from_fn(|j| unsafe {
                    _mm512_loadu_si512(packed[j].as_ptr().add(step * LANES * 4).cast())
                });
                for (r, ia) in iacc.iter_mut().enumerate().take(tile) {
                    let av = _mm512_set1_epi32(x.word(r0 + r, b * BLOCK + step * 4));
                    for j in 0..G {
                        ia[j] = _mm512_dpbusd_epi32(ia[j], wv[j], av);
                    }
                }
            }
            let dw: [__m512; G] = std::array::from_fn(|j| {
                let scales = &w.scales[((g + j) * blocks + b) * LANES..][..LANES];
                // SAFETY: 16 f16 scales, unaligned load.
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales.as_ptr().cast()) })
            });
            for (r, (fa, ia)) in facc.iter_mut().zip(iacc).enumerate().take(tile) {
                let i = (r0 + r) * x.blocks + b;
                let (off, da) = (_mm512_set1_epi32(128 * x.sums[i]), _mm512_set1_ps(x.scales[i]));
                for j in 0..G {
                    let sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(ia[j], off));
                    fa[j] = _mm512_fmadd_ps(sums, _mm512_mul_ps(dw[j], da), fa[j]);
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
    use super::super::{GROUPS, quantize_rows};
    use super::*;

    /// Q8_0 arithmetic written out: dequantised weight · dequantised input, in f64.
    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let deq = |v: &[f32], f16_scale: bool| -> Vec<f64> {
            let mut out = Vec::with_capacity(v.len());
            for chunk in v.chunks(BLOCK) {
                let mut buf = [0f32; BLOCK];
                buf[..chunk.len()].copy_from_slice(chunk);
                let mut q = [0i8; BLOCK];
                let mut d = quantize_block(&buf, &mut q);
                if f16_scale {
                    d = half::f16::from_f32(d).to_f32();
                }
                out.extend(q.iter().take(chunk.len()).map(|&v| f64::from(v) * f64::from(d)));
            }
            out
        };
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            let a = deq(&x[r * k..(r + 1) * k], false);
            for c in 0..n {
                let wq = deq(&w[c * k..(c + 1) * k], true);
                y[r * n + c] = wq.iter().zip(&a).map(|(p, q)| p * q).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_the_arithmetic_on_odd_shapes() {
        // k not a multiple of 32, n not of 16, m not of the row tile.
        for &(m, n, k) in &[(1, 37, 70), (7, 16, 32), (13, 50, 100), (1, 3, 5), (6, 64, 64), (2, 80, 96)] {
            let (w, x) = (random(n * k, 1), random(m * k, 2));
            let want = reference(&w, n, k, &x, m);
            let packed = Int8Weight::new(&w, n, k);
            let mut y = vec![0f32; m * n];
            packed.matmul(&x, m, &mut y);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{m}×{n}×{k} [{i}]: {a} vs {b}");
            }
            // The portable kernel agrees with the dispatched one (checked above).
            let rows = quantize_rows(&x, m, k, packed.blocks);
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
                            assert!((v - want).abs() <= 1e-5 * (1.0 + want.abs()), "{v} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn close_to_the_float_product() {
        let (m, n, k) = (5, 64, 256);
        let (w, x) = (random(n * k, 3), random(m * k, 4));
        let packed = Int8Weight::new(&w, n, k);
        let mut y = vec![0f32; m * n];
        packed.matmul(&x, m, &mut y);
        let scale = (k as f32).sqrt() * 0.25;
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                assert!((y[r * n + c] - exact).abs() < 0.02 * scale, "{} vs {exact}", y[r * n + c]);
            }
        }
        assert_eq!(packed.bytes(), 4 * 8 * (32 * 16 + 16 * 2));
    }
}
