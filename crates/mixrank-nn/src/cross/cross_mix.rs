//! DCN-V2's mixture of low-rank cross experts ("DCN-Mix").

use mixrank_engine::{Activation, Backend, ColCopy, Shape};
use rand::Rng;

use crate::dense::{Linear, LinearConfig};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::moe::{Gate, GateConfig, MoeMix};
use crate::param::{Axis, Init, Param, ParamVisitor, Parameters, Part};

const LAYER: &str = "CrossNetMix";

/// Configuration of a [`CrossNetMix`].
#[derive(Debug, Clone, PartialEq)]
pub struct CrossNetMixConfig {
    /// Input (and output) width.
    pub d: usize,
    /// Number of cross layers.
    pub layers: usize,
    /// Rank of each expert's `U C Vᵀ` factorisation.
    pub rank: usize,
    /// Experts per layer (1: no gate, a single low-rank expert with the inner map).
    pub experts: usize,
    /// Nonlinearity `g` inside each expert. Default ReLU (torchrec's).
    pub activation: Activation,
    /// Weight initialisation. Default Xavier uniform.
    pub init: Init,
}

impl CrossNetMixConfig {
    pub fn new(d: usize, layers: usize, rank: usize, experts: usize) -> Self {
        CrossNetMixConfig { d, layers, rank, experts, activation: Activation::Relu, init: Init::XavierUniform }
    }

    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<CrossNetMix<B>> {
        for (field, v) in [("d", self.d), ("layers", self.layers), ("rank", self.rank), ("experts", self.experts)] {
            positive(LAYER, field, v)?;
        }
        if self.rank > self.d {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "rank",
                reason: format!("rank {} exceeds the width d = {}", self.rank, self.d),
            });
        }
        let (d, r, n) = (self.d, self.rank, max_batch * self.d);
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        let mut layers = Vec::with_capacity(self.layers);
        for _ in 0..self.layers {
            let mut experts = Vec::with_capacity(self.experts);
            for _ in 0..self.experts {
                let lin =
                    |i, o, act| LinearConfig::new(i, o).with_bias(false).with_activation(act).with_init(self.init);
                experts.push(Expert {
                    v: lin(d, r, self.activation).init(ops, max_batch, rng)?,
                    c: lin(r, r, self.activation).init(ops, max_batch, rng)?,
                    u: lin(r, d, Activation::Identity).init(ops, max_batch, rng)?,
                    ub: alloc(n)?,
                    de: alloc(n)?,
                });
            }
            let gate = if self.experts > 1 {
                Some(GateConfig::new(d, self.experts).with_init(self.init).init(ops, max_batch, rng)?)
            } else {
                None
            };
            let mix = if self.experts > 1 { Some(MoeMix::new(ops, self.experts, d, max_batch)?) } else { None };
            layers.push(MixLayer {
                outs: (0..self.experts).map(|_| alloc(n)).collect::<Result<_>>()?,
                experts,
                gate,
                mix,
                b: Param::new(ops, &vec![0.0; d], &[d], &[Axis::In], false, LAYER)?,
                x_next: alloc(n)?,
            });
        }
        Ok(CrossNetMix {
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

/// One low-rank expert: `E(x) = x₀ ⊙ (U · g(C · g(Vᵀ x)) + b)`, with `V`, `C`, `U`
/// stored as bias-free [`Linear`] maps (`[d, r]`, `[r, r]`, `[r, d]`).
struct Expert<B: Backend> {
    v: Linear<B>,
    c: Linear<B>,
    u: Linear<B>,
    /// `U·g(C·g(Vᵀx)) + b`, kept for `∂x₀`.
    ub: B::Buf,
    /// `∂E` (from the mix, or the layer's output gradient with one expert).
    de: B::Buf,
}

struct MixLayer<B: Backend> {
    experts: Vec<Expert<B>>,
    /// `E_i(x_l)` per expert (a separate list so the mix can take it as a slice).
    outs: Vec<B::Buf>,
    /// Gate over experts (absent with one expert).
    gate: Option<Gate<B>>,
    mix: Option<MoeMix<B>>,
    /// `b_l`, shared by the layer's experts.
    b: Param<B>,
    x_next: B::Buf,
}

/// DCN-V2's mixture of low-rank experts (Wang et al. 2021, eq. 2; torchrec's
/// `LowRankMixtureCrossNet`):
///
/// `x_{l+1} = Σ_i G_i(x_l) · x₀ ⊙ (U_i g(C_i g(V_iᵀ x_l)) + b_l) + x_l`,
/// `G(x_l) = softmax(x_l W_g + b_g)` over the experts ([`Gate`]; torchrec's gates have no
/// bias, here it is a learned per-expert prior). Backward chains the mix
/// ([`MoeMix`]), the gate, and each expert's three maps; `∂x₀` collects
/// `Σ_{l,i} ∂E ⊙ (U… + b)` plus the residual path.
///
/// # Shapes
/// - input, output: `[batch, d]`
pub struct CrossNetMix<B: Backend> {
    config: CrossNetMixConfig,
    max_batch: usize,
    layers: Vec<MixLayer<B>>,
    du: B::Buf,
    g: [B::Buf; 2],
    d_input: B::Buf,
    db_tmp: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> CrossNetMix<B> {
    pub fn config(&self) -> &CrossNetMixConfig {
        &self.config
    }

    pub fn output(&self) -> &B::Buf {
        &self.layers.last().expect("layers >= 1").x_next
    }
}

impl<B: Backend> Parameters<B> for CrossNetMix<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        for (l, layer) in self.layers.iter_mut().enumerate() {
            v.scope_indexed("layers", l, |v| {
                for (i, e) in layer.experts.iter_mut().enumerate() {
                    v.scope_indexed("experts", i, |v| {
                        // Vᵀ: input -> rank, C: rank -> rank, U: rank -> input columns.
                        v.scope("v", |v| v.within(&[Part::In], &[Part::Own], |v| e.v.visit_params(v)));
                        v.scope("c", |v| v.within(&[Part::Own], &[Part::Own], |v| e.c.visit_params(v)));
                        v.scope("u", |v| v.within(&[Part::Own], &[Part::In], |v| e.u.visit_params(v)));
                    });
                }
                if let Some(g) = &mut layer.gate {
                    v.scope("gate", |v| v.within(&[Part::In], &[Part::Own], |v| g.visit_params(v)));
                }
                v.param("b", &mut layer.b);
            });
        }
    }
}

impl<B: Backend> Layer<B> for CrossNetMix<B> {
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

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let d = self.config.d;
        let n = batch * d;
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        for l in 0..self.layers.len() {
            let (before, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            let x = if l == 0 { input } else { &before[l - 1].x_next };
            for (e, out) in layer.experts.iter_mut().zip(&mut layer.outs) {
                let a1 = e.v.forward(ops, x, batch)?;
                let a2 = e.c.forward(ops, a1, batch)?;
                let u = e.u.forward(ops, a2, batch)?;
                ops.copy_cols(&copy, u, &mut e.ub).ctx(LAYER)?;
                ops.bias_act_inplace(Activation::Identity, Shape::new(batch, d), Some(&layer.b.value), &mut e.ub)
                    .ctx(LAYER)?;
                ops.mul(n, input, &e.ub, out).ctx(LAYER)?;
            }
            match (&mut layer.gate, &mut layer.mix) {
                (Some(gate), Some(mix)) => {
                    let g = gate.forward(ops, x, batch)?;
                    let moe = mix.forward(ops, &layer.outs, g, batch)?;
                    ops.add(n, moe, x, &mut layer.x_next).ctx(LAYER)?;
                }
                _ => ops.add(n, &layer.outs[0], x, &mut layer.x_next).ctx(LAYER)?,
            }
        }
        self.batch = Some(batch);
        Ok(self.output())
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let d = self.config.d;
        let n = batch * d;
        let shape = Shape::new(batch, d);
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        ops.fill(n, 0.0, &mut self.d_input).ctx(LAYER)?;
        let [g0, g1] = &mut self.g;
        let count = self.layers.len();
        for l in (0..count).rev() {
            let (before, rest) = self.layers.split_at_mut(l);
            let layer = &mut rest[0];
            let x = if l == 0 { input } else { &before[l - 1].x_next };
            let done = count - 1 - l;
            let (g, g_next): (&B::Buf, &mut B::Buf) = match (done, done % 2) {
                (0, _) => (d_output, &mut *g0),
                (_, 1) => (&*g0, &mut *g1),
                _ => (&*g1, &mut *g0),
            };
            // Residual path first: ∂x_l = g + (gate and expert contributions below).
            ops.copy_cols(&copy, g, g_next).ctx(LAYER)?;
            match (&mut layer.gate, &mut layer.mix) {
                (Some(gate), Some(mix)) => {
                    mix.backward(ops, &layer.outs, gate.output(), g)?;
                    for (i, e) in layer.experts.iter_mut().enumerate() {
                        ops.copy_cols(&copy, mix.d_expert(i), &mut e.de).ctx(LAYER)?;
                    }
                    let dx = gate.backward(ops, x, mix.d_gates())?;
                    ops.axpy(n, 1.0, dx, g_next).ctx(LAYER)?;
                }
                _ => ops.copy_cols(&copy, g, &mut layer.experts[0].de).ctx(LAYER)?,
            }
            for e in &mut layer.experts {
                // E = x₀ ⊙ ub: ∂ub = ∂E ⊙ x₀, ∂x₀ += ∂E ⊙ ub
                ops.mul(n, &e.de, input, &mut self.du).ctx(LAYER)?;
                ops.mul_acc(n, &e.de, &e.ub, &mut self.d_input).ctx(LAYER)?;
                ops.sum_cols(shape, &self.du, &mut self.db_tmp).ctx(LAYER)?;
                ops.axpy(d, 1.0, &self.db_tmp, &mut layer.b.grad).ctx(LAYER)?;
                let da2 = e.u.backward(ops, e.c.output(), &self.du)?;
                let da1 = e.c.backward(ops, e.v.output(), da2)?;
                let dx = e.v.backward(ops, x, da1)?;
                ops.axpy(n, 1.0, dx, g_next).ctx(LAYER)?;
            }
        }
        let last = if count % 2 == 1 { &*g0 } else { &*g1 };
        ops.axpy(n, 1.0, last, &mut self.d_input).ctx(LAYER)?;
        Ok(&self.d_input)
    }
}
