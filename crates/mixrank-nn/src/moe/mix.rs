//! The MMoE mixing op: a per-example convex combination of expert outputs.

use std::borrow::Borrow;

use mixrank_engine::{Backend, BlockShape, ColCopy};

use crate::error::{batch_fits, positive, same_dim, Ctx, NnError, Result};

const LAYER: &str = "MoeMix";

/// `y[b, :] = Σ_e g[b, e] · X_e[b, :]`: mixes `n_experts` expert outputs with one task's
/// gate weights. No parameters.
///
/// Each expert output is its own `[batch, d]` buffer (heterogeneous experts are separate
/// layers, so that is how their outputs arrive). They are copied side by side into one
/// `[batch, n_experts·d]` buffer, read per row as an `[n_experts, d]` matrix, and the
/// mixture is the per-row product with the gate row: `y[b] = g[b] · X[b]`
/// ([`Backend::block_dot_t`]). Backward: `dX[b] = g[b]ᵀ · dy[b]` (per-row outer product,
/// [`Backend::block_outer`], then split back per expert) and `dg[b, e] = X_e[b] · dy[b]`
/// (per-row block dot products, [`Backend::block_dot`]). Three row-wise ops and
/// `2·n_experts` column copies per forward and backward, where a broadcast through
/// `k = 1` GEMMs against a vector of ones took `2·n_experts` GEMMs.
///
/// # Shapes
/// - experts: `n_experts` buffers of `[batch, d]`
/// - gates: `[batch, n_experts]`
/// - output: `[batch, d]`
pub struct MoeMix<B: Backend> {
    n_experts: usize,
    d: usize,
    max_batch: usize,
    /// The experts' outputs side by side, `[batch, n_experts·d]` (kept for backward).
    fused: B::Buf,
    /// Their gradient, `[batch, n_experts·d]`.
    d_fused: B::Buf,
    out: B::Buf,
    d_gates: B::Buf,
    d_experts: Vec<B::Buf>,
    batch: Option<usize>,
}

impl<B: Backend> MoeMix<B> {
    pub fn new(ops: &B, n_experts: usize, d: usize, max_batch: usize) -> Result<Self> {
        Self::build(ops, n_experts, d, max_batch, true)
    }

    /// A mixture used only through [`MoeMix::forward_fused`] / [`MoeMix::backward_fused`]:
    /// no buffer of its own for the experts' outputs or their per-expert gradients.
    pub fn shared(ops: &B, n_experts: usize, d: usize, max_batch: usize) -> Result<Self> {
        Self::build(ops, n_experts, d, max_batch, false)
    }

    /// `own_copies`: the buffers [`MoeMix::forward`] copies the experts' outputs into and
    /// [`MoeMix::backward`] splits their gradient into.
    fn build(ops: &B, n_experts: usize, d: usize, max_batch: usize, own_copies: bool) -> Result<Self> {
        positive(LAYER, "n_experts", n_experts)?;
        positive(LAYER, "d", d)?;
        positive(LAYER, "max_batch", max_batch)?;
        let n = max_batch * d;
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        let per_expert = if own_copies { n_experts } else { 0 };
        Ok(MoeMix {
            n_experts,
            d,
            max_batch,
            fused: alloc(n * per_expert)?,
            d_fused: alloc(n * n_experts)?,
            out: alloc(n)?,
            d_gates: alloc(max_batch * n_experts)?,
            d_experts: (0..per_expert).map(|_| alloc(n)).collect::<Result<_>>()?,
            batch: None,
        })
    }

    pub fn n_experts(&self) -> usize {
        self.n_experts
    }

    pub fn d(&self) -> usize {
        self.d
    }

    fn shape(&self, batch: usize) -> BlockShape {
        BlockShape { rows: batch, blocks: self.n_experts, width: self.d }
    }

    /// Column copy of expert `e`'s `[batch, d]` block to or from the fused buffer.
    fn block(&self, batch: usize, e: usize, into_fused: bool) -> ColCopy {
        let (d, wide) = (self.d, self.n_experts * self.d);
        let (src_ld, src_col, dst_ld, dst_col) = if into_fused { (d, 0, wide, e * d) } else { (wide, e * d, d, 0) };
        ColCopy { rows: batch, cols: d, src_ld, src_col, dst_ld, dst_col, accumulate: false }
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
        for (e, x) in experts.iter().enumerate() {
            ops.copy_cols(&self.block(batch, e, true), x.borrow(), &mut self.fused).ctx(LAYER)?;
        }
        ops.block_dot_t(self.shape(batch), gates, &self.fused, &mut self.out).ctx(LAYER)?;
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Computes `dX_e` (see [`MoeMix::d_expert`]) and `dg` (see [`MoeMix::d_gates`]), both
    /// overwritten, from the forward's inputs and `dy` (`[batch, d]`). The expert outputs
    /// are the forward's (kept side by side); `experts` is checked for its count only.
    pub fn backward<E: Borrow<B::Buf>>(
        &mut self,
        ops: &B,
        experts: &[E],
        gates: &B::Buf,
        d_output: &B::Buf,
    ) -> Result<()> {
        self.check_experts(experts)?;
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let shape = self.shape(batch);
        ops.block_outer(shape, gates, d_output, &mut self.d_fused).ctx(LAYER)?;
        for e in 0..self.n_experts {
            ops.copy_cols(&self.block(batch, e, false), &self.d_fused, &mut self.d_experts[e]).ctx(LAYER)?;
        }
        ops.block_dot(shape, &self.fused, d_output, &mut self.d_gates, false).ctx(LAYER)
    }

    /// [`MoeMix::forward`] over expert outputs already side by side in `fused`
    /// (`[batch, n_experts·d]`, expert `e` in columns `e·d ..`): no copies. Several
    /// mixtures of the same experts (MMoE) share one such buffer; backward with
    /// [`MoeMix::backward_fused`] and the same buffer.
    pub fn forward_fused(&mut self, ops: &B, fused: &B::Buf, gates: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        ops.block_dot_t(self.shape(batch), gates, fused, &mut self.out).ctx(LAYER)?;
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Backward of [`MoeMix::forward_fused`]: the experts' gradient `g[b]ᵀ · dy[b]`
    /// written into `d_fused` (`[batch, n_experts·d]`, the layout of `fused`), or added
    /// to it with `accumulate`, and `dg` (see [`MoeMix::d_gates`]).
    pub fn backward_fused(
        &mut self,
        ops: &B,
        fused: &B::Buf,
        gates: &B::Buf,
        d_output: &B::Buf,
        d_fused: &mut B::Buf,
        accumulate: bool,
    ) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let shape = self.shape(batch);
        if accumulate {
            ops.block_outer(shape, gates, d_output, &mut self.d_fused).ctx(LAYER)?;
            ops.axpy(batch * self.n_experts * self.d, 1.0, &self.d_fused, d_fused).ctx(LAYER)?;
        } else {
            ops.block_outer(shape, gates, d_output, d_fused).ctx(LAYER)?;
        }
        ops.block_dot(shape, fused, d_output, &mut self.d_gates, false).ctx(LAYER)
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
