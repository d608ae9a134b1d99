//! The MMoE mixing op: a per-example convex combination of expert outputs.

use std::borrow::Borrow;

use mixrank_engine::{Backend, GemmSpec};

use crate::error::{batch_fits, positive, same_dim, Ctx, NnError, Result};

const LAYER: &str = "MoeMix";

/// `y[b, :] = Σ_e g[b, e] · X_e[b, :]`: mixes `n_experts` expert outputs with one task's
/// gate weights. No parameters.
///
/// Each expert output is its own `[batch, d]` buffer (heterogeneous experts are separate
/// layers, so that is how their outputs arrive; a fused `[batch, n_experts·d]` buffer
/// splits into those with `copy_cols`).
///
/// The engine has no row-broadcast multiply, so the column `g[:, e]` is broadcast to
/// `[batch, d]` by a `k = 1` GEMM with a ones row (`G_e = g[:, e] · 1ᵀ`), then
/// `y += G_e ⊙ X_e`. Backward: `dX_e = G_e ⊙ dy`, `dg[:, e] = (dy ⊙ X_e) · 1` (a GEMM
/// that writes straight into column `e` of `dg`).
///
/// # Shapes
/// - experts: `n_experts` buffers of `[batch, d]`
/// - gates: `[batch, n_experts]`
/// - output: `[batch, d]`
pub struct MoeMix<B: Backend> {
    n_experts: usize,
    d: usize,
    max_batch: usize,
    /// `[d]` ones (read as a `[1, d]` row or a `[d, 1]` column).
    ones: B::Buf,
    /// `G_e`, recomputed per expert.
    broadcast: B::Buf,
    prod: B::Buf,
    out: B::Buf,
    d_gates: B::Buf,
    d_experts: Vec<B::Buf>,
    batch: Option<usize>,
}

impl<B: Backend> MoeMix<B> {
    pub fn new(ops: &B, n_experts: usize, d: usize, max_batch: usize) -> Result<Self> {
        positive(LAYER, "n_experts", n_experts)?;
        positive(LAYER, "d", d)?;
        positive(LAYER, "max_batch", max_batch)?;
        let n = max_batch * d;
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        Ok(MoeMix {
            n_experts,
            d,
            max_batch,
            ones: ops.upload(&vec![1.0; d]).ctx(LAYER)?,
            broadcast: alloc(n)?,
            prod: alloc(n)?,
            out: alloc(n)?,
            d_gates: alloc(max_batch * n_experts)?,
            d_experts: (0..n_experts).map(|_| alloc(n)).collect::<Result<_>>()?,
            batch: None,
        })
    }

    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    pub fn d(&self) -> usize {
        self.d
    }

    /// `G_e = g[:, e] · 1ᵀ`: `[batch, 1] · [1, d]`.
    fn broadcast_gate(&mut self, ops: &B, gates: &B::Buf, e: usize, batch: usize) -> Result<()> {
        let spec = GemmSpec::nn(batch, self.d, 1).a_layout(e, self.n_experts).b_layout(0, self.d);
        ops.gemm(&spec, gates, &self.ones, &mut self.broadcast).ctx(LAYER)
    }

    fn check_experts<E>(&self, experts: &[E]) -> Result<()> {
        same_dim(LAYER, "expert outputs", experts.len(), "n_experts", self.n_experts)
    }

    /// Mixes the first `batch` rows; returns `[batch, d]`.
    /// `experts` holds buffers or references to them (`&[B::Buf]` or `&[&B::Buf]`).
    pub fn forward<E: Borrow<B::Buf>>(
        &mut self,
        ops: &B,
        experts: &[E],
        gates: &B::Buf,
        batch: usize,
    ) -> Result<&B::Buf> {
        self.check_experts(experts)?;
        batch_fits(LAYER, batch, self.max_batch)?;
        let n = batch * self.d;
        ops.fill(n, 0.0, &mut self.out).ctx(LAYER)?;
        for (e, x) in experts.iter().enumerate() {
            self.broadcast_gate(ops, gates, e, batch)?;
            ops.mul_acc(n, &self.broadcast, x.borrow(), &mut self.out).ctx(LAYER)?;
        }
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Computes `dX_e` (see [`MoeMix::d_expert`]) and `dg` (see [`MoeMix::d_gates`]), both
    /// overwritten, from the forward's inputs and `dy` (`[batch, d]`).
    pub fn backward<E: Borrow<B::Buf>>(
        &mut self,
        ops: &B,
        experts: &[E],
        gates: &B::Buf,
        d_output: &B::Buf,
    ) -> Result<()> {
        self.check_experts(experts)?;
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let n = batch * self.d;
        for (e, x) in experts.iter().enumerate() {
            self.broadcast_gate(ops, gates, e, batch)?;
            ops.mul(n, &self.broadcast, d_output, &mut self.d_experts[e]).ctx(LAYER)?;
            ops.mul(n, d_output, x.borrow(), &mut self.prod).ctx(LAYER)?;
            // dg[:, e] = prod · 1: [batch, d] · [d, 1] into column e of [batch, n_experts]
            let spec = GemmSpec::nn(batch, 1, self.d).b_layout(0, 1).c_layout(e, self.n_experts);
            ops.gemm(&spec, &self.prod, &self.ones, &mut self.d_gates).ctx(LAYER)?;
        }
        Ok(())
    }

    /// The last forward's output `[batch, d]`.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// Gradient w.r.t. expert `e`'s output, `[batch, d]`.
    pub fn d_expert(&self, e: usize) -> &B::Buf {
        &self.d_experts[e]
    }

    /// Gradient w.r.t. the gate weights, `[batch, n_experts]`.
    pub fn d_gates(&self) -> &B::Buf {
        &self.d_gates
    }
}
