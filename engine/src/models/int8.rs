//! Int8 projections on the CPU. The weight is quantised as Q8_0 is (one f16
//! scale per 32 inputs, values in −127…127) and packed for the CPU's dot-product
//! instruction; activations are quantised the same way, per row, on the fly.
//! Products within a block are exact in int32; blocks are summed in f32.
//!
//! Why our own kernel: candle's quantised matmul runs one dot product per output
//! at a time (decode) and dequantises the whole weight to f32 for many rows
//! (prefill), so a q8_0 prefill was slower than f32 and decoding reached a quarter
//! of the memory bandwidth. Here one kernel serves both: 16 outputs per AVX-512
//! VNNI `vpdpbusd` (64 multiply-adds), several rows sharing each weight load.
//! Without VNNI (picked at run time) the same arithmetic runs as plain loops that
//! the compiler vectorises (AVX2 where present).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so weights are stored with
//! +128 (0…254) and each block's result is corrected by 128 × Σ activations.

use rayon::prelude::*;

/// Inputs per quantisation block (as Q8_0).
pub const BLOCK: usize = 32;
/// Outputs per packed group: one register of 16 int32 sums.
const LANES: usize = 16;
/// Bytes of one packed block of one group: 32 inputs × 16 outputs.
const GROUP_BLOCK: usize = BLOCK * LANES;
/// Rows of activations sharing each weight load.
const ROWS: usize = 6;
/// Groups per tile: each broadcast activation word feeds two registers of outputs.
const GROUPS: usize = 2;
/// Outputs per tile.
const TILE: usize = LANES * GROUPS;

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

/// Activations of `m` rows, quantised per row and block.
struct Int8Rows {
    blocks: usize,
    /// Per row, `blocks × 32` values (zero padded).
    quants: Vec<i8>,
    /// Per row and block: the scale.
    scales: Vec<f32>,
    /// Per row and block: 128 × Σ quants, the +128 of the weights to take off.
    offsets: Vec<i32>,
}

/// Q8_0's rounding of one block: scale `max|x| / 127`, values rounded to nearest.
fn quantize_block(x: &[f32], out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in out.iter_mut().zip(x) {
        *o = (v * id).round() as i8;
    }
    d
}

impl Int8Weight {
    /// Quantises and packs `w`, row-major `[n, k]`.
    pub fn new(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}×{k} has {} values", w.len());
        let blocks = k.div_ceil(BLOCK);
        let groups = n.div_ceil(LANES);
        let mut quants = vec![128u8; groups * blocks * GROUP_BLOCK];
        let mut scales = vec![half::f16::ZERO; groups * blocks * LANES];
        let mut q = [0i8; BLOCK];
        let mut x = [0f32; BLOCK];
        for row in 0..n {
            let (g, lane) = (row / LANES, row % LANES);
            for b in 0..blocks {
                let start = b * BLOCK;
                let len = BLOCK.min(k - start);
                x[..len].copy_from_slice(&w[row * k + start..row * k + start + len]);
                x[len..].fill(0.0);
                let d = half::f16::from_f32(quantize_block(&x, &mut q));
                scales[(g * blocks + b) * LANES + lane] = d;
                let base = (g * blocks + b) * GROUP_BLOCK;
                for (i, &v) in q.iter().enumerate() {
                    let (step, byte) = (i / 4, i % 4);
                    quants[base + step * LANES * 4 + lane * 4 + byte] = (i16::from(v) + 128) as u8;
                }
            }
        }
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
        assert_eq!(y.len(), m * self.n, "output of {m}×{} has {} values", self.n, y.len());
        let rows = self.quantize_rows(x, m);
        let groups = self.n.div_ceil(LANES);
        // Work items: a few groups (their weights stay in cache) × all row tiles.
        let per_item = if m >= ROWS { 4 } else { 16 };
        let out = OutPtr(y.as_mut_ptr());
        let kernel = pick_kernel();
        (0..groups.div_ceil(per_item)).into_par_iter().for_each(|item| {
            let out = &out;
            for g in (item * per_item..((item + 1) * per_item).min(groups)).step_by(GROUPS) {
                let ng = GROUPS.min(groups - g);
                for r0 in (0..m).step_by(ROWS) {
                    let tile = ROWS.min(m - r0);
                    let mut acc = [[0f32; TILE]; ROWS];
                    kernel(self, &rows, (g, ng), r0, tile, &mut acc);
                    let cols = TILE.min(self.n - g * LANES);
                    for (r, sums) in acc.iter().enumerate().take(tile) {
                        // SAFETY: each (row, group) is written by exactly one work item,
                        // inside `y`, whose length was checked above.
                        unsafe {
                            let dst = out.0.add((r0 + r) * self.n + g * LANES);
                            std::ptr::copy_nonoverlapping(sums.as_ptr(), dst, cols);
                        }
                    }
                }
            }
        });
    }

    fn quantize_rows(&self, x: &[f32], m: usize) -> Int8Rows {
        let (k, blocks) = (self.k, self.blocks);
        let mut quants = vec![0i8; m * blocks * BLOCK];
        let mut scales = vec![0f32; m * blocks];
        let mut offsets = vec![0i32; m * blocks];
        quants
            .par_chunks_mut(blocks * BLOCK)
            .zip(scales.par_chunks_mut(blocks))
            .zip(offsets.par_chunks_mut(blocks))
            .enumerate()
            .for_each(|(r, ((q, d), o))| {
                let mut buf = [0f32; BLOCK];
                for b in 0..blocks {
                    let start = b * BLOCK;
                    let len = BLOCK.min(k - start);
                    buf[..len].copy_from_slice(&x[r * k + start..r * k + start + len]);
                    buf[len..].fill(0.0);
                    let qb = &mut q[start..start + BLOCK];
                    d[b] = quantize_block(&buf, qb);
                    o[b] = 128 * qb.iter().map(|&v| i32::from(v)).sum::<i32>();
                }
            });
        Int8Rows { blocks, quants, scales, offsets }
    }
}

/// The output, shared by the work items (each writes its own cells).
struct OutPtr(*mut f32);
// SAFETY: the work items write disjoint cells; the pointer outlives them (scoped by `for_each`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Sums of `tile` rows from `r0` against `ng` groups from `g`, into `acc[row][output]`.
type Kernel = fn(&Int8Weight, &Int8Rows, (usize, usize), usize, usize, &mut [[f32; TILE]; ROWS]);

fn pick_kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            return |w, x, (g, ng), r0, tile, acc| {
                // SAFETY: the CPU has the features `vnni` is compiled for (checked above).
                unsafe {
                    if ng == 2 {
                        vnni::groups::<2>(w, x, g, r0, tile, acc);
                    } else {
                        vnni::groups::<1>(w, x, g, r0, tile, acc);
                    }
                }
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return |w, x, g, r0, tile, acc| {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { group_avx2(w, x, g, r0, tile, acc) }
            };
        }
    }
    group_portable
}

/// [`group_portable`] compiled for AVX2 (the compiler vectorises its loops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn group_avx2(w: &Int8Weight, x: &Int8Rows, g: (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]) {
    group_portable(w, x, g, r0, tile, acc);
}

/// The arithmetic every kernel does, in plain loops.
fn group_portable(
    w: &Int8Weight,
    x: &Int8Rows,
    (g, ng): (usize, usize),
    r0: usize,
    tile: usize,
    acc: &mut [[f32; TILE]; ROWS],
) {
    for j in 0..ng {
        let mut part = [[0f32; LANES]; ROWS];
        group_one(w, x, g + j, r0, tile, &mut part);
        for (a, p) in acc.iter_mut().zip(&part) {
            a[j * LANES..(j + 1) * LANES].copy_from_slice(p);
        }
    }
}

fn group_one(w: &Int8Weight, x: &Int8Rows, g: usize, r0: usize, tile: usize, acc: &mut [[f32; LANES]; ROWS]) {
    let blocks = w.blocks;
    for b in 0..blocks {
        let packed = &w.quants[(g * blocks + b) * GROUP_BLOCK..][..GROUP_BLOCK];
        let scales = &w.scales[(g * blocks + b) * LANES..][..LANES];
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
            let (da, off) = (x.scales[row * x.blocks + b], x.offsets[row * x.blocks + b]);
            for lane in 0..LANES {
                acc_row[lane] += (sums[lane] - off) as f32 * (scales[lane].to_f32() * da);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, GROUP_BLOCK, Int8Rows, Int8Weight, LANES, ROWS, TILE};

    /// [`super::group_portable`] with `vpdpbusd` on `G` groups: per step of 4
    /// inputs one load of each group's 64 weight bytes, shared by every row of
    /// the tile, and one broadcast of each row's 4 inputs, shared by the groups.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
    pub(super) fn groups<const G: usize>(
        w: &Int8Weight,
        x: &Int8Rows,
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
                // SAFETY: each packed block holds 8 steps of 64 bytes; unaligned loads.
                let wv: [__m512i; G] = std::array::from_fn(|j| unsafe {
                    _mm512_loadu_si512(packed[j].as_ptr().add(step * LANES * 4).cast())
                });
                for (r, ia) in iacc.iter_mut().enumerate().take(tile) {
                    let a = &x.quants[((r0 + r) * x.blocks + b) * BLOCK + step * 4..][..4];
                    let av = _mm512_set1_epi32(i32::from_le_bytes([a[0] as u8, a[1] as u8, a[2] as u8, a[3] as u8]));
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
                let (off, da) = (_mm512_set1_epi32(x.offsets[i]), _mm512_set1_ps(x.scales[i]));
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
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// Q8_0 arithmetic written out: dequantised weight · dequantised input, in f64.
    fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f32> {
        let deq = |v: &[f32]| {
            let mut out = Vec::with_capacity(v.len());
            for chunk in v.chunks(BLOCK) {
                let mut buf = [0f32; BLOCK];
                buf[..chunk.len()].copy_from_slice(chunk);
                let mut q = [0i8; BLOCK];
                let d = quantize_block(&buf, &mut q);
                out.extend(q.iter().take(chunk.len()).map(|&v| (f64::from(v), f64::from(d))));
            }
            out
        };
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            let a = deq(&x[r * k..(r + 1) * k]);
            for c in 0..n {
                let wq = deq(&w[c * k..(c + 1) * k]);
                let ws: Vec<f64> = w[c * k..(c + 1) * k]
                    .chunks(BLOCK)
                    .map(|ch| {
                        f64::from(half::f16::from_f32(ch.iter().fold(0f32, |mx, v| mx.max(v.abs())) / 127.0).to_f32())
                    })
                    .collect();
                let mut s = 0f64;
                for (i, ((qw, _), (qa, da))) in wq.iter().zip(&a).enumerate() {
                    s += qw * ws[i / BLOCK] * qa * da;
                }
                y[r * n + c] = s as f32;
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
            // The portable kernel agrees with the dispatched one.
            let rows = packed.quantize_rows(&x, m);
            let groups = n.div_ceil(LANES);
            for g in (0..groups).step_by(GROUPS) {
                let ng = GROUPS.min(groups - g);
                for r0 in (0..m).step_by(ROWS) {
                    let tile = ROWS.min(m - r0);
                    let (mut a, mut b) = ([[0f32; TILE]; ROWS], [[0f32; TILE]; ROWS]);
                    group_portable(&packed, &rows, (g, ng), r0, tile, &mut a);
                    pick_kernel()(&packed, &rows, (g, ng), r0, tile, &mut b);
                    for (ra, rb) in a.iter().zip(&b).take(tile) {
                        for (va, vb) in ra.iter().zip(rb) {
                            assert!((va - vb).abs() <= 1e-5 * (1.0 + va.abs()), "{va} vs {vb}");
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
