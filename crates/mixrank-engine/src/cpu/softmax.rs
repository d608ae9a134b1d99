//! Row softmax and its backward.

use super::par;
use crate::check;
use crate::error::Result;
use crate::ops::Shape;

/// `y = softmax(x)` per row, subtracting the row maximum first.
pub fn softmax_rows(shape: Shape, x: &[f32], y: &mut [f32]) -> Result<()> {
    check::matrix("softmax_rows", "x", x.len(), shape)?;
    check::matrix("softmax_rows", "y", y.len(), shape)?;
    let cols = shape.cols;
    par::rows_mut(y, shape.rows, cols, shape.len(), |r0, chunk| {
        for (i, yr) in chunk.chunks_exact_mut(cols).enumerate() {
            let xr = &x[(r0 + i) * cols..][..cols];
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = (x - max).exp();
                total += *y;
            }
            let inv = 1.0 / total;
            yr.iter_mut().for_each(|v| *v *= inv);
        }
    });
    Ok(())
}

/// `dx = y ⊙ (dy - Σ_c dy ⊙ y)` per row.
pub fn softmax_rows_backward(shape: Shape, y: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    const OP: &str = "softmax_rows_backward";
    check::matrix(OP, "y", y.len(), shape)?;
    check::matrix(OP, "dy", dy.len(), shape)?;
    check::matrix(OP, "dx", dx.len(), shape)?;
    let cols = shape.cols;
    par::rows_mut(dx, shape.rows, cols, shape.len(), |r0, chunk| {
        for (i, dxr) in chunk.chunks_exact_mut(cols).enumerate() {
            let start = (r0 + i) * cols;
            let (yr, dyr) = (&y[start..start + cols], &dy[start..start + cols]);
            let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
            for ((d, &yv), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
                *d = yv * (g - dot);
            }
        }
    });
    Ok(())
}
