//! The two-tower model's in-batch-negative softmax loss (`[model.two_tower.in_batch]`):
//! for one binary task, every positive row's user embedding is scored against every
//! item embedding of the batch, `S = U·Vᵀ/τ` (`[rows, rows]`), and the softmax
//! cross-entropy of its own item is added to the training objective
//! ([`mixrank_engine::Backend::softmax_xent_diag`]), weighted by the row's sample weight
//! and the section's `weight`. Its gradients w.r.t. the score embeddings,
//! `∂L/∂U = dS·V/τ` and `∂L/∂V = dSᵀ·U/τ`, join the pointwise score gradients before
//! the towers' backward. Training only. A retrieval loss: the scores it shapes are not
//! calibrated probabilities.

use crate::error::{Context, Result};
use mixrank_data::config::model::InBatchSection;
use mixrank_data::{Batch, ExperimentConfig};
use mixrank_engine::{Backend, GemmSpec, GradWrite, Transpose};

pub(crate) struct InBatchSoftmax<B: Backend> {
    /// The task whose positives are the queries.
    pub task: usize,
    name: String,
    inv_temperature: f32,
    weight: f32,
    /// `S = U·Vᵀ/τ` and its gradient, `[max_batch, max_batch]`.
    scores: B::Buf,
    d_scores: B::Buf,
    /// Row weights (sample weight where the row is a positive of `task`, else 0),
    /// `[max_batch]`, and their host staging.
    row_weight: B::Buf,
    host_weight: Vec<f32>,
    /// The loss's gradients w.r.t. the user and item score embeddings, `[max_batch, dim]`.
    pub d_user: B::Buf,
    pub d_item: B::Buf,
    /// The loss of the last backward in training.
    last: Option<f32>,
}

impl<B: Backend> InBatchSoftmax<B> {
    pub fn new(cfg: &ExperimentConfig, s: &InBatchSection, ops: &B, max_batch: usize, dim: usize) -> Result<Self> {
        let at = || "model.two_tower.in_batch".to_string();
        let task = cfg.tasks.iter().position(|t| t.name == s.task).ok_or_else(|| {
            crate::error::ModelError::Unsupported { key: at(), message: format!("no task named `{}`", s.task) }
        })?;
        let buf = |n: usize| ops.alloc(n).at(at);
        Ok(InBatchSoftmax {
            task,
            name: format!("in_batch_softmax:{}", s.task),
            inv_temperature: 1.0 / s.temperature,
            weight: s.weight,
            scores: buf(max_batch * max_batch)?,
            d_scores: buf(max_batch * max_batch)?,
            row_weight: buf(max_batch)?,
            host_weight: vec![0.0; max_batch],
            d_user: buf(max_batch * dim)?,
            d_item: buf(max_batch * dim)?,
            last: None,
        })
    }

    /// The loss's name and its value at the last training backward.
    pub fn loss(&self) -> Option<(&str, f32)> {
        self.last.map(|l| (self.name.as_str(), l))
    }

    /// The loss on `b`'s `rows` rows and its gradients `d_user`, `d_item` from the
    /// task's score embeddings `u`, `v` (`[rows, dim]`).
    pub fn backward(&mut self, ops: &B, b: &Batch, dim: usize, u: &B::Buf, v: &B::Buf) -> Result<()> {
        let n = b.rows;
        let at = || "in-batch softmax".to_string();
        let (label, mask) = (b.label(self.task), b.mask(self.task));
        for i in 0..n {
            self.host_weight[i] = if mask[i] != 0.0 && label[i] > 0.5 { b.weights[i] } else { 0.0 };
        }
        ops.write(&self.host_weight[..n], &mut self.row_weight).at(at)?;
        let inv = self.inv_temperature;
        ops.gemm(&GemmSpec::new(Transpose::No, Transpose::Yes, n, n, dim).alpha(inv), u, v, &mut self.scores).at(at)?;
        let write = GradWrite { scale: self.weight, accumulate: false };
        let loss = ops.softmax_xent_diag(n, &self.scores, &self.row_weight, &mut self.d_scores, write).at(at)?;
        ops.gemm(&GemmSpec::nn(n, dim, n).alpha(inv), &self.d_scores, v, &mut self.d_user).at(at)?;
        ops.gemm(
            &GemmSpec::new(Transpose::Yes, Transpose::No, n, dim, n).alpha(inv),
            &self.d_scores,
            u,
            &mut self.d_item,
        )
        .at(at)?;
        self.last = Some(loss);
        Ok(())
    }
}
