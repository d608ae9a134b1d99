//! Layer norm forward (keeping per-row mean and rstd) and backward.

use super::par;
use crate::check;
use crate::error::Result;
use crate::ops::{LayerNormSpec, Shape};

/// Normalises each row; writes `y`, `mean[r]`, `rstd[r]`.
pub fn forward(
    spec: &LayerNormSpec,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
) -> Result<()> {
    const OP: &str = "layer_norm_forward";
    let shape = Shape::new(spec.rows, spec.cols);
    check::layer_norm(spec)?;
    check::matrix(OP, "x", x.len(), shape)?;
    check::matrix(OP, "y", y.len(), shape)?;
    check::vector(OP, "gamma", gamma.len(), spec.cols)?;
    check::vector(OP, "beta", beta.len(), spec.cols)?;
    check::vector(OP, "mean", mean.len(), spec.rows)?;
    check::vector(OP, "rstd", rstd.len(), spec.rows)?;
    let cols = spec.cols;
    if cols == 0 {
        return Ok(());
    }
    let inv_c = 1.0 / cols as f32;
    // Statistics first (cheap, [rows]), then the normalisation, both row-parallel.
    par::rows_mut2(mean, rstd, spec.rows, 1, shape.len(), |r0, mc, sc| {
        for i in 0..mc.len() {
            let xr = &x[(r0 + i) * cols..][..cols];
            // Two passes (mean, then centred squares): no cancellation for large means.
            let m = xr.iter().sum::<f32>() * inv_c;
            let var = xr.iter().map(|&v| (v - m) * (v - m)).sum::<f32>() * inv_c;
            mc[i] = m;
            sc[i] = 1.0 / (var + spec.eps).sqrt();
        }
    });
    let (mean, rstd) = (&*mean, &*rstd);
    par::rows_mut(y, spec.rows, cols, shape.len(), |r0, chunk| {
        for (i, yr) in chunk.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let xr = &x[r * cols..][..cols];
            let (m, s) = (mean[r], rstd[r]);
            for c in 0..cols {
                yr[c] = (xr[c] - m) * s * gamma[c] + beta[c];
            }
        }
    });
    Ok(())
}

/// `dx` (overwrite) and `dgamma`, `dbeta` (accumulate); see [`crate::Backend::layer_norm_backward`].
#[allow(clippy::too_many_arguments)] // each buffer is a distinct operand
pub fn backward(
    spec: &LayerNormSpec,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<()> {
    const OP: &str = "layer_norm_backward";
    let shape = Shape::new(spec.rows, spec.cols);
    check::layer_norm(spec)?;
    check::matrix(OP, "x", x.len(), shape)?;
    check::matrix(OP, "dy", dy.len(), shape)?;
    check::matrix(OP, "dx", dx.len(), shape)?;
    check::vector(OP, "gamma", gamma.len(), spec.cols)?;
    check::vector(OP, "dgamma", dgamma.len(), spec.cols)?;
    check::vector(OP, "dbeta", dbeta.len(), spec.cols)?;
    check::vector(OP, "mean", mean.len(), spec.rows)?;
    check::vector(OP, "rstd", rstd.len(), spec.rows)?;
    let cols = spec.cols;
    if cols == 0 {
        return Ok(());
    }
    let inv_c = 1.0 / cols as f32;
    par::rows_mut(dx, spec.rows, cols, shape.len(), |r0, chunk| {
        for (i, dxr) in chunk.chunks_exact_mut(cols).enumerate() {
            let r = r0 + i;
            let (xr, dyr) = (&x[r * cols..][..cols], &dy[r * cols..][..cols]);
            let (m, s) = (mean[r], rstd[r]);
            let mut g_mean = 0.0f32;
            let mut gx_mean = 0.0f32;
            for c in 0..cols {
                let g = dyr[c] * gamma[c];
                g_mean += g;
                gx_mean += g * ((xr[c] - m) * s);
            }
            g_mean *= inv_c;
            gx_mean *= inv_c;
            for c in 0..cols {
                let g = dyr[c] * gamma[c];
                dxr[c] = s * (g - g_mean - (xr[c] - m) * s * gx_mean);
            }
        }
    });
    // Parameter gradients reduce over rows: split by columns instead.
    par::col_bands(dgamma, spec.rows, cols, |c0, band| {
        for r in 0..spec.rows {
            let (m, s) = (mean[r], rstd[r]);
            let xr = &x[r * cols + c0..][..band.len()];
            let dyr = &dy[r * cols + c0..][..band.len()];
            for ((g, &xv), &d) in band.iter_mut().zip(xr).zip(dyr) {
                *g += d * ((xv - m) * s);
            }
        }
    });
    super::reduce::col_sums(shape, dy, dbeta, true);
    Ok(())
}
