//! The MMoE gate: one linear map to expert logits and a softmax (the lightweight gate),
//! optionally after hidden layers (an MLP on the gate's input).

use mixrank_engine::{Activation, Backend, ColCopy, Shape};
use rand::Rng;

use crate::dense::{Linear, LinearConfig, Mlp, MlpConfig};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Init, ParamVisitor, Parameters, Part};

const LAYER: &str = "Gate";

/// Configuration of a [`Gate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Width of the gate's input (the full input, or a cheaper subset of it).
    pub d_in: usize,
    /// Number of experts mixed.
    pub n_experts: usize,
    /// Softmax temperature `T > 0`: `T > 1` flattens the mixture, `T < 1` sharpens it.
    /// Default 1.
    pub temperature: f32,
    /// Keep only the `k` largest logits per row (the softmax renormalises over them; the
    /// others get weight 0 and no gradient). Default none (dense gating).
    pub top_k: Option<usize>,
    /// Weight initialisation. Default Xavier uniform.
    pub init: Init,
    /// Hidden layers before the linear map (empty: the lightweight gate) and their
    /// activation.
    pub hidden: Vec<usize>,
    pub activation: Activation,
    /// Gate dropout (YouTube, against polarisation): in training, each (row, expert)
    /// weight is zeroed with probability `p` after the softmax and the row renormalised to
    /// sum 1; a row never loses its last expert. In `[0, 1)`; default 0 (off). Off in
    /// evaluation mode.
    pub dropout: f32,
}

impl GateConfig {
    pub fn new(d_in: usize, n_experts: usize) -> Self {
        GateConfig {
            d_in,
            n_experts,
            temperature: 1.0,
            top_k: None,
            init: Init::XavierUniform,
            hidden: Vec::new(),
            activation: Activation::Relu,
            dropout: 0.0,
        }
    }

    /// Gate dropout with probability `p` in training (see [`GateConfig::dropout`]).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = temperature;
        self
    }

    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = Some(k);
        self
    }

    /// Hidden layers (an MLP) between the gate's input and its linear map.
    pub fn with_hidden(mut self, hidden: &[usize], activation: Activation) -> Self {
        self.hidden = hidden.to_vec();
        self.activation = activation;
        self
    }

    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<Gate<B>> {
        positive(LAYER, "d_in", self.d_in)?;
        positive(LAYER, "n_experts", self.n_experts)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "temperature",
                reason: format!("{} is not a positive finite number", self.temperature),
            });
        }
        if let Some(k) = self.top_k {
            if k == 0 || k > self.n_experts {
                return Err(NnError::InvalidConfig {
                    layer: LAYER,
                    field: "top_k",
                    reason: format!("{k} is not in 1..={}", self.n_experts),
                });
            }
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "dropout",
                reason: format!("{} is not in [0, 1)", self.dropout),
            });
        }
        let hidden = match self.hidden.is_empty() {
            true => None,
            false => Some(
                MlpConfig::new(self.d_in, &self.hidden).with_activation(self.activation).init(ops, max_batch, rng)?,
            ),
        };
        let d_linear = hidden.as_ref().map_or(self.d_in, |h| h.d_out());
        let linear = LinearConfig::new(d_linear, self.n_experts).with_init(self.init).init(ops, max_batch, rng)?;
        let n = max_batch * self.n_experts;
        let sparse = self.top_k.is_some_and(|k| k < self.n_experts);
        // The dropout seed is drawn only when dropout is on, so a gate without it draws
        // exactly what it drew before the option existed (initial weights unchanged).
        let dropout_seed = if self.dropout > 0.0 { rng.random() } else { 0 };
        let masks = sparse || self.dropout > 0.0;
        Ok(Gate {
            config: self.clone(),
            max_batch,
            hidden,
            linear,
            logits: ops.alloc(n).ctx(LAYER)?,
            masked: ops.alloc(if masks { n } else { 0 }).ctx(LAYER)?,
            mask: ops.alloc(if masks { n } else { 0 }).ctx(LAYER)?,
            top: ops.alloc(if sparse { n } else { 0 }).ctx(LAYER)?,
            excluded: None,
            dropout_seed,
            training: true,
            step: 0,
            first_row: 0,
            weights: ops.alloc(n).ctx(LAYER)?,
            d_logits: ops.alloc(n).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// `g = softmax((x · W + b) / T + M)` over experts, where the additive mask `M` is 0 for
/// an expert in play and `-1e30` (or a multiple: `exp` gives exactly 0; no infinities)
/// for one left out, and sums up to three parts, in this order:
/// - experts excluded by [`Gate::exclude_experts`] (evaluation-only ablation);
/// - top-k: the `k` largest of the row's remaining logits stay (ties to the lower index);
/// - gate dropout (training only): each remaining expert leaves with probability `p`,
///   from the counter stream of (seed, step, index) ([`Backend::gate_dropout_mask`]), a
///   row never losing its last one.
///
/// Adding `-1e30` before the softmax is the same as zeroing those weights after it and
/// renormalising the row to sum 1, so masks need no op of their own in backward.
///
/// Backward: `dz = g ⊙ (dg - Σ_e dg ⊙ g) / T` (zero where masked, since `g = 0`: exactly
/// the gradient of "zero, then renormalise"), then the linear map's backward. The engine has no per-row selection op, so top-k reads the
/// `[batch, n_experts]` logits to the host, picks there and writes the mask back: a
/// few floats per row, but a device sync per gate on a GPU backend.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output (gate weights, rows sum to 1): `[batch, n_experts]`
pub struct Gate<B: Backend> {
    config: GateConfig,
    max_batch: usize,
    /// Hidden layers before `linear` (parameters `hidden.*`); `None` for the lightweight gate.
    hidden: Option<Mlp<B>>,
    pub linear: Linear<B>,
    /// `(x·W + b) / T`.
    logits: B::Buf,
    /// `logits + M` and `M` (top-k only).
    masked: B::Buf,
    mask: B::Buf,
    /// The top-k mask of `logits + exclusions` (top-k only).
    top: B::Buf,
    /// Additive mask of excluded experts tiled over `max_batch` rows (set once by
    /// [`Gate::exclude_experts`], never per step).
    excluded: Option<B::Buf>,
    dropout_seed: u64,
    training: bool,
    /// Gate-dropout mask counter (advances after each training forward with dropout).
    step: u64,
    /// Global row of the batch's first row (data-parallel: the rank's offset).
    first_row: u64,
    weights: B::Buf,
    d_logits: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> Gate<B> {
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The last forward's gate weights.
    pub fn output(&self) -> &B::Buf {
        &self.weights
    }

    /// Leaves the listed experts out of the mixture (weight 0, the others renormalised),
    /// in training and evaluation, until called again; an empty list restores the gate.
    /// An ablation for `mixrank experiment experts`: the mask is written once here.
    pub fn exclude_experts(&mut self, ops: &B, experts: &[usize]) -> Result<()> {
        let e = self.config.n_experts;
        if let Some(&bad) = experts.iter().find(|&&x| x >= e) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "excluded expert",
                reason: format!("{bad} is not below the gate's {e} experts"),
            });
        }
        if experts.is_empty() {
            self.excluded = None;
            return Ok(());
        }
        if experts.len() == e {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "excluded expert",
                reason: format!("excluding all {e} experts leaves nothing to mix"),
            });
        }
        let mut host = vec![0f32; self.max_batch * e];
        for row in host.chunks_exact_mut(e) {
            for &x in experts {
                row[x] = mixrank_engine::mask::MASKED;
            }
        }
        self.excluded = Some(ops.upload(&host).ctx(LAYER)?);
        if ops.len(&self.mask) == 0 {
            self.mask = ops.alloc(self.max_batch * e).ctx(LAYER)?;
            self.masked = ops.alloc(self.max_batch * e).ctx(LAYER)?;
        }
        Ok(())
    }

    /// Whether training-mode forwards drop experts now.
    fn dropping(&self) -> bool {
        self.training && self.config.dropout > 0.0
    }

    pub fn d_input(&self) -> &B::Buf {
        match &self.hidden {
            Some(h) => h.d_input(),
            None => self.linear.d_input(),
        }
    }
}

impl<B: Backend> Parameters<B> for Gate<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        if let Some(h) = &mut self.hidden {
            v.scope("hidden", |v| v.within(&[Part::In], &[Part::Own], |v| h.visit_params(v)));
        }
        let input = if self.hidden.is_some() { Part::Own } else { Part::In };
        v.within(&[input], &[Part::Out], |v| self.linear.visit_params(v));
    }
}

impl<B: Backend> Gate<B> {
    /// The gradient of the linear map's output (`d_logits`) from the gate weights'.
    fn logits_backward(&mut self, ops: &B, d_output: &B::Buf) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let e = self.config.n_experts;
        ops.softmax_rows_backward(Shape::new(batch, e), &self.weights, d_output, &mut self.d_logits).ctx(LAYER)?;
        if self.config.temperature != 1.0 {
            ops.scale(batch * e, 1.0 / self.config.temperature, &mut self.d_logits).ctx(LAYER)?;
        }
        Ok(())
    }
}

impl<B: Backend> Layer<B> for Gate<B> {
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn set_dropout_step(&mut self, step: u64) {
        self.step = step;
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        self.first_row = first_row;
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        if let Some(h) = &mut self.hidden {
            h.visit_reduced(f);
        }
        self.linear.visit_reduced(f);
    }

    fn d_in(&self) -> usize {
        self.config.d_in
    }

    fn d_out(&self) -> usize {
        self.config.n_experts
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let e = self.config.n_experts;
        let x = match &mut self.hidden {
            Some(h) => h.forward(ops, input, batch)?,
            None => input,
        };
        let z = self.linear.forward(ops, x, batch)?;
        // A [batch, n_experts] copy: a few floats per row, so not worth a fused kernel.
        let copy = ColCopy { rows: batch, cols: e, src_ld: e, src_col: 0, dst_ld: e, dst_col: 0, accumulate: false };
        ops.copy_cols(&copy, z, &mut self.logits).ctx(LAYER)?;
        if self.config.temperature != 1.0 {
            ops.scale(batch * e, 1.0 / self.config.temperature, &mut self.logits).ctx(LAYER)?;
        }
        let (shape, n) = (Shape::new(batch, e), batch * e);
        let top_k = self.config.top_k.filter(|&k| k < e);
        if top_k.is_none() && self.excluded.is_none() && !self.dropping() {
            ops.softmax_rows(shape, &self.logits, &mut self.weights).ctx(LAYER)?;
        } else {
            ops.fill(n, 0.0, &mut self.mask).ctx(LAYER)?;
            if let Some(ex) = &self.excluded {
                ops.axpy(n, 1.0, ex, &mut self.mask).ctx(LAYER)?;
            }
            if let Some(k) = top_k {
                ops.add(n, &self.logits, &self.mask, &mut self.masked).ctx(LAYER)?;
                ops.top_k_mask(shape, k, &self.masked, &mut self.top).ctx(LAYER)?;
                ops.axpy(n, 1.0, &self.top, &mut self.mask).ctx(LAYER)?;
            }
            if self.dropping() {
                let (p, seed) = (self.config.dropout, self.dropout_seed);
                ops.gate_dropout_mask(shape, p, seed, self.step, self.first_row, &mut self.mask).ctx(LAYER)?;
                self.step += 1;
            }
            ops.add(n, &self.logits, &self.mask, &mut self.masked).ctx(LAYER)?;
            ops.softmax_rows(shape, &self.masked, &mut self.weights).ctx(LAYER)?;
        }
        self.batch = Some(batch);
        Ok(&self.weights)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        self.logits_backward(ops, d_output)?;
        match &mut self.hidden {
            Some(h) => {
                let d_h = self.linear.backward(ops, h.output(), &self.d_logits)?;
                h.backward(ops, input, d_h)
            }
            None => self.linear.backward(ops, input, &self.d_logits),
        }
    }

    fn backward_acc(
        &mut self,
        ops: &B,
        input: &B::Buf,
        d_output: &B::Buf,
        batch: usize,
        d_input_acc: &mut B::Buf,
    ) -> Result<()> {
        self.logits_backward(ops, d_output)?;
        match &mut self.hidden {
            Some(h) => {
                let d_h = self.linear.backward(ops, h.output(), &self.d_logits)?;
                h.backward_acc(ops, input, d_h, batch, d_input_acc)
            }
            None => self.linear.backward_acc(ops, input, &self.d_logits, batch, d_input_acc),
        }
    }
}
