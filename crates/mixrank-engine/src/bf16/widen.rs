//! Widening kernels for CPUs without bf16 arithmetic (no AMX-BF16, no AVX512-BF16): the
//! weights stay packed in bf16 (half the memory of f32) and are widened to f32 in
//! registers — exact, since a bf16 is the top half of an f32 — while the activations stay
//! f32 and every multiply-add is an f32 FMA. On such a CPU the "bf16" GEMM is thus an f32
//! GEMM that reads half the weight bytes: no faster in compute than f32, never slower by
//! more than the widening (two integer ops per 16 weights, shared by every row of a
//! register block), and more accurate than rounding the activations too.
//!
//! The packed layout is [`PackedBf16`](super::PackedBf16)'s: one 32-bit lane holds the pair
//! `(W[2p, j], W[2p+1, j])`, low half first, so `lane << 16` is `W[2p, j]` as f32 and
//! `lane & 0xffff0000` is `W[2p+1, j]`.
//!
//! Two kinds: AVX-512F (12 rows × 32 columns per register block: 24 accumulators, the
//! activations broadcast from memory) and AVX2 + FMA (4 rows × 16 columns, twice per
//! panel). Soundness of the `unsafe` code rests on the same two facts as the other
//! kernels, both checked before it runs: the CPU has the features (a kernel token of these
//! kinds is only built after run-time detection) and every access is in bounds
//! ([`WideBlock::assert_bounds`]).

use super::{MR, NR};
use half::bf16;

/// Rows per register block of the AVX2 kernel: 8 accumulators, the 4 widened weight
/// vectors of a K-pair and a broadcast fit in the 16 ymm registers. Measured on 2 threads
/// (`examples/gemm_bench`, AVX-512 Xeon): 4 rows ~180 GFLOP/s, 5 rows ~165, 6 rows ~120
/// (6 spills).
const MR_AVX2: usize = 4;

/// Whether this CPU runs the AVX-512F widening kernel.
pub fn avx512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX2 widening kernel.
pub fn avx2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One register block: `mr <= MR` rows of f32 activations times one bf16 weight panel,
/// written to the first `n_valid <= NR` columns of `mr` rows of `C` (row stride `ldc`).
pub(crate) struct WideBlock<'a> {
    /// Starts at the block's first row; row stride `lda >= k`.
    pub a: &'a [f32],
    pub lda: usize,
    pub mr: usize,
    /// The true inner dimension (the panel holds zeros past it).
    pub k: usize,
    /// At least `ceil(k / 2) · 2 · NR` packed weights.
    pub panel: &'a [bf16],
    pub ldc: usize,
    pub n_valid: usize,
}

impl WideBlock<'_> {
    /// Panics unless every access the kernels make is in bounds.
    pub fn assert_bounds(&self, c_len: usize) {
        assert!(self.mr >= 1 && self.mr <= MR && self.n_valid >= 1 && self.n_valid <= NR);
        assert!(self.k >= 1 && self.lda >= self.k);
        assert!(self.a.len() >= (self.mr - 1) * self.lda + self.k);
        assert!(self.panel.len() >= self.k.div_ceil(2) * 2 * NR);
        assert!(c_len >= (self.mr - 1) * self.ldc + self.n_valid);
    }
}

/// The AVX-512F kernel. Callers must hold a kernel token of the AVX-512 widening kind.
pub fn block_avx512(b: &WideBlock<'_>, c: &mut [f32]) {
    b.assert_bounds(c.len());
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(avx512_supported());
        macro_rules! dispatch {
            ($($mr:literal)*) => {
                match b.mr {
                    // SAFETY: the CPU has avx512f (checked when the token was built) and
                    // `assert_bounds` checked the block.
                    $($mr => unsafe { x86::block512::<$mr>(b, c.as_mut_ptr()) },)*
                    _ => unreachable!("mr is checked to be in 1..=MR"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("an AVX-512 kernel token cannot be built on this architecture");
}

/// The AVX2 kernel: the block's rows in groups of [`MR_AVX2`]. Callers must hold a kernel
/// token of the AVX2 widening kind.
pub fn block_avx2(b: &WideBlock<'_>, c: &mut [f32]) {
    b.assert_bounds(c.len());
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(avx2_supported());
        for r0 in (0..b.mr).step_by(MR_AVX2) {
            let sub = WideBlock { a: &b.a[r0 * b.lda..], mr: (b.mr - r0).min(MR_AVX2), ..*b };
            let c = &mut c[r0 * b.ldc..];
            sub.assert_bounds(c.len());
            macro_rules! dispatch {
                ($($mr:literal)*) => {
                    match sub.mr {
                        // SAFETY: the CPU has avx2 and fma (checked when the token was
                        // built) and `assert_bounds` checked the sub-block.
                        $($mr => unsafe { x86::block256::<$mr>(&sub, c.as_mut_ptr()) },)*
                        _ => unreachable!("mr is at most MR_AVX2"),
                    }
                };
            }
            dispatch!(1 2 3 4);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("an AVX2 kernel token cannot be built on this architecture");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{WideBlock, NR};
    use std::arch::x86_64::*;

    /// `MR` rows × 32 columns.
    ///
    /// # Safety
    /// The CPU must support `avx512f`; `b.assert_bounds(len of c)` must hold and
    /// `b.mr == MR`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block512<const MR: usize>(b: &WideBlock<'_>, c: *mut f32) {
        let a = b.a.as_ptr();
        let w = b.panel.as_ptr();
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let pairs = b.k / 2;
        for p in 0..pairs {
            // SAFETY: p < ceil(k/2) and the panel holds ceil(k/2) · 2·NR bf16, so both
            // 32-value (64-byte) loads are in bounds.
            let (d0, d1) = unsafe {
                (_mm512_loadu_si512(w.add(p * 2 * NR).cast()), _mm512_loadu_si512(w.add(p * 2 * NR + NR).cast()))
            };
            let (e0, e1) =
                (_mm512_castsi512_ps(_mm512_slli_epi32(d0, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(d1, 16)));
            let (o0, o1) =
                (_mm512_castsi512_ps(_mm512_and_si512(d0, high)), _mm512_castsi512_ps(_mm512_and_si512(d1, high)));
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < mr and 2p + 1 < k <= lda: both values lie in row r, which
                // `assert_bounds` placed inside `b.a`.
                let (x0, x1) = unsafe { (*a.add(r * b.lda + 2 * p), *a.add(r * b.lda + 2 * p + 1)) };
                let (x0, x1) = (_mm512_set1_ps(x0), _mm512_set1_ps(x1));
                acc[0] = _mm512_fmadd_ps(x0, e0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x0, e1, acc[1]);
                acc[0] = _mm512_fmadd_ps(x1, o0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x1, o1, acc[1]);
            }
        }
        if b.k % 2 == 1 {
            // The last row of W alone (its pair partner is padding).
            let p = pairs;
            // SAFETY: p = ceil(k/2) - 1, in bounds as above.
            let (d0, d1) = unsafe {
                (_mm512_loadu_si512(w.add(p * 2 * NR).cast()), _mm512_loadu_si512(w.add(p * 2 * NR + NR).cast()))
            };
            let (e0, e1) =
                (_mm512_castsi512_ps(_mm512_slli_epi32(d0, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(d1, 16)));
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: 2p = k - 1 < lda, inside row r.
                let x0 = _mm512_set1_ps(unsafe { *a.add(r * b.lda + 2 * p) });
                acc[0] = _mm512_fmadd_ps(x0, e0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x0, e1, acc[1]);
            }
        }
        // SAFETY: `assert_bounds` placed the block's mr rows of n_valid columns in C.
        unsafe { super::super::avx512::x86::store_rows(&acc, b.n_valid, b.ldc, c) };
    }

    /// `MR` rows × the panel's 32 columns, 16 at a time.
    ///
    /// # Safety
    /// The CPU must support `avx2` and `fma`; `b.assert_bounds(len of c)` must hold and
    /// `b.mr == MR`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block256<const MR: usize>(b: &WideBlock<'_>, c: *mut f32) {
        let a = b.a.as_ptr();
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let pairs = b.k.div_ceil(2);
        for half in 0..2 {
            let cols = b.n_valid.saturating_sub(16 * half).min(16);
            if cols == 0 {
                break;
            }
            // Lanes of this half: 16 columns = 32 bf16 = two 8-lane loads per pair.
            // SAFETY: offsets below stay inside the panel (see the loads).
            let w = unsafe { b.panel.as_ptr().add(16 * half * 2) };
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for p in 0..pairs {
                // SAFETY: p < ceil(k/2); the loads read bf16 p·2NR + 32·half + [0, 32),
                // inside the panel's ceil(k/2)·2NR values.
                let (d0, d1) = unsafe {
                    (_mm256_loadu_si256(w.add(p * 2 * NR).cast()), _mm256_loadu_si256(w.add(p * 2 * NR + 16).cast()))
                };
                let (e0, e1) =
                    (_mm256_castsi256_ps(_mm256_slli_epi32(d0, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(d1, 16)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: 2p < k <= lda, inside row r < mr.
                    let x0 = _mm256_set1_ps(unsafe { *a.add(r * b.lda + 2 * p) });
                    acc[0] = _mm256_fmadd_ps(x0, e0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x0, e1, acc[1]);
                }
                if 2 * p + 1 < b.k {
                    let (o0, o1) = (
                        _mm256_castsi256_ps(_mm256_and_si256(d0, high)),
                        _mm256_castsi256_ps(_mm256_and_si256(d1, high)),
                    );
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: 2p + 1 < k <= lda, inside row r < mr.
                        let x1 = _mm256_set1_ps(unsafe { *a.add(r * b.lda + 2 * p + 1) });
                        acc[0] = _mm256_fmadd_ps(x1, o0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(x1, o1, acc[1]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row r < mr, columns 16·half + [0, cols) with 16·half + cols <=
                // n_valid, inside C by `assert_bounds`.
                unsafe {
                    let row = c.add(r * b.ldc + 16 * half);
                    if cols == 16 {
                        _mm256_storeu_ps(row, acc[0]);
                        _mm256_storeu_ps(row.add(8), acc[1]);
                    } else {
                        let mut tmp = [0f32; 16];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), acc[0]);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[1]);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), row, cols);
                    }
                }
            }
        }
    }
}
