//! The trainer's optimizers as one value: Adam/AdamW for the dense parameters and a
//! sparse optimizer for the embedding tables, with their state as named tensors for
//! checkpoints.
//!
//! State tensors (names in `optimizer.safetensors`):
//! - `adam.m.head.<param>`, `adam.v.head.<param>`: f32, the parameter's shape;
//! - row-wise Adagrad: `adagrad.acc.emb.tables.<t>`: f32 `[rows]`;
//! - lazy Adam: `lazy_adam.m.emb.tables.<t>`, `lazy_adam.v.emb.tables.<t>`: f32
//!   `[rows, dim]`, `lazy_adam.steps.emb.tables.<t>`: u32 `[rows]`.
//!
//! Step counts (Adam's `t`, lazy Adam's global step) go to the manifest
//! ([`OptimizerManifest`]).

use crate::error::{layer, Result};
use crate::tensors::{Tensor, TensorFile};
use mixrank_data::config::model::{DenseOptimizer, SparseDecayScope, SparseOptimizer, TrainSection};
use mixrank_engine::Backend;
use mixrank_model::Model;
use mixrank_nn::{
    Adam, AdamConfig, DecayScope, EmbeddingCollection, LazyAdam, LazyAdamConfig, RowWiseAdagrad, RowWiseAdagradConfig,
    WeightDecay,
};
use serde::{Deserialize, Serialize};

/// The sparse optimizer of the embedding tables.
pub enum Sparse<B: Backend> {
    Adagrad(RowWiseAdagrad<B>),
    Lazy(LazyAdam<B>),
}

/// Dense and sparse optimizers of one model.
pub struct Optimizers<B: Backend> {
    pub adam: Adam<B>,
    pub sparse: Option<Sparse<B>>,
}

/// Optimizer kinds and step counts, stored in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerManifest {
    pub dense: DenseOptimizer,
    /// Adam's step count `t` (bias correction).
    pub dense_steps: u64,
    /// `None` for a model without embedding tables.
    pub sparse: Option<SparseOptimizer>,
    /// Lazy Adam's global step count (0 for row-wise Adagrad).
    pub sparse_steps: u64,
}

impl<B: Backend> Sparse<B> {
    /// Restores the state of every table of `e` from `file` (the names
    /// [`Optimizers::sparse_tensors`] writes, the tables' shapes); `steps` is lazy Adam's
    /// step count.
    pub fn restore(
        &mut self,
        ops: &B,
        e: &EmbeddingCollection<B>,
        file: &TensorFile<'_>,
        steps: u64,
    ) -> std::result::Result<(), String> {
        for (ti, table) in e.tables().iter().enumerate() {
            match self {
                Sparse::Adagrad(o) => {
                    let acc = file.f32(&format!("adagrad.acc.emb.tables.{ti}"), &[table.rows])?;
                    o.set_accumulators(ops, ti, &acc).map_err(|e| e.to_string())?;
                }
                Sparse::Lazy(o) => {
                    let shape = [table.rows, table.dim];
                    let m = file.f32(&format!("lazy_adam.m.emb.tables.{ti}"), &shape)?;
                    let v = file.f32(&format!("lazy_adam.v.emb.tables.{ti}"), &shape)?;
                    let counts = file.u32(&format!("lazy_adam.steps.emb.tables.{ti}"), &[table.rows])?;
                    o.set_state(ops, ti, steps, &m, &v, &counts).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }
}

impl<B: Backend> Optimizers<B> {
    /// Fresh (zero) state for `model` as `[train]` configures it.
    pub fn new(t: &TrainSection, ops: &B, model: &mut dyn Model<B>) -> Result<Self> {
        let weight_decay = match (t.optimizer, t.weight_decay) {
            (_, 0.0) => WeightDecay::None,
            (DenseOptimizer::Adam, w) => WeightDecay::L2(w as f32),
            (DenseOptimizer::Adamw, w) => WeightDecay::Decoupled(w as f32),
        };
        let adam_cfg = AdamConfig { weight_decay, clip_norm: t.clip_norm().map(|c| c as f32), ..AdamConfig::default() };
        let adam = Adam::new(adam_cfg, ops, model).map_err(layer("Adam state"))?;
        let sparse = model.embeddings().map(|e| Self::new_sparse(t, ops, e)).transpose()?;
        Ok(Optimizers { adam, sparse })
    }

    /// Fresh (zero) sparse optimizer state for the tables of `e` as `[train]` configures
    /// it (the model's tables, or a rank's shard of them: `crate::sharded_tables`).
    pub fn new_sparse(t: &TrainSection, ops: &B, e: &EmbeddingCollection<B>) -> Result<Sparse<B>> {
        let decay_scope = match t.sparse_weight_decay_scope.unwrap_or_default() {
            SparseDecayScope::Touched => DecayScope::Touched,
            SparseDecayScope::Table => DecayScope::Table,
        };
        match t.sparse_optimizer {
            SparseOptimizer::RowwiseAdagrad => {
                let c = RowWiseAdagradConfig {
                    weight_decay: t.sparse_weight_decay as f32,
                    decay_scope,
                    ..RowWiseAdagradConfig::new(t.sparse_lr as f32)
                };
                RowWiseAdagrad::new(c, ops, e).map(Sparse::Adagrad)
            }
            SparseOptimizer::LazyAdam => {
                let c = LazyAdamConfig {
                    weight_decay: t.sparse_weight_decay as f32,
                    decay_scope,
                    ..LazyAdamConfig::new(t.sparse_lr as f32)
                };
                LazyAdam::new(c, ops, e).map(Sparse::Lazy)
            }
        }
        .map_err(layer("sparse optimizer state"))
    }

    /// One update of the dense parameters (learning rate `lr`) and of the embedding
    /// rows the last backward touched (learning rate `sparse_lr`).
    pub fn step(&mut self, ops: &B, model: &mut dyn Model<B>, lr: f32, sparse_lr: f32) -> Result<()> {
        self.adam.step(ops, model, lr).map_err(layer("Adam step"))?;
        if let Some(e) = model.embeddings_mut() {
            self.step_sparse(ops, e, sparse_lr)?;
        }
        Ok(())
    }

    /// The sparse optimizer's update of the tables of `e` from its sparse gradients
    /// (the model's, or a rank's shard with the gradients of its rows).
    pub fn step_sparse(&mut self, ops: &B, e: &mut EmbeddingCollection<B>, sparse_lr: f32) -> Result<()> {
        if let Some(s) = &mut self.sparse {
            match s {
                Sparse::Adagrad(o) => {
                    o.set_lr(sparse_lr);
                    o.step(ops, e)
                }
                Sparse::Lazy(o) => {
                    o.set_lr(sparse_lr);
                    o.step(ops, e)
                }
            }
            .map_err(layer("sparse optimizer step"))?;
        }
        Ok(())
    }

    /// The dense update alone (data-parallel training with sharded tables steps the
    /// shard's rows with [`Optimizers::step_sparse`]).
    pub fn step_dense(&mut self, ops: &B, model: &mut dyn Model<B>, lr: f32) -> Result<()> {
        self.adam.step(ops, model, lr).map_err(layer("Adam step"))
    }

    /// Kinds and step counts for the manifest.
    pub fn manifest(&self, t: &TrainSection) -> OptimizerManifest {
        OptimizerManifest {
            dense: t.optimizer,
            dense_steps: self.adam.steps(),
            sparse: self.sparse.as_ref().map(|s| match s {
                Sparse::Adagrad(_) => SparseOptimizer::RowwiseAdagrad,
                Sparse::Lazy(_) => SparseOptimizer::LazyAdam,
            }),
            sparse_steps: match &self.sparse {
                Some(Sparse::Lazy(o)) => o.steps(),
                _ => 0,
            },
        }
    }

    /// The state as named tensors (see the module docs).
    pub fn tensors(&self, ops: &B, model: &mut dyn Model<B>) -> Result<Vec<Tensor>> {
        let mut out = self.dense_tensors(ops, model)?;
        if let Some(e) = model.embeddings() {
            let rows: Vec<usize> = e.tables().iter().map(|t| t.rows).collect();
            out.extend(self.sparse_tensors(ops, e, &rows)?);
        }
        Ok(out)
    }

    /// Adam's state as named tensors.
    pub fn dense_tensors(&self, ops: &B, model: &mut dyn Model<B>) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        let mut i = 0;
        let mut err = None;
        model.params(&mut |name, p| {
            match self.adam.moments(ops, i) {
                Ok((m, v)) => {
                    out.push(Tensor::f32(format!("adam.m.head.{name}"), p.shape.clone(), &m));
                    out.push(Tensor::f32(format!("adam.v.head.{name}"), p.shape.clone(), &v));
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
            i += 1;
        });
        match err {
            Some(e) => Err(layer("reading Adam state")(e)),
            None => Ok(out),
        }
    }

    /// The sparse optimizer's state for the first `rows[t]` rows of each table of `e`
    /// (the tables this optimizer steps: the model's, or a rank's shard) as named
    /// tensors; none without a sparse optimizer.
    pub fn sparse_tensors(&self, ops: &B, e: &EmbeddingCollection<B>, rows: &[usize]) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        let Some(s) = &self.sparse else { return Ok(out) };
        for (t, (table, &r)) in e.tables().iter().zip(rows).enumerate() {
            match s {
                Sparse::Adagrad(o) => {
                    let acc = o.accumulators(ops, t).map_err(layer("reading row-wise Adagrad state"))?;
                    out.push(Tensor::f32(format!("adagrad.acc.emb.tables.{t}"), vec![r], &acc[..r]))
                }
                Sparse::Lazy(o) => {
                    let (m, v, steps) = o.state(ops, t).map_err(layer("reading lazy Adam state"))?;
                    let (shape, n) = (vec![r, table.dim], r * table.dim);
                    out.push(Tensor::f32(format!("lazy_adam.m.emb.tables.{t}"), shape.clone(), &m[..n]));
                    out.push(Tensor::f32(format!("lazy_adam.v.emb.tables.{t}"), shape, &v[..n]));
                    out.push(Tensor::u32(format!("lazy_adam.steps.emb.tables.{t}"), vec![r], &steps[..r]));
                }
            }
        }
        Ok(out)
    }

    /// Restores state written by [`Optimizers::tensors`] for the same model; every
    /// tensor must be present with the model's shapes and the kinds must match.
    pub fn restore(
        &mut self,
        ops: &B,
        model: &mut dyn Model<B>,
        file: &TensorFile<'_>,
        om: &OptimizerManifest,
        t: &TrainSection,
    ) -> std::result::Result<(), String> {
        if om.dense != t.optimizer {
            return Err(format!("dense optimizer {:?} in the checkpoint, {:?} in the config", om.dense, t.optimizer));
        }
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        let mut err = None;
        model.params(&mut |name, p| {
            let got = file
                .f32(&format!("adam.m.head.{name}"), &p.shape)
                .and_then(|m| Ok((m, file.f32(&format!("adam.v.head.{name}"), &p.shape)?)));
            match got {
                Ok((m, v)) => {
                    ms.push(m);
                    vs.push(v);
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        self.adam.set_state(ops, om.dense_steps, ms, vs).map_err(|e| e.to_string())?;
        let (Some(s), Some(e)) = (&mut self.sparse, model.embeddings()) else { return Ok(()) };
        let kind = match s {
            Sparse::Adagrad(_) => SparseOptimizer::RowwiseAdagrad,
            Sparse::Lazy(_) => SparseOptimizer::LazyAdam,
        };
        if om.sparse != Some(kind) {
            return Err(format!("sparse optimizer {:?} in the checkpoint, {kind:?} in the config", om.sparse));
        }
        s.restore(ops, e, file, om.sparse_steps)
    }
}
