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
//!
//! On a CPU with neither AMX-BF16 nor AVX512-BF16, [`Bf16Kernel::detect`] picks a
//! widening kernel instead ([`widen`]): bf16 weights (half the memory), f32 activations
//! and f32 FMAs, called through [`Bf16Kernel::gemm_f32`] — bf16 arithmetic emulated in
//! scalar code was 3-4× slower than the f32 GEMM on such CPUs (docs/BENCHMARKS.md).

mod amx;
mod avx512;
mod matrix;
mod portable;
mod widen;

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
    /// bf16 weights widened to f32 in registers, f32 activations (AVX-512F).
    Avx512Widen,
    /// The same with AVX2 + FMA.
    Avx2Widen,
    Portable,
}

/// Which bf16 kernel to run. Holding a `Bf16Kernel` of the AMX or AVX512 kind proves the
/// CPU supports it: the only ways to get one check at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Kernel(Kind);

impl Bf16Kernel {
    /// The fastest kernel this CPU supports: AMX-BF16 tiles where the CPU has them, else
    /// a widening kernel (bf16 storage, f32 compute; AVX-512F, else AVX2 + FMA), else the
    /// portable loop (non-x86 CPUs). AVX512-BF16 without AMX is not picked: on an Intel
    /// Xeon with `avx512_bf16` and no AMX its `vdpbf16ps` path (activations rounded to
    /// bf16 per call, then dot products of bf16 pairs) measured 1.05–1.5× *slower* than
    /// the f32 GEMM end to end, where the AVX-512 widening kernel is at f32's speed
    /// (docs/BENCHMARKS.md, 2026-12-07); it stays available by name
    /// (`MIXRANK_BF16_KERNEL=avx512bf16`).
    pub fn detect() -> Self {
        Self::amx().or_else(|_| Self::widen()).unwrap_or(Self::portable())
    }

    /// The kernel the environment variable `MIXRANK_BF16_KERNEL` names (`amx`,
    /// `avx512bf16`, `avx512-widen`, `avx2-widen`, `portable`), or [`Bf16Kernel::detect`]'s
    /// when it is unset or `auto` — so a benchmark can time every kernel the CPU offers.
    /// Naming a kernel this CPU lacks, or no kernel, is an error.
    pub fn select() -> Result<Self> {
        match std::env::var("MIXRANK_BF16_KERNEL") {
            Ok(name) if name != "auto" && !name.is_empty() => Self::by_name(&name),
            _ => Ok(Self::detect()),
        }
    }

    /// The kernel of this [`name`](Bf16Kernel::name), if this CPU runs it.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "amx" | "amx-bf16" => Self::amx(),
            "avx512bf16" => Self::avx512bf16(),
            "avx512-widen" => Self::widen_avx512(),
            "avx2-widen" => Self::widen_avx2(),
            "portable" => Ok(Self::portable()),
            _ => Err(EngineError::InvalidArgument {
                op: "bf16 kernel",
                reason: "MIXRANK_BF16_KERNEL must be one of auto, amx, avx512bf16, avx512-widen, avx2-widen, portable",
            }),
        }
    }

    /// One line for users: what this kernel computes in, and what bf16 buys on this CPU.
    pub fn describe(&self) -> &'static str {
        match self.0 {
            Kind::Amx => "AMX-BF16 tiles: bf16 weights and activations, f32 accumulation",
            Kind::Avx512Bf16 => "AVX512-BF16: bf16 weights and activations, f32 accumulation",
            Kind::Avx512Widen | Kind::Avx2Widen => {
                "this CPU has no bf16 arithmetic: bf16 weights (half the memory) widened to f32, f32 activations and arithmetic — about f32's speed, not faster"
            }
            Kind::Portable => "portable loop (no SIMD): slower than f32",
        }
    }

    /// The widening kernel this CPU runs: AVX-512F, else AVX2 + FMA.
    pub fn widen() -> Result<Self> {
        Self::widen_avx512().or_else(|_| Self::widen_avx2())
    }

    /// The AVX-512F widening kernel, if this CPU has `avx512f`.
    pub fn widen_avx512() -> Result<Self> {
        if widen::avx512_supported() {
            Ok(Bf16Kernel(Kind::Avx512Widen))
        } else {
            Err(EngineError::Unsupported { op: "bf16 gemm", feature: "avx512f" })
        }
    }

    /// The AVX2 widening kernel, if this CPU has `avx2` and `fma`.
    pub fn widen_avx2() -> Result<Self> {
        if widen::avx2_supported() {
            Ok(Bf16Kernel(Kind::Avx2Widen))
        } else {
            Err(EngineError::Unsupported { op: "bf16 gemm", feature: "avx2+fma" })
        }
    }

    /// Whether this kernel takes f32 activations ([`Bf16Kernel::gemm_f32`]) rather than
    /// bf16 ones ([`Bf16Kernel::gemm`]): true for the widening kinds, which do f32
    /// arithmetic on widened bf16 weights.
    pub fn takes_f32_activations(&self) -> bool {
        matches!(self.0, Kind::Avx512Widen | Kind::Avx2Widen)
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
            Kind::Avx512Widen => "avx512-widen",
            Kind::Avx2Widen => "avx2-widen",
            Kind::Portable => "portable",
        }
    }

    /// f32 → bf16, round to nearest even. The SIMD kinds flush subnormal inputs (below
    /// 1.2e-38) to signed zero, as `vcvtne2ps2bf16` does, where the portable kind keeps
    /// them; values that small carry no signal in a ranking model.
    pub fn convert(&self, src: &[f32], dst: &mut [bf16]) {
        match self.0 {
            Kind::Amx | Kind::Avx512Bf16 => avx512::convert(src, dst),
            Kind::Avx512Widen | Kind::Avx2Widen | Kind::Portable => {
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d = bf16::from_f32(s))
            }
        }
    }

    /// `C[..m, ..n] = A[..m] · W`; `C` is dense `[m, n]`, overwritten. Runs multithreaded
    /// when `m·n·k >= 2^20` (as the f32 GEMM).
    /// The widening kinds refuse (they take f32 activations: [`Bf16Kernel::gemm_f32`]).
    pub fn gemm(&self, m: usize, a: &Bf16Matrix, w: &PackedBf16, c: &mut [f32]) -> Result<()> {
        const OP: &str = "gemm_bf16";
        if self.takes_f32_activations() {
            return Err(EngineError::Unsupported { op: OP, feature: "bf16 activations (this kernel takes f32)" });
        }
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

    /// `C[..m, ..n] = A[..m] · W` with f32 activations `A` (dense `[m, k]`, row-major)
    /// and the bf16 weights widened to f32: the widening kinds only (the others refuse).
    /// Threads as [`Bf16Kernel::gemm`].
    pub fn gemm_f32(&self, m: usize, a: &[f32], w: &PackedBf16, c: &mut [f32]) -> Result<()> {
        const OP: &str = "gemm_bf16_f32";
        if !self.takes_f32_activations() {
            return Err(EngineError::Unsupported { op: OP, feature: "f32 activations (this kernel takes bf16)" });
        }
        let (k, n) = (w.k(), w.n());
        check::holds(OP, "a", a.len(), &[m, k], m * k)?;
        check::holds(OP, "c", c.len(), &[m, n], m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let c = &mut c[..m * n];
        if k == 0 {
            c.fill(0.0);
            return Ok(());
        }
        let threads = rayon::current_num_threads();
        if m * n * k < CpuOps::DEFAULT_GEMM_PAR_MIN || threads == 1 || m <= MR {
            self.rows_f32(0, m, a, w, c);
        } else {
            let band = m.div_ceil(threads).next_multiple_of(MR);
            c.par_chunks_mut(band * n).enumerate().for_each(|(i, chunk)| {
                self.rows_f32(i * band, chunk.len() / n, a, w, chunk);
            });
        }
        Ok(())
    }

    /// [`Bf16Kernel::rows`] for f32 activations: chunks of [`MC`] rows, panels outside
    /// row blocks.
    fn rows_f32(&self, r0: usize, rows: usize, a: &[f32], w: &PackedBf16, c: &mut [f32]) {
        let (k, n) = (w.k(), w.n());
        for start in (0..rows).step_by(MC) {
            let len = (rows - start).min(MC);
            let c = &mut c[start * n..(start + len) * n];
            for panel in 0..w.panels() {
                let n_valid = (n - panel * NR).min(NR);
                for rb in (0..len).step_by(MR) {
                    let block = widen::WideBlock {
                        a: &a[(r0 + start + rb) * k..],
                        lda: k,
                        mr: (len - rb).min(MR),
                        k,
                        panel: w.panel(panel),
                        ldc: n,
                        n_valid,
                    };
                    let c = &mut c[rb * n + panel * NR..];
                    match self.0 {
                        Kind::Avx512Widen => widen::block_avx512(&block, c),
                        Kind::Avx2Widen => widen::block_avx2(&block, c),
                        _ => unreachable!("checked by gemm_f32"),
                    }
                }
            }
        }
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
                    Kind::Avx512Widen | Kind::Avx2Widen => unreachable!("refused by gemm"),
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
