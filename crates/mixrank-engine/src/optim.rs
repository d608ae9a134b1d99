//! Optimizer updates as ops: dense Adam/AdamW with a global-norm clip, row-wise Adagrad
//! and lazy Adam over the rows a batch touched, and the merge of several sparse
//! gradients of one table. The specs here are what [`crate::Backend`]'s optimizer
//! methods take; the host kernels are shared by [`crate::CpuOps`] and the reference
//! backend, so both compute the same formulas (per element in the buffer's precision,
//! sums of squares in f64).
//!
//! # The norm accumulator
//! The global gradient norm is a sum over every dense parameter. It stays in the
//! backend's memory: [`crate::Backend::sq_norm_acc`] adds one parameter's `Σ g²` into a
//! buffer of [`NORM_ACC_LEN`] elements (zero it with `fill` first), and
//! [`crate::Backend::adam_update`] derives the clip scale from it, so clipping needs no
//! readback. How the f64 sum is stored in the buffer is the backend's own (the host
//! backends keep its bits in two `f32` slots, as a device kernel would reinterpret
//! them); [`crate::Backend::sq_norm_read`] returns it (a host sync, for statistics).

use crate::check;
use crate::error::Result;
use crate::float::Float;

/// Elements of the buffer [`crate::Backend::sq_norm_acc`] accumulates into.
pub const NORM_ACC_LEN: usize = 2;

/// Elements per partial sum of squares: partials are f64 sums over fixed chunks, added
/// in order, so the norm does not depend on the thread count.
pub const NORM_CHUNK: usize = 16 * 1024;

/// The scalars of one dense Adam step (the same for every parameter of the step).
///
/// Per element, with `g` the gradient scaled by the clip factor `c`:
/// `g' = c·g + l2·w`, `m = β₁m + (1-β₁)g'`, `v = β₂v + (1-β₂)g'²`,
/// `w -= step_size · m / (sqrt(v)/bc2_sqrt + eps) + lr·decoupled·w`, where
/// `step_size = lr / (1-β₁ᵗ)` and `bc2_sqrt = sqrt(1-β₂ᵗ)` (PyTorch's formula, eps after
/// bias correction). `c = min(1, clip_norm / ‖g‖)` over the accumulated norm, 1 without
/// a clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSpec {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    /// Classic L2 weight decay of this parameter (0 for none).
    pub l2: f32,
    /// Decoupled (AdamW) weight decay of this parameter (0 for none).
    pub decoupled: f32,
    pub clip_norm: Option<f32>,
}

/// The clip factor `min(1, max / norm)` for a sum of squares `sq` (1 without a clip).
pub fn clip_scale(sq: f64, clip_norm: Option<f32>) -> f64 {
    let norm = sq.sqrt();
    match clip_norm {
        Some(max) if norm > max as f64 => max as f64 / norm,
        _ => 1.0,
    }
}

/// The rows a sparse update walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseRows {
    /// Only the rows the gradient holds.
    Touched,
    /// Every row of the table, untouched ones with a zero gradient (whole-table L2).
    All,
}

/// One row-wise Adagrad step (FBGEMM's `ROWWISE_ADAGRAD`): for each row `r` walked,
/// `g = g_r + weight_decay·w_r`, `s_r += mean_j(g_j²)` (the mean in f64),
/// `w_r -= lr · g / (sqrt(s_r) + eps)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowAdagradSpec {
    pub lr: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub rows: SparseRows,
}

/// One lazy Adam step: for each row walked, its count `k_r += 1`, and per element
/// `g = g_r + weight_decay·w`, `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`,
/// `w -= (lr/(1-β₁ᵏ)) · m / (sqrt(v)/sqrt(1-β₂ᵏ) + eps)`, with `k = k_r` (per-row bias
/// correction) or `global_step` when that is given (PyTorch `SparseAdam`'s approximation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LazyAdamSpec {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub global_step: Option<u64>,
    pub rows: SparseRows,
}

/// Geometry of a sparse update: the table is `[rows, dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    pub rows: usize,
    pub dim: usize,
}

/// Stores an f64 in the first two slots of an `f32` buffer, bit for bit.
pub(crate) fn store_acc_f32(x: f64, acc: &mut [f32]) {
    let bits = x.to_bits();
    acc[0] = f32::from_bits(bits as u32);
    acc[1] = f32::from_bits((bits >> 32) as u32);
}

/// Reads what [`store_acc_f32`] stored.
pub(crate) fn load_acc_f32(acc: &[f32]) -> f64 {
    f64::from_bits(acc[0].to_bits() as u64 | ((acc[1].to_bits() as u64) << 32))
}

/// The norm accumulator of a host buffer of `T` (f32: bits in two slots; f64: the value).
pub(crate) fn load_acc<T: Float>(acc: &[T]) -> Result<f64> {
    check::vector("sq_norm", "acc", acc.len(), NORM_ACC_LEN)?;
    Ok(T::load_acc(acc))
}

/// `acc += Σ x²` over `x[..n]`, in f64, chunk by chunk in order.
pub(crate) fn sq_norm_acc<T: Float>(n: usize, x: &[T], acc: &mut [T]) -> Result<()> {
    check::vector("sq_norm_acc", "x", x.len(), n)?;
    let mut sq = load_acc(acc)?;
    for chunk in x[..n].chunks(NORM_CHUNK) {
        sq += chunk.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>();
    }
    T::store_acc(sq, acc);
    Ok(())
}

/// Checks the four buffers of an Adam update hold `n` elements.
pub(crate) fn check_adam<T>(n: usize, w: &[T], g: &[T], m: &[T], v: &[T]) -> Result<()> {
    for (name, len) in [("w", w.len()), ("g", g.len()), ("m", m.len()), ("v", v.len())] {
        check::vector("adam_update", name, len, n)?;
    }
    Ok(())
}

/// The Adam update of one chunk of elements, clip factor `cs` (see [`AdamSpec`]).
#[inline]
pub(crate) fn adam_chunk<T: Float>(s: &AdamSpec, cs: T, w: &mut [T], g: &[T], m: &mut [T], v: &mut [T]) {
    let f = |x: f32| T::from_f64(x as f64);
    let (b1, b2, eps, l2, dec, lr) = (f(s.beta1), f(s.beta2), f(s.eps), f(s.l2), f(s.decoupled), f(s.lr));
    let (step_size, bc2_sqrt) = (f(s.step_size), f(s.bc2_sqrt));
    for j in 0..w.len() {
        let wj = w[j];
        let gj = g[j] * cs + l2 * wj;
        m[j] = b1 * m[j] + (T::ONE - b1) * gj;
        v[j] = b2 * v[j] + (T::ONE - b2) * gj * gj;
        let denom = v[j].sqrt() / bc2_sqrt + eps;
        w[j] = wj - step_size * m[j] / denom - lr * dec * wj;
    }
}

/// Checks a sparse gradient's ids and rows against the table.
pub(crate) fn check_sparse<T>(op: &'static str, shape: TableShape, len: usize, ids: &[u32], rows: &[T]) -> Result<()> {
    check::vector(op, "grad ids", ids.len(), len)?;
    check::vector(op, "grad rows", rows.len(), len * shape.dim)?;
    if let Some((position, &id)) = ids[..len].iter().enumerate().find(|(_, &id)| id as usize >= shape.rows) {
        return Err(crate::error::EngineError::IdOutOfRange { op, id, position, rows: shape.rows });
    }
    Ok(())
}

/// Calls `f(row, grad)` for every row `which` selects: the gradient's rows (ascending
/// ids), or every row of the table, `None` standing for an untouched row's zero gradient.
pub(crate) fn walk_rows<T: Float>(
    shape: TableShape,
    which: SparseRows,
    ids: &[u32],
    rows: &[T],
    mut f: impl FnMut(usize, Option<&[T]>),
) {
    let dim = shape.dim;
    match which {
        SparseRows::Touched => {
            for (i, &id) in ids.iter().enumerate() {
                f(id as usize, Some(&rows[i * dim..(i + 1) * dim]));
            }
        }
        SparseRows::All => {
            let mut k = 0;
            for r in 0..shape.rows {
                if k < ids.len() && ids[k] as usize == r {
                    f(r, Some(&rows[k * dim..(k + 1) * dim]));
                    k += 1;
                } else {
                    f(r, None);
                }
            }
        }
    }
}

/// Element `j` of a walked row's gradient (0 for an untouched row).
#[inline]
fn grad_at<T: Float>(g: Option<&[T]>, j: usize) -> T {
    g.map_or(T::ZERO, |g| g[j])
}

/// Checks row-wise Adagrad's table and per-row accumulators hold `shape`.
pub(crate) fn check_adagrad_state<T>(shape: TableShape, table: &[T], acc: &[T]) -> Result<()> {
    check::vector("rowwise_adagrad", "table", table.len(), shape.rows * shape.dim)?;
    check::vector("rowwise_adagrad", "accumulators", acc.len(), shape.rows)
}

/// Checks lazy Adam's table, moments and per-row step counts hold `shape`.
pub(crate) fn check_lazy_adam_state<T>(shape: TableShape, table: &[T], m: &[T], v: &[T], steps: &[u32]) -> Result<()> {
    let n = shape.rows * shape.dim;
    for (name, len) in [("table", table.len()), ("m", m.len()), ("v", v.len())] {
        check::vector("lazy_adam", name, len, n)?;
    }
    check::vector("lazy_adam", "row steps", steps.len(), shape.rows)
}

/// Row-wise Adagrad over host slices (see [`RowAdagradSpec`]).
pub(crate) fn rowwise_adagrad<T: Float>(
    s: &RowAdagradSpec,
    shape: TableShape,
    ids: &[u32],
    rows: &[T],
    table: &mut [T],
    acc: &mut [T],
) -> Result<()> {
    check_adagrad_state(shape, table, acc)?;
    let dim = shape.dim;
    walk_rows(shape, s.rows, ids, rows, |id, g| {
        rowwise_adagrad_row(s, g, &mut table[id * dim..(id + 1) * dim], &mut acc[id]);
    });
    Ok(())
}

/// One row's row-wise Adagrad update (`g` = `None`: an untouched row's zero gradient).
/// The per-element code every backend's rows share, so a parallel split over rows gives
/// the same bits.
#[inline]
pub(crate) fn rowwise_adagrad_row<T: Float>(s: &RowAdagradSpec, g: Option<&[T]>, row: &mut [T], acc: &mut T) {
    let f = |x: f32| T::from_f64(x as f64);
    let (lr, eps, wd) = (f(s.lr), f(s.eps), f(s.weight_decay));
    let decay = s.weight_decay != 0.0;
    // The decayed gradient `g + wd·w`, computed where it is read (no buffer).
    let gd = |j: usize, w: T| if decay { grad_at(g, j) + wd * w } else { grad_at(g, j) };
    let mean_sq =
        row.iter().enumerate().map(|(j, &w)| gd(j, w).to_f64() * gd(j, w).to_f64()).sum::<f64>() / row.len() as f64;
    *acc += T::from_f64(mean_sq);
    let step = lr / (acc.sqrt() + eps);
    for (j, w) in row.iter_mut().enumerate() {
        *w -= step * gd(j, *w);
    }
}

/// Lazy Adam over host slices (see [`LazyAdamSpec`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lazy_adam<T: Float>(
    s: &LazyAdamSpec,
    shape: TableShape,
    ids: &[u32],
    rows: &[T],
    table: &mut [T],
    m: &mut [T],
    v: &mut [T],
    steps: &mut [u32],
) -> Result<()> {
    check_lazy_adam_state(shape, table, m, v, steps)?;
    let dim = shape.dim;
    let mut memo = BiasMemo::new();
    walk_rows(shape, s.rows, ids, rows, |id, g| {
        let e = id * dim..(id + 1) * dim;
        lazy_adam_row(s, g, &mut table[e.clone()], &mut m[e.clone()], &mut v[e], &mut steps[id], &mut memo);
    });
    Ok(())
}

/// Lazy Adam's bias correction of step count `k` — the step size `lr / (1 − β₁ᵏ)` and
/// `sqrt(1 − β₂ᵏ)` — memoised by `k` in a direct-mapped table of 64. The rows of one
/// update share few distinct counts, and at small dims the two `powi`s cost more than
/// the row's update (docs/BENCHMARKS.md, "the small MMoE again"); the values are the
/// same bits as computing them each time. One memo per update call: `s` is fixed.
pub(crate) struct BiasMemo<T> {
    /// `(k, step size, sqrt(1 − β₂ᵏ))`; `k = 0` is empty (counts start at 1).
    slots: [(i32, T, T); 64],
}

impl<T: Float> BiasMemo<T> {
    pub fn new() -> Self {
        BiasMemo { slots: [(0, T::ZERO, T::ZERO); 64] }
    }

    #[inline]
    fn get(&mut self, s: &LazyAdamSpec, k: i32) -> (T, T) {
        let slot = &mut self.slots[(k as u32 & 63) as usize];
        if slot.0 != k || k == 0 {
            let bc1 = 1.0 - (s.beta1 as f64).powi(k);
            let bc2_sqrt = T::from_f64((1.0 - (s.beta2 as f64).powi(k)).sqrt() as f32 as f64);
            let step_size = T::from_f64((s.lr as f64 / bc1) as f32 as f64);
            *slot = (k, step_size, bc2_sqrt);
        }
        (slot.1, slot.2)
    }
}

/// One row's lazy Adam update (`g` = `None`: an untouched row's zero gradient); shared
/// by every backend's rows, as [`rowwise_adagrad_row`].
#[inline]
pub(crate) fn lazy_adam_row<T: Float>(
    s: &LazyAdamSpec,
    g: Option<&[T]>,
    w: &mut [T],
    m: &mut [T],
    v: &mut [T],
    step: &mut u32,
    memo: &mut BiasMemo<T>,
) {
    let f = |x: f32| T::from_f64(x as f64);
    let (b1, b2, eps, wd) = (f(s.beta1), f(s.beta2), f(s.eps), f(s.weight_decay));
    *step += 1;
    let k = s.global_step.unwrap_or(*step as u64) as i32;
    let (step_size, bc2_sqrt) = memo.get(s, k);
    let n = w.len();
    let (m, v) = (&mut m[..n], &mut v[..n]);
    // Zipped slices of one length: no bounds checks, so the element loop vectorises
    // (IEEE `sqrt` and `/` round the same in SIMD lanes; no FMA is formed).
    let update = |w: &mut T, m: &mut T, v: &mut T, g: T| {
        let gj = g + wd * *w;
        *m = b1 * *m + (T::ONE - b1) * gj;
        *v = b2 * *v + (T::ONE - b2) * gj * gj;
        *w -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
    };
    match g {
        Some(g) => {
            for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&g[..n]) {
                update(w, m, v, g);
            }
        }
        None => {
            for ((w, m), v) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()) {
                update(w, m, v, T::ZERO);
            }
        }
    }
}

/// Merges two sparse gradients of one table (each with ascending distinct ids) into
/// `out_ids`/`out_rows`: the union of the ids, ascending, the rows of an id in both summed
/// as `a + b`. Returns the number of distinct ids. The outputs must have room for
/// `a.len + b.len` rows.
pub(crate) fn merge_two<T: Float>(
    dim: usize,
    (ia, ra): (&[u32], &[T]),
    (ib, rb): (&[u32], &[T]),
    out_ids: &mut [u32],
    out_rows: &mut [T],
) -> Result<usize> {
    let total = ia.len() + ib.len();
    check::vector("merge_sparse_grads", "out ids", out_ids.len(), total)?;
    check::vector("merge_sparse_grads", "out rows", out_rows.len(), total * dim)?;
    let (mut i, mut j, mut len) = (0, 0, 0);
    while i < ia.len() || j < ib.len() {
        let out = &mut out_rows[len * dim..(len + 1) * dim];
        let (take_a, take_b) = match (ia.get(i), ib.get(j)) {
            (Some(a), Some(b)) => (a <= b, b <= a),
            (Some(_), None) => (true, false),
            _ => (false, true),
        };
        match (take_a, take_b) {
            (true, true) => {
                for ((o, &x), &y) in out.iter_mut().zip(&ra[i * dim..(i + 1) * dim]).zip(&rb[j * dim..(j + 1) * dim]) {
                    *o = x + y;
                }
                out_ids[len] = ia[i];
                i += 1;
                j += 1;
            }
            (true, false) => {
                out.copy_from_slice(&ra[i * dim..(i + 1) * dim]);
                out_ids[len] = ia[i];
                i += 1;
            }
            _ => {
                out.copy_from_slice(&rb[j * dim..(j + 1) * dim]);
                out_ids[len] = ib[j];
                j += 1;
            }
        }
        len += 1;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bias_memo_gives_the_bits_computed_each_time() {
        let s = LazyAdamSpec {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            global_step: None,
            rows: SparseRows::Touched,
        };
        let direct = |k: i32| {
            let bc1 = 1.0 - (s.beta1 as f64).powi(k);
            let bc2 = ((1.0 - (s.beta2 as f64).powi(k)).sqrt() as f32).to_bits();
            (((s.lr as f64 / bc1) as f32).to_bits(), bc2)
        };
        let mut memo = BiasMemo::<f32>::new();
        // Counts that share slots (k and k + 64), repeated, in a scrambled order.
        for i in 0..2000u32 {
            let k = 1 + (i.wrapping_mul(2654435761) % 300) as i32;
            let (a, b) = memo.get(&s, k);
            assert_eq!((a.to_bits(), b.to_bits()), direct(k), "k = {k}");
        }
    }
}
