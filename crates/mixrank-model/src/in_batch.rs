//! The two-tower model's in-batch-negative softmax loss (`[model.two_tower.in_batch]`):
//! for one binary task, every positive row's user embedding is scored against every
//! item embedding of the batch, `S = U·Vᵀ/τ` (`[rows, rows]`), and the softmax
//! cross-entropy of its own item is added to the training objective
//! ([`mixrank_engine::Backend::softmax_xent_diag`]), weighted by the row's sample weight
//! and the section's `weight`. Its gradients w.r.t. the score embeddings,
//! `∂L/∂U = dS·V/τ` and `∂L/∂V = dSᵀ·U/τ`, join the pointwise score gradients before
//! the towers' backward. Training only. A retrieval loss: the scores it shapes are not
//! calibrated probabilities. In data-parallel training the negatives are the global
//! batch's rows, gathered from every rank ([`InBatchSoftmax::backward`]).

use crate::error::{Context, Result};
use crate::peers::BatchPeers;
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
    /// Data-parallel training: every rank's `u` and `v` rows, `[N, dim]` each.
    gathered: Option<(B::Buf, B::Buf)>,
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
            gathered: None,
        })
    }

    /// The loss's name and its value at the last training backward.
    pub fn loss(&self) -> Option<(&str, f32)> {
        self.last.map(|l| (self.name.as_str(), l))
    }

    /// The loss on `b`'s `rows` rows and its gradients `d_user`, `d_item` (their first
    /// `rows` rows) from the task's score embeddings `u`, `v` (`[rows, dim]`).
    ///
    /// Data-parallel training (`peers`): the loss is the global batch's. Every rank
    /// gathers every rank's `u`, `v` rows and row weights (in rank order: the global
    /// batch's rows), computes the whole batch's loss and gradients exactly as one
    /// process does, and keeps its own rows' gradients. The item gradient of a row sums
    /// over every query of the global batch, so it is the one-process gradient of that
    /// row; the ranks' tower backwards then add up, through the all-reduce, to one
    /// process's. Every rank computes the whole `[N, N]` scores: the loss's cost is not
    /// divided among the ranks (its exchange is `(2·dim + 1)` floats per row).
    pub fn backward(
        &mut self,
        ops: &B,
        b: &Batch,
        dim: usize,
        u: &B::Buf,
        v: &B::Buf,
        peers: Option<&dyn BatchPeers>,
    ) -> Result<()> {
        let n = b.rows;
        let at = || "in-batch softmax".to_string();
        let (label, mask) = (b.label(self.task), b.mask(self.task));
        for i in 0..n {
            self.host_weight[i] = if mask[i] != 0.0 && label[i] > 0.5 { b.weights[i] } else { 0.0 };
        }
        let Some(peers) = peers else {
            ops.write(&self.host_weight[..n], &mut self.row_weight).at(at)?;
            self.last = Some(self.loss_and_grads(ops, n, dim, u, v)?);
            return Ok(());
        };
        // This rank's rows: `u`, then `v`, then the row weights.
        let mut mine = vec![0f32; n * (2 * dim + 1)];
        if n > 0 {
            ops.read(u, &mut mine[..n * dim]).at(at)?;
            ops.read(v, &mut mine[n * dim..2 * n * dim]).at(at)?;
            mine[2 * n * dim..].copy_from_slice(&self.host_weight[..n]);
        }
        self.global(ops, dim, &mine, peers)?;
        Ok(())
    }

    /// A rank with no rows of this step: its (empty) part of the gather; it computes the
    /// global batch's loss too, so every rank logs the same loss.
    ///
    /// The gather is a collective inside the model's backward: it must not run beside
    /// another collective of the same rank (the two-tower model hands no parameters out
    /// early through `Model::backward_overlapped`, so no all-reduce thread runs then).
    pub fn backward_without_rows(&mut self, ops: &B, dim: usize, peers: &dyn BatchPeers) -> Result<()> {
        self.global(ops, dim, &[], peers)
    }

    /// The ranks' rows gathered, the global batch's loss, and this rank's rows of its
    /// gradients moved to the front of `d_user`, `d_item`.
    fn global(&mut self, ops: &B, dim: usize, mine: &[f32], peers: &dyn BatchPeers) -> Result<()> {
        let at = || "in-batch softmax across the ranks".to_string();
        let exchange = |message: String| crate::error::ModelError::Exchange { context: at(), message };
        let parts = peers.all_gather(mine).map_err(exchange)?;
        let width = 2 * dim + 1;
        if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() % width != 0) {
            return Err(exchange(format!("rank {r} sent {} values, not rows of {width}", p.len())));
        }
        let rows: Vec<usize> = parts.iter().map(|p| p.len() / width).collect();
        let (total, first) = (rows.iter().sum::<usize>(), rows[..peers.rank()].iter().sum::<usize>());
        let n = rows[peers.rank()];
        if total == 0 {
            self.last = None;
            return Ok(());
        }
        let (mut gu, mut gv, mut gw) =
            (Vec::with_capacity(total * dim), Vec::with_capacity(total * dim), Vec::with_capacity(total));
        for (p, &k) in parts.iter().zip(&rows) {
            gu.extend_from_slice(&p[..k * dim]);
            gv.extend_from_slice(&p[k * dim..2 * k * dim]);
            gw.extend_from_slice(&p[2 * k * dim..]);
        }
        self.reserve(ops, total, dim)?;
        let (mut u, mut v) = self.gathered.take().expect("reserved");
        ops.write(&gu, &mut u).at(at)?;
        ops.write(&gv, &mut v).at(at)?;
        ops.write(&gw, &mut self.row_weight).at(at)?;
        let loss = self.loss_and_grads(ops, total, dim, &u, &v);
        self.gathered = Some((u, v));
        self.last = Some(loss?);
        // Keep this rank's rows: `first..first + n` of the global gradients.
        let mut host = vec![0f32; total * dim];
        for d in [&mut self.d_user, &mut self.d_item] {
            ops.read(d, &mut host).at(at)?;
            ops.write(&host[first * dim..(first + n) * dim], d).at(at)?;
        }
        Ok(())
    }

    /// Buffers for a global batch of `total` rows (grown when the ranks' rows exceed
    /// one rank's `max_batch`).
    fn reserve(&mut self, ops: &B, total: usize, dim: usize) -> Result<()> {
        let at = || "in-batch softmax across the ranks".to_string();
        let fits = |b: &B::Buf, n: usize| ops.len(b) >= n;
        if !fits(&self.scores, total * total) {
            self.scores = ops.alloc(total * total).at(at)?;
            self.d_scores = ops.alloc(total * total).at(at)?;
        }
        if !fits(&self.row_weight, total) {
            self.row_weight = ops.alloc(total).at(at)?;
        }
        if !fits(&self.d_user, total * dim) {
            self.d_user = ops.alloc(total * dim).at(at)?;
            self.d_item = ops.alloc(total * dim).at(at)?;
        }
        match &self.gathered {
            Some((u, _)) if fits(u, total * dim) => {}
            _ => self.gathered = Some((ops.alloc(total * dim).at(at)?, ops.alloc(total * dim).at(at)?)),
        }
        Ok(())
    }

    /// The loss over `n` rows whose weights are in `row_weight`, and its gradients
    /// `d_user`, `d_item` (`[n, dim]`).
    fn loss_and_grads(&mut self, ops: &B, n: usize, dim: usize, u: &B::Buf, v: &B::Buf) -> Result<f32> {
        let at = || "in-batch softmax".to_string();
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
        Ok(loss)
    }
}
