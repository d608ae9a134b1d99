//! Per-row block products ([`crate::Backend::block_dot`], `block_outer`,
//! `block_dot_t`): shape checks and the row kernels, shared by every host backend
//! (the CPU backend runs the same kernels over row chunks in parallel).

use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::ops::{BlockShape, Shape};

/// `[rows, cols]` of a block shape.
fn m(s: BlockShape, cols: usize) -> Shape {
    Shape::new(s.rows, cols)
}

pub fn check_dot(s: BlockShape, t: usize, y: usize, out: usize) -> Result<()> {
    const OP: &str = "block_dot";
    check::matrix(OP, "t", t, m(s, s.blocks * s.width))?;
    check::matrix(OP, "y", y, m(s, s.width))?;
    check::matrix(OP, "out", out, m(s, s.blocks))
}

pub fn check_outer(s: BlockShape, d: usize, y: usize, out: usize) -> Result<()> {
    const OP: &str = "block_outer";
    check::matrix(OP, "d", d, m(s, s.blocks))?;
    check::matrix(OP, "y", y, m(s, s.width))?;
    check::matrix(OP, "out", out, m(s, s.blocks * s.width))
}

pub fn check_dot_t(s: BlockShape, d: usize, t: usize, out: usize) -> Result<()> {
    const OP: &str = "block_dot_t";
    check::matrix(OP, "d", d, m(s, s.blocks))?;
    check::matrix(OP, "t", t, m(s, s.blocks * s.width))?;
    check::matrix(OP, "out", out, m(s, s.width))
}

/// One row of `block_dot`: `out[k] (+)= Σ_j t[k·w + j] · y[j]`.
#[inline]
pub fn dot_row<T: Float>(w: usize, t: &[T], y: &[T], out: &mut [T], accumulate: bool) {
    for (k, o) in out.iter_mut().enumerate() {
        let mut acc = T::ZERO;
        for (&a, &b) in t[k * w..(k + 1) * w].iter().zip(y) {
            acc += a * b;
        }
        *o = if accumulate { *o + acc } else { acc };
    }
}

/// One row of `block_outer`: `out[k·w + j] = d[k] · y[j]`.
#[inline]
pub fn outer_row<T: Float>(w: usize, d: &[T], y: &[T], out: &mut [T]) {
    for (k, &dk) in d.iter().enumerate() {
        for (o, &yj) in out[k * w..(k + 1) * w].iter_mut().zip(y) {
            *o = dk * yj;
        }
    }
}

/// One row of `block_dot_t`: `out[j] = Σ_k d[k] · t[k·w + j]`.
#[inline]
pub fn dot_t_row<T: Float>(w: usize, d: &[T], t: &[T], out: &mut [T]) {
    out.iter_mut().for_each(|o| *o = T::ZERO);
    for (k, &dk) in d.iter().enumerate() {
        for (o, &tj) in out.iter_mut().zip(&t[k * w..(k + 1) * w]) {
            *o += dk * tj;
        }
    }
}

/// Sequential `block_dot` over every row.
pub fn block_dot<T: Float>(s: BlockShape, t: &[T], y: &[T], out: &mut [T], accumulate: bool) -> Result<()> {
    check_dot(s, t.len(), y.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    for r in 0..s.rows {
        dot_row(w, &t[r * k * w..(r + 1) * k * w], &y[r * w..(r + 1) * w], &mut out[r * k..(r + 1) * k], accumulate);
    }
    Ok(())
}

/// Sequential `block_outer` over every row.
pub fn block_outer<T: Float>(s: BlockShape, d: &[T], y: &[T], out: &mut [T]) -> Result<()> {
    check_outer(s, d.len(), y.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    for r in 0..s.rows {
        outer_row(w, &d[r * k..(r + 1) * k], &y[r * w..(r + 1) * w], &mut out[r * k * w..(r + 1) * k * w]);
    }
    Ok(())
}

/// Sequential `block_dot_t` over every row.
pub fn block_dot_t<T: Float>(s: BlockShape, d: &[T], t: &[T], out: &mut [T]) -> Result<()> {
    check_dot_t(s, d.len(), t.len(), out.len())?;
    let (k, w) = (s.blocks, s.width);
    for r in 0..s.rows {
        dot_t_row(w, &d[r * k..(r + 1) * k], &t[r * k * w..(r + 1) * k * w], &mut out[r * w..(r + 1) * w]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // One row, two blocks of width 2: t = [[1, 2], [3, 4]], y = [10, 100].
        let s = BlockShape { rows: 1, blocks: 2, width: 2 };
        let (t, y) = ([1.0f64, 2.0, 3.0, 4.0], [10.0, 100.0]);
        let mut out = [1.0, 1.0];
        block_dot(s, &t, &y, &mut out, true).unwrap();
        assert_eq!(out, [211.0, 431.0]);
        let mut o = [0.0; 4];
        block_outer(s, &[2.0, -1.0], &y, &mut o).unwrap();
        assert_eq!(o, [20.0, 200.0, -10.0, -100.0]);
        let mut g = [9.0; 2];
        block_dot_t(s, &[2.0, -1.0], &t, &mut g).unwrap();
        assert_eq!(g, [2.0 - 3.0, 4.0 - 4.0]);
        assert!(block_dot(s, &t[..3], &y, &mut out, false).is_err());
    }
}
