//! Fused bias + activation, elementwise arithmetic and strided column copies.

use super::{par, reduce};
use crate::activation::Activation;
use crate::check;
use crate::error::Result;
use crate::ops::{ColCopy, Shape};

fn check_bias(op: &'static str, shape: Shape, bias: Option<&[f32]>) -> Result<()> {
    match bias {
        Some(b) => check::vector(op, "bias", b.len(), shape.cols),
        None => Ok(()),
    }
}

/// Applies `act` to a row chunk after adding the bias; monomorphised per activation so
/// the inner loop has no branch on the activation kind.
#[inline(always)]
fn bias_act_chunk(act: Activation, cols: usize, bias: Option<&[f32]>, z: &mut [f32], y: &mut [f32]) {
    for (zr, yr) in z.chunks_exact_mut(cols).zip(y.chunks_exact_mut(cols)) {
        if let Some(b) = bias {
            zr.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
        match act {
            Activation::Identity => yr.copy_from_slice(zr),
            Activation::Relu => yr.iter_mut().zip(zr.iter()).for_each(|(y, &z)| *y = z.max(0.0)),
            _ => yr.iter_mut().zip(zr.iter()).for_each(|(y, &z)| *y = act.forward(z)),
        }
    }
}

/// `z += bias`, `y = act(z)`.
pub fn bias_act_forward(
    act: Activation,
    shape: Shape,
    bias: Option<&[f32]>,
    z: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "bias_act_forward";
    check_bias(OP, shape, bias)?;
    check::matrix(OP, "z", z.len(), shape)?;
    check::matrix(OP, "y", y.len(), shape)?;
    par::rows_mut2(z, y, shape.rows, shape.cols, shape.len(), |_, zc, yc| {
        bias_act_chunk(act, shape.cols, bias, zc, yc)
    });
    Ok(())
}

/// `x = act(x + bias)`.
pub fn bias_act_inplace(act: Activation, shape: Shape, bias: Option<&[f32]>, x: &mut [f32]) -> Result<()> {
    const OP: &str = "bias_act_inplace";
    check_bias(OP, shape, bias)?;
    check::matrix(OP, "x", x.len(), shape)?;
    par::rows_mut(x, shape.rows, shape.cols, shape.len(), |_, chunk| {
        for row in chunk.chunks_exact_mut(shape.cols) {
            match bias {
                Some(b) => row.iter_mut().zip(b).for_each(|(v, &b)| *v = act.forward(*v + b)),
                None => row.iter_mut().for_each(|v| *v = act.forward(*v)),
            }
        }
    });
    Ok(())
}

/// `dz = dy ⊙ act'(z)`, `dbias += Σ_rows dz`.
pub fn bias_act_backward(
    act: Activation,
    shape: Shape,
    z: &[f32],
    dy: &[f32],
    dz: &mut [f32],
    dbias: Option<&mut [f32]>,
) -> Result<()> {
    const OP: &str = "bias_act_backward";
    check::matrix(OP, "z", z.len(), shape)?;
    check::matrix(OP, "dy", dy.len(), shape)?;
    check::matrix(OP, "dz", dz.len(), shape)?;
    if let Some(db) = &dbias {
        check::vector(OP, "dbias", db.len(), shape.cols)?;
    }
    par::rows_mut(dz, shape.rows, shape.cols, shape.len(), |r0, chunk| {
        let start = r0 * shape.cols;
        let (zc, dyc) = (&z[start..start + chunk.len()], &dy[start..start + chunk.len()]);
        match act {
            Activation::Identity => chunk.copy_from_slice(dyc),
            Activation::Relu => {
                for ((d, &g), &z) in chunk.iter_mut().zip(dyc).zip(zc) {
                    *d = if z > 0.0 { g } else { 0.0 };
                }
            }
            _ => {
                for ((d, &g), &z) in chunk.iter_mut().zip(dyc).zip(zc) {
                    *d = g * act.derivative(z);
                }
            }
        }
    });
    if let Some(db) = dbias {
        reduce::col_sums(shape, dz, db, true);
    }
    Ok(())
}

fn check_binary(op: &'static str, n: usize, a: &[f32], b: &[f32], out: &[f32]) -> Result<()> {
    check::vector(op, "a", a.len(), n)?;
    check::vector(op, "b", b.len(), n)?;
    check::vector(op, "out", out.len(), n)
}

/// `out[i] = f(out[i], a[i], b[i])` over the first `n` elements, in parallel chunks.
fn zip3(n: usize, a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32, f32) -> f32 + Sync + Send) {
    par::rows_mut(out, n, 1, n, |i0, chunk| {
        let (ac, bc) = (&a[i0..i0 + chunk.len()], &b[i0..i0 + chunk.len()]);
        for ((o, &x), &y) in chunk.iter_mut().zip(ac).zip(bc) {
            *o = f(*o, x, y);
        }
    });
}

pub fn add(n: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    check_binary("add", n, a, b, out)?;
    zip3(n, a, b, out, |_, x, y| x + y);
    Ok(())
}

pub fn mul(n: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    check_binary("mul", n, a, b, out)?;
    zip3(n, a, b, out, |_, x, y| x * y);
    Ok(())
}

pub fn mul_acc(n: usize, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    check_binary("mul_acc", n, a, b, out)?;
    zip3(n, a, b, out, |o, x, y| o + x * y);
    Ok(())
}

/// `da = dout ⊙ b`, `db = dout ⊙ a`.
pub fn mul_backward(n: usize, a: &[f32], b: &[f32], dout: &[f32], da: &mut [f32], db: &mut [f32]) -> Result<()> {
    const OP: &str = "mul_backward";
    check_binary(OP, n, a, b, dout)?;
    check::vector(OP, "da", da.len(), n)?;
    check::vector(OP, "db", db.len(), n)?;
    par::rows_mut2(da, db, n, 1, n, |i0, dac, dbc| {
        let r = i0..i0 + dac.len();
        let (ac, bc, gc) = (&a[r.clone()], &b[r.clone()], &dout[r]);
        for i in 0..dac.len() {
            dac[i] = gc[i] * bc[i];
            dbc[i] = gc[i] * ac[i];
        }
    });
    Ok(())
}

pub fn scale(n: usize, alpha: f32, x: &mut [f32]) -> Result<()> {
    check::vector("scale", "x", x.len(), n)?;
    par::rows_mut(x, n, 1, n, |_, chunk| chunk.iter_mut().for_each(|v| *v *= alpha));
    Ok(())
}

pub fn axpy(n: usize, alpha: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
    check::vector("axpy", "x", x.len(), n)?;
    check::vector("axpy", "y", y.len(), n)?;
    par::rows_mut(y, n, 1, n, |i0, chunk| {
        let xc = &x[i0..i0 + chunk.len()];
        for (v, &xv) in chunk.iter_mut().zip(xc) {
            *v += alpha * xv;
        }
    });
    Ok(())
}

/// `dst[r, dst_col + c] (+)= src[r, src_col + c]`.
pub fn copy_cols(spec: &ColCopy, src: &[f32], dst: &mut [f32]) -> Result<()> {
    check::col_copy(spec, src.len(), dst.len())?;
    let work = spec.rows * spec.cols;
    par::rows_mut(dst, spec.rows, spec.dst_ld, work, |r0, chunk| {
        for (i, row) in chunk.chunks_exact_mut(spec.dst_ld).enumerate() {
            let s = &src[(r0 + i) * spec.src_ld + spec.src_col..][..spec.cols];
            let d = &mut row[spec.dst_col..spec.dst_col + spec.cols];
            if spec.accumulate {
                d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
            } else {
                d.copy_from_slice(s);
            }
        }
    });
    Ok(())
}
