//! DCNv2's cross network.

use mixrank_engine::{Activation, Backend, ColCopy, GemmSpec, Shape, Transpose};
use rand::Rng;

use crate::dense::{ReducedGemm, ReducedSite, WeightLayout};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Axis, Init, Param, ParamVisitor, Parameters};

const LAYER: &str = "CrossNetV2";

/// Parameterisation of each cross layer's `d × d` matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossRank {
    /// A full `W_l ∈ R^{d×d}` (DCN-V2 "DCN-M" without the low-rank trick).
    Full,
    /// `W_l = U_l V_lᵀ` with `U_l, V_l ∈ R^{d×rank}`: `2·d·rank` instead of `d²`
    /// parameters and FLOPs; the paper finds `rank ≈ d/4` loses little.
    LowRank { rank: usize },
}

/// Configuration of a [`CrossNetV2`].
#[derive(Debug, Clone, PartialEq)]
pub struct CrossNetV2Config {
    /// Input (and output) width.
    pub d: usize,
    /// Number of cross layers.
    pub layers: usize,
    /// Full or low-rank cross matrices. Default full.
    pub rank: CrossRank,
    /// Initialisation of `W` (or `U`, `V`). Default Xavier uniform.
    pub init: Init,
}

impl CrossNetV2Config {
    pub fn new(d: usize, layers: usize) -> Self {
        CrossNetV2Config { d, layers, rank: CrossRank::Full, init: Init::XavierUniform }
    }

    pub fn with_rank(mut self, rank: CrossRank) -> Self {
        self.rank = rank;
        self
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<CrossNetV2<B>> {
        positive(LAYER, "d", self.d)?;
        positive(LAYER, "layers", self.layers)?;
        positive(LAYER, "max_batch", max_batch)?;
        let d = self.d;
        if let CrossRank::LowRank { rank } = self.rank {
            positive(LAYER, "rank", rank)?;
            if rank > d {
                return Err(NnError::InvalidConfig {
                    layer: LAYER,
                    field: "rank",
                    reason: format!("rank {rank} exceeds the width d = {d}"),
                });
            }
        }
        let n = max_batch * d;
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        let mut layers = Vec::with_capacity(self.layers);
        for _ in 0..self.layers {
            let weights = match self.rank {
                CrossRank::Full => CrossWeights::Full {
                    w: Param::new(ops, &self.init.sample(d, d, rng), &[d, d], &[Axis::In, Axis::In], true, LAYER)?,
                    reduced: None,
                },
                CrossRank::LowRank { rank } => CrossWeights::LowRank {
                    v: Param::new(
                        ops,
                        &self.init.sample(d, rank, rng),
                        &[d, rank],
                        &[Axis::In, Axis::Own],
                        true,
                        LAYER,
                    )?,
                    u: Param::new(
                        ops,
                        &self.init.sample(d, rank, rng),
                        &[d, rank],
                        &[Axis::In, Axis::Own],
                        true,
                        LAYER,
                    )?,
                    t: alloc(max_batch * rank)?,
                    dt: alloc(max_batch * rank)?,
                },
            };
            layers.push(CrossLayer {
                weights,
                b: Param::new(ops, &vec![0.0; d], &[d], &[Axis::In], false, LAYER)?,
                u_out: alloc(n)?,
                x_next: alloc(n)?,
            });
        }
        Ok(CrossNetV2 {
            config: self.clone(),
            max_batch,
            layers,
            du: alloc(n)?,
            g: [alloc(n)?, alloc(n)?],
            d_input: alloc(n)?,
            db_tmp: alloc(d)?,
            batch: None,
        })
    }
}

enum CrossWeights<B: Backend> {
    /// `w`: `[d, d]`, applied as `x · w`; `reduced`: the same GEMM in reduced precision
    /// at inference, when set through [`Layer::visit_reduced`].
    Full { w: Param<B>, reduced: Option<Box<dyn ReducedGemm<B>>> },
    /// `v`, `u`: `[d, rank]`; `W x = U (Vᵀ x)`, i.e. row-wise `(x · V) · Uᵀ`.
    /// `t = x · V` is kept for `dU`.
    LowRank { v: Param<B>, u: Param<B>, t: B::Buf, dt: B::Buf },
}

struct CrossLayer<B: Backend> {
    weights: CrossWeights<B>,
    b: Param<B>,
    /// `W x_l + b`, kept for `d x₀`.
    u_out: B::Buf,
    /// `x_{l+1}`.
    x_next: B::Buf,
}

/// DCN-V2 cross network: `x_{l+1} = x₀ ⊙ (W_l x_l + b_l) + x_l`, `l = 0 … L-1`.
///
/// Backward, with `g = ∂L/∂x_{l+1}` and `u_l = W_l x_l + b_l`:
/// `du = g ⊙ x₀`, `∂x₀ += g ⊙ u_l`, `db_l += Σ_rows du`, `dW_l += x_lᵀ du` (row form),
/// `∂x_l = g + du · W_lᵀ`; the input gradient is `∂x₀` from every layer plus the
/// residual path's `∂x_0`. Low rank: `dt = du · U`, `dU += duᵀ · t`, `dV += x_lᵀ · dt`,
/// `∂x_l = g + dt · Vᵀ`.
///
/// # Shapes
/// - input, output: `[batch, d]`
/// - full: `layers.{l}.w`: `[d, d]`; low rank: `layers.{l}.u`, `layers.{l}.v`:
///   `[d, rank]`; `layers.{l}.b`: `[d]`
pub struct CrossNetV2<B: Backend> {
    config: CrossNetV2Config,
    max_batch: usize,
    layers: Vec<CrossLayer<B>>,
    du: B::Buf,
    /// Ping-pong buffers for `∂x_l`.
    g: [B::Buf; 2],
    d_input: B::Buf,
    db_tmp: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> CrossNetV2<B> {
    pub fn config(&self) -> &CrossNetV2Config {
        &self.config
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        &self.layers.last().expect("init requires layers >= 1").x_next
    }

    /// The last backward's input gradient.
    pub fn d_input(&self) -> &B::Buf {
        &self.d_input
    }
}

impl<B: Backend> Parameters<B> for CrossNetV2<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            v.scope_indexed("layers", i, |v| {
                match &mut l.weights {
                    CrossWeights::Full { w, .. } => v.param("w", w),
                    CrossWeights::LowRank { v: vv, u, .. } => {
                        v.param("u", u);
                        v.param("v", vv);
                    }
                }
                v.param("b", &mut l.b);
            });
        }
    }
}

impl<B: Backend> Layer<B> for CrossNetV2<B> {
    fn output_parts(&self) -> Vec<crate::Part> {
        vec![crate::Part::In]
    }

    fn d_in(&self) -> usize {
        self.config.d
    }

    fn d_out(&self) -> usize {
        self.config.d
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The full-rank cross matrices (`u = x_l · W_l`); low-rank layers stay f32.
    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        let (d, max_batch) = (self.config.d, self.max_batch);
        for l in &mut self.layers {
            if let CrossWeights::Full { w, reduced } = &mut l.weights {
                f(ReducedSite { k: d, n: d, max_batch, weight: &w.value, layout: WeightLayout::Dense, slot: reduced });
            }
        }
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let d = self.config.d;
        let n = batch * d;
        for i in 0..self.layers.len() {
            let (before, rest) = self.layers.split_at_mut(i);
            let l = &mut rest[0];
            let x = if i == 0 { input } else { &before[i - 1].x_next };
            match &mut l.weights {
                CrossWeights::Full { w, reduced } => match reduced {
                    Some(r) => r.gemm(batch, x, &mut l.u_out).ctx(LAYER)?,
                    None => ops.gemm(&GemmSpec::nn(batch, d, d), x, &w.value, &mut l.u_out).ctx(LAYER)?,
                },
                CrossWeights::LowRank { v, u, t, .. } => {
                    let r = v.shape[1];
                    // t = x · V: [batch, rank]
                    ops.gemm(&GemmSpec::nn(batch, r, d), x, &v.value, t).ctx(LAYER)?;
                    // u_out = t · Uᵀ: [batch, d]
                    let spec = GemmSpec::new(Transpose::No, Transpose::Yes, batch, d, r);
                    ops.gemm(&spec, t, &u.value, &mut l.u_out).ctx(LAYER)?;
                }
            }
            let shape = Shape::new(batch, d);
            ops.bias_act_inplace(Activation::Identity, shape, Some(&l.b.value), &mut l.u_out).ctx(LAYER)?;
            // x_{l+1} = x₀ ⊙ u + x_l
            ops.mul(n, input, &l.u_out, &mut l.x_next).ctx(LAYER)?;
            ops.axpy(n, 1.0, x, &mut l.x_next).ctx(LAYER)?;
        }
        self.batch = Some(batch);
        Ok(self.output())
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        if self.layers.iter().any(|l| matches!(l.weights, CrossWeights::Full { reduced: Some(_), .. })) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "reduced",
                reason: "reduced precision is for inference only; backward needs f32".into(),
            });
        }
        let d = self.config.d;
        let n = batch * d;
        let shape = Shape::new(batch, d);
        ops.fill(n, 0.0, &mut self.d_input).ctx(LAYER)?;
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        let [g0, g1] = &mut self.g;
        let n_layers = self.layers.len();
        for i in (0..n_layers).rev() {
            let (before, rest) = self.layers.split_at_mut(i);
            let l = &mut rest[0];
            let x = if i == 0 { input } else { &before[i - 1].x_next };
            // g = ∂x_{l+1}: the caller's for the last layer, then alternating buffers.
            let steps_done = n_layers - 1 - i;
            let (g, g_next): (&B::Buf, &mut B::Buf) = match (steps_done, steps_done % 2) {
                (0, _) => (d_output, &mut *g0),
                (_, 1) => (&*g0, &mut *g1),
                _ => (&*g1, &mut *g0),
            };
            ops.mul(n, g, input, &mut self.du).ctx(LAYER)?;
            ops.mul_acc(n, g, &l.u_out, &mut self.d_input).ctx(LAYER)?;
            ops.sum_cols(shape, &self.du, &mut self.db_tmp).ctx(LAYER)?;
            ops.axpy(d, 1.0, &self.db_tmp, &mut l.b.grad).ctx(LAYER)?;
            ops.copy_cols(&copy, g, g_next).ctx(LAYER)?;
            match &mut l.weights {
                CrossWeights::Full { w, .. } => {
                    let dw = GemmSpec::new(Transpose::Yes, Transpose::No, d, d, batch).beta(1.0);
                    ops.gemm(&dw, x, &self.du, &mut w.grad).ctx(LAYER)?;
                    let dx = GemmSpec::new(Transpose::No, Transpose::Yes, batch, d, d).beta(1.0);
                    ops.gemm(&dx, &self.du, &w.value, g_next).ctx(LAYER)?;
                }
                CrossWeights::LowRank { v, u, t, dt } => {
                    let r = v.shape[1];
                    // dU += duᵀ · t: [d, batch] · [batch, rank]
                    let du_spec = GemmSpec::new(Transpose::Yes, Transpose::No, d, r, batch).beta(1.0);
                    ops.gemm(&du_spec, &self.du, t, &mut u.grad).ctx(LAYER)?;
                    // dt = du · U: [batch, d] · [d, rank]
                    ops.gemm(&GemmSpec::nn(batch, r, d), &self.du, &u.value, dt).ctx(LAYER)?;
                    // dV += xᵀ · dt: [d, batch] · [batch, rank]
                    let dv_spec = GemmSpec::new(Transpose::Yes, Transpose::No, d, r, batch).beta(1.0);
                    ops.gemm(&dv_spec, x, dt, &mut v.grad).ctx(LAYER)?;
                    // ∂x_l += dt · Vᵀ: [batch, rank] · [rank, d]
                    let dx = GemmSpec::new(Transpose::No, Transpose::Yes, batch, d, r).beta(1.0);
                    ops.gemm(&dx, dt, &v.value, g_next).ctx(LAYER)?;
                }
            }
        }
        // Residual path: x₀ is also x_l for l = 0.
        let last = if n_layers % 2 == 1 { &*g0 } else { &*g1 };
        ops.axpy(n, 1.0, last, &mut self.d_input).ctx(LAYER)?;
        Ok(&self.d_input)
    }
}
