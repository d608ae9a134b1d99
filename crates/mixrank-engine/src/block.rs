//! Per-row block products ([`crate::Backend::block_dot`], `block_outer`,
//! `block_dot_t`): shape checks and the row kernels, shared by every host backend
//! (the CPU backend runs the same kernels over row chunks in parallel).

use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::ops::{BlockShape, Shape};

fn checks(op: &'static str, s: BlockShape, (a, an): (&'static str, usize), b: usize, out: usize) -> Result<()> {
    let (kw, w, k) = (s.blocks * s.width, s.width, s.blocks);
    let m = |cols| Shape::new(s.rows, cols);
    match op {
        "block_dot" => {
            check::matrix(op, a, an, m(kw))?;
            check::matrix(op, "y", b, m(w))?;
            check::matrix(op, "out", out, m(k))
        }
        "block_outer" => {
            check::matrix(op, a, an, m(k))?;
            check::matrix(op, "y", b, m(w))?;
            check::matrix(op, "out", out, m(kw))
        }
        _ => {
            check::matrix(op, a, an, m(k))?;
            check::matrix(op, "t", b, m(kw))?;
            check::matrix(op, "out", out, m(w))
        }
    }
}

pub fn check_dot(s: BlockShape, t: usize, y: usize, out: usize) -> Result<()> {
    checks("block_dot", s, ("t", t), y, out)
}

pub fn check_outer(s: BlockShape, d: usize, y: usize, out: usize) -> Result<()> {
    checks("block_outer", s, ("d", d), y, out)
}

pub fn check_dot_t(s: BlockShape, d: usize, t: usize, out: usize) -> Result<()> {
    checks("block_dot_t", s, ("d", d), t, out)
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
