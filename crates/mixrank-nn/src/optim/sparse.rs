//! Sparse optimizers for embedding tables: they read and write only the rows a batch
//! touched. The updates are backend ops ([`Backend::rowwise_adagrad_update`],
//! [`Backend::lazy_adam_update`]) on state in the backend's memory; features sharing a
//! table have their gradients merged first ([`Backend::merge_sparse_grads`]).

use mixrank_engine::{Backend, LazyAdamSpec, RowAdagradSpec, SparseGrad, SparseRows, TableShape};

use crate::embedding::EmbeddingCollection;
use crate::error::{Ctx, NnError, Result};

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

impl DecayScope {
    /// The rows an update with L2 penalty `weight_decay` walks.
    fn rows(self, weight_decay: f32) -> SparseRows {
        match self {
            DecayScope::Table if weight_decay != 0.0 => SparseRows::All,
            _ => SparseRows::Touched,
        }
    }
}

/// Merge buffers (two per table read by several features, each with room for all their
/// touched rows, so a step never allocates; empty for the other tables).
struct Merges<B: Backend> {
    out: Vec<SparseGrad<B>>,
    scratch: Vec<SparseGrad<B>>,
}

impl<B: Backend> Merges<B> {
    fn new(ops: &B, emb: &EmbeddingCollection<B>) -> Result<Self> {
        let buffers = || -> Result<Vec<SparseGrad<B>>> {
            (0..emb.tables().len())
                .map(|t| {
                    let feats: Vec<usize> = emb.features_of_table(t).collect();
                    let capacity =
                        if feats.len() > 1 { feats.iter().map(|&f| ops.ids_len(&emb.grad(f).ids)).sum() } else { 0 };
                    SparseGrad::new(ops, emb.tables()[t].dim, capacity).ctx("sparse optimizer")
                })
                .collect()
        };
        Ok(Merges { out: buffers()?, scratch: buffers()? })
    }
}

/// Calls `update(table, shape, len, ids, rows, values)` for every table with the gradient
/// of the last backward: a lone feature's in place, several features' folded pairwise
/// into the table's merge buffer (rows of one id summed in feature order).
fn for_each_table<B: Backend>(
    ops: &B,
    emb: &mut EmbeddingCollection<B>,
    merges: &mut Merges<B>,
    mut update: impl FnMut(usize, TableShape, usize, &B::Ids, &B::Buf, &mut B::Buf) -> Result<()>,
) -> Result<()> {
    for t in 0..merges.out.len() {
        let (table, grads) = emb.table_and_grads(t);
        let shape = TableShape { rows: table.rows, dim: table.dim };
        let (out, scratch) = (&mut merges.out[t], &mut merges.scratch[t]);
        let (mut count, mut lone) = (0, None);
        for g in grads {
            count += 1;
            let r = match count {
                1 => {
                    lone = Some(g);
                    Ok(())
                }
                2 => {
                    let first: &SparseGrad<B> = lone.take().expect("the first gradient");
                    let a = (first.len, &first.ids, &first.rows);
                    ops.merge_sparse_grads(shape.dim, a, (g.len, &g.ids, &g.rows), out)
                }
                _ => {
                    std::mem::swap(out, scratch);
                    let a = (scratch.len, &scratch.ids, &scratch.rows);
                    ops.merge_sparse_grads(shape.dim, a, (g.len, &g.ids, &g.rows), out)
                }
            };
            r.ctx("sparse optimizer")?;
        }
        match lone {
            Some(g) => update(t, shape, g.len, &g.ids, &g.rows, &mut table.value)?,
            None if count > 1 => update(t, shape, out.len, &out.ids, &out.rows, &mut table.value)?,
            None => {}
        }
    }
    Ok(())
}

/// The optimizer state (`rows` per table) was built for this collection.
fn check_tables<B: Backend>(
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
pub struct RowWiseAdagrad<B: Backend> {
    config: RowWiseAdagradConfig,
    /// Per table: `[rows]` accumulators.
    state: Vec<B::Buf>,
    rows: Vec<usize>,
    merges: Merges<B>,
}

impl<B: Backend> RowWiseAdagrad<B> {
    /// Sets the learning rate of later steps (a plateau reduction, for example).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    pub fn new(config: RowWiseAdagradConfig, ops: &B, emb: &EmbeddingCollection<B>) -> Result<Self> {
        let rows: Vec<usize> = emb.tables().iter().map(|t| t.rows).collect();
        let state = rows
            .iter()
            .map(|&r| ops.upload(&vec![config.initial_accumulator; r]).ctx("RowWiseAdagrad"))
            .collect::<Result<_>>()?;
        Ok(RowWiseAdagrad { config, state, rows, merges: Merges::new(ops, emb)? })
    }

    /// Accumulators of table `t`, read to the host (for checkpoints and tests).
    pub fn accumulators(&self, ops: &B, t: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.rows[t]];
        ops.read(&self.state[t], &mut out).ctx("RowWiseAdagrad")?;
        Ok(out)
    }

    /// Restores table `t`'s accumulators saved from [`RowWiseAdagrad::accumulators`].
    pub fn set_accumulators(&mut self, ops: &B, t: usize, values: &[f32]) -> Result<()> {
        if self.rows[t] != values.len() {
            return Err(NnError::DimMismatch {
                layer: "RowWiseAdagrad",
                lhs: "restored accumulators",
                lhs_dim: values.len(),
                rhs: "table rows",
                rhs_dim: self.rows[t],
            });
        }
        ops.write(values, &mut self.state[t]).ctx("RowWiseAdagrad")
    }

    /// Applies the last backward's sparse gradients to every table.
    pub fn step(&mut self, ops: &B, emb: &mut EmbeddingCollection<B>) -> Result<()> {
        check_tables("RowWiseAdagrad", emb, self.rows.iter().copied())?;
        let c = self.config;
        let spec = RowAdagradSpec {
            lr: c.lr,
            eps: c.eps,
            weight_decay: c.weight_decay,
            rows: c.decay_scope.rows(c.weight_decay),
        };
        let state = &mut self.state;
        for_each_table(ops, emb, &mut self.merges, |t, shape, len, ids, rows, table| {
            ops.rowwise_adagrad_update(&spec, shape, len, ids, rows, table, &mut state[t]).ctx("RowWiseAdagrad")
        })
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
pub struct LazyAdam<B: Backend> {
    config: LazyAdamConfig,
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    row_steps: Vec<B::Ids>,
    shapes: Vec<TableShape>,
    t: u64,
    merges: Merges<B>,
}

impl<B: Backend> LazyAdam<B> {
    /// Sets the learning rate of later steps (a plateau reduction, for example).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    pub fn new(config: LazyAdamConfig, ops: &B, emb: &EmbeddingCollection<B>) -> Result<Self> {
        let shapes: Vec<TableShape> = emb.tables().iter().map(|t| TableShape { rows: t.rows, dim: t.dim }).collect();
        let alloc = |s: &TableShape| ops.alloc(s.rows * s.dim).ctx("LazyAdam");
        Ok(LazyAdam {
            config,
            m: shapes.iter().map(alloc).collect::<Result<_>>()?,
            v: shapes.iter().map(alloc).collect::<Result<_>>()?,
            row_steps: shapes.iter().map(|s| ops.alloc_ids(s.rows).ctx("LazyAdam")).collect::<Result<_>>()?,
            shapes,
            t: 0,
            merges: Merges::new(ops, emb)?,
        })
    }

    /// `(m, v, per-row step counts)` of table `t`, read to the host.
    pub fn state(&self, ops: &B, t: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
        let s = self.shapes[t];
        let (mut m, mut v, mut steps) = (vec![0f32; s.rows * s.dim], vec![0f32; s.rows * s.dim], vec![0u32; s.rows]);
        ops.read(&self.m[t], &mut m).ctx("LazyAdam")?;
        ops.read(&self.v[t], &mut v).ctx("LazyAdam")?;
        ops.read_ids(&self.row_steps[t], &mut steps).ctx("LazyAdam")?;
        Ok((m, v, steps))
    }

    /// Global step count (used by [`BiasCorrection::GlobalStep`]).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Restores table `t`'s state saved from [`LazyAdam::state`] (and the global step
    /// count from [`LazyAdam::steps`]).
    pub fn set_state(&mut self, ops: &B, t: usize, steps: u64, m: &[f32], v: &[f32], row_steps: &[u32]) -> Result<()> {
        let s = self.shapes[t];
        let mismatch = |lhs: &'static str, lhs_dim: usize, rhs_dim: usize| NnError::DimMismatch {
            layer: "LazyAdam",
            lhs,
            lhs_dim,
            rhs: "table size",
            rhs_dim,
        };
        if m.len() != s.rows * s.dim {
            return Err(mismatch("restored m", m.len(), s.rows * s.dim));
        }
        if v.len() != s.rows * s.dim {
            return Err(mismatch("restored v", v.len(), s.rows * s.dim));
        }
        if row_steps.len() != s.rows {
            return Err(mismatch("restored row steps", row_steps.len(), s.rows));
        }
        ops.write(m, &mut self.m[t]).ctx("LazyAdam")?;
        ops.write(v, &mut self.v[t]).ctx("LazyAdam")?;
        ops.write_ids(row_steps, &mut self.row_steps[t]).ctx("LazyAdam")?;
        self.t = steps;
        Ok(())
    }

    /// Applies the last backward's sparse gradients to every table.
    pub fn step(&mut self, ops: &B, emb: &mut EmbeddingCollection<B>) -> Result<()> {
        check_tables("LazyAdam", emb, self.shapes.iter().map(|s| s.rows))?;
        self.t += 1;
        let c = self.config;
        let spec = LazyAdamSpec {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            global_step: match c.bias_correction {
                BiasCorrection::PerRow => None,
                BiasCorrection::GlobalStep => Some(self.t),
            },
            rows: c.decay_scope.rows(c.weight_decay),
        };
        let (m, v, steps) = (&mut self.m, &mut self.v, &mut self.row_steps);
        for_each_table(ops, emb, &mut self.merges, |t, shape, len, ids, rows, table| {
            ops.lazy_adam_update(&spec, shape, len, ids, rows, table, &mut m[t], &mut v[t], &mut steps[t])
                .ctx("LazyAdam")
        })
    }
}
