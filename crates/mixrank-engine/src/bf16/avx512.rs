//! AVX512-BF16 kernel. `vdpbf16ps` multiplies 32 bf16 pairs and adds each pair's two
//! products into one of 16 f32 lanes: with `A`'s pair `(a[2p], a[2p+1])` broadcast and the
//! packed weights holding `(W[2p, j], W[2p+1, j])` in lane `j`, one instruction advances
//! 16 output columns by two steps of K.
//!
//! On this crate's bench CPU `vdpbf16ps` issues at half the rate of an f32 FMA, so this
//! kernel is slower than the f32 GEMM there (docs/BENCHMARKS.md); it serves AVX512-BF16 CPUs
//! without AMX (e.g. AMD Zen 4) and the edges of the AMX kernel.
//!
//! Soundness of the `unsafe` here rests on two facts, each checked before any unsafe code
//! runs: the CPU has the features (callers hold a `Bf16Kernel` built by run-time
//! detection) and every pointer access is in bounds ([`Block::assert_bounds`], slice
//! lengths in [`convert`]).

use super::{Block, NR};
use half::bf16;

/// Whether this CPU can run the kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One register block; see [`Block`]. Callers must hold an AVX512 or AMX `Bf16Kernel`.
pub fn block(b: &Block<'_>, c: &mut [f32]) {
    b.assert_bounds(c.len());
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(supported());
        macro_rules! dispatch {
            ($($mr:literal)*) => {
                match b.mr {
                    // SAFETY: `supported()` held when the kernel token was built (the
                    // only constructor checks it) and `assert_bounds` checked the block.
                    $($mr => unsafe { x86::block::<$mr>(b, c.as_mut_ptr()) },)*
                    _ => unreachable!("mr is checked to be in 1..=MR"),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("an AVX512 kernel token cannot be built on this architecture");
}

/// f32 → bf16 with round to nearest even, 32 values per instruction (the tail with
/// masked loads and stores, so every value goes through the same instruction).
pub fn convert(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        debug_assert!(supported());
        // SAFETY: as for `block`: the CPU has the features, and the slices have equal
        // lengths, which is all `x86::convert` requires.
        unsafe { x86::convert(src, dst) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("an AVX512 kernel token cannot be built on this architecture");
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{Block, NR};
    use half::bf16;
    use std::arch::x86_64::*;

    /// `MR` rows × 32 columns, accumulators in 2·MR zmm registers.
    ///
    /// # Safety
    /// The CPU must support `avx512f`, `avx512bw` and `avx512bf16`; `b.assert_bounds(len of c)` must
    /// hold and `b.mr == MR`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn block<const MR: usize>(b: &Block<'_>, c: *mut f32) {
        let a = b.a.as_ptr();
        let w = b.panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..b.kp {
            // SAFETY: p < kp, and the panel holds kp · 2·NR bf16 (64 per p), so both
            // 32-value loads are in bounds; unaligned loads need no alignment.
            let (w0, w1): (__m512bh, __m512bh) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(p * 2 * NR).cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(p * 2 * NR + NR).cast())),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < mr and 2p+1 < 2·kp <= lda, so the pair lies inside row r,
                // which `assert_bounds` placed inside `b.a`. Read unaligned: bf16 data is
                // only 2-byte aligned.
                let pair = unsafe { a.add(r * b.lda + 2 * p).cast::<i32>().read_unaligned() };
                // SAFETY: same-size SIMD reinterpretation (16 × i32 as 32 × bf16).
                let av: __m512bh = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair)) };
                acc[0] = _mm512_dpbf16_ps(acc[0], av, w0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, w1);
            }
        }
        // SAFETY: `assert_bounds` placed the block's mr rows of n_valid columns in C.
        unsafe { store_rows(&acc, b.n_valid, b.ldc, c) };
    }

    /// Writes `acc[r]` (32 columns as two 16-lane halves) to the first `n_valid <= 32`
    /// columns of row `r` of `C` (row stride `ldc`), masking off the rest: the epilogue of
    /// this kernel and of the AVX-512 widening kernel.
    ///
    /// # Safety
    /// The CPU must support `avx512f`; for every `r < acc.len()`, `c + r·ldc + [0, n_valid)`
    /// must be writable.
    #[target_feature(enable = "avx512f")]
    pub(in crate::bf16) unsafe fn store_rows(acc: &[[__m512; 2]], n_valid: usize, ldc: usize, c: *mut f32) {
        let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
        let (m0, m1) = (lanes(n_valid), lanes(n_valid.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row r's first n_valid columns are writable (the caller's contract);
            // masked-off lanes are not written, and the second half is only addressed
            // when it has valid columns.
            unsafe {
                let row = c.add(r * ldc);
                _mm512_mask_storeu_ps(row, m0, acc[0]);
                if n_valid > 16 {
                    _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
                }
            }
        }
    }

    /// Converts `src` into `dst`.
    ///
    /// # Safety
    /// The CPU must support `avx512f`, `avx512bw` and `avx512bf16`;
    /// `src.len() == dst.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn convert(src: &[f32], dst: &mut [bf16]) {
        let mut s = src.chunks_exact(32);
        let mut d = dst.chunks_exact_mut(32);
        for (s, d) in (&mut s).zip(&mut d) {
            // SAFETY: each chunk holds exactly 32 values: two 16-float loads and one
            // 32-bf16 (64-byte) store, all unaligned.
            unsafe {
                let lo = _mm512_loadu_ps(s.as_ptr());
                let hi = _mm512_loadu_ps(s.as_ptr().add(16));
                // Lanes 0..16 of the result come from the second operand.
                let packed = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(d.as_mut_ptr().cast(), packed);
            }
        }
        let (s, d) = (s.remainder(), d.into_remainder());
        let n = s.len(); // < 32
        if n == 0 {
            return;
        }
        let lanes = |k: usize| ((1u32 << k.min(16)) - 1) as __mmask16;
        // SAFETY: masked-off lanes are neither read nor written (no faults either); the
        // second half is only addressed when it has valid lanes, so every pointer formed
        // points inside the `n`-value tails.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(n), s.as_ptr());
            let hi =
                if n > 16 { _mm512_maskz_loadu_ps(lanes(n - 16), s.as_ptr().add(16)) } else { _mm512_setzero_ps() };
            let packed = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi16(d.as_mut_ptr().cast(), ((1u64 << n) - 1) as __mmask32, packed);
        }
    }
}
