//! [`RefOps`](type@RefOps): the obviously-correct backend. Naive loops, no parallelism, no cleverness;
//! the fast backends are tested against it, and its generic functions run in `f64` for
//! finite-difference gradient checks.
//!
//! The free functions are generic over [`Float`] and work on slices; they validate their
//! arguments exactly like the backends do.

use std::marker::PhantomData;

use crate::activation::Activation;
use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::host;
use crate::loss;
pub use crate::normalize::{normalize_rows, normalize_rows_backward};
use crate::ops::{
    Backend, BlockShape, ColCopy, GatherSpec, GemmSpec, GradWrite, GroupSpec, LayerNormSpec, LossInput, NormStats,
    PairSpec, Pooling, Shape, SparseGrad, SparseView, Transpose,
};
use crate::optim::{self, AdamSpec, LazyAdamSpec, RowAdagradSpec, TableShape};

/// `C = alpha · op(A) · op(B) + beta · C`, one dot product per element.
pub fn gemm<T: Float>(spec: &GemmSpec, a: &[T], b: &[T], c: &mut [T]) -> Result<()> {
    check::gemm(spec, a.len(), b.len(), c.len())?;
    let at = |i: usize, p: usize| match spec.trans_a {
        Transpose::No => a[spec.a.offset + i * spec.a.ld + p],
        Transpose::Yes => a[spec.a.offset + p * spec.a.ld + i],
    };
    let bt = |p: usize, j: usize| match spec.trans_b {
        Transpose::No => b[spec.b.offset + p * spec.b.ld + j],
        Transpose::Yes => b[spec.b.offset + j * spec.b.ld + p],
    };
    let alpha = T::from_f64(spec.alpha as f64);
    let beta = T::from_f64(spec.beta as f64);
    for i in 0..spec.m {
        for j in 0..spec.n {
            let mut acc = T::ZERO;
            for p in 0..spec.k {
                acc += at(i, p) * bt(p, j);
            }
            let cij = &mut c[spec.c.offset + i * spec.c.ld + j];
            // beta == 0 means C is not read, as in BLAS.
            *cij = if spec.beta == 0.0 { alpha * acc } else { alpha * acc + beta * *cij };
        }
    }
    Ok(())
}

fn check_bias<T>(op: &'static str, shape: Shape, bias: Option<&[T]>) -> Result<()> {
    match bias {
        Some(b) => check::vector(op, "bias", b.len(), shape.cols),
        None => Ok(()),
    }
}

/// `z += bias` (broadcast over rows), `y = act(z)`.
pub fn bias_act_forward<T: Float>(
    act: Activation,
    shape: Shape,
    bias: Option<&[T]>,
    z: &mut [T],
    y: &mut [T],
) -> Result<()> {
    const OP: &str = "bias_act_forward";
    check_bias(OP, shape, bias)?;
    check::matrix(OP, "z", z.len(), shape)?;
    check::matrix(OP, "y", y.len(), shape)?;
    for r in 0..shape.rows {
        for c in 0..shape.cols {
            let i = r * shape.cols + c;
            if let Some(b) = bias {
                z[i] += b[c];
            }
            y[i] = act.forward(z[i]);
        }
    }
    Ok(())
}

/// `x = act(x + bias)`.
pub fn bias_act_inplace<T: Float>(act: Activation, shape: Shape, bias: Option<&[T]>, x: &mut [T]) -> Result<()> {
    const OP: &str = "bias_act_inplace";
    check_bias(OP, shape, bias)?;
    check::matrix(OP, "x", x.len(), shape)?;
    for r in 0..shape.rows {
        for c in 0..shape.cols {
            let i = r * shape.cols + c;
            let b = bias.map_or(T::ZERO, |b| b[c]);
            x[i] = act.forward(x[i] + b);
        }
    }
    Ok(())
}

/// `dz = dy ⊙ act'(z)`, `dbias += Σ_rows dz`.
pub fn bias_act_backward<T: Float>(
    act: Activation,
    shape: Shape,
    z: &[T],
    dy: &[T],
    dz: &mut [T],
    dbias: Option<&mut [T]>,
) -> Result<()> {
    const OP: &str = "bias_act_backward";
    check::matrix(OP, "z", z.len(), shape)?;
    check::matrix(OP, "dy", dy.len(), shape)?;
    check::matrix(OP, "dz", dz.len(), shape)?;
    if let Some(db) = &dbias {
        check::vector(OP, "dbias", db.len(), shape.cols)?;
    }
    for i in 0..shape.len() {
        dz[i] = dy[i] * act.derivative(z[i]);
    }
    if let Some(db) = dbias {
        for r in 0..shape.rows {
            for c in 0..shape.cols {
                db[c] += dz[r * shape.cols + c];
            }
        }
    }
    Ok(())
}

fn check_binary<T>(op: &'static str, n: usize, a: &[T], b: &[T], out: &[T]) -> Result<()> {
    check::vector(op, "a", a.len(), n)?;
    check::vector(op, "b", b.len(), n)?;
    check::vector(op, "out", out.len(), n)
}

/// `out = a + b`.
pub fn add<T: Float>(n: usize, a: &[T], b: &[T], out: &mut [T]) -> Result<()> {
    check_binary("add", n, a, b, out)?;
    for i in 0..n {
        out[i] = a[i] + b[i];
    }
    Ok(())
}

/// `out = a ⊙ b`.
pub fn mul<T: Float>(n: usize, a: &[T], b: &[T], out: &mut [T]) -> Result<()> {
    check_binary("mul", n, a, b, out)?;
    for i in 0..n {
        out[i] = a[i] * b[i];
    }
    Ok(())
}

/// `out += a ⊙ b`.
pub fn mul_acc<T: Float>(n: usize, a: &[T], b: &[T], out: &mut [T]) -> Result<()> {
    check_binary("mul_acc", n, a, b, out)?;
    for i in 0..n {
        out[i] += a[i] * b[i];
    }
    Ok(())
}

/// `da = dout ⊙ b`, `db = dout ⊙ a`.
pub fn mul_backward<T: Float>(n: usize, a: &[T], b: &[T], dout: &[T], da: &mut [T], db: &mut [T]) -> Result<()> {
    const OP: &str = "mul_backward";
    check_binary(OP, n, a, b, dout)?;
    check::vector(OP, "da", da.len(), n)?;
    check::vector(OP, "db", db.len(), n)?;
    for i in 0..n {
        da[i] = dout[i] * b[i];
        db[i] = dout[i] * a[i];
    }
    Ok(())
}

/// `x = alpha · x`.
pub fn scale<T: Float>(n: usize, alpha: T, x: &mut [T]) -> Result<()> {
    check::vector("scale", "x", x.len(), n)?;
    for v in &mut x[..n] {
        *v *= alpha;
    }
    Ok(())
}

/// `y = alpha · x + y`.
pub fn axpy<T: Float>(n: usize, alpha: T, x: &[T], y: &mut [T]) -> Result<()> {
    check::vector("axpy", "x", x.len(), n)?;
    check::vector("axpy", "y", y.len(), n)?;
    for i in 0..n {
        y[i] += alpha * x[i];
    }
    Ok(())
}

/// `dst[r, dst_col + c] (+)= src[r, src_col + c]`.
pub fn copy_cols<T: Float>(spec: &ColCopy, src: &[T], dst: &mut [T]) -> Result<()> {
    check::col_copy(spec, src.len(), dst.len())?;
    for r in 0..spec.rows {
        for c in 0..spec.cols {
            let v = src[r * spec.src_ld + spec.src_col + c];
            let d = &mut dst[r * spec.dst_ld + spec.dst_col + c];
            if spec.accumulate {
                *d += v;
            } else {
                *d = v;
            }
        }
    }
    Ok(())
}

/// Row softmax with the row maximum subtracted first.
pub fn softmax_rows<T: Float>(shape: Shape, x: &[T], y: &mut [T]) -> Result<()> {
    check::matrix("softmax_rows", "x", x.len(), shape)?;
    check::matrix("softmax_rows", "y", y.len(), shape)?;
    for r in 0..shape.rows {
        let row = r * shape.cols..(r + 1) * shape.cols;
        let mut max = x[row.start];
        for i in row.clone() {
            if x[i] > max {
                max = x[i];
            }
        }
        let mut total = T::ZERO;
        for i in row.clone() {
            y[i] = (x[i] - max).exp();
            total += y[i];
        }
        for i in row {
            y[i] = y[i] / total;
        }
    }
    Ok(())
}

/// `dx = y ⊙ (dy - Σ_c dy ⊙ y)`.
pub fn softmax_rows_backward<T: Float>(shape: Shape, y: &[T], dy: &[T], dx: &mut [T]) -> Result<()> {
    const OP: &str = "softmax_rows_backward";
    check::matrix(OP, "y", y.len(), shape)?;
    check::matrix(OP, "dy", dy.len(), shape)?;
    check::matrix(OP, "dx", dx.len(), shape)?;
    for r in 0..shape.rows {
        let row = r * shape.cols..(r + 1) * shape.cols;
        let mut dot = T::ZERO;
        for i in row.clone() {
            dot += dy[i] * y[i];
        }
        for i in row {
            dx[i] = y[i] * (dy[i] - dot);
        }
    }
    Ok(())
}

/// Layer norm forward keeping `mean` and `rstd` per row.
pub fn layer_norm_forward<T: Float>(
    spec: &LayerNormSpec,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
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
    let inv_c = T::ONE / T::from_f64(spec.cols as f64);
    for r in 0..spec.rows {
        let row = r * spec.cols..(r + 1) * spec.cols;
        let mut m = T::ZERO;
        for i in row.clone() {
            m += x[i];
        }
        m *= inv_c;
        let mut var = T::ZERO;
        for i in row.clone() {
            var += (x[i] - m) * (x[i] - m);
        }
        var *= inv_c;
        let s = T::ONE / (var + T::from_f64(spec.eps as f64)).sqrt();
        for (c, i) in row.enumerate() {
            y[i] = (x[i] - m) * s * gamma[c] + beta[c];
        }
        mean[r] = m;
        rstd[r] = s;
    }
    Ok(())
}

/// Layer norm backward: `dx` overwritten, `dgamma`/`dbeta` accumulated.
#[allow(clippy::too_many_arguments)] // each buffer is a distinct operand
pub fn layer_norm_backward<T: Float>(
    spec: &LayerNormSpec,
    x: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
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
    let inv_c = T::ONE / T::from_f64(spec.cols as f64);
    for r in 0..spec.rows {
        let row = r * spec.cols..(r + 1) * spec.cols;
        let xhat = |i: usize| (x[i] - mean[r]) * rstd[r];
        let mut g_mean = T::ZERO;
        let mut gx_mean = T::ZERO;
        for (c, i) in row.clone().enumerate() {
            let g = dy[i] * gamma[c];
            g_mean += g;
            gx_mean += g * xhat(i);
        }
        g_mean *= inv_c;
        gx_mean *= inv_c;
        for (c, i) in row.enumerate() {
            let g = dy[i] * gamma[c];
            dx[i] = rstd[r] * (g - g_mean - xhat(i) * gx_mean);
            dgamma[c] += dy[i] * xhat(i);
            dbeta[c] += dy[i];
        }
    }
    Ok(())
}

/// `out[b, col_offset + j] = table[ids[b], j]`.
pub fn gather_rows<T: Float>(spec: &GatherSpec, ids: &[u32], table: &[T], out: &mut [T]) -> Result<()> {
    const OP: &str = "gather_rows";
    check::gather(OP, spec, table.len(), out.len())?;
    check::vector(OP, "ids", ids.len(), spec.batch)?;
    check::ids_in_range(OP, &ids[..spec.batch], spec.table_rows)?;
    for b in 0..spec.batch {
        let row = ids[b] as usize;
        for j in 0..spec.dim {
            out[b * spec.out_cols + spec.col_offset + j] = table[row * spec.dim + j];
        }
    }
    Ok(())
}

/// Checks of a pooled gather/scatter; returns the number of ids used.
fn check_pooled(op: &'static str, spec: &GatherSpec, offsets: &[u32], ids: &[u32]) -> Result<usize> {
    let nnz = check::offsets(op, offsets, spec.batch, ids.len())?;
    check::ids_in_range(op, &ids[..nnz], spec.table_rows)?;
    Ok(nnz)
}

/// Weight of each id of bag `b` under `pooling`.
fn bag_weight<T: Float>(pooling: Pooling, offsets: &[u32], b: usize) -> T {
    let count = (offsets[b + 1] - offsets[b]) as f64;
    match pooling {
        Pooling::Sum => T::ONE,
        Pooling::Mean => T::from_f64(1.0 / count.max(1.0)),
    }
}

/// `out[b, col_offset + j] = pool_{i in bag b} table[ids[i], j]`.
pub fn gather_pooled<T: Float>(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: &[u32],
    ids: &[u32],
    table: &[T],
    out: &mut [T],
) -> Result<()> {
    const OP: &str = "gather_pooled";
    check::gather(OP, spec, table.len(), out.len())?;
    check_pooled(OP, spec, offsets, ids)?;
    for b in 0..spec.batch {
        let w: T = bag_weight(pooling, offsets, b);
        for j in 0..spec.dim {
            let mut acc = T::ZERO;
            for &id in &ids[offsets[b] as usize..offsets[b + 1] as usize] {
                acc += table[id as usize * spec.dim + j];
            }
            out[b * spec.out_cols + spec.col_offset + j] = acc * w;
        }
    }
    Ok(())
}

/// Table gradient of [`gather_rows`]: sorted distinct ids and their summed rows.
pub fn scatter_rows_grad<T: Float>(spec: &GatherSpec, ids: &[u32], dout: &[T]) -> Result<(Vec<u32>, Vec<T>)> {
    const OP: &str = "scatter_rows_grad";
    check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
    check::vector(OP, "ids", ids.len(), spec.batch)?;
    check::ids_in_range(OP, &ids[..spec.batch], spec.table_rows)?;
    let offsets: Vec<u32> = (0..=spec.batch as u32).collect();
    Ok(scatter(spec, Pooling::Sum, &offsets, ids, dout))
}

/// Table gradient of [`gather_pooled`]: sorted distinct ids and their summed rows.
pub fn scatter_pooled_grad<T: Float>(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: &[u32],
    ids: &[u32],
    dout: &[T],
) -> Result<(Vec<u32>, Vec<T>)> {
    const OP: &str = "scatter_pooled_grad";
    check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
    check_pooled(OP, spec, offsets, ids)?;
    Ok(scatter(spec, pooling, offsets, ids, dout))
}

/// For each distinct id (ascending), sums the weighted `dout` rows of every occurrence,
/// in batch order.
fn scatter<T: Float>(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: &[u32],
    ids: &[u32],
    dout: &[T],
) -> (Vec<u32>, Vec<T>) {
    let nnz = offsets[spec.batch] as usize;
    let mut unique = ids[..nnz].to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut rows = vec![T::ZERO; unique.len() * spec.dim];
    for (u, &id) in unique.iter().enumerate() {
        for b in 0..spec.batch {
            let w: T = bag_weight(pooling, offsets, b);
            for &bag_id in &ids[offsets[b] as usize..offsets[b + 1] as usize] {
                if bag_id == id {
                    for j in 0..spec.dim {
                        rows[u * spec.dim + j] += w * dout[b * spec.out_cols + spec.col_offset + j];
                    }
                }
            }
        }
    }
    (unique, rows)
}

/// `out[r] = Σ_c x[r, c]`.
pub fn sum_rows<T: Float>(shape: Shape, x: &[T], out: &mut [T]) -> Result<()> {
    check::matrix("sum_rows", "x", x.len(), shape)?;
    check::vector("sum_rows", "out", out.len(), shape.rows)?;
    for r in 0..shape.rows {
        let mut acc = T::ZERO;
        for c in 0..shape.cols {
            acc += x[r * shape.cols + c];
        }
        out[r] = acc;
    }
    Ok(())
}

/// `out[c] = Σ_r x[r, c]`.
pub fn sum_cols<T: Float>(shape: Shape, x: &[T], out: &mut [T]) -> Result<()> {
    check::matrix("sum_cols", "x", x.len(), shape)?;
    check::vector("sum_cols", "out", out.len(), shape.cols)?;
    for c in 0..shape.cols {
        let mut acc = T::ZERO;
        for r in 0..shape.rows {
            acc += x[r * shape.cols + c];
        }
        out[c] = acc;
    }
    Ok(())
}

/// `Σ x[..n]`, accumulated in f64.
pub fn sum<T: Float>(n: usize, x: &[T]) -> Result<f64> {
    check::vector("sum", "x", x.len(), n)?;
    Ok(x[..n].iter().map(|v| v.to_f64()).sum())
}

/// The reference backend over host `Vec<T>` buffers, `T` = `f32` ([`RefOps`](type@RefOps)) or `f64`
/// ([`RefOpsF64`], for finite-difference gradient checks). Slow on purpose.
///
/// Scalars the trait passes as `f32` (GEMM `alpha`/`beta`, layer-norm `eps`, `scale`,
/// `axpy`) are widened exactly. [`Backend::upload`]/[`Backend::read`] go through `f32`;
/// code that needs full `f64` precision reads and writes the `Vec<T>` buffers directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefOpsOf<T>(PhantomData<T>);

impl<T> RefOpsOf<T> {
    pub const fn new() -> Self {
        RefOpsOf(PhantomData)
    }
}

/// The reference backend in `f32`: the type, and (like a unit struct) its value.
pub type RefOps = RefOpsOf<f32>;

/// The `f32` reference backend's value, so `RefOps` reads as a unit struct.
#[allow(non_upper_case_globals)]
pub const RefOps: RefOps = RefOpsOf::new();

/// The reference backend in `f64`, for gradient checks.
pub type RefOpsF64 = RefOpsOf<f64>;

fn widen<T: Float>(x: f32) -> T {
    T::from_f64(x as f64)
}

impl<T: Float> Backend for RefOpsOf<T> {
    type Buf = Vec<T>;
    type Ids = Vec<u32>;

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&x| widen(x)).collect())
    }
    fn write(&self, host: &[f32], dst: &mut Vec<T>) -> Result<()> {
        check::vector("write", "dst", dst.len(), host.len())?;
        for (d, &h) in dst.iter_mut().zip(host) {
            *d = widen(h);
        }
        Ok(())
    }
    fn read(&self, src: &Vec<T>, host: &mut [f32]) -> Result<()> {
        check::vector("read", "src", src.len(), host.len())?;
        for (h, s) in host.iter_mut().zip(src) {
            *h = s.to_f64() as f32;
        }
        Ok(())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn fill(&self, n: usize, value: f32, buf: &mut Vec<T>) -> Result<()> {
        check::vector("fill", "buf", buf.len(), n)?;
        buf[..n].fill(widen(value));
        Ok(())
    }
    fn alloc_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_ids(&self, host: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        host::copy("write_ids", host, dst)
    }
    fn read_ids(&self, src: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        host::copy_out("read_ids", src, host)
    }
    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    fn gemm(&self, spec: &GemmSpec, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        gemm(spec, a, b, c)
    }

    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Vec<T>>,
        z: &mut Vec<T>,
        y: &mut Vec<T>,
    ) -> Result<()> {
        bias_act_forward(act, shape, bias.map(|b| b.as_slice()), z, y)
    }
    fn bias_act_inplace(&self, act: Activation, shape: Shape, bias: Option<&Vec<T>>, x: &mut Vec<T>) -> Result<()> {
        bias_act_inplace(act, shape, bias.map(|b| b.as_slice()), x)
    }
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Vec<T>,
        dy: &Vec<T>,
        dz: &mut Vec<T>,
        dbias: Option<&mut Vec<T>>,
    ) -> Result<()> {
        bias_act_backward(act, shape, z, dy, dz, dbias.map(|b| b.as_mut_slice()))
    }

    fn add(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        add(n, a, b, out)
    }
    fn mul(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        mul(n, a, b, out)
    }
    fn mul_acc(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        mul_acc(n, a, b, out)
    }
    fn mul_backward(
        &self,
        n: usize,
        a: &Vec<T>,
        b: &Vec<T>,
        dout: &Vec<T>,
        da: &mut Vec<T>,
        db: &mut Vec<T>,
    ) -> Result<()> {
        mul_backward(n, a, b, dout, da, db)
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut Vec<T>) -> Result<()> {
        scale(n, widen(alpha), x)
    }
    fn axpy(&self, n: usize, alpha: f32, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        axpy(n, widen(alpha), x, y)
    }
    fn copy_cols(&self, spec: &ColCopy, src: &Vec<T>, dst: &mut Vec<T>) -> Result<()> {
        copy_cols(spec, src, dst)
    }

    fn normalize_rows(&self, shape: Shape, eps: f32, x: &Vec<T>, y: &mut Vec<T>, rnorm: &mut Vec<T>) -> Result<()> {
        normalize_rows(shape, eps, x, y, rnorm)
    }
    fn normalize_rows_backward(
        &self,
        shape: Shape,
        y: &Vec<T>,
        rnorm: &Vec<T>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
    ) -> Result<()> {
        normalize_rows_backward(shape, y, rnorm, dy, dx)
    }
    fn softmax_rows(&self, shape: Shape, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        softmax_rows(shape, x, y)
    }
    fn softmax_rows_backward(&self, shape: Shape, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        softmax_rows_backward(shape, y, dy, dx)
    }

    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<T>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        y: &mut Vec<T>,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        layer_norm_forward(spec, x, gamma, beta, y, &mut stats.mean, &mut stats.rstd)
    }
    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<T>,
        gamma: &Vec<T>,
        stats: &NormStats<Self>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        dgamma: &mut Vec<T>,
        dbeta: &mut Vec<T>,
    ) -> Result<()> {
        layer_norm_backward(spec, x, gamma, &stats.mean, &stats.rstd, dy, dx, dgamma, dbeta)
    }

    fn gather_rows(&self, spec: &GatherSpec, ids: &Vec<u32>, table: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        gather_rows(spec, ids, table, out)
    }
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        table: &Vec<T>,
        out: &mut Vec<T>,
    ) -> Result<()> {
        gather_pooled(spec, pooling, offsets, ids, table, out)
    }
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &Vec<u32>,
        dout: &Vec<T>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let (unique, rows) = scatter_rows_grad(spec, ids, dout)?;
        host::store_sparse(spec.dim, &unique, &rows, grad);
        Ok(())
    }
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        dout: &Vec<T>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let (unique, rows) = scatter_pooled_grad(spec, pooling, offsets, ids, dout)?;
        host::store_sparse(spec.dim, &unique, &rows, grad);
        Ok(())
    }

    fn block_dot(&self, s: BlockShape, t: &Vec<T>, y: &Vec<T>, out: &mut Vec<T>, accumulate: bool) -> Result<()> {
        crate::block::block_dot(s, t, y, out, accumulate)
    }
    fn block_outer(&self, s: BlockShape, d: &Vec<T>, y: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        crate::block::block_outer(s, d, y, out)
    }
    fn block_dot_t(&self, s: BlockShape, d: &Vec<T>, t: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        crate::block::block_dot_t(s, d, t, out)
    }
    fn sum_rows(&self, shape: Shape, x: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        sum_rows(shape, x, out)
    }
    fn sum_cols(&self, shape: Shape, x: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        sum_cols(shape, x, out)
    }
    fn dropout_mask(&self, n: usize, p: f32, seed: u64, step: u64, first: u64, mask: &mut Vec<T>) -> Result<()> {
        crate::mask::dropout_mask(n, p, seed, step, first, mask, |v| T::from_f64(v as f64))
    }

    fn top_k_mask(&self, shape: Shape, k: usize, x: &Vec<T>, mask: &mut Vec<T>) -> Result<()> {
        let masked = T::from_f64(crate::mask::MASKED as f64);
        crate::mask::top_k_mask(shape.rows, shape.cols, k, x, mask, T::from_f64(0.0), masked)
    }

    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<T>,
    ) -> Result<()> {
        let masked = T::from_f64(crate::mask::MASKED as f64);
        crate::mask::gate_dropout_mask(shape.rows, shape.cols, p, seed, step, first_row, mask, T::from_f64(0.0), masked)
    }

    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &Vec<u32>,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<T>,
    ) -> Result<()> {
        crate::mask::feature_dropout_mask(rows, slot_of, slots, p, seed, step, first_row, mask, T::ONE, T::ZERO)
    }

    fn sum(&self, n: usize, x: &Vec<T>) -> Result<f32> {
        Ok(sum(n, x)? as f32)
    }

    fn sq_norm_acc(&self, n: usize, x: &Vec<T>, acc: &mut Vec<T>) -> Result<()> {
        optim::sq_norm_acc(n, x, acc)
    }
    fn sq_norm_read(&self, acc: &Vec<T>) -> Result<f64> {
        optim::load_acc(acc)
    }
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &Vec<T>,
        w: &mut Vec<T>,
        g: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
    ) -> Result<()> {
        optim::check_adam(n, w, g, m, v)?;
        let cs = T::from_f64(optim::clip_scale(optim::load_acc(acc)?, spec.clip_norm));
        optim::adam_chunk(spec, cs, &mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
        Ok(())
    }
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: SparseView<'_, Self>,
        b: SparseView<'_, Self>,
        out: &mut SparseGrad<Self>,
    ) -> Result<()> {
        host::merge_sparse_grads(dim, a, b, out)
    }
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<T>,
        table: &mut Vec<T>,
        acc: &mut Vec<T>,
    ) -> Result<()> {
        host::rowwise_adagrad(spec, shape, len, ids, rows, table, acc)
    }
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<T>,
        table: &mut Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        steps: &mut Vec<u32>,
    ) -> Result<()> {
        host::lazy_adam(spec, shape, len, ids, rows, table, m, v, steps)
    }

    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, Vec<T>>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::bce_with_logits(n, host::loss_slices(&input), grad, write)? as f32)
    }
    fn mse(&self, n: usize, input: LossInput<'_, Vec<T>>, grad: &mut Vec<T>, write: GradWrite) -> Result<f32> {
        Ok(loss::mse(n, host::loss_slices(&input), grad, write)? as f32)
    }
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, Vec<T>>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::huber(n, delta, host::loss_slices(&input), grad, write)? as f32)
    }
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &Vec<T>,
        weight: &Vec<T>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::softmax_xent_diag(n, scores, weight, grad, write)? as f32)
    }
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &Vec<u32>,
        input: LossInput<'_, Vec<T>>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::pairwise_ranknet(spec, pairs, host::loss_slices(&input), grad, write)? as f32)
    }
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &Vec<u32>,
        members: &Vec<u32>,
        input: LossInput<'_, Vec<T>>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::listwise_softmax(spec, offsets, members, host::loss_slices(&input), grad, write)? as f32)
    }
}
