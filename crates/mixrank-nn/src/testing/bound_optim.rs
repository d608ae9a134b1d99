//! [`BoundOps`](super::BoundOps)' optimizer updates: the exact update of the f64 values,
//! with the rounding bound carried through each arithmetic step by [`Bounded`]'s
//! interval-style rules below (each result: the operands' propagated errors plus one
//! rounding of the result, `u·(|v| + e)`).
//!
//! The clip factor `min(1, max/‖g‖)` is continuous in `‖g‖²` (both branches give 1 at
//! the threshold), so an f32 backend that takes the other branch near the threshold is
//! still within the factor's bound.

use super::bound::{Bounded, U};
use mixrank_engine::optim::{AdamSpec, LazyAdamSpec, RowAdagradSpec, SparseRows, TableShape};

/// f64 unit roundoff, for sums the host backends accumulate in f64.
const U64: f64 = 1.0 / (1u64 << 53) as f64;

fn exact(v: f64) -> Bounded {
    Bounded { v, e: 0.0 }
}

fn round(v: f64, e: f64) -> Bounded {
    Bounded { v, e: e + U * (v.abs() + e) }
}

fn add(a: Bounded, b: Bounded) -> Bounded {
    round(a.v + b.v, a.e + b.e)
}

fn sub(a: Bounded, b: Bounded) -> Bounded {
    round(a.v - b.v, a.e + b.e)
}

fn mul(a: Bounded, b: Bounded) -> Bounded {
    round(a.v * b.v, a.v.abs() * b.e + a.e * b.v.abs() + a.e * b.e)
}

/// `a / b`; the bound is infinite when `b`'s interval reaches 0.
fn div(a: Bounded, b: Bounded) -> Bounded {
    let v = a.v / b.v;
    let lo = b.v.abs() - b.e;
    let e = if lo > 0.0 { (a.e + v.abs() * b.e) / lo } else { f64::INFINITY };
    round(v, e)
}

/// `sqrt(a)` for `a ≥ 0`: `|√x - √y| ≤ √|x - y|`, and `≤ |x - y| / √y` when that is smaller.
fn sqrt(a: Bounded) -> Bounded {
    let v = a.v.max(0.0).sqrt();
    let e = if v > 0.0 { a.e.sqrt().min(a.e / v) } else { a.e.sqrt() };
    round(v, e)
}

/// The scalar an f32 backend computes as `x as f32` from an f64 it got exactly.
fn f32_scalar(x: f64) -> Bounded {
    Bounded { v: x, e: U * x.abs() }
}

/// `Σ g²` of a row or parameter, summed in f64 by the host backends: the value, and the
/// bound `Σ (2|g| + e_g) e_g` plus the f64 summation's `n·u₆₄·Σ`.
pub(super) fn sq_sum(g: &[Bounded]) -> Bounded {
    let v: f64 = g.iter().map(|x| x.v * x.v).sum();
    let e: f64 = g.iter().map(|x| (2.0 * x.v.abs() + x.e) * x.e).sum();
    Bounded { v, e: e + g.len() as f64 * U64 * (v + e) }
}

/// The clip factor (as the f32 backends use it) of an accumulated `Σ g²`.
pub(super) fn clip_factor(sq: Bounded, clip: Option<f32>) -> Bounded {
    let Some(max) = clip else { return exact(1.0) };
    let max = max as f64;
    let f = |s: f64| if s.sqrt() > max { max / s.sqrt() } else { 1.0 };
    let v = f(sq.v);
    // f is non-increasing and convex in s: its largest change over [s - e, s + e] is at
    // the low end.
    let lo = (sq.v - sq.e).max(0.0);
    let e = if lo > 0.0 { (f(lo) - v).abs().max((v - f(sq.v + sq.e)).abs()) } else { 1.0 };
    with_extra(f32_scalar(v), e)
}

/// `b` with `e` more error.
fn with_extra(b: Bounded, e: f64) -> Bounded {
    Bounded { v: b.v, e: b.e + e }
}

/// The dense Adam update of every element (see [`AdamSpec`]).
pub(super) fn adam(s: &AdamSpec, cs: Bounded, w: &mut [Bounded], g: &[Bounded], m: &mut [Bounded], v: &mut [Bounded]) {
    let c = |x: f32| exact(x as f64);
    let (b1, b2) = (c(s.beta1), c(s.beta2));
    let (one_b1, one_b2) = (sub(c(1.0), b1), sub(c(1.0), b2));
    for j in 0..w.len() {
        let wj = w[j];
        let gj = add(mul(g[j], cs), mul(c(s.l2), wj));
        m[j] = add(mul(b1, m[j]), mul(one_b1, gj));
        v[j] = add(mul(b2, v[j]), mul(mul(one_b2, gj), gj));
        let denom = add(div(sqrt(v[j]), c(s.bc2_sqrt)), c(s.eps));
        let upd = div(mul(c(s.step_size), m[j]), denom);
        w[j] = sub(sub(wj, upd), mul(mul(c(s.lr), c(s.decoupled)), wj));
    }
}

/// Calls `f(row, grad)` for the rows `which` selects (as the host kernels walk them).
fn walk(shape: TableShape, which: SparseRows, ids: &[u32], rows: &[Bounded], mut f: impl FnMut(usize, &[Bounded])) {
    let dim = shape.dim;
    let zeros = vec![Bounded::default(); dim];
    let mut k = 0;
    let all: Box<dyn Iterator<Item = usize>> = match which {
        SparseRows::Touched => Box::new(ids.iter().map(|&id| id as usize)),
        SparseRows::All => Box::new(0..shape.rows),
    };
    for r in all {
        if k < ids.len() && ids[k] as usize == r {
            f(r, &rows[k * dim..(k + 1) * dim]);
            k += 1;
        } else {
            f(r, &zeros);
        }
    }
}

/// Row-wise Adagrad (see [`RowAdagradSpec`]).
pub(super) fn rowwise_adagrad(
    s: &RowAdagradSpec,
    shape: TableShape,
    ids: &[u32],
    rows: &[Bounded],
    table: &mut [Bounded],
    acc: &mut [Bounded],
) {
    let dim = shape.dim;
    let c = |x: f32| exact(x as f64);
    walk(shape, s.rows, ids, rows, |id, g| {
        let row = &mut table[id * dim..(id + 1) * dim];
        let g: Vec<Bounded> = g.iter().zip(row.iter()).map(|(&gj, &w)| add(gj, mul(c(s.weight_decay), w))).collect();
        let ms = sq_sum(&g);
        let mean_sq = with_extra(f32_scalar(ms.v / dim as f64), ms.e / dim as f64);
        acc[id] = add(acc[id], mean_sq);
        let step = div(c(s.lr), add(sqrt(acc[id]), c(s.eps)));
        for (w, &gj) in row.iter_mut().zip(&g) {
            *w = sub(*w, mul(step, gj));
        }
    });
}

/// Lazy Adam (see [`LazyAdamSpec`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn lazy_adam(
    s: &LazyAdamSpec,
    shape: TableShape,
    ids: &[u32],
    rows: &[Bounded],
    table: &mut [Bounded],
    m: &mut [Bounded],
    v: &mut [Bounded],
    steps: &mut [u32],
) {
    let dim = shape.dim;
    let c = |x: f32| exact(x as f64);
    let (b1, b2) = (c(s.beta1), c(s.beta2));
    let (one_b1, one_b2) = (sub(c(1.0), b1), sub(c(1.0), b2));
    walk(shape, s.rows, ids, rows, |id, g| {
        steps[id] += 1;
        let k = s.global_step.unwrap_or(steps[id] as u64) as i32;
        let bc2_sqrt = f32_scalar((1.0 - (s.beta2 as f64).powi(k)).sqrt());
        let step_size = f32_scalar(s.lr as f64 / (1.0 - (s.beta1 as f64).powi(k)));
        for (j, &gj) in g.iter().enumerate() {
            let e = id * dim + j;
            let gj = add(gj, mul(c(s.weight_decay), table[e]));
            m[e] = add(mul(b1, m[e]), mul(one_b1, gj));
            v[e] = add(mul(b2, v[e]), mul(mul(one_b2, gj), gj));
            let denom = add(div(sqrt(v[e]), bc2_sqrt), c(s.eps));
            table[e] = sub(table[e], div(mul(step_size, m[e]), denom));
        }
    });
}

/// Merges sparse gradients (ascending ids each), summing rows of one id in order.
pub(super) fn merge(dim: usize, grads: &[(&[u32], &[Bounded])]) -> (Vec<u32>, Vec<Bounded>) {
    let mut pos = vec![0usize; grads.len()];
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    while let Some(id) = grads.iter().zip(&pos).filter_map(|((ids, _), &p)| ids.get(p).copied()).min() {
        ids.push(id);
        let start = rows.len();
        rows.resize(start + dim, exact(0.0));
        for ((gi, gr), p) in grads.iter().zip(pos.iter_mut()) {
            if gi.get(*p) == Some(&id) {
                for j in 0..dim {
                    rows[start + j] = add(rows[start + j], gr[*p * dim + j]);
                }
                *p += 1;
            }
        }
    }
    (ids, rows)
}
