//! [`BoundOps`]: runs layer code on exact values while propagating a bound on the
//! rounding error of an f32 execution of the same ops.
//!
//! Every buffer element is a [`Bounded`] `{ v, e }`: `v` is the value computed in f64 from
//! the same f32 inputs and parameters (exact to ~1e-16 relative, negligible here) and
//! `e` bounds `|v_f32 - v|` for any backend that evaluates each op with the standard
//! floating-point error model (`fl(a ∘ b) = (a ∘ b)(1 + δ)`, `|δ| ≤ u = 2⁻²⁴`): a
//! length-`k` dot product within `γ_k · Σ|a_i b_i|` (any order, FMA or not), each
//! pointwise operation within one rounding of its result, library `exp`/`tanh` within a
//! few ulps. Each op maps input bounds to output bounds: for smooth maps
//! `e_out = L · e_in + own rounding` with `L` a bound on the derivative over the whole
//! real line (mean value theorem), and products keep their second-order terms
//! (`|a| e_b + e_a |b| + e_a e_b`), so the bounds are rigorous, not estimates — except
//! for layer norm's `1/sqrt(var + eps)` and row normalisation's `1/sqrt(Σx² + eps)`,
//! which are linearised (valid while the bound on `var` or `Σx²` is far below the sum
//! under the root, true by many orders of magnitude in the tests).
//! ReLU's derivative is a step: where `|z| ≤ e_z` the mask may differ between backends,
//! and the backward bound then includes all of `|dy|`.
//!
//! Two f32 backends each within `e` of `v` differ by at most `2e`; tests check each
//! against `v` directly.

use mixrank_engine::error::Result;
use mixrank_engine::reference as r;
use mixrank_engine::{
    loss, Activation, Backend, BlockShape, ColCopy, GatherSpec, GemmSpec, GradWrite, GroupSpec, LayerNormSpec,
    LossInput, NormStats, PairSpec, Pooling, Shape, SparseGrad, Transpose,
};
use mixrank_engine::{AdamSpec, EngineError, LazyAdamSpec, RowAdagradSpec, TableShape, NORM_ACC_LEN};

/// A buffer of `len` elements holds the `n` an op needs.
fn check_len(op: &'static str, operand: &'static str, len: usize, n: usize) -> Result<()> {
    if len < n {
        return Err(EngineError::BufferTooSmall { op, operand, shape: vec![n], needed: n, len });
    }
    Ok(())
}

/// Stores distinct `ids` and their `rows` into `grad`, growing it past its capacity.
fn store_sparse(grad: &mut SparseGrad<BoundOps>, dim: usize, ids: &[u32], rows: &[Bounded]) {
    grad.dim = dim;
    if grad.ids.len() < ids.len() {
        grad.ids.resize(ids.len(), 0);
    }
    if grad.rows.len() < rows.len() {
        grad.rows.resize(rows.len(), Bounded::default());
    }
    grad.ids[..ids.len()].copy_from_slice(ids);
    grad.rows[..rows.len()].copy_from_slice(rows);
    grad.len = ids.len();
}

/// A sparse gradient of `len` rows fits its buffers and names rows of the table.
fn check_sparse_update(op: &'static str, shape: TableShape, len: usize, ids: &[u32], rows: &[Bounded]) -> Result<()> {
    check_len(op, "grad ids", ids.len(), len)?;
    check_len(op, "grad rows", rows.len(), len * shape.dim)?;
    if let Some((position, &id)) = ids[..len].iter().enumerate().find(|(_, &id)| id as usize >= shape.rows) {
        return Err(EngineError::IdOutOfRange { op, id, position, rows: shape.rows });
    }
    Ok(())
}

/// Unit roundoff of f32.
pub(super) const U: f64 = 1.0 / (1u64 << 24) as f64;

/// `γ_n = n·u / (1 - n·u)`: the relative error bound of an `n`-term sum or product.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// A value and a bound on the rounding error of computing it in f32.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bounded {
    pub v: f64,
    pub e: f64,
}

/// The bound-propagating backend. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundOps;

fn vals(b: &[Bounded]) -> Vec<f64> {
    b.iter().map(|x| x.v).collect()
}

/// Stores `v` into the values of `dst` (same length).
fn set_vals(dst: &mut [Bounded], v: &[f64]) {
    for (d, &x) in dst.iter_mut().zip(v) {
        d.v = x;
    }
}

/// `sup |act'|` over the real line.
fn lipschitz(act: Activation) -> f64 {
    match act {
        Activation::Identity | Activation::Relu | Activation::Tanh => 1.0,
        Activation::Sigmoid => 0.25,
        Activation::GeluTanh => 1.13, // max ≈ 1.129 near z = 1.5
        Activation::Silu => 1.1,      // max ≈ 1.0998 near z = 2.4
    }
}

/// `sup |act''|` over the real line (ReLU's kink handled separately).
fn curvature(act: Activation) -> f64 {
    match act {
        Activation::Identity | Activation::Relu => 0.0,
        Activation::Sigmoid => 0.1,  // max ≈ 0.0962
        Activation::Tanh => 0.77,    // max ≈ 0.770
        Activation::GeluTanh => 1.0, // max ≈ 0.80 at 0
        Activation::Silu => 0.5,     // 0.5 at 0
    }
}

/// Rounding of evaluating a smooth activation or its derivative at `z` in f32: each is
/// a formula of at most ~20 operations including one `exp`/`tanh` of a few ulps, whose
/// intermediates are bounded by `(1 + |z|)(1 + 0.05 z²)` (the cubic is GELU's inner
/// term); 32 roundings of that size bound it.
fn act_rounding(act: Activation, z: f64) -> f64 {
    match act {
        Activation::Identity | Activation::Relu => 0.0,
        _ => 32.0 * U * (1.0 + z.abs()) * (1.0 + 0.05 * z * z),
    }
}

impl BoundOps {
    /// Bounded buffer from values with zero error (inputs and parameters are exact f32).
    pub fn exact(v: &[f32]) -> Vec<Bounded> {
        v.iter().map(|&x| Bounded { v: x as f64, e: 0.0 }).collect()
    }
}

impl Backend for BoundOps {
    type Buf = Vec<Bounded>;
    type Ids = Vec<u32>;

    fn alloc(&self, len: usize) -> Result<Vec<Bounded>> {
        Ok(vec![Bounded::default(); len])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<Bounded>> {
        Ok(Self::exact(host))
    }
    fn write(&self, host: &[f32], dst: &mut Vec<Bounded>) -> Result<()> {
        let mut v = vals(dst);
        super::RefOpsOf::<f64>::new().write(host, &mut v)?;
        dst[..host.len()].iter_mut().zip(&v).for_each(|(d, &x)| *d = Bounded { v: x, e: 0.0 });
        Ok(())
    }
    fn read(&self, src: &Vec<Bounded>, host: &mut [f32]) -> Result<()> {
        super::RefOpsOf::<f64>::new().read(&vals(src), host)
    }
    fn len(&self, buf: &Vec<Bounded>) -> usize {
        buf.len()
    }
    fn fill(&self, n: usize, value: f32, buf: &mut Vec<Bounded>) -> Result<()> {
        let mut v = vals(buf);
        super::RefOpsOf::<f64>::new().fill(n, value, &mut v)?;
        buf[..n].fill(Bounded { v: value as f64, e: 0.0 });
        Ok(())
    }
    fn alloc_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_ids(&self, host: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        super::RefOpsOf::<f64>::new().write_ids(host, dst)
    }
    fn read_ids(&self, src: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        super::RefOpsOf::<f64>::new().read_ids(src, host)
    }
    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    /// `e_C = |α|(|A| e_B + e_A |B| + e_A e_B) + |β| e_C + γ_{k+2}(|α| |A||B| + |β| |C|)`.
    fn gemm(&self, spec: &GemmSpec, a: &Vec<Bounded>, b: &Vec<Bounded>, c: &mut Vec<Bounded>) -> Result<()> {
        let c_old: Vec<Bounded> = c.clone();
        let mut cv = vals(c);
        r::gemm(spec, &vals(a), &vals(b), &mut cv)?; // validates every index used below
        set_vals(c, &cv);
        let at = |i: usize, p: usize| match spec.trans_a {
            Transpose::No => a[spec.a.offset + i * spec.a.ld + p],
            Transpose::Yes => a[spec.a.offset + p * spec.a.ld + i],
        };
        let bt = |p: usize, j: usize| match spec.trans_b {
            Transpose::No => b[spec.b.offset + p * spec.b.ld + j],
            Transpose::Yes => b[spec.b.offset + j * spec.b.ld + p],
        };
        let (alpha, beta) = (spec.alpha.abs() as f64, spec.beta.abs() as f64);
        let g = gamma(spec.k + 2);
        for i in 0..spec.m {
            for j in 0..spec.n {
                let (mut mag, mut prop) = (0.0, 0.0);
                for p in 0..spec.k {
                    let (x, y) = (at(i, p), bt(p, j));
                    mag += x.v.abs() * y.v.abs();
                    prop += x.v.abs() * y.e + x.e * y.v.abs() + x.e * y.e;
                }
                let idx = spec.c.offset + i * spec.c.ld + j;
                let old = if spec.beta == 0.0 { Bounded::default() } else { c_old[idx] };
                c[idx].e = alpha * prop + beta * old.e + g * (alpha * mag + beta * old.v.abs());
            }
        }
        Ok(())
    }

    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Vec<Bounded>>,
        z: &mut Vec<Bounded>,
        y: &mut Vec<Bounded>,
    ) -> Result<()> {
        let (mut zv, mut yv) = (vals(z), vals(y));
        let bv = bias.map(|b| vals(b));
        r::bias_act_forward(act, shape, bv.as_deref(), &mut zv, &mut yv)?;
        for i in 0..shape.len() {
            let eb = bias.map_or(0.0, |b| b[i % shape.cols].e + U * zv[i].abs());
            z[i] = Bounded { v: zv[i], e: z[i].e + eb };
            y[i] = Bounded { v: yv[i], e: lipschitz(act) * z[i].e + act_rounding(act, zv[i]) };
        }
        Ok(())
    }

    fn bias_act_inplace(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Vec<Bounded>>,
        x: &mut Vec<Bounded>,
    ) -> Result<()> {
        let mut z = x.clone();
        self.bias_act_forward(act, shape, bias, &mut z, x)
    }

    /// `e_dz = |act'(z)| e_dy + |dy| (sup|act''| e_z + rounding) + u |dz|`, plus `|dy|`
    /// where ReLU's mask may flip; `dbias` as a column sum.
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Vec<Bounded>,
        dy: &Vec<Bounded>,
        dz: &mut Vec<Bounded>,
        dbias: Option<&mut Vec<Bounded>>,
    ) -> Result<()> {
        let mut dzv = vals(dz);
        let mut dbv = dbias.as_ref().map(|b| vals(b));
        r::bias_act_backward(act, shape, &vals(z), &vals(dy), &mut dzv, dbv.as_deref_mut())?;
        for i in 0..shape.len() {
            let (zi, g) = (z[i], dy[i]);
            let mut e = act.derivative(zi.v).abs() * g.e
                + (g.v.abs() + g.e) * (curvature(act) * zi.e + act_rounding(act, zi.v))
                + U * dzv[i].abs();
            if act == Activation::Relu && zi.v.abs() <= zi.e {
                e += g.v.abs() + g.e;
            }
            dz[i] = Bounded { v: dzv[i], e };
        }
        if let (Some(db), Some(dbv)) = (dbias, dbv) {
            col_sum_into(shape, dz, db, &dbv);
        }
        Ok(())
    }

    fn add(&self, n: usize, a: &Vec<Bounded>, b: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        r::add(n, &vals(a), &vals(b), &mut ov)?;
        for i in 0..n {
            out[i] = Bounded { v: ov[i], e: a[i].e + b[i].e + U * ov[i].abs() };
        }
        Ok(())
    }
    fn mul(&self, n: usize, a: &Vec<Bounded>, b: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        r::mul(n, &vals(a), &vals(b), &mut ov)?;
        for i in 0..n {
            out[i] = Bounded { v: ov[i], e: prod_err(a[i], b[i]) + U * ov[i].abs() };
        }
        Ok(())
    }
    fn mul_acc(&self, n: usize, a: &Vec<Bounded>, b: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        r::mul_acc(n, &vals(a), &vals(b), &mut ov)?;
        for i in 0..n {
            let ab = (a[i].v * b[i].v).abs();
            out[i] = Bounded { v: ov[i], e: out[i].e + prod_err(a[i], b[i]) + U * (ab + ov[i].abs()) };
        }
        Ok(())
    }
    fn mul_backward(
        &self,
        n: usize,
        a: &Vec<Bounded>,
        b: &Vec<Bounded>,
        dout: &Vec<Bounded>,
        da: &mut Vec<Bounded>,
        db: &mut Vec<Bounded>,
    ) -> Result<()> {
        let (mut dav, mut dbv) = (vals(da), vals(db));
        r::mul_backward(n, &vals(a), &vals(b), &vals(dout), &mut dav, &mut dbv)?;
        for i in 0..n {
            da[i] = Bounded { v: dav[i], e: prod_err(dout[i], b[i]) + U * dav[i].abs() };
            db[i] = Bounded { v: dbv[i], e: prod_err(dout[i], a[i]) + U * dbv[i].abs() };
        }
        Ok(())
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut Vec<Bounded>) -> Result<()> {
        let mut xv = vals(x);
        r::scale(n, alpha as f64, &mut xv)?;
        for i in 0..n {
            x[i] = Bounded { v: xv[i], e: (alpha as f64).abs() * x[i].e + U * xv[i].abs() };
        }
        Ok(())
    }
    fn axpy(&self, n: usize, alpha: f32, x: &Vec<Bounded>, y: &mut Vec<Bounded>) -> Result<()> {
        let mut yv = vals(y);
        r::axpy(n, alpha as f64, &vals(x), &mut yv)?;
        let a = alpha as f64;
        for i in 0..n {
            y[i] = Bounded { v: yv[i], e: y[i].e + a.abs() * x[i].e + U * ((a * x[i].v).abs() + yv[i].abs()) };
        }
        Ok(())
    }
    fn copy_cols(&self, spec: &ColCopy, src: &Vec<Bounded>, dst: &mut Vec<Bounded>) -> Result<()> {
        let mut dv = vals(dst);
        r::copy_cols(spec, &vals(src), &mut dv)?;
        for row in 0..spec.rows {
            for c in 0..spec.cols {
                let s = src[row * spec.src_ld + spec.src_col + c];
                let di = row * spec.dst_ld + spec.dst_col + c;
                let e = if spec.accumulate { dst[di].e + s.e + U * dv[di].abs() } else { s.e };
                dst[di] = Bounded { v: dv[di], e };
            }
        }
        Ok(())
    }

    /// Relative: `e_y/y ≤ e_i + ε_i + Σ_j y_j (e_j + ε_j) + γ_{n+2}` with
    /// `ε_j = u(|x_j - max| + 1)` (the subtraction and `exp`).
    fn softmax_rows(&self, shape: Shape, x: &Vec<Bounded>, y: &mut Vec<Bounded>) -> Result<()> {
        let mut yv = vals(y);
        r::softmax_rows(shape, &vals(x), &mut yv)?;
        let cols = shape.cols;
        for row in 0..shape.rows {
            let xs = &x[row * cols..(row + 1) * cols];
            let max = xs.iter().map(|b| b.v).fold(f64::NEG_INFINITY, f64::max);
            let eps = |b: &Bounded| b.e + 2.0 * U * ((b.v - max).abs() + 1.0);
            let spread: f64 = (0..cols).map(|j| yv[row * cols + j] * eps(&xs[j])).sum();
            for (j, xj) in xs.iter().enumerate() {
                let i = row * cols + j;
                y[i] = Bounded { v: yv[i], e: yv[i] * (eps(xj) + spread + gamma(cols + 2)) };
            }
        }
        Ok(())
    }

    fn softmax_rows_backward(
        &self,
        shape: Shape,
        y: &Vec<Bounded>,
        dy: &Vec<Bounded>,
        dx: &mut Vec<Bounded>,
    ) -> Result<()> {
        let mut dxv = vals(dx);
        r::softmax_rows_backward(shape, &vals(y), &vals(dy), &mut dxv)?;
        let cols = shape.cols;
        for row in 0..shape.rows {
            let rr = row * cols..(row + 1) * cols;
            let dot: f64 = rr.clone().map(|i| y[i].v * dy[i].v).sum();
            let mag: f64 = rr.clone().map(|i| (y[i].v * dy[i].v).abs()).sum();
            let e_dot = rr.clone().map(|i| prod_err(y[i], dy[i])).sum::<f64>() + gamma(cols) * mag;
            for i in rr {
                let t = (dy[i].v - dot).abs();
                let e_t = dy[i].e + e_dot + U * t;
                let e = y[i].e * t + y[i].v.abs() * e_t + y[i].e * e_t + U * dxv[i].abs();
                dx[i] = Bounded { v: dxv[i], e };
            }
        }
        Ok(())
    }

    /// With `S = Σx² + eps` (an `n+1`-term sum of non-negative terms):
    /// `e_S = Σ(2|x| e_x + e_x²) + γ_{n+1}·S`, `e_s = s·(e_S / 2S + 3u)` (linearised like
    /// layer norm's `rstd`; sqrt, divide and the stored value), `y = x·s` a product.
    fn normalize_rows(
        &self,
        shape: Shape,
        eps: f32,
        x: &Vec<Bounded>,
        y: &mut Vec<Bounded>,
        rnorm: &mut Vec<Bounded>,
    ) -> Result<()> {
        let (mut yv, mut sv) = (vals(y), vals(rnorm));
        r::normalize_rows(shape, eps, &vals(x), &mut yv, &mut sv)?;
        let c = shape.cols;
        for row in 0..shape.rows {
            let xs = &x[row * c..(row + 1) * c];
            let big_s = xs.iter().map(|b| b.v * b.v).sum::<f64>() + eps as f64;
            let e_big_s = xs.iter().map(|b| 2.0 * b.v.abs() * b.e + b.e * b.e).sum::<f64>() + gamma(c + 1) * big_s;
            let s = sv[row];
            let e_s = s * (e_big_s / (2.0 * big_s) + 3.0 * U);
            rnorm[row] = Bounded { v: s, e: e_s };
            let sb = Bounded { v: s, e: e_s };
            for (j, xj) in xs.iter().enumerate() {
                let i = row * c + j;
                y[i] = Bounded { v: yv[i], e: prod_err(*xj, sb) + U * yv[i].abs() };
            }
        }
        Ok(())
    }

    /// `dot = ⟨dy, y⟩` a dot product, `t = dy - y·dot` (a product and a subtraction),
    /// `dx = s·t` (a product), with `s` read back as stored in f32 (one more rounding).
    fn normalize_rows_backward(
        &self,
        shape: Shape,
        y: &Vec<Bounded>,
        rnorm: &Vec<Bounded>,
        dy: &Vec<Bounded>,
        dx: &mut Vec<Bounded>,
    ) -> Result<()> {
        let mut dxv = vals(dx);
        r::normalize_rows_backward(shape, &vals(y), &vals(rnorm), &vals(dy), &mut dxv)?;
        let c = shape.cols;
        for (row, rn) in rnorm[..shape.rows].iter().enumerate() {
            let rr = row * c..(row + 1) * c;
            let dot: f64 = rr.clone().map(|i| dy[i].v * y[i].v).sum();
            let mag: f64 = rr.clone().map(|i| (dy[i].v * y[i].v).abs()).sum();
            let e_dot = rr.clone().map(|i| prod_err(dy[i], y[i])).sum::<f64>() + gamma(c) * mag;
            let dot_b = Bounded { v: dot, e: e_dot };
            let s = Bounded { v: rn.v, e: rn.e + U * rn.v.abs() };
            for i in rr {
                let t = dy[i].v - y[i].v * dot;
                let e_t = dy[i].e + prod_err(y[i], dot_b) + 2.0 * U * (dy[i].v.abs() + (y[i].v * dot).abs());
                let e = prod_err(s, Bounded { v: t, e: e_t }) + U * dxv[i].abs();
                dx[i] = Bounded { v: dxv[i], e };
            }
        }
        Ok(())
    }

    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<Bounded>,
        gamma_p: &Vec<Bounded>,
        beta: &Vec<Bounded>,
        y: &mut Vec<Bounded>,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        let (mut yv, mut mv, mut rv) = (vals(y), vals(&stats.mean), vals(&stats.rstd));
        r::layer_norm_forward(spec, &vals(x), &vals(gamma_p), &vals(beta), &mut yv, &mut mv, &mut rv)?;
        let n = spec.cols;
        for row in 0..spec.rows {
            let xs = &x[row * n..(row + 1) * n];
            let ln = row_stats(xs, mv[row], rv[row], spec.eps as f64);
            stats.mean[row] = Bounded { v: mv[row], e: ln.e_mean };
            stats.rstd[row] = Bounded { v: rv[row], e: ln.e_rstd };
            for c in 0..n {
                let i = row * n + c;
                let (xh, e_xh) = ln.xhat(xs[c]);
                let (g, b) = (gamma_p[c], beta[c]);
                let e = e_xh * g.v.abs() + xh.abs() * g.e + e_xh * g.e + b.e + U * ((xh * g.v).abs() + yv[i].abs());
                y[i] = Bounded { v: yv[i], e };
            }
        }
        Ok(())
    }

    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<Bounded>,
        gamma_p: &Vec<Bounded>,
        stats: &NormStats<Self>,
        dy: &Vec<Bounded>,
        dx: &mut Vec<Bounded>,
        dgamma: &mut Vec<Bounded>,
        dbeta: &mut Vec<Bounded>,
    ) -> Result<()> {
        let (mut dxv, mut dgv, mut dbv) = (vals(dx), vals(dgamma), vals(dbeta));
        let (mv, rv) = (vals(&stats.mean), vals(&stats.rstd));
        r::layer_norm_backward(spec, &vals(x), &vals(gamma_p), &mv, &rv, &vals(dy), &mut dxv, &mut dgv, &mut dbv)?;
        let n = spec.cols;
        let nf = n as f64;
        // Per-column sums for dgamma/dbeta: (propagated error, magnitude).
        let mut dg_acc = vec![(0.0, 0.0); n];
        let mut db_acc = vec![(0.0, 0.0); n];
        for row in 0..spec.rows {
            let rs = row * n..(row + 1) * n;
            let (mean, rstd) = (stats.mean[row], stats.rstd[row]);
            // Stored in f32 by a real backend: one more rounding each.
            let ln =
                RowNorm { mean: mean.v, rstd: rstd.v, e_mean: mean.e + U * mean.v.abs(), e_rstd: rstd.e + U * rstd.v };
            let xh: Vec<(f64, f64)> = rs.clone().map(|i| ln.xhat(x[i])).collect();
            let g: Vec<Bounded> = rs
                .clone()
                .enumerate()
                .map(|(c, i)| {
                    let v = dy[i].v * gamma_p[c].v;
                    Bounded { v, e: prod_err(dy[i], gamma_p[c]) + U * v.abs() }
                })
                .collect();
            let m1 = g.iter().map(|b| b.v).sum::<f64>() / nf;
            let e_m1 =
                g.iter().map(|b| b.e).sum::<f64>() / nf + gamma(n + 1) * g.iter().map(|b| b.v.abs()).sum::<f64>() / nf;
            let m2 = (0..n).map(|c| g[c].v * xh[c].0).sum::<f64>() / nf;
            let e_m2 = (0..n).map(|c| g[c].e * xh[c].0.abs() + g[c].v.abs() * xh[c].1 + g[c].e * xh[c].1).sum::<f64>()
                / nf
                + gamma(n + 2) * (0..n).map(|c| (g[c].v * xh[c].0).abs()).sum::<f64>() / nf;
            for (c, i) in rs.enumerate() {
                let (xv, ex) = xh[c];
                let t = g[c].v - m1 - xv * m2;
                let e_t = g[c].e
                    + e_m1
                    + ex * m2.abs()
                    + xv.abs() * e_m2
                    + ex * e_m2
                    + 3.0 * U * (g[c].v.abs() + m1.abs() + (xv * m2).abs());
                let e = ln.e_rstd * t.abs() + ln.rstd * e_t + ln.e_rstd * e_t + U * dxv[i].abs();
                dx[i] = Bounded { v: dxv[i], e };
                let d = dy[i];
                dg_acc[c].0 += d.e * xv.abs() + d.v.abs() * ex + d.e * ex + U * (d.v * xv).abs();
                dg_acc[c].1 += (d.v * xv).abs();
                db_acc[c].0 += d.e;
                db_acc[c].1 += d.v.abs();
            }
        }
        let rows = spec.rows;
        for c in 0..n {
            let e = dgamma[c].e + dg_acc[c].0 + gamma(rows + 1) * (dgamma[c].v.abs() + dg_acc[c].1);
            dgamma[c] = Bounded { v: dgv[c], e };
            let e = dbeta[c].e + db_acc[c].0 + gamma(rows + 1) * (dbeta[c].v.abs() + db_acc[c].1);
            dbeta[c] = Bounded { v: dbv[c], e };
        }
        Ok(())
    }

    fn gather_rows(
        &self,
        spec: &GatherSpec,
        ids: &Vec<u32>,
        table: &Vec<Bounded>,
        out: &mut Vec<Bounded>,
    ) -> Result<()> {
        let mut ov = vals(out);
        r::gather_rows(spec, ids, &vals(table), &mut ov)?;
        for b in 0..spec.batch {
            for j in 0..spec.dim {
                out[b * spec.out_cols + spec.col_offset + j] = table[ids[b] as usize * spec.dim + j];
            }
        }
        Ok(())
    }
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        table: &Vec<Bounded>,
        out: &mut Vec<Bounded>,
    ) -> Result<()> {
        let mut ov = vals(out);
        r::gather_pooled(spec, pooling, offsets, ids, &vals(table), &mut ov)?;
        for b in 0..spec.batch {
            let bag = &ids[offsets[b] as usize..offsets[b + 1] as usize];
            let w = bag_weight(pooling, bag.len());
            for j in 0..spec.dim {
                let (mut e, mut mag) = (0.0, 0.0);
                for &id in bag {
                    let t = table[id as usize * spec.dim + j];
                    e += t.e;
                    mag += t.v.abs();
                }
                let o = b * spec.out_cols + spec.col_offset + j;
                out[o] = Bounded { v: ov[o], e: w * (e + gamma(bag.len() + 2) * mag) };
            }
        }
        Ok(())
    }
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &Vec<u32>,
        dout: &Vec<Bounded>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let offsets: Vec<u32> = (0..=spec.batch as u32).collect();
        self.scatter_pooled_grad(spec, Pooling::Sum, &offsets, ids, dout, grad)
    }
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        dout: &Vec<Bounded>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let (unique, rows) = r::scatter_pooled_grad(spec, pooling, offsets, ids, &vals(dout))?;
        let dim = spec.dim;
        let mut bounded = vec![Bounded::default(); rows.len()];
        for (u, &id) in unique.iter().enumerate() {
            for j in 0..dim {
                let (mut e, mut mag, mut count) = (0.0, 0.0, 0usize);
                for b in 0..spec.batch {
                    let bag = &ids[offsets[b] as usize..offsets[b + 1] as usize];
                    let w = bag_weight(pooling, bag.len());
                    let d = dout[b * spec.out_cols + spec.col_offset + j];
                    for _ in bag.iter().filter(|&&t| t == id) {
                        e += w * d.e;
                        mag += w * d.v.abs();
                        count += 1;
                    }
                }
                bounded[u * dim + j] = Bounded { v: rows[u * dim + j], e: e + gamma(count + 2) * mag };
            }
        }
        store_sparse(grad, dim, &unique, &bounded);
        Ok(())
    }

    /// A `w`-term dot product (plus the old value when accumulating): the operands'
    /// propagated errors plus `γ_{w+1}` of the sum of |terms|.
    fn block_dot(
        &self,
        s: BlockShape,
        t: &Vec<Bounded>,
        y: &Vec<Bounded>,
        out: &mut Vec<Bounded>,
        accumulate: bool,
    ) -> Result<()> {
        let mut ov = vals(out);
        mixrank_engine::block::block_dot(s, &vals(t), &vals(y), &mut ov, accumulate)?;
        let (k, w) = (s.blocks, s.width);
        for r in 0..s.rows {
            for b in 0..k {
                let (mut e, mut mag) = (0.0, 0.0);
                for j in 0..w {
                    let (a, c) = (t[r * k * w + b * w + j], y[r * w + j]);
                    e += prod_err(a, c);
                    mag += (a.v * c.v).abs();
                }
                let o = &mut out[r * k + b];
                if accumulate {
                    e += o.e;
                    mag += o.v.abs();
                }
                *o = Bounded { v: ov[r * k + b], e: e + gamma(w + 1) * mag };
            }
        }
        Ok(())
    }
    /// One product per element.
    fn block_outer(&self, s: BlockShape, d: &Vec<Bounded>, y: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        mixrank_engine::block::block_outer(s, &vals(d), &vals(y), &mut ov)?;
        let (k, w) = (s.blocks, s.width);
        for r in 0..s.rows {
            for b in 0..k {
                for j in 0..w {
                    let i = r * k * w + b * w + j;
                    out[i] = Bounded { v: ov[i], e: prod_err(d[r * k + b], y[r * w + j]) + U * ov[i].abs() };
                }
            }
        }
        Ok(())
    }
    /// A `blocks`-term dot product per element.
    fn block_dot_t(&self, s: BlockShape, d: &Vec<Bounded>, t: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        mixrank_engine::block::block_dot_t(s, &vals(d), &vals(t), &mut ov)?;
        let (k, w) = (s.blocks, s.width);
        for r in 0..s.rows {
            for j in 0..w {
                let (mut e, mut mag) = (0.0, 0.0);
                for b in 0..k {
                    let (a, c) = (d[r * k + b], t[r * k * w + b * w + j]);
                    e += prod_err(a, c);
                    mag += (a.v * c.v).abs();
                }
                out[r * w + j] = Bounded { v: ov[r * w + j], e: e + gamma(k) * mag };
            }
        }
        Ok(())
    }
    fn sum_rows(&self, shape: Shape, x: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        r::sum_rows(shape, &vals(x), &mut ov)?;
        for row in 0..shape.rows {
            let xs = &x[row * shape.cols..(row + 1) * shape.cols];
            let e = xs.iter().map(|b| b.e).sum::<f64>() + gamma(shape.cols) * xs.iter().map(|b| b.v.abs()).sum::<f64>();
            out[row] = Bounded { v: ov[row], e };
        }
        Ok(())
    }
    fn sum_cols(&self, shape: Shape, x: &Vec<Bounded>, out: &mut Vec<Bounded>) -> Result<()> {
        let mut ov = vals(out);
        r::sum_cols(shape, &vals(x), &mut ov)?;
        for c in 0..shape.cols {
            let (mut e, mut mag) = (0.0, 0.0);
            for row in 0..shape.rows {
                let b = x[row * shape.cols + c];
                e += b.e;
                mag += b.v.abs();
            }
            out[c] = Bounded { v: ov[c], e: e + gamma(shape.rows) * mag };
        }
        Ok(())
    }
    /// Exact: a mask holds `0` or `1 / (1 - p)`, rounded to f32 as every backend does.
    fn dropout_mask(&self, n: usize, p: f32, seed: u64, step: u64, first: u64, mask: &mut Vec<Bounded>) -> Result<()> {
        mixrank_engine::mask::dropout_mask(n, p, seed, step, first, mask, |v| Bounded { v: v as f64, e: 0.0 })
    }

    /// Selected on the values `v`: where two logits lie within their error bounds of
    /// each other an f32 backend may select the other one (a discontinuity no bound
    /// covers); the mask itself is exact.
    fn top_k_mask(&self, shape: Shape, k: usize, x: &Vec<Bounded>, mask: &mut Vec<Bounded>) -> Result<()> {
        let v = vals(x);
        let mut m = vec![0f64; mask.len()];
        mixrank_engine::mask::top_k_mask(
            shape.rows,
            shape.cols,
            k,
            &v,
            &mut m,
            0.0,
            mixrank_engine::mask::MASKED as f64,
        )?;
        for (d, x) in mask.iter_mut().zip(m) {
            *d = Bounded { v: x, e: 0.0 };
        }
        Ok(())
    }

    /// Exact: a mask holds `0` or [`MASKED`](mixrank_engine::mask::MASKED), chosen from
    /// the counter stream and the mask's own values (exact too).
    /// The mask is exact (0 or 1).
    fn feature_dropout_mask(
        &self,
        rows: usize,
        slot_of: &Vec<u32>,
        slots: usize,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<Bounded>,
    ) -> Result<()> {
        let (one, zero) = (Bounded { v: 1.0, e: 0.0 }, Bounded::default());
        mixrank_engine::mask::feature_dropout_mask(rows, slot_of, slots, p, seed, step, first_row, mask, one, zero)
    }
    fn gate_dropout_mask(
        &self,
        shape: Shape,
        p: f32,
        seed: u64,
        step: u64,
        first_row: u64,
        mask: &mut Vec<Bounded>,
    ) -> Result<()> {
        let masked = Bounded { v: mixrank_engine::mask::MASKED as f64, e: 0.0 };
        mixrank_engine::mask::gate_dropout_mask(
            shape.rows,
            shape.cols,
            p,
            seed,
            step,
            first_row,
            mask,
            Bounded::default(),
            masked,
        )
    }

    /// The accumulator holds the exact `Σ g²` and its bound in its first slot.
    fn sq_norm_acc(&self, n: usize, x: &Vec<Bounded>, acc: &mut Vec<Bounded>) -> Result<()> {
        check_len("sq_norm_acc", "x", x.len(), n)?;
        check_len("sq_norm_acc", "acc", acc.len(), NORM_ACC_LEN)?;
        let part = super::bound_optim::sq_sum(&x[..n]);
        let v = acc[0].v + part.v;
        acc[0] = Bounded { v, e: acc[0].e + part.e + v * f64::EPSILON };
        Ok(())
    }
    fn sq_norm_read(&self, acc: &Vec<Bounded>) -> Result<f64> {
        check_len("sq_norm_read", "acc", acc.len(), NORM_ACC_LEN)?;
        Ok(acc[0].v)
    }
    fn adam_update(
        &self,
        n: usize,
        spec: &AdamSpec,
        acc: &Vec<Bounded>,
        w: &mut Vec<Bounded>,
        g: &Vec<Bounded>,
        m: &mut Vec<Bounded>,
        v: &mut Vec<Bounded>,
    ) -> Result<()> {
        for (name, len) in [("w", w.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
            check_len("adam_update", name, len, n)?;
        }
        check_len("adam_update", "acc", acc.len(), NORM_ACC_LEN)?;
        let cs = super::bound_optim::clip_factor(acc[0], spec.clip_norm);
        super::bound_optim::adam(spec, cs, &mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
        Ok(())
    }
    fn merge_sparse_grads(
        &self,
        dim: usize,
        a: (usize, &Vec<u32>, &Vec<Bounded>),
        b: (usize, &Vec<u32>, &Vec<Bounded>),
        out: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let grads = [a, b];
        for &(len, ids, rows) in &grads {
            check_len("merge_sparse_grads", "ids", ids.len(), len)?;
            check_len("merge_sparse_grads", "rows", rows.len(), len * dim)?;
        }
        let views: Vec<(&[u32], &[Bounded])> =
            grads.iter().map(|&(len, ids, rows)| (&ids[..len], &rows[..len * dim])).collect();
        let (ids, rows) = super::bound_optim::merge(dim, &views);
        store_sparse(out, dim, &ids, &rows);
        Ok(())
    }
    fn rowwise_adagrad_update(
        &self,
        spec: &RowAdagradSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<Bounded>,
        table: &mut Vec<Bounded>,
        acc: &mut Vec<Bounded>,
    ) -> Result<()> {
        check_sparse_update("rowwise_adagrad", shape, len, ids, rows)?;
        check_len("rowwise_adagrad", "table", table.len(), shape.rows * shape.dim)?;
        check_len("rowwise_adagrad", "accumulators", acc.len(), shape.rows)?;
        super::bound_optim::rowwise_adagrad(spec, shape, &ids[..len], &rows[..len * shape.dim], table, acc);
        Ok(())
    }
    fn lazy_adam_update(
        &self,
        spec: &LazyAdamSpec,
        shape: TableShape,
        len: usize,
        ids: &Vec<u32>,
        rows: &Vec<Bounded>,
        table: &mut Vec<Bounded>,
        m: &mut Vec<Bounded>,
        v: &mut Vec<Bounded>,
        steps: &mut Vec<u32>,
    ) -> Result<()> {
        check_sparse_update("lazy_adam", shape, len, ids, rows)?;
        for (name, l) in [("table", table.len()), ("m", m.len()), ("v", v.len())] {
            check_len("lazy_adam", name, l, shape.rows * shape.dim)?;
        }
        check_len("lazy_adam", "row steps", steps.len(), shape.rows)?;
        super::bound_optim::lazy_adam(spec, shape, &ids[..len], &rows[..len * shape.dim], table, m, v, steps);
        Ok(())
    }

    fn sum(&self, n: usize, x: &Vec<Bounded>) -> Result<f32> {
        Ok(r::sum(n, &vals(x))? as f32)
    }

    /// Gradient bound: `|scale·wᵢ/W| · (sup|∂²ℓ| e_z + 8u)` plus `γ_{n+4}` of the result
    /// (the weight sum and the products); BCE's `∂ℓ/∂z = σ(z) - y` has `sup σ' = 1/4`.
    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, Vec<Bounded>>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        loss_bound(n, input, grad, write, 0.25, |p, t, g, w| loss::bce_with_logits(n, inp(p, t, w), g, write))
    }
    fn mse(
        &self,
        n: usize,
        input: LossInput<'_, Vec<Bounded>>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        loss_bound(n, input, grad, write, 2.0, |p, t, g, w| loss::mse(n, inp(p, t, w), g, write))
    }
    /// Huber's `∂ℓ/∂p` is 1-Lipschitz.
    fn huber(
        &self,
        n: usize,
        delta: f32,
        input: LossInput<'_, Vec<Bounded>>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        loss_bound(n, input, grad, write, 1.0, |p, t, g, w| loss::huber(n, delta, inp(p, t, w), g, write))
    }
    /// `g = c·wᵢ/W·(pᵢⱼ − δᵢⱼ)` with `p = softmax(sᵢ)`: the softmax's bound as in
    /// `softmax_rows` (each score's error and the row's spread, plus `γ_{n+2}`), the
    /// weights' errors through `wᵢ/W`, and the rounding of the subtraction and the two
    /// products (`γ₃`).
    fn softmax_xent_diag(
        &self,
        n: usize,
        scores: &Vec<Bounded>,
        weight: &Vec<Bounded>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        let mut gv = vals(grad);
        let loss = loss::softmax_xent_diag(n, &vals(scores), &vals(weight), &mut gv, write)?;
        let total: f64 = weight[..n].iter().map(|w| w.v).sum();
        let total_e: f64 = weight[..n].iter().map(|w| w.e).sum::<f64>()
            + gamma(n) * weight[..n].iter().map(|w| w.v.abs()).sum::<f64>();
        let c = write.scale as f64;
        for i in 0..n {
            let row = &scores[i * n..(i + 1) * n];
            let max = row.iter().map(|b| b.v).fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|b| (b.v - max).exp()).sum();
            let p: Vec<f64> = row.iter().map(|b| (b.v - max).exp() / z).collect();
            let eps = |b: &Bounded| b.e + 2.0 * U * ((b.v - max).abs() + 1.0);
            let spread: f64 = (0..n).map(|j| p[j] * eps(&row[j])).sum();
            let (wi, we) = (weight[i].v, weight[i].e);
            for j in 0..n {
                let k = i * n + j;
                let e_new = if total != 0.0 && wi != 0.0 {
                    let d = p[j] - if i == j { 1.0 } else { 0.0 };
                    let e_p = p[j] * (eps(&row[j]) + spread + gamma(n + 2));
                    let r = (c * wi / total).abs();
                    let e_r = c.abs() * (we / total.abs() + wi.abs() * total_e / (total * total));
                    r * (e_p + U * d.abs()) + e_r * d.abs() + gamma(3) * gv[k].abs()
                } else {
                    0.0
                };
                let e = if write.accumulate { grad[k].e + e_new + U * gv[k].abs() } else { e_new };
                grad[k] = Bounded { v: gv[k], e };
            }
        }
        Ok(loss as f32)
    }

    /// Per pair, with `c = |scale·wᵢⱼ/W|` and `g = c·T·(σ(d) − P)`: `∂g/∂sᵢ` and
    /// `∂g/∂tᵢ` are at most `c/4` (`σ' ≤ 1/4`), so the inputs' errors carry
    /// `c·(e_sᵢ + e_sⱼ + e_tᵢ + e_tⱼ)/4`; evaluating `σ(d) − P` rounds `d` and `(tᵢ − tⱼ)/T`
    /// (two roundings each, moving σ by `u|d|/2`), each sigmoid (four roundings of a value
    /// ≤ 1) and the difference: `u(|d| + |dₜ|)/2 + 9u`, times `c·T`; the three products and
    /// the rounded `scale/W` and `wᵢⱼ` add `γ₆·|g|`. Each row then sums its pairs' terms
    /// onto the gradient: `γ_{k+1}` of the magnitudes for a row in `k` pairs.
    fn pairwise_ranknet(
        &self,
        spec: &PairSpec,
        pairs: &Vec<u32>,
        input: LossInput<'_, Vec<Bounded>>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        let (s, t) = (vals(input.pred), vals(input.target));
        let (w, m) = (input.weight.map(|w| vals(w)), input.mask.map(|m| vals(m)));
        let mut gv = vals(grad);
        let loss = loss::pairwise_ranknet(
            spec,
            pairs,
            inp(&s, &t, (w.as_deref(), m.as_deref(), input.weight_sum)),
            &mut gv,
            write,
        )?;
        let n = spec.rows;
        let counts = |i: usize| m.as_ref().is_none_or(|m| m[i] != 0.0);
        let weight = |i: usize| w.as_ref().map_or(1.0, |w| w[i]);
        let counted: Vec<(usize, usize)> = pairs[..2 * spec.pairs]
            .chunks_exact(2)
            .map(|p| (p[0] as usize, p[1] as usize))
            .filter(|&(i, j)| counts(i) && counts(j))
            .collect();
        let total: f64 = counted.iter().map(|&(i, j)| 0.5 * (weight(i) + weight(j))).sum();
        let temp = spec.temperature as f64;
        let sig = mixrank_engine::activation::sigmoid::<f64>;
        let mut terms = vec![Term::default(); n];
        if total != 0.0 {
            for &(i, j) in &counted {
                let c = (write.scale as f64 * 0.5 * (weight(i) + weight(j)) / total).abs();
                let (d, dt) = ((s[i] - s[j]) / temp, (t[i] - t[j]) / temp);
                let g = (c * temp * (sig(d) - sig(dt))).abs();
                let e_in = input.pred[i].e + input.pred[j].e + input.target[i].e + input.target[j].e;
                let e = c * e_in / 4.0 + c * temp * U * ((d.abs() + dt.abs()) / 2.0 + 9.0) + gamma(6) * g;
                terms[i].add(g, e);
                terms[j].add(g, e);
            }
        }
        accumulate_terms(&terms, &gv, grad, write);
        Ok(loss as f32)
    }

    /// Per counted group of `k` rows, with `x = s/T`: `x` is within `e_x = e_s/T + u|x|`;
    /// each `e^{x − m}` within `ε = e_x + e_xm + u|x − m| + 2u` relative (`m` the maximum, a
    /// subtraction, `exp`'s ulps); their sum `z` within `Σ (yᵢ/z) εᵢ + γ_k` relative;
    /// `lz = m + ln z` within `e_xm + e_z + 2u|ln z| + u|lz|`; `ln p = x − lz` within
    /// `e_x + e_lz + u|ln p|`, and `p = exp(ln p)` within `p·(e_ln p + 2u)` (likewise `q`
    /// from the teacher's). The gradient `c·T·(p − q)` (`c = |scale·W_g/W|`) is then within
    /// `c·T·(e_p + e_q + u|p − q|) + γ₃|g|`, and adding it to the gradient one more
    /// rounding (`γ_{k+1}` for a row in `k` groups).
    fn listwise_softmax(
        &self,
        spec: &GroupSpec,
        offsets: &Vec<u32>,
        members: &Vec<u32>,
        input: LossInput<'_, Vec<Bounded>>,
        grad: &mut Vec<Bounded>,
        write: GradWrite,
    ) -> Result<f32> {
        let (s, t) = (vals(input.pred), vals(input.target));
        let (w, m) = (input.weight.map(|w| vals(w)), input.mask.map(|m| vals(m)));
        let mut gv = vals(grad);
        let loss = loss::listwise_softmax(
            spec,
            offsets,
            members,
            inp(&s, &t, (w.as_deref(), m.as_deref(), input.weight_sum)),
            &mut gv,
            write,
        )?;
        let n = spec.rows;
        let counts = |i: usize| m.as_ref().is_none_or(|m| m[i] != 0.0);
        let weight = |i: usize| w.as_ref().map_or(1.0, |w| w[i]);
        let groups: Vec<Vec<usize>> = (0..spec.groups)
            .map(|g| {
                members[offsets[g] as usize..offsets[g + 1] as usize]
                    .iter()
                    .map(|&i| i as usize)
                    .filter(|&i| counts(i))
                    .collect::<Vec<_>>()
            })
            .filter(|g| g.len() > 1)
            .collect();
        let group_w = |g: &[usize]| g.iter().map(|&i| weight(i)).sum::<f64>() / g.len() as f64;
        let total: f64 = groups.iter().map(|g| group_w(g)).sum();
        let temp = spec.temperature as f64;
        let mut terms = vec![Term::default(); n];
        if total != 0.0 {
            for g in &groups {
                let c = (write.scale as f64 * group_w(g) / total).abs();
                let (p, e_p) = softmax_bound(g, &s, input.pred, temp);
                let (q, e_q) = softmax_bound(g, &t, input.target, temp);
                for (k, &i) in g.iter().enumerate() {
                    let d = (p[k] - q[k]).abs();
                    let gi = c * temp * d;
                    terms[i].add(gi, c * temp * (e_p[k] + e_q[k] + U * d) + gamma(3) * gi);
                }
            }
        }
        accumulate_terms(&terms, &gv, grad, write);
        Ok(loss as f32)
    }
}

/// What a ranking loss adds to one row of the gradient: the number of terms, the sum of
/// their magnitudes and of their error bounds.
#[derive(Debug, Clone, Copy, Default)]
struct Term {
    count: usize,
    mag: f64,
    err: f64,
}

impl Term {
    fn add(&mut self, mag: f64, err: f64) {
        self.count += 1;
        self.mag += mag;
        self.err += err;
    }
}

/// Bounds a gradient that received `terms[i]` on top of its previous value (kept with
/// `accumulate`, else zero): the terms' own errors plus `γ_{k+1}` of the magnitudes summed.
fn accumulate_terms(terms: &[Term], gv: &[f64], grad: &mut [Bounded], write: GradWrite) {
    for (i, term) in terms.iter().enumerate() {
        let prior = if write.accumulate { grad[i] } else { Bounded::default() };
        let e = if term.count == 0 {
            prior.e
        } else {
            prior.e + term.err + gamma(term.count + 1) * (prior.v.abs() + term.mag)
        };
        grad[i] = Bounded { v: gv[i], e };
    }
}

/// `softmax(x/T)` over the rows `g` and each value's error bound in f32 (the derivation
/// on [`BoundOps::listwise_softmax`]).
fn softmax_bound(g: &[usize], x: &[f64], bx: &[Bounded], temp: f64) -> (Vec<f64>, Vec<f64>) {
    let xs: Vec<f64> = g.iter().map(|&i| x[i] / temp).collect();
    let e_x: Vec<f64> = g.iter().zip(&xs).map(|(&i, v)| bx[i].e / temp + U * v.abs()).collect();
    let (mi, m) = xs.iter().enumerate().fold((0, f64::NEG_INFINITY), |a, (k, &v)| if v > a.1 { (k, v) } else { a });
    let y: Vec<f64> = xs.iter().map(|v| (v - m).exp()).collect();
    let z: f64 = y.iter().sum();
    let e_z: f64 = y
        .iter()
        .zip(&xs)
        .zip(&e_x)
        .map(|((yk, v), ek)| yk / z * (ek + e_x[mi] + U * (v - m).abs() + 2.0 * U))
        .sum::<f64>()
        + gamma(g.len());
    let lz = m + z.ln();
    let e_lz = e_x[mi] + e_z + 2.0 * U * z.ln().abs() + U * lz.abs();
    let p: Vec<f64> = xs.iter().map(|v| (v - lz).exp()).collect();
    let e_p =
        xs.iter().zip(&e_x).zip(&p).map(|((v, ex), pk)| pk * (ex + e_lz + U * (v - lz).abs() + 2.0 * U)).collect();
    (p, e_p)
}

/// The weights, the mask and the given weight sum of a loss's input.
type Weights<'a> = (Option<&'a [f64]>, Option<&'a [f64]>, Option<f64>);

fn inp<'a>(pred: &'a [f64], target: &'a [f64], (weight, mask, weight_sum): Weights<'a>) -> LossInput<'a, [f64]> {
    LossInput { pred, target, weight, mask, weight_sum }
}

fn loss_bound(
    n: usize,
    input: LossInput<'_, Vec<Bounded>>,
    grad: &mut [Bounded],
    write: GradWrite,
    second: f64,
    run: impl Fn(&[f64], &[f64], &mut [f64], Weights<'_>) -> Result<f64>,
) -> Result<f32> {
    let (p, t) = (vals(input.pred), vals(input.target));
    let (w, m) = (input.weight.map(|w| vals(w)), input.mask.map(|m| vals(m)));
    let mut gv = vals(grad);
    let loss = run(&p, &t, &mut gv, (w.as_deref(), m.as_deref(), input.weight_sum))?;
    let counts = |i: usize| m.as_ref().is_none_or(|m| m[i] != 0.0);
    let weight = |i: usize| w.as_ref().map_or(1.0, |w| w[i]);
    let total: f64 = input.weight_sum.unwrap_or_else(|| (0..n).filter(|&i| counts(i)).map(weight).sum());
    for i in 0..n {
        let e_new = if counts(i) && total != 0.0 {
            let s = (write.scale as f64 * weight(i) / total).abs();
            s * (second * input.pred[i].e + 8.0 * U) + gamma(n + 4) * gv[i].abs()
        } else {
            0.0
        };
        let e = if write.accumulate { grad[i].e + e_new + U * gv[i].abs() } else { e_new };
        grad[i] = Bounded { v: gv[i], e };
    }
    Ok(loss as f32)
}

/// Error bound of a product of two bounded values (before its own rounding).
fn prod_err(a: Bounded, b: Bounded) -> f64 {
    a.v.abs() * b.e + a.e * b.v.abs() + a.e * b.e
}

fn bag_weight(pooling: Pooling, len: usize) -> f64 {
    match pooling {
        Pooling::Sum => 1.0,
        Pooling::Mean => 1.0 / len.max(1) as f64,
    }
}

/// `dbias[c] += Σ_r dz[r, c]` bound: propagated errors plus `γ_{rows+1}` of the
/// magnitudes (including the value accumulated so far).
fn col_sum_into(shape: Shape, dz: &[Bounded], db: &mut [Bounded], new_vals: &[f64]) {
    for c in 0..shape.cols {
        let (mut e, mut mag) = (0.0, db[c].v.abs());
        for row in 0..shape.rows {
            let b = dz[row * shape.cols + c];
            e += b.e;
            mag += b.v.abs();
        }
        db[c] = Bounded { v: new_vals[c], e: db[c].e + e + gamma(shape.rows + 1) * mag };
    }
}

/// One row's layer-norm statistics and their error bounds.
struct RowNorm {
    mean: f64,
    rstd: f64,
    e_mean: f64,
    e_rstd: f64,
}

impl RowNorm {
    /// `x̂ = (x - mean)·rstd` and its bound: `(e_x + e_mean + u|d|)·rstd + |d|·e_rstd +
    /// u|x̂|` (plus the second-order term).
    fn xhat(&self, x: Bounded) -> (f64, f64) {
        let d = x.v - self.mean;
        let e_d = x.e + self.e_mean + U * d.abs();
        let xh = d * self.rstd;
        (xh, e_d * self.rstd + d.abs() * self.e_rstd + e_d * self.e_rstd + U * xh.abs())
    }
}

/// Bounds on a row's mean and `rstd` as an f32 backend computes them (two-pass:
/// `mean = Σx/n`, `var = Σ(x - mean)²/n`, `rstd = 1/sqrt(var + eps)`).
fn row_stats(xs: &[Bounded], mean: f64, rstd: f64, eps: f64) -> RowNorm {
    let nf = xs.len() as f64;
    let mean_abs = xs.iter().map(|b| b.v.abs()).sum::<f64>() / nf;
    let e_mean = xs.iter().map(|b| b.e).sum::<f64>() / nf + gamma(xs.len() + 1) * mean_abs;
    let var = xs.iter().map(|b| (b.v - mean).powi(2)).sum::<f64>() / nf;
    let e_var = xs
        .iter()
        .map(|b| {
            let (d, e_d) = ((b.v - mean).abs(), b.e + e_mean);
            2.0 * d * e_d + e_d * e_d
        })
        .sum::<f64>()
        / nf
        + gamma(xs.len() + 5) * var;
    // rstd = (var + eps)^(-1/2): relative sensitivity 1/2 to var, plus add/sqrt/divide.
    let e_rstd = rstd * (e_var / (2.0 * (var + eps)) + 3.0 * U);
    RowNorm { mean, rstd, e_mean, e_rstd }
}
