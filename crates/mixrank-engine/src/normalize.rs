//! Row L2 normalisation ([`crate::Backend::normalize_rows`] and its backward): shape
//! checks and the row kernels, shared by every host backend (the reference runs them
//! over every row; the CPU backend over row chunks in parallel).
//!
//! Per row `r` of `x` (`[rows, cols]`): `s_r = 1 / sqrt(Σ_c x[r, c]² + eps)` and
//! `y[r, c] = x[r, c] · s_r`. The epsilon sits inside the square root, so the map is
//! smooth everywhere (a zero row maps to zero, not NaN) and its exact gradient is
//! `dx = s · (dy - y · ⟨dy, y⟩)` per row, with the `eps` term included.

use crate::check;
use crate::error::{EngineError, Result};
use crate::float::Float;
use crate::ops::Shape;

/// Checks the forward's operands and `eps` (a non-negative number).
pub fn check_forward(shape: Shape, eps: f32, x: usize, y: usize, rnorm: usize) -> Result<()> {
    const OP: &str = "normalize_rows";
    if eps.is_nan() || eps < 0.0 {
        return Err(EngineError::InvalidArgument { op: OP, reason: "eps must be a non-negative number" });
    }
    check::matrix(OP, "x", x, shape)?;
    check::matrix(OP, "y", y, shape)?;
    check::vector(OP, "rnorm", rnorm, shape.rows)
}

/// Checks the backward's operands.
pub fn check_backward(shape: Shape, y: usize, rnorm: usize, dy: usize, dx: usize) -> Result<()> {
    const OP: &str = "normalize_rows_backward";
    check::matrix(OP, "y", y, shape)?;
    check::vector(OP, "rnorm", rnorm, shape.rows)?;
    check::matrix(OP, "dy", dy, shape)?;
    check::matrix(OP, "dx", dx, shape)
}

/// One row: `s = 1 / sqrt(Σ x² + eps)` (the squares summed in index order),
/// `y = x · s`; returns `s`.
#[inline]
pub fn normalize_row<T: Float>(x: &[T], eps: T, y: &mut [T]) -> T {
    let mut ss = T::ZERO;
    for &v in x {
        ss += v * v;
    }
    let s = T::ONE / (ss + eps).sqrt();
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v * s;
    }
    s
}

/// One row of the backward: `dx = s · (dy - y · ⟨dy, y⟩)` (the dot product summed in
/// index order).
#[inline]
pub fn normalize_row_backward<T: Float>(y: &[T], s: T, dy: &[T], dx: &mut [T]) {
    let mut dot = T::ZERO;
    for (&a, &b) in dy.iter().zip(y) {
        dot += a * b;
    }
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *o = s * (g - v * dot);
    }
}

/// Sequential forward over every row.
pub fn normalize_rows<T: Float>(shape: Shape, eps: f32, x: &[T], y: &mut [T], rnorm: &mut [T]) -> Result<()> {
    check_forward(shape, eps, x.len(), y.len(), rnorm.len())?;
    let (c, eps) = (shape.cols, T::from_f64(eps as f64));
    for r in 0..shape.rows {
        rnorm[r] = normalize_row(&x[r * c..(r + 1) * c], eps, &mut y[r * c..(r + 1) * c]);
    }
    Ok(())
}

/// Sequential backward over every row (`dx` overwritten).
pub fn normalize_rows_backward<T: Float>(shape: Shape, y: &[T], rnorm: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
    check_backward(shape, y.len(), rnorm.len(), dy.len(), dx.len())?;
    let c = shape.cols;
    for (r, &s) in rnorm[..shape.rows].iter().enumerate() {
        let row = r * c..(r + 1) * c;
        normalize_row_backward(&y[row.clone()], s, &dy[row.clone()], &mut dx[row]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // Rows [3, 4] (norm 5) and [0, 0] (eps keeps it finite: maps to 0).
        let s = Shape::new(2, 2);
        let (x, mut y, mut rn) = ([3.0f64, 4.0, 0.0, 0.0], [9.0; 4], [9.0; 2]);
        normalize_rows(Shape::new(1, 2), 0.0, &x[..2], &mut y[..2], &mut rn[..1]).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(y[0], 0.6) && close(y[1], 0.8) && close(rn[0], 0.2), "{y:?} {rn:?}");
        normalize_rows(s, 0.25, &x, &mut y, &mut rn).unwrap();
        assert_eq!((&y[2..], rn[1]), (&[0.0, 0.0][..], 2.0));
        // dy along y has no effect (the norm is fixed); dy orthogonal passes scaled by s.
        let mut dx = [9.0; 2];
        normalize_rows_backward(Shape::new(1, 2), &[0.6, 0.8], &[0.2], &[0.6, 0.8], &mut dx).unwrap();
        assert!(dx.iter().all(|d| d.abs() < 1e-15));
        normalize_rows_backward(Shape::new(1, 2), &[0.6, 0.8], &[0.2], &[-0.8, 0.6], &mut dx).unwrap();
        assert_eq!(dx, [-0.8 * 0.2, 0.6 * 0.2]);
        assert!(normalize_rows(s, -1.0, &x, &mut y, &mut rn).is_err());
        assert!(normalize_rows(s, 0.0, &x, &mut y, &mut rn[..1]).is_err());
    }
}
