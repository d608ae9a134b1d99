//! Layer normalisation over the feature dimension with an optional fused activation.

use mixrank_engine::{Activation, Backend, LayerNormSpec, NormStats, Shape};

use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Axis, Param, ParamVisitor, Parameters};

const LAYER: &str = "LayerNorm";

/// Configuration of a [`LayerNorm`] layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    /// Width of the normalised rows.
    pub d: usize,
    /// Added to the variance before the square root. Default `1e-5` (PyTorch's).
    pub eps: f32,
    /// Activation applied after the affine transform. Default Identity.
    pub activation: Activation,
}

impl LayerNormConfig {
    pub fn new(d: usize) -> Self {
        LayerNormConfig { d, eps: 1e-5, activation: Activation::Identity }
    }

    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn init<B: Backend>(&self, ops: &B, max_batch: usize) -> Result<LayerNorm<B>> {
        positive(LAYER, "d", self.d)?;
        positive(LAYER, "max_batch", max_batch)?;
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "eps",
                reason: format!("{} is negative", self.eps),
            });
        }
        let n = max_batch * self.d;
        let fused = self.activation != Activation::Identity;
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        Ok(LayerNorm {
            config: *self,
            max_batch,
            gamma: Param::new(ops, &vec![1.0; self.d], &[self.d], &[Axis::In], false, LAYER)?,
            beta: Param::new(ops, &vec![0.0; self.d], &[self.d], &[Axis::In], false, LAYER)?,
            stats: NormStats::new(ops, max_batch).ctx(LAYER)?,
            z: alloc(if fused { n } else { 0 })?,
            dz: alloc(if fused { n } else { 0 })?,
            out: alloc(n)?,
            d_input: alloc(n)?,
            batch: None,
        })
    }
}

/// `y = act(γ ⊙ (x - μ) / sqrt(σ² + eps) + β)`, with `μ`, `σ²` the mean and biased
/// variance of each row.
///
/// Backward (engine's `layer_norm_backward`), with `x̂` the normalised row and
/// `g = dz ⊙ γ`: `dx = rstd · (g - mean(g) - x̂ · mean(g ⊙ x̂))`, `dγ += Σ dz ⊙ x̂`,
/// `dβ += Σ dz`, where `dz = dy ⊙ act'(z)`.
///
/// # Shapes
/// - input, output: `[batch, d]`
/// - gamma, beta: `[d]`
pub struct LayerNorm<B: Backend> {
    config: LayerNormConfig,
    max_batch: usize,
    pub gamma: Param<B>,
    pub beta: Param<B>,
    stats: NormStats<B>,
    /// Normalised pre-activation (empty when the activation is Identity).
    z: B::Buf,
    dz: B::Buf,
    out: B::Buf,
    d_input: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> LayerNorm<B> {
    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// The last backward's input gradient.
    pub fn d_input(&self) -> &B::Buf {
        &self.d_input
    }

    fn spec(&self, batch: usize) -> LayerNormSpec {
        LayerNormSpec { rows: batch, cols: self.config.d, eps: self.config.eps }
    }
}

impl<B: Backend> Parameters<B> for LayerNorm<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        v.param("gamma", &mut self.gamma);
        v.param("beta", &mut self.beta);
    }
}

impl<B: Backend> Layer<B> for LayerNorm<B> {
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
        let spec = self.spec(batch);
        let act = self.config.activation;
        if act == Activation::Identity {
            ops.layer_norm_forward(&spec, input, &self.gamma.value, &self.beta.value, &mut self.out, &mut self.stats)
                .ctx(LAYER)?;
        } else {
            ops.layer_norm_forward(&spec, input, &self.gamma.value, &self.beta.value, &mut self.z, &mut self.stats)
                .ctx(LAYER)?;
            ops.bias_act_forward(act, Shape::new(batch, self.config.d), None, &mut self.z, &mut self.out).ctx(LAYER)?;
        }
        self.batch = Some(batch);
        Ok(&self.out)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let spec = self.spec(batch);
        let act = self.config.activation;
        let g = if act == Activation::Identity {
            d_output
        } else {
            ops.bias_act_backward(act, Shape::new(batch, self.config.d), &self.z, d_output, &mut self.dz, None)
                .ctx(LAYER)?;
            &self.dz
        };
        ops.layer_norm_backward(
            &spec,
            input,
            &self.gamma.value,
            &self.stats,
            g,
            &mut self.d_input,
            &mut self.gamma.grad,
            &mut self.beta.grad,
        )
        .ctx(LAYER)?;
        Ok(&self.d_input)
    }
}
