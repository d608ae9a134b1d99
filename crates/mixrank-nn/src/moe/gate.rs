//! The MMoE gate: one linear map to expert logits and a softmax (the lightweight gate),
//! optionally after hidden layers (an MLP on the gate's input).

use mixrank_engine::{Activation, Backend, ColCopy, Shape};
use rand::Rng;

use crate::dense::{Linear, LinearConfig, Mlp, MlpConfig};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Init, ParamVisitor, Parameters};

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
        }
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
        Ok(Gate {
            config: self.clone(),
            max_batch,
            hidden,
            linear,
            logits: ops.alloc(n).ctx(LAYER)?,
            masked: ops.alloc(if sparse { n } else { 0 }).ctx(LAYER)?,
            mask: ops.alloc(if sparse { n } else { 0 }).ctx(LAYER)?,
            weights: ops.alloc(n).ctx(LAYER)?,
            d_logits: ops.alloc(n).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// `g = softmax((x · W + b) / T + M)` over experts, where the top-k mask `M` is 0 for the
/// `k` largest logits of the row (ties to the lower index) and `-1e30` elsewhere (so
/// `exp` gives exactly 0; no infinities), or 0 everywhere without top-k.
///
/// Backward: `dz = g ⊙ (dg - Σ_e dg ⊙ g) / T` (zero where masked, since `g = 0`), then
/// the linear map's backward. The engine has no per-row selection op, so top-k reads the
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
            v.scope("hidden", |v| h.visit_params(v));
        }
        self.linear.visit_params(v);
    }
}

impl<B: Backend> Layer<B> for Gate<B> {
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
        let shape = Shape::new(batch, e);
        match self.config.top_k {
            Some(k) if k < e => {
                let n = batch * e;
                ops.top_k_mask(shape, k, &self.logits, &mut self.mask).ctx(LAYER)?;
                ops.add(n, &self.logits, &self.mask, &mut self.masked).ctx(LAYER)?;
                ops.softmax_rows(shape, &self.masked, &mut self.weights).ctx(LAYER)?;
            }
            _ => ops.softmax_rows(shape, &self.logits, &mut self.weights).ctx(LAYER)?,
        }
        self.batch = Some(batch);
        Ok(&self.weights)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let e = self.config.n_experts;
        ops.softmax_rows_backward(Shape::new(batch, e), &self.weights, d_output, &mut self.d_logits).ctx(LAYER)?;
        if self.config.temperature != 1.0 {
            ops.scale(batch * e, 1.0 / self.config.temperature, &mut self.d_logits).ctx(LAYER)?;
        }
        match &mut self.hidden {
            Some(h) => {
                let d_h = self.linear.backward(ops, h.output(), &self.d_logits)?;
                h.backward(ops, input, d_h)
            }
            None => self.linear.backward(ops, input, &self.d_logits),
        }
    }
}
