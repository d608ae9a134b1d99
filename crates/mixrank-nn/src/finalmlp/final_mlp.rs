//! FinalMLP: two gated MLP streams fused bilinearly.

use mixrank_engine::{Backend, ColCopy, GemmSpec};
use rand::Rng;

use crate::dense::{Mlp, MlpConfig};
use crate::error::{batch_fits, positive, same_dim, Ctx, NnError, Result};
use crate::finalmlp::{BilinearFusion, BilinearFusionConfig, FeatureGate};
use crate::layer::Layer;
use crate::param::{Axis, Init, Param, ParamVisitor, Parameters, Part};

const LAYER: &str = "FinalMlp";

/// What the feature-selection gates are conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateContext {
    /// The stream input itself (every feature's embedding).
    Input,
    /// A learned vector of width `d`, the same for every example (FuxiCTR's default
    /// when no context features are named): the gates become learned per-feature
    /// weights.
    Learned { d: usize },
    /// Columns `start .. start + len` of the input: the embeddings of chosen context
    /// features (e.g. user and item ids), placed side by side by the model.
    Columns { start: usize, len: usize },
}

/// Configuration of a [`FinalMlp`].
#[derive(Debug, Clone, PartialEq)]
pub struct FinalMlpConfig {
    /// Input width (concatenated embeddings).
    pub d_in: usize,
    /// Stream 1 (`mlp1.d_in` must equal `d_in`).
    pub mlp1: MlpConfig,
    /// Stream 2 (`mlp2.d_in` must equal `d_in`).
    pub mlp2: MlpConfig,
    /// Hidden widths of each feature-selection gate MLP (e.g. `[64]`).
    pub gate_hidden: Vec<usize>,
    pub context: GateContext,
    /// Heads of the bilinear fusion; must divide both stream output widths.
    pub heads: usize,
    /// Output width of the fusion (1 for a logit).
    pub d_out: usize,
}

impl FinalMlpConfig {
    fn gate_mlp(&self) -> MlpConfig {
        let d_ctx = match self.context {
            GateContext::Input => self.d_in,
            GateContext::Learned { d } => d,
            GateContext::Columns { len, .. } => len,
        };
        MlpConfig::new(d_ctx, &self.gate_hidden).with_output(self.d_in)
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<FinalMlp<B>> {
        positive(LAYER, "d_in", self.d_in)?;
        positive(LAYER, "max_batch", max_batch)?;
        same_dim(LAYER, "mlp1.d_in", self.mlp1.d_in, "d_in", self.d_in)?;
        same_dim(LAYER, "mlp2.d_in", self.mlp2.d_in, "d_in", self.d_in)?;
        let context = match self.context {
            GateContext::Input => Context::Input,
            GateContext::Learned { d } => {
                positive(LAYER, "context.d", d)?;
                Context::Learned(LearnedContext {
                    // Small values: the gate starts near its neutral 2·σ(·) ≈ 1.
                    value: Param::new(
                        ops,
                        &Init::Normal { std: 0.01 }.sample(1, d, rng),
                        &[d],
                        &[Axis::Own],
                        false,
                        LAYER,
                    )?,
                    ones: ops.upload(&vec![1.0; max_batch]).ctx(LAYER)?,
                    broadcast: ops.alloc(max_batch * d).ctx(LAYER)?,
                    d_sum: ops.alloc(max_batch * d).ctx(LAYER)?,
                    d,
                })
            }
            GateContext::Columns { start, len } => {
                positive(LAYER, "context.len", len)?;
                if start + len > self.d_in {
                    return Err(NnError::DimMismatch {
                        layer: LAYER,
                        lhs: "context.start + context.len",
                        lhs_dim: start + len,
                        rhs: "d_in",
                        rhs_dim: self.d_in,
                    });
                }
                Context::Columns { start, len, buf: ops.alloc(max_batch * len).ctx(LAYER)? }
            }
        };
        let gate1 = FeatureGate::new(ops, &self.gate_mlp(), max_batch, rng)?;
        let gate2 = FeatureGate::new(ops, &self.gate_mlp(), max_batch, rng)?;
        let mlp1 = self.mlp1.init(ops, max_batch, rng)?;
        let mlp2 = self.mlp2.init(ops, max_batch, rng)?;
        let fusion = BilinearFusionConfig::new(self.mlp1.output_dim(), self.mlp2.output_dim(), self.heads, self.d_out)
            .init(ops, max_batch, rng)?;
        Ok(FinalMlp {
            config: self.clone(),
            max_batch,
            context,
            gate1,
            gate2,
            mlp1,
            mlp2,
            fusion,
            d_input: ops.alloc(max_batch * self.d_in).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// The gates' context and its buffers.
enum Context<B: Backend> {
    Input,
    Learned(LearnedContext<B>),
    /// `buf` holds the copied column block `[batch, len]`.
    Columns {
        start: usize,
        len: usize,
        buf: B::Buf,
    },
}

impl<B: Backend> Context<B> {
    /// The gates' context for the current batch.
    fn buf<'a>(&'a self, input: &'a B::Buf) -> &'a B::Buf {
        match self {
            Context::Input => input,
            Context::Learned(l) => &l.broadcast,
            Context::Columns { buf, .. } => buf,
        }
    }
}

struct LearnedContext<B: Backend> {
    value: Param<B>,
    /// `[max_batch]` ones, for broadcasting the context over rows.
    ones: B::Buf,
    broadcast: B::Buf,
    d_sum: B::Buf,
    d: usize,
}

/// FinalMLP (Mao et al., 2023): `y = fusion(mlp1(x ⊙ g1(c)), mlp2(x ⊙ g2(c)))` with
/// feature-selection gates `g_i(c) = 2σ(gate_mlp_i(c))` on a context `c` (the input, a
/// column block of it, or a learned vector; see [`GateContext`]) and multi-head bilinear
/// fusion ([`BilinearFusion`]).
///
/// Backward runs the same graph in reverse; the input gradient sums both streams' gated
/// paths and, when the context comes from the input, both gates' context gradients (into
/// the context's columns).
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, d_out]`
pub struct FinalMlp<B: Backend> {
    config: FinalMlpConfig,
    max_batch: usize,
    context: Context<B>,
    pub gate1: FeatureGate<B>,
    pub gate2: FeatureGate<B>,
    pub mlp1: Mlp<B>,
    pub mlp2: Mlp<B>,
    pub fusion: BilinearFusion<B>,
    d_input: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> FinalMlp<B> {
    pub fn config(&self) -> &FinalMlpConfig {
        &self.config
    }

    pub fn set_training(&mut self, training: bool) {
        self.mlp1.set_training(training);
        self.mlp2.set_training(training);
        self.fusion.set_training(training);
    }

    pub fn set_dropout_step(&mut self, step: u64) {
        self.mlp1.set_dropout_step(step);
        self.mlp2.set_dropout_step(step);
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        self.mlp1.set_dropout_rows(first_row);
        self.mlp2.set_dropout_rows(first_row);
    }
}

impl<B: Backend> Parameters<B> for FinalMlp<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        if let Context::Learned(l) = &mut self.context {
            v.param("context", &mut l.value);
        }
        // The gates map their context to one gate per input column; the streams read the
        // gated input; the fusion reads both streams (its input parts 0 and 1).
        let context = match &self.context {
            Context::Input => Part::In,
            Context::Learned(_) => Part::Own,
            Context::Columns { .. } => Part::Mixed,
        };
        v.scope("gate1", |v| v.within(&[context], &[Part::In], |v| self.gate1.visit_params(v)));
        v.scope("gate2", |v| v.within(&[context], &[Part::In], |v| self.gate2.visit_params(v)));
        v.scope("mlp1", |v| v.within(&[Part::In], &[Part::Own], |v| self.mlp1.visit_params(v)));
        v.scope("mlp2", |v| v.within(&[Part::In], &[Part::Own], |v| self.mlp2.visit_params(v)));
        v.scope("fusion", |v| v.within(&[Part::Own, Part::Own], &[Part::Out], |v| self.fusion.visit_params(v)));
    }
}

impl<B: Backend> Layer<B> for FinalMlp<B> {
    fn set_dropout_step(&mut self, step: u64) {
        FinalMlp::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        FinalMlp::set_dropout_rows(self, first_row)
    }

    fn set_training(&mut self, training: bool) {
        FinalMlp::set_training(self, training)
    }

    /// Both feature gates' MLPs, both streams and the fusion's linear terms; the
    /// bilinear term and the gates' sigmoid stay f32.
    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        self.gate1.mlp.visit_reduced(f);
        self.gate2.mlp.visit_reduced(f);
        self.mlp1.visit_reduced(f);
        self.mlp2.visit_reduced(f);
        self.fusion.visit_reduced(f);
    }

    fn d_in(&self) -> usize {
        self.config.d_in
    }

    fn d_out(&self) -> usize {
        self.config.d_out
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let d_in = self.config.d_in;
        match &mut self.context {
            Context::Input => {}
            Context::Learned(l) => {
                // [batch, d] = ones[batch, 1] · context[1, d]
                let spec = GemmSpec::nn(batch, l.d, 1).a_layout(0, 1).b_layout(0, l.d);
                ops.gemm(&spec, &l.ones, &l.value.value, &mut l.broadcast).ctx(LAYER)?;
            }
            Context::Columns { start, len, buf } => {
                let spec = ColCopy {
                    rows: batch,
                    cols: *len,
                    src_ld: d_in,
                    src_col: *start,
                    dst_ld: *len,
                    dst_col: 0,
                    accumulate: false,
                };
                ops.copy_cols(&spec, input, buf).ctx(LAYER)?;
            }
        }
        let ctx = self.context.buf(input);
        let x1 = self.gate1.forward(ops, ctx, input, batch)?;
        let o1 = self.mlp1.forward(ops, x1, batch)?;
        let x2 = self.gate2.forward(ops, ctx, input, batch)?;
        let o2 = self.mlp2.forward(ops, x2, batch)?;
        self.batch = Some(batch);
        self.fusion.forward(ops, o1, o2, batch)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let n = batch * self.config.d_in;
        self.fusion.backward(ops, self.mlp1.output(), self.mlp2.output(), d_output)?;
        let ctx = self.context.buf(input);
        let g1 = self.mlp1.backward(ops, self.gate1.output(), self.fusion.d_x())?;
        self.gate1.backward(ops, ctx, input, g1)?;
        let g2 = self.mlp2.backward(ops, self.gate2.output(), self.fusion.d_y())?;
        self.gate2.backward(ops, ctx, input, g2)?;
        ops.add(n, self.gate1.d_x(), self.gate2.d_x(), &mut self.d_input).ctx(LAYER)?;
        let d_in = self.config.d_in;
        match &mut self.context {
            Context::Input => {
                ops.axpy(n, 1.0, self.gate1.d_context(), &mut self.d_input).ctx(LAYER)?;
                ops.axpy(n, 1.0, self.gate2.d_context(), &mut self.d_input).ctx(LAYER)?;
            }
            Context::Learned(l) => {
                // d context += Σ_rows (dctx1 + dctx2)
                let m = batch * l.d;
                ops.add(m, self.gate1.d_context(), self.gate2.d_context(), &mut l.d_sum).ctx(LAYER)?;
                // [1, d] += ones[1, batch] · d_sum[batch, d]
                let spec = GemmSpec::nn(1, l.d, batch).a_layout(0, batch).beta(1.0);
                ops.gemm(&spec, &l.ones, &l.d_sum, &mut l.value.grad).ctx(LAYER)?;
            }
            Context::Columns { start, len, .. } => {
                // The context's gradient goes back into its columns of d_input.
                let spec = ColCopy {
                    rows: batch,
                    cols: *len,
                    src_ld: *len,
                    src_col: 0,
                    dst_ld: d_in,
                    dst_col: *start,
                    accumulate: true,
                };
                ops.copy_cols(&spec, self.gate1.d_context(), &mut self.d_input).ctx(LAYER)?;
                ops.copy_cols(&spec, self.gate2.d_context(), &mut self.d_input).ctx(LAYER)?;
            }
        }
        Ok(&self.d_input)
    }
}
