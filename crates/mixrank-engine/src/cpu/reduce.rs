//! Row sums, column sums and the total sum.

use super::par;
use crate::check;
use crate::error::Result;
use crate::ops::Shape;

/// `out[r] = Σ_c x[r, c]`.
pub fn sum_rows(shape: Shape, x: &[f32], out: &mut [f32]) -> Result<()> {
    check::matrix("sum_rows", "x", x.len(), shape)?;
    check::vector("sum_rows", "out", out.len(), shape.rows)?;
    if shape.cols == 0 {
        out[..shape.rows].fill(0.0);
        return Ok(());
    }
    // Each output element is one row: chunk the output as a [rows, 1] matrix.
    par::rows_mut(out, shape.rows, 1, shape.len(), |r0, chunk| {
        for (i, o) in chunk.iter_mut().enumerate() {
            let r = r0 + i;
            *o = x[r * shape.cols..(r + 1) * shape.cols].iter().sum();
        }
    });
    Ok(())
}

/// `out[c] (+)= Σ_r x[r, c]`, reducing each column over rows in order.
pub fn col_sums(shape: Shape, x: &[f32], out: &mut [f32], accumulate: bool) {
    par::col_bands(out, shape.rows, shape.cols, |c0, band| {
        if !accumulate {
            band.fill(0.0);
        }
        for r in 0..shape.rows {
            let row = &x[r * shape.cols + c0..][..band.len()];
            for (o, v) in band.iter_mut().zip(row) {
                *o += v;
            }
        }
    });
}

/// `out[c] = Σ_r x[r, c]`.
pub fn sum_cols(shape: Shape, x: &[f32], out: &mut [f32]) -> Result<()> {
    check::matrix("sum_cols", "x", x.len(), shape)?;
    check::vector("sum_cols", "out", out.len(), shape.cols)?;
    col_sums(shape, x, out, false);
    Ok(())
}

/// `Σ x[..n]` in f64, sequentially (deterministic; memory-bound anyway).
pub fn sum(n: usize, x: &[f32]) -> Result<f64> {
    check::vector("sum", "x", x.len(), n)?;
    Ok(x[..n].iter().map(|&v| v as f64).sum())
}
