//! bf16 inference GEMM: `C = A · W` with bf16 activations `A: [m, k]`, bf16 weights
//! `W: [k, n]` pre-packed once at load ([`PackedBf16`]) and f32 accumulation and output.
//!
//! Why bf16 is safe here: bf16 keeps f32's exponent range, so nothing overflows or
//! underflows that would not in f32; only the 8-bit significand rounds each input by at
//! most 2⁻⁸ relative. Every product of two bf16 values is exact in f32 and all sums are
//! f32, so the error is that input rounding (≤ ~2⁻⁷ of `Σ|a||w|`) plus ordinary f32
//! accumulation error — small against the noise of a CTR model (to be measured end to end
//! by the serving crate's bf16-vs-f32 accuracy check).
//!
//! Kernels, chosen at run time: AMX-BF16 tiles (with AVX512-BF16 for the edges),
//! AVX512-BF16 (`vdpbf16ps`), and a portable loop; all read the same packed layout. Rows
//! of `C` are split across rayon threads for large problems.

mod amx;
mod avx512;
mod matrix;
mod portable;

pub use matrix::{Bf16Matrix, PackedBf16};

use crate::check;
use crate::cpu::CpuOps;
use crate::error::{EngineError, Result};
use half::bf16;
use rayon::prelude::*;

/// Columns per packed weight panel (two 16-lane f32 accumulators per row).
pub const NR: usize = 32;
/// K is padded to a multiple of this (one AMX tile row of bf16) in both operands.
pub const K_ALIGN: usize = 32;
/// Rows per cache chunk: a multiple of both register-block heights (12 and 32).
const MC: usize = 384;
/// Rows per register block of the AVX512 kernel (12 × 2 accumulators + 2 weight
/// vectors + 1 broadcast fit in the 32 zmm registers).
pub const MR: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Amx,
    Avx512Bf16,
    Portable,
}

/// Which bf16 kernel to run. Holding a `Bf16Kernel` of the AMX or AVX512 kind proves the
/// CPU supports it: the only ways to get one check at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Kernel(Kind);

impl Bf16Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        Self::amx().or_else(|_| Self::avx512bf16()).unwrap_or(Self::portable())
    }

    /// The AMX-BF16 kernel, if this CPU has AMX-BF16 and AVX512-BF16 and the OS grants
    /// tile-data permission.
    pub fn amx() -> Result<Self> {
        if amx::supported() {
            Ok(Bf16Kernel(Kind::Amx))
        } else {
            Err(EngineError::Unsupported { op: "bf16 gemm", feature: "amx-bf16" })
        }
    }

    /// The portable kernel (any CPU).
    pub fn portable() -> Self {
        Bf16Kernel(Kind::Portable)
    }

    /// The AVX512-BF16 kernel, if this CPU has `avx512f` and `avx512bf16`.
    pub fn avx512bf16() -> Result<Self> {
        if avx512::supported() {
            Ok(Bf16Kernel(Kind::Avx512Bf16))
        } else {
            Err(EngineError::Unsupported { op: "bf16 gemm", feature: "avx512bf16" })
        }
    }

    /// A short name for logs and benchmarks.
    pub fn name(&self) -> &'static str {
        match self.0 {
            Kind::Amx => "amx-bf16",
            Kind::Avx512Bf16 => "avx512bf16",
            Kind::Portable => "portable",
        }
    }

    /// f32 → bf16, round to nearest even. The SIMD kinds flush subnormal inputs (below
    /// 1.2e-38) to signed zero, as `vcvtne2ps2bf16` does, where the portable kind keeps
    /// them; values that small carry no signal in a ranking model.
    pub fn convert(&self, src: &[f32], dst: &mut [bf16]) {
        match self.0 {
            Kind::Amx | Kind::Avx512Bf16 => avx512::convert(src, dst),
            Kind::Portable => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16::from_f32(s)),
        }
    }

    /// `C[..m, ..n] = A[..m] · W`; `C` is dense `[m, n]`, overwritten. Runs multithreaded
    /// when `m·n·k >= 2^20` (as the f32 GEMM).
    pub fn gemm(&self, m: usize, a: &Bf16Matrix, w: &PackedBf16, c: &mut [f32]) -> Result<()> {
        const OP: &str = "gemm_bf16";
        if a.cols() != w.k() {
            return Err(EngineError::ShapeMismatch {
                op: OP,
                lhs: "a",
                lhs_shape: vec![a.rows(), a.cols()],
                rhs: "w",
                rhs_shape: vec![w.k(), w.n()],
            });
        }
        check::holds(OP, "a", a.rows(), &[m, a.cols()], m)?;
        let n = w.n();
        check::holds(OP, "c", c.len(), &[m, n], m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let c = &mut c[..m * n];
        let threads = rayon::current_num_threads();
        if m * n * w.k() < CpuOps::DEFAULT_GEMM_PAR_MIN || threads == 1 || m <= MR {
            self.rows(0, m, a, w, c);
        } else {
            // One contiguous band of rows per thread (whole register blocks).
            let block = if self.0 == Kind::Amx { amx::AMX_MR } else { MR };
            let band = m.div_ceil(threads).next_multiple_of(block);
            c.par_chunks_mut(band * n).enumerate().for_each(|(i, chunk)| {
                self.rows(i * band, chunk.len() / n, a, w, chunk);
            });
        }
        Ok(())
    }

    /// Rows `r0 .. r0 + rows` of `C` into `c` (`[rows, n]`), in chunks of [`MC`] rows so
    /// a chunk of `A` (≤ 344 KB at k = 429) stays in L2 while every panel passes over it.
    fn rows(&self, r0: usize, rows: usize, a: &Bf16Matrix, w: &PackedBf16, c: &mut [f32]) {
        let n = w.n();
        for start in (0..rows).step_by(MC) {
            let len = (rows - start).min(MC);
            self.chunk(r0 + start, len, a, w, &mut c[start * n..(start + len) * n]);
        }
    }

    /// One chunk of rows. Loops panels outside row blocks so one weight panel
    /// (`kp · 128` bytes, 27 KB for k = 429) stays in L1 while the chunk's row blocks
    /// stream past it. With AMX, the tiles cover the full 32×32 blocks and AVX512-BF16
    /// the leftover rows and a partial last panel.
    fn chunk(&self, r0: usize, rows: usize, a: &Bf16Matrix, w: &PackedBf16, c: &mut [f32]) {
        let n = w.n();
        let amx_rows = match self.0 {
            Kind::Amx => amx::band(a, w, r0, rows, c),
            _ => 0,
        };
        for panel in 0..w.panels() {
            let n_valid = (n - panel * NR).min(NR);
            let first = if n_valid == NR { amx_rows } else { 0 };
            for rb in (first..rows).step_by(MR) {
                let block = Block {
                    a: &a.data()[(r0 + rb) * a.ld()..],
                    lda: a.ld(),
                    mr: (rows - rb).min(MR),
                    kp: w.kp(),
                    panel: w.panel(panel),
                    ldc: n,
                    n_valid,
                };
                let c = &mut c[rb * n + panel * NR..];
                match self.0 {
                    Kind::Amx | Kind::Avx512Bf16 => avx512::block(&block, c),
                    Kind::Portable => portable::block(&block, c),
                }
            }
        }
    }
}

/// One register block: `mr <= MR` rows of `A` times one weight panel, written to the
/// first `n_valid <= NR` columns of `mr` rows of `C` (row stride `ldc`).
pub(crate) struct Block<'a> {
    /// Starts at the block's first row; row stride `lda` (even), `2·kp` values per row.
    pub a: &'a [bf16],
    pub lda: usize,
    pub mr: usize,
    pub kp: usize,
    /// `kp · 2 · NR` packed weights.
    pub panel: &'a [bf16],
    pub ldc: usize,
    pub n_valid: usize,
}

impl Block<'_> {
    /// Panics unless every access the kernels make is in bounds (checked once per
    /// block, so the AVX512 kernel can use raw pointers soundly).
    pub fn assert_bounds(&self, c_len: usize) {
        assert!(self.mr >= 1 && self.mr <= MR && self.n_valid >= 1 && self.n_valid <= NR);
        assert!(self.lda >= 2 * self.kp);
        assert!(self.a.len() >= (self.mr - 1) * self.lda + 2 * self.kp);
        assert!(self.panel.len() >= self.kp * 2 * NR);
        assert!(c_len >= (self.mr - 1) * self.ldc + self.n_valid);
    }
}
