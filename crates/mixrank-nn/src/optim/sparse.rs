//! Sparse optimizers for embedding tables: they read and write only the rows a batch
//! touched.

use crate::embedding::EmbeddingCollection;
use crate::error::{NnError, Result};
use crate::optim::HostBackend;

/// The gradient of one table for one step: ascending distinct ids and their rows.
/// Features sharing a table are merged here (rows of the same id summed).
#[derive(Default)]
struct Merged {
    ids: Vec<u32>,
    rows: Vec<f32>,
    /// Features reading the table and each one's read position.
    feats: Vec<usize>,
    pos: Vec<usize>,
}

/// Calls `f(id, grad_row)` for every touched row of table `t`, in ascending id order,
/// with the gradients of all features reading `t` summed.
fn for_each_row<B: HostBackend>(
    emb: &EmbeddingCollection<B>,
    t: usize,
    merged: &mut Merged,
    mut f: impl FnMut(usize, &[f32]),
) {
    let dim = emb.tables()[t].dim;
    let mut feats = emb.features_of_table(t);
    let (Some(first), second) = (feats.next(), feats.next()) else { return };
    if second.is_none() {
        // One feature (the common case): use its gradient in place.
        let g = emb.grad(first);
        for i in 0..g.len {
            f(g.ids[i] as usize, &g.rows[i * dim..(i + 1) * dim]);
        }
        return;
    }
    // k-way merge of sorted id lists; the buffers grow once and are then reused.
    merged.ids.clear();
    merged.rows.clear();
    merged.feats.clear();
    merged.feats.extend(emb.features_of_table(t));
    merged.pos.clear();
    merged.pos.resize(merged.feats.len(), 0);
    let (feats, pos) = (&merged.feats, &mut merged.pos);
    loop {
        let next = feats
            .iter()
            .zip(pos.iter())
            .filter_map(|(&fi, &p)| {
                let g = emb.grad(fi);
                (p < g.len).then(|| g.ids[p])
            })
            .min();
        let Some(id) = next else { break };
        let start = merged.rows.len();
        merged.ids.push(id);
        merged.rows.resize(start + dim, 0.0);
        for (k, &fi) in feats.iter().enumerate() {
            let g = emb.grad(fi);
            if pos[k] < g.len && g.ids[pos[k]] == id {
                for (acc, &v) in merged.rows[start..].iter_mut().zip(&g.rows[pos[k] * dim..(pos[k] + 1) * dim]) {
                    *acc += v;
                }
                pos[k] += 1;
            }
        }
    }
    for (i, &id) in merged.ids.iter().enumerate() {
        f(id as usize, &merged.rows[i * dim..(i + 1) * dim]);
    }
}

/// Which rows the L2 penalty (`weight_decay`) of a sparse optimizer applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecayScope {
    /// The rows a batch touched (FuxiCTR's `embedding_regularizer` over looked-up rows):
    /// `g_r += weight_decay · w_r` for those rows only; untouched rows are not read.
    #[default]
    Touched,
    /// Every row of every table, every step: the gradient of `weight_decay/2 · ‖W‖²` over
    /// the whole table, so row `r` is updated with `g_r + weight_decay · w_r` (`g_r = 0`
    /// for a row the batch did not touch). Costs a pass over all `rows × dim` weights (and
    /// optimizer state) per step instead of the touched rows only.
    Table,
}

/// A table's touched rows copied out (ascending ids), for a walk over every row.
#[derive(Default)]
struct Touched {
    ids: Vec<u32>,
    rows: Vec<f32>,
    zeros: Vec<f32>,
}

impl Touched {
    /// Calls `f(row, grad)` for every row `0..rows` of table `t`: the touched rows' summed
    /// gradients, zeros for the others.
    fn for_every_row<B: HostBackend>(
        &mut self,
        emb: &EmbeddingCollection<B>,
        t: usize,
        merged: &mut Merged,
        mut f: impl FnMut(usize, &[f32]),
    ) {
        let (rows, dim) = (emb.tables()[t].rows, emb.tables()[t].dim);
        let (ids, grads) = (&mut self.ids, &mut self.rows);
        ids.clear();
        grads.clear();
        for_each_row(emb, t, merged, |id, g| {
            ids.push(id as u32);
            grads.extend_from_slice(g);
        });
        self.zeros.clear();
        self.zeros.resize(dim, 0.0);
        let mut k = 0;
        for r in 0..rows {
            if k < self.ids.len() && self.ids[k] as usize == r {
                f(r, &self.rows[k * dim..(k + 1) * dim]);
                k += 1;
            } else {
                f(r, &self.zeros);
            }
        }
    }
}

/// The optimizer state (`rows` per table) was built for this collection.
fn check_tables<B: HostBackend>(
    opt: &'static str,
    emb: &EmbeddingCollection<B>,
    rows: impl ExactSizeIterator<Item = usize>,
) -> Result<()> {
    let tables = emb.tables();
    if tables.len() != rows.len() {
        return Err(NnError::DimMismatch {
            layer: opt,
            lhs: "tables",
            lhs_dim: tables.len(),
            rhs: "optimizer tables",
            rhs_dim: rows.len(),
        });
    }
    for (t, r) in tables.iter().zip(rows) {
        if t.rows != r {
            return Err(NnError::DimMismatch {
                layer: opt,
                lhs: "table rows",
                lhs_dim: t.rows,
                rhs: "state rows",
                rhs_dim: r,
            });
        }
    }
    Ok(())
}

/// Configuration of [`RowWiseAdagrad`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowWiseAdagradConfig {
    pub lr: f32,
    pub eps: f32,
    /// Starting value of every row's accumulator. Default 0.
    pub initial_accumulator: f32,
    /// L2 penalty: `g_r += weight_decay · w_r` before the update (FuxiCTR's
    /// `embedding_regularizer`) on the rows `decay_scope` says. Default 0.
    pub weight_decay: f32,
    /// The rows `weight_decay` applies to. Default [`DecayScope::Touched`].
    pub decay_scope: DecayScope,
}

impl RowWiseAdagradConfig {
    pub fn new(lr: f32) -> Self {
        RowWiseAdagradConfig {
            lr,
            eps: 1e-8,
            initial_accumulator: 0.0,
            weight_decay: 0.0,
            decay_scope: DecayScope::Touched,
        }
    }
}

/// Row-wise Adagrad (FBGEMM/torchrec's `ROWWISE_ADAGRAD`): one accumulator per row
/// instead of per element, so the state is `rows` floats, not `rows × dim`.
///
/// For each touched row `r` with gradient `g_r` (plus `weight_decay · w_r`):
/// `s_r += mean_j(g_rj²)`, `w_rj -= lr · g_rj / (sqrt(s_r) + eps)`. Untouched rows are
/// not read or written (unless `decay_scope` is [`DecayScope::Table`], which updates
/// every row with its L2 gradient).
pub struct RowWiseAdagrad {
    config: RowWiseAdagradConfig,
    /// Per table: `[rows]` accumulators.
    state: Vec<Vec<f32>>,
    merged: Merged,
    touched: Touched,
}

impl RowWiseAdagrad {
    /// Sets the learning rate of later steps (a plateau reduction, for example).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    pub fn new<B: HostBackend>(config: RowWiseAdagradConfig, emb: &EmbeddingCollection<B>) -> Self {
        let state = emb.tables().iter().map(|t| vec![config.initial_accumulator; t.rows]).collect();
        RowWiseAdagrad { config, state, merged: Merged::default(), touched: Touched::default() }
    }

    /// Accumulator of table `t` (for checkpoints and tests).
    pub fn accumulators(&self, t: usize) -> &[f32] {
        &self.state[t]
    }

    /// Restores table `t`'s accumulators saved from [`RowWiseAdagrad::accumulators`].
    pub fn set_accumulators(&mut self, t: usize, values: &[f32]) -> Result<()> {
        let state = &mut self.state[t];
        if state.len() != values.len() {
            return Err(NnError::DimMismatch {
                layer: "RowWiseAdagrad",
                lhs: "restored accumulators",
                lhs_dim: values.len(),
                rhs: "table rows",
                rhs_dim: state.len(),
            });
        }
        state.copy_from_slice(values);
        Ok(())
    }

    /// Applies the last backward's sparse gradients to every table.
    pub fn step<B: HostBackend>(&mut self, emb: &mut EmbeddingCollection<B>) -> Result<()> {
        check_tables("RowWiseAdagrad", emb, self.state.iter().map(Vec::len))?;
        let RowWiseAdagradConfig { lr, eps, weight_decay: wd, decay_scope, .. } = self.config;
        for t in 0..self.state.len() {
            let dim = emb.tables()[t].dim;
            // The table is moved out while the gradient walk borrows the collection.
            let mut table = std::mem::take(&mut emb.tables_mut()[t].value);
            let state = &mut self.state[t];
            let mut decayed = vec![0f32; if wd != 0.0 { dim } else { 0 }];
            let update = |id: usize, g: &[f32]| {
                let row = &mut table[id * dim..(id + 1) * dim];
                let g: &[f32] = if wd != 0.0 {
                    for ((d, &gj), &w) in decayed.iter_mut().zip(g).zip(row.iter()) {
                        *d = gj + wd * w;
                    }
                    &decayed
                } else {
                    g
                };
                let mean_sq = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / dim as f64;
                state[id] += mean_sq as f32;
                let step = lr / (state[id].sqrt() + eps);
                for (w, &gj) in row.iter_mut().zip(g) {
                    *w -= step * gj;
                }
            };
            if decay_scope == DecayScope::Table && wd != 0.0 {
                self.touched.for_every_row(emb, t, &mut self.merged, update);
            } else {
                for_each_row(emb, t, &mut self.merged, update);
            }
            emb.tables_mut()[t].value = table;
        }
        Ok(())
    }
}

/// Bias correction of [`LazyAdam`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasCorrection {
    /// Each row counts its own updates `t_r` and is corrected by `1 - βᵗʳ`: a row seen
    /// for the first time gets a full-size first step however late it appears.
    PerRow,
    /// The standard lazy-Adam approximation (PyTorch `SparseAdam`, TF `LazyAdam`): the
    /// global step count `t` for every row, so rarely seen rows are under-corrected.
    GlobalStep,
}

/// Configuration of [`LazyAdam`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LazyAdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bias_correction: BiasCorrection,
    /// L2 penalty: `g += weight_decay · w` before the moments, on the rows
    /// `decay_scope` says (see [`RowWiseAdagradConfig::weight_decay`]). Default 0.
    pub weight_decay: f32,
    /// The rows `weight_decay` applies to. Default [`DecayScope::Touched`]; with
    /// [`DecayScope::Table`] every row's moments take its L2 gradient every step, so the
    /// optimizer is no longer lazy.
    pub decay_scope: DecayScope,
}

impl LazyAdamConfig {
    pub fn new(lr: f32) -> Self {
        LazyAdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            bias_correction: BiasCorrection::PerRow,
            weight_decay: 0.0,
            decay_scope: DecayScope::Touched,
        }
    }
}

/// Lazy (sparse) Adam: the moments of a row are updated only when the row is touched,
/// so untouched rows' weights and moments stay exactly as they were (their moments do
/// not decay in between, unlike dense Adam on a zero gradient).
///
/// For a touched row with gradient `g` and count `k` (see [`BiasCorrection`]):
/// `m = β₁m + (1-β₁)g`, `v = β₂v + (1-β₂)g²`,
/// `w -= lr · (m / (1-β₁ᵏ)) / (sqrt(v / (1-β₂ᵏ)) + eps)`.
pub struct LazyAdam {
    config: LazyAdamConfig,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    row_steps: Vec<Vec<u32>>,
    t: u64,
    merged: Merged,
    touched: Touched,
}

impl LazyAdam {
    /// Sets the learning rate of later steps (a plateau reduction, for example).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    pub fn new<B: HostBackend>(config: LazyAdamConfig, emb: &EmbeddingCollection<B>) -> Self {
        let tables = emb.tables();
        LazyAdam {
            config,
            m: tables.iter().map(|t| vec![0.0; t.rows * t.dim]).collect(),
            v: tables.iter().map(|t| vec![0.0; t.rows * t.dim]).collect(),
            row_steps: tables.iter().map(|t| vec![0; t.rows]).collect(),
            t: 0,
            merged: Merged::default(),
            touched: Touched::default(),
        }
    }

    /// `(m, v, per-row step counts)` of table `t`.
    pub fn state(&self, t: usize) -> (&[f32], &[f32], &[u32]) {
        (&self.m[t], &self.v[t], &self.row_steps[t])
    }

    /// Global step count (used by [`BiasCorrection::GlobalStep`]).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Restores table `t`'s state saved from [`LazyAdam::state`] (and the global step
    /// count from [`LazyAdam::steps`]).
    pub fn set_state(&mut self, t: usize, steps: u64, m: &[f32], v: &[f32], row_steps: &[u32]) -> Result<()> {
        let mismatch = |lhs: &'static str, lhs_dim: usize, rhs_dim: usize| NnError::DimMismatch {
            layer: "LazyAdam",
            lhs,
            lhs_dim,
            rhs: "table size",
            rhs_dim,
        };
        if m.len() != self.m[t].len() {
            return Err(mismatch("restored m", m.len(), self.m[t].len()));
        }
        if v.len() != self.v[t].len() {
            return Err(mismatch("restored v", v.len(), self.v[t].len()));
        }
        if row_steps.len() != self.row_steps[t].len() {
            return Err(mismatch("restored row steps", row_steps.len(), self.row_steps[t].len()));
        }
        self.m[t].copy_from_slice(m);
        self.v[t].copy_from_slice(v);
        self.row_steps[t].copy_from_slice(row_steps);
        self.t = steps;
        Ok(())
    }

    /// Applies the last backward's sparse gradients to every table.
    pub fn step<B: HostBackend>(&mut self, emb: &mut EmbeddingCollection<B>) -> Result<()> {
        check_tables("LazyAdam", emb, self.row_steps.iter().map(Vec::len))?;
        self.t += 1;
        let LazyAdamConfig { lr, beta1: b1, beta2: b2, eps, bias_correction, weight_decay: wd, decay_scope } =
            self.config;
        for t in 0..self.m.len() {
            let dim = emb.tables()[t].dim;
            let mut table = std::mem::take(&mut emb.tables_mut()[t].value);
            let (m, v, steps) = (&mut self.m[t], &mut self.v[t], &mut self.row_steps[t]);
            let global = self.t;
            let update = |id: usize, g: &[f32]| {
                steps[id] += 1;
                let k = match bias_correction {
                    BiasCorrection::PerRow => steps[id] as i32,
                    BiasCorrection::GlobalStep => global as i32,
                };
                let bc1 = 1.0 - (b1 as f64).powi(k);
                let bc2_sqrt = (1.0 - (b2 as f64).powi(k)).sqrt() as f32;
                let step_size = (lr as f64 / bc1) as f32;
                for (j, &gj) in g.iter().enumerate() {
                    let e = id * dim + j;
                    let gj = gj + wd * table[e];
                    m[e] = b1 * m[e] + (1.0 - b1) * gj;
                    v[e] = b2 * v[e] + (1.0 - b2) * gj * gj;
                    table[e] -= step_size * m[e] / (v[e].sqrt() / bc2_sqrt + eps);
                }
            };
            if decay_scope == DecayScope::Table && wd != 0.0 {
                self.touched.for_every_row(emb, t, &mut self.merged, update);
            } else {
                for_each_row(emb, t, &mut self.merged, update);
            }
            emb.tables_mut()[t].value = table;
        }
        Ok(())
    }
}
