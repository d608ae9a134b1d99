//! [`crate::block`]'s row kernels over row chunks in parallel.

use super::par;
use crate::block::{check_dot, check_dot_t, check_outer, dot_row, dot_t_row, outer_row};
use crate::error::Result;
use crate::ops::BlockShape;

pub fn block_dot(s: BlockShape, t: &[f32], y: &[f32], out: &mut [f32], accumulate: bool) -> Result<()> {
    check_dot(s, t.len(), y.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    par::rows_mut(out, s.rows, k, s.rows * k * w, |r0, chunk| {
        for (i, o) in chunk.chunks_mut(k).enumerate() {
            let r = r0 + i;
            dot_row(w, &t[r * k * w..(r + 1) * k * w], &y[r * w..(r + 1) * w], o, accumulate);
        }
    });
    Ok(())
}

pub fn block_outer(s: BlockShape, d: &[f32], y: &[f32], out: &mut [f32]) -> Result<()> {
    check_outer(s, d.len(), y.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    par::rows_mut(out, s.rows, k * w, s.rows * k * w, |r0, chunk| {
        for (i, o) in chunk.chunks_mut(k * w).enumerate() {
            let r = r0 + i;
            outer_row(w, &d[r * k..(r + 1) * k], &y[r * w..(r + 1) * w], o);
        }
    });
    Ok(())
}

pub fn block_dot_t(s: BlockShape, d: &[f32], t: &[f32], out: &mut [f32]) -> Result<()> {
    check_dot_t(s, d.len(), t.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    par::rows_mut(out, s.rows, w, s.rows * k * w, |r0, chunk| {
        for (i, o) in chunk.chunks_mut(w).enumerate() {
            let r = r0 + i;
            dot_t_row(w, &d[r * k..(r + 1) * k], &t[r * k * w..(r + 1) * k * w], o);
        }
    });
    Ok(())
}
