//! f32 GEMM through the `gemm` crate.

use crate::check;
use crate::error::Result;
use crate::ops::{GemmSpec, Transpose};
use gemm::Parallelism;

/// `(row stride, column stride)` of an operand stored with leading dimension `ld`.
fn strides(trans: Transpose, ld: usize) -> (isize, isize) {
    match trans {
        Transpose::No => (ld as isize, 1),
        Transpose::Yes => (1, ld as isize),
    }
}

/// [`gemm`] with every element of `op(A)` and `op(B)` rounded to bf16 first
/// ([`crate::GemmOperands::Bf16`]): the operands' used extents are copied rounded, then
/// multiplied in f32. A product of two bf16 values is exact in f32, so this is a bf16
/// GEMM with f32 accumulation (in this backend's summation order). It copies, so it is
/// no faster than f32 here: it exists to train with the numerics of a bf16 device.
pub fn gemm_bf16_operands(spec: &GemmSpec, par_min: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
    check::gemm(spec, a.len(), b.len(), c.len())?;
    let round = |x: &[f32], end: usize| x[..end].iter().map(|&v| crate::ops::round_bf16(v)).collect::<Vec<f32>>();
    let (ra, rb) = (round(a, spec.a_end()), round(b, spec.b_end()));
    gemm(spec, par_min, &ra, &rb, c)
}

/// `C = alpha · op(A) · op(B) + beta · C`; multithreaded when `m·n·k >= par_min`.
pub fn gemm(spec: &GemmSpec, par_min: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
    check::gemm(spec, a.len(), b.len(), c.len())?;
    let (m, n, k) = (spec.m, spec.n, spec.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // op(A)·op(B) is the zero matrix.
        for i in 0..m {
            let row = &mut c[spec.c.offset + i * spec.c.ld..][..n];
            if spec.beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|v| *v *= spec.beta);
            }
        }
        return Ok(());
    }
    let parallelism = if m * n * k >= par_min { Parallelism::Rayon(0) } else { Parallelism::None };
    let (a_rs, a_cs) = strides(spec.trans_a, spec.a.ld);
    let (b_rs, b_cs) = strides(spec.trans_b, spec.b.ld);
    // SAFETY: `check::gemm` verified that every element the strides address lies inside
    // its slice: offset + (rows-1)·ld + cols <= len with ld >= cols for each operand, and
    // m, n, k > 0 here so each offset is in bounds. `c` is borrowed mutably and `a`, `b`
    // immutably, so the output cannot alias an input. The `gemm` crate computes
    // dst = alpha·dst + beta·lhs·rhs, hence our beta/alpha are passed swapped, and with
    // read_dst = false (our beta == 0) it never reads dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(spec.c.offset),
            1,
            spec.c.ld as isize,
            spec.beta != 0.0,
            a.as_ptr().add(spec.a.offset),
            a_cs,
            a_rs,
            b.as_ptr().add(spec.b.offset),
            b_cs,
            b_rs,
            spec.beta,
            spec.alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
