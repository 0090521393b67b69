//! Quantised projections on the CPU, our own kernels: Q8_0-style int8 weights
//! ([`int8`]) and Q4_K-style 4-bit weights ([`int4`]), both packed for AVX-512
//! VNNI `vpdpbusd` (16 outputs per register), both against activations quantised
//! per 32 inputs on the fly (as llama.cpp's Q8_0 / Q8_K do). One kernel per format
//! serves decoding (one row) and prefill (many rows): nothing is dequantised to f32.
//!
//! Why our own kernels: candle's quantised matmul runs one dot product per output
//! (decode) and dequantises the whole weight for many rows (prefill), so its q8_0
//! prefill was slower than f32 and its decoding reached a quarter of the memory
//! bandwidth. Where the CPU lacks VNNI (picked at run time) the same arithmetic runs
//! as plain loops that the compiler vectorises (AVX2 where present).
//!
//! [`bf16`] is the float counterpart for image encoders: bf16 products with f32
//! sums through AVX-512 BF16's `vdpbf16ps`.

pub mod bf16;
pub mod int4;
pub mod int8;
pub(crate) mod linear;

use rayon::prelude::*;

/// Inputs per activation block (one scale each).
pub const BLOCK: usize = 32;
/// Outputs per packed group: one register of 16 int32 sums.
pub(crate) const LANES: usize = 16;
/// Rows of activations sharing each weight load.
pub(crate) const ROWS: usize = 6;
/// Groups per tile: each broadcast activation word feeds two registers of outputs.
pub(crate) const GROUPS: usize = 2;
/// Outputs per tile.
pub(crate) const TILE: usize = LANES * GROUPS;

/// A row-major `[n, k]` weight to pack, as its checkpoint stores it. Packing reads
/// it a block at a time, so a weight mapped from a safetensors file is quantised
/// without an f32 copy of it ever being made (the 7B's head is 2.2 GB in f32).
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    F32(&'a [f32]),
    /// Little-endian bytes of bf16 values (any alignment: straight from the file).
    Bf16(&'a [u8]),
    /// Little-endian bytes of f16 values.
    F16(&'a [u8]),
    /// Little-endian bytes of f32 values.
    F32Bytes(&'a [u8]),
}

impl Source<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Bf16(b) | Self::F16(b) => b.len() / 2,
            Self::F32Bytes(b) => b.len() / 4,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `at..at + out.len()`, as f32.
    #[inline]
    pub fn read(&self, at: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Self::F32(v) => out.copy_from_slice(&v[at..at + n]),
            Self::Bf16(b) => {
                for (o, c) in out.iter_mut().zip(b[at * 2..(at + n) * 2].chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Self::F16(b) => {
                for (o, c) in out.iter_mut().zip(b[at * 2..(at + n) * 2].chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            Self::F32Bytes(b) => {
                for (o, c) in out.iter_mut().zip(b[at * 4..(at + n) * 4].chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Block `start..start + buf.len()` of `row` (of `k` inputs) into `buf`, zero
    /// past the row's end (all zero for a block wholly past it: activations are
    /// padded to whole super-blocks).
    #[inline]
    pub(crate) fn block(&self, row: usize, k: usize, start: usize, buf: &mut [f32]) {
        let len = buf.len().min(k.saturating_sub(start));
        if len > 0 {
            self.read(row * k + start, &mut buf[..len]);
        }
        buf[len..].fill(0.0);
    }
}

/// Activations of `m` rows, quantised per row and block of 32.
pub(crate) struct Rows {
    pub blocks: usize,
    /// Per row, `blocks × 32` values (zero padded).
    pub quants: Vec<i8>,
    /// Per row and block: the scale.
    pub scales: Vec<f32>,
    /// Per row and block: Σ quants (for the weights' zero points).
    pub sums: Vec<i32>,
}

impl Rows {
    /// The 4 inputs of `row` from input `at`, as one little-endian word (for a broadcast).
    #[inline(always)]
    pub fn word(&self, row: usize, at: usize) -> i32 {
        let a = &self.quants[row * self.blocks * BLOCK + at..][..4];
        i32::from_le_bytes([a[0] as u8, a[1] as u8, a[2] as u8, a[3] as u8])
    }
}

/// Q8_0's quantisation of one block: scale `max|x| / 127`, values rounded to
/// nearest (ties to even). Plain arithmetic that vectorises: `f32::round` is a
/// libm call per value, which was a tenth of the vision tower's time.
#[inline(always)]
pub(crate) fn quantize_block(x: &[f32], out: &mut [i8]) -> f32 {
    // 1.5 · 2²³: adding and subtracting it rounds |v| < 2²² to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in out.iter_mut().zip(x) {
        *o = ((v * id + ROUND) - ROUND) as i8;
    }
    d
}

/// Quantises `m` rows of `k` inputs into `blocks` blocks each (zero padded).
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize, blocks: usize) -> Rows {
    let mut quants = vec![0i8; m * blocks * BLOCK];
    let mut scales = vec![0f32; m * blocks];
    let mut sums = vec![0i32; m * blocks];
    let avx2 = has_avx2();
    quants
        .par_chunks_mut(blocks * BLOCK)
        .zip(scales.par_chunks_mut(blocks))
        .zip(sums.par_chunks_mut(blocks))
        .enumerate()
        .for_each(|(r, ((q, d), s))| {
            let x = &x[r * k..(r + 1) * k];
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { quantize_row_avx2(x, q, d, s) };
            }
            let _ = avx2;
            quantize_row(x, q, d, s);
        });
    Rows { blocks, quants, scales, sums }
}

/// [`quantize_row`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    quantize_row(x, q, d, s);
}

/// One row into its blocks: quants, scales and sums.
#[inline(always)]
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    let mut buf = [0f32; BLOCK];
    for (b, ((qb, d), s)) in q.chunks_exact_mut(BLOCK).zip(d.iter_mut()).zip(s.iter_mut()).enumerate() {
        Source::F32(x).block(0, x.len(), b * BLOCK, &mut buf);
        *d = quantize_block(&buf, qb);
        *s = qb.iter().map(|&v| i32::from(v)).sum();
    }
}

/// One packed weight format: its kernels for a tile of `tile` rows from `r0`
/// against `ng` groups from `g`, summing into `acc[row][output]`.
pub(crate) trait Kernels: Sync {
    /// The arithmetic in plain loops (the compiler vectorises them).
    fn portable(&self, x: &Rows, g: (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]);

    /// The same with `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VNNI and F16C ([`has_vnni`]).
    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni(&self, x: &Rows, g: (usize, usize), r0: usize, tile: usize, acc: &mut [[f32; TILE]; ROWS]);
}

/// [`Kernels::portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn portable_avx2<K: Kernels>(
    w: &K,
    x: &Rows,
    g: (usize, usize),
    r0: usize,
    tile: usize,
    acc: &mut [[f32; TILE]; ROWS],
) {
    w.portable(x, g, r0, tile, acc);
}

/// `y = x · wᵀ` (`[m, n]`) for activations `x` already quantised: every tile
/// through the best kernel this CPU runs, a few groups per work item (their
/// weights stay in cache) × all row tiles.
pub(crate) fn run<K: Kernels>(w: &K, x: &Rows, n: usize, m: usize, y: &mut [f32]) {
    assert_eq!(y.len(), m * n, "output of {m}×{n} has {} values", y.len());
    let (vnni, avx2) = (has_vnni(), has_avx2());
    let groups = n.div_ceil(LANES);
    let per_item = if m >= ROWS { 4 } else { 16 };
    let out = OutPtr(y.as_mut_ptr());
    (0..groups.div_ceil(per_item)).into_par_iter().for_each(|item| {
        let out = &out;
        for g in (item * per_item..((item + 1) * per_item).min(groups)).step_by(GROUPS) {
            let ng = GROUPS.min(groups - g);
            for r0 in (0..m).step_by(ROWS) {
                let tile = ROWS.min(m - r0);
                let mut acc = [[0f32; TILE]; ROWS];
                match (vnni, avx2) {
                    // SAFETY: the CPU has what each kernel is compiled for (checked above).
                    #[cfg(target_arch = "x86_64")]
                    (true, _) => unsafe { w.vnni(x, (g, ng), r0, tile, &mut acc) },
                    #[cfg(target_arch = "x86_64")]
                    (_, true) => unsafe { portable_avx2(w, x, (g, ng), r0, tile, &mut acc) },
                    _ => w.portable(x, (g, ng), r0, tile, &mut acc),
                }
                let cols = TILE.min(n - g * LANES);
                for (r, sums) in acc.iter().enumerate().take(tile) {
                    // SAFETY: each (row, group pair) is written by exactly one work item,
                    // inside `y`, whose length was checked above.
                    unsafe {
                        let dst = out.0.add((r0 + r) * n + g * LANES);
                        std::ptr::copy_nonoverlapping(sums.as_ptr(), dst, cols);
                    }
                }
            }
        }
    });
}

/// The output, shared by the work items (each writes its own cells).
struct OutPtr(*mut f32);
// SAFETY: the work items write disjoint cells; the pointer outlives them (scoped by `for_each`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Whether the VNNI kernels can run here.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 build of the portable kernels can run here.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::int4::Int4Weight;
    use super::int8::Int8Weight;
    use super::testing::random;
    use super::*;

    /// A weight packed from the bytes a checkpoint maps (bf16, f16, f32; odd
    /// shapes, an unaligned start) is the weight packed from the same values as f32.
    #[test]
    fn packing_from_mapped_bytes_equals_packing_from_f32() {
        let (n, k) = (37, 300);
        let w = random(n * k, 7);
        let bf16: Vec<f32> = w.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        let f16: Vec<f32> = w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        // One leading byte, so the values start at an odd address as they may in a file.
        let bytes = |f: &dyn Fn(f32) -> Vec<u8>| -> Vec<u8> {
            std::iter::once(0).chain(w.iter().flat_map(|&v| f(v))).collect()
        };
        let b16 = bytes(&|v| half::bf16::from_f32(v).to_le_bytes().to_vec());
        let h16 = bytes(&|v| half::f16::from_f32(v).to_le_bytes().to_vec());
        let b32 = bytes(&|v| v.to_le_bytes().to_vec());
        let x = random(3 * k, 8);
        let run8 = |w: &Int8Weight| {
            let mut y = vec![0f32; 3 * n];
            w.matmul(&x, 3, &mut y);
            y
        };
        let run4 = |w: &Int4Weight| {
            let mut y = vec![0f32; 3 * n];
            w.matmul(&x, 3, &mut y);
            y
        };
        for (source, values) in
            [(Source::Bf16(&b16[1..]), &bf16), (Source::F16(&h16[1..]), &f16), (Source::F32Bytes(&b32[1..]), &w)]
        {
            assert_eq!(source.len(), n * k);
            assert_eq!(run8(&Int8Weight::pack(source, n, k)), run8(&Int8Weight::new(values, n, k)), "{source:?}");
            assert_eq!(run4(&Int4Weight::pack(source, n, k)), run4(&Int4Weight::new(values, n, k)));
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    /// Deterministic values in −0.5…0.5.
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }
}
