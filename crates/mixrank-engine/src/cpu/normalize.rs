//! Row L2 normalisation: [`crate::normalize`]'s row kernels over row chunks in parallel
//! (so each row runs the reference's f32 arithmetic in the same order: bit-identical).

use super::par::{self, worth_splitting};
use crate::error::Result;
use crate::normalize::{check_backward, check_forward, normalize_row, normalize_row_backward};
use crate::ops::Shape;
use rayon::prelude::*;

/// Rows per parallel chunk.
const CHUNK_ROWS: usize = 256;

pub fn forward(shape: Shape, eps: f32, x: &[f32], y: &mut [f32], rnorm: &mut [f32]) -> Result<()> {
    check_forward(shape, eps, x.len(), y.len(), rnorm.len())?;
    let (rows, c) = (shape.rows, shape.cols);
    if rows == 0 || c == 0 {
        rnorm[..rows].iter_mut().for_each(|s| *s = 1.0 / eps.sqrt());
        return Ok(());
    }
    let run = |r0: usize, ys: &mut [f32], ss: &mut [f32]| {
        for (i, (yr, s)) in ys.chunks_exact_mut(c).zip(ss.iter_mut()).enumerate() {
            *s = normalize_row(&x[(r0 + i) * c..][..c], eps, yr);
        }
    };
    let (y, rnorm) = (&mut y[..rows * c], &mut rnorm[..rows]);
    if worth_splitting(shape.len()) {
        y.par_chunks_mut(CHUNK_ROWS * c)
            .zip(rnorm.par_chunks_mut(CHUNK_ROWS))
            .enumerate()
            .for_each(|(i, (ys, ss))| run(i * CHUNK_ROWS, ys, ss));
    } else {
        run(0, y, rnorm);
    }
    Ok(())
}

pub fn backward(shape: Shape, y: &[f32], rnorm: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    check_backward(shape, y.len(), rnorm.len(), dy.len(), dx.len())?;
    let c = shape.cols;
    par::rows_mut(dx, shape.rows, c, shape.len(), |r0, chunk| {
        for (i, o) in chunk.chunks_exact_mut(c).enumerate() {
            let r = r0 + i;
            normalize_row_backward(&y[r * c..][..c], rnorm[r], &dy[r * c..][..c], o);
        }
    });
    Ok(())
}
