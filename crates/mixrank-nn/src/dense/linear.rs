//! Fully connected layer with an optional fused bias and activation.

use mixrank_engine::{Activation, Backend, GemmSpec, Shape, Transpose};
use rand::Rng;

use crate::error::{batch_fits, positive, same_dim, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Axis, Init, Param, ParamVisitor, Parameters};

const LAYER: &str = "Linear";

/// Configuration of a [`Linear`] layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearConfig {
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Whether to add a learned bias. Default `true`.
    pub bias: bool,
    /// Activation fused after the bias add. Default [`Activation::Identity`].
    pub activation: Activation,
    /// Weight initialisation. Default [`Init::XavierUniform`].
    pub init: Init,
}

impl LinearConfig {
    /// `d_in → d_out` with bias, no activation, Xavier-uniform weights.
    pub fn new(d_in: usize, d_out: usize) -> Self {
        LinearConfig { d_in, d_out, bias: true, activation: Activation::Identity, init: Init::XavierUniform }
    }

    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Builds the layer with workspaces for up to `max_batch` rows.
    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<Linear<B>> {
        positive(LAYER, "d_in", self.d_in)?;
        positive(LAYER, "d_out", self.d_out)?;
        positive(LAYER, "max_batch", max_batch)?;
        let weight = Param::new(
            ops,
            &self.init.sample(self.d_in, self.d_out, rng),
            &[self.d_in, self.d_out],
            &[Axis::In, Axis::Out],
            true,
            LAYER,
        )?;
        let bias = if self.bias {
            Some(Param::new(ops, &vec![0.0; self.d_out], &[self.d_out], &[Axis::Out], false, LAYER)?)
        } else {
            None
        };
        let out_len = max_batch * self.d_out;
        let fused = self.activation != Activation::Identity;
        let alloc = |n: usize| ops.alloc(n).ctx(LAYER);
        Ok(Linear {
            config: self.clone(),
            max_batch,
            weight,
            bias,
            z: if fused { alloc(out_len)? } else { alloc(0)? },
            dz: if fused { alloc(out_len)? } else { alloc(0)? },
            out: alloc(out_len)?,
            d_input: alloc(max_batch * self.d_in)?,
            dbias_tmp: alloc(if self.bias && !fused { self.d_out } else { 0 })?,
            batch: None,
            reduced: None,
        })
    }
}

/// `y = act(x · W + b)`.
///
/// `W` is stored `[d_in, d_out]` so the forward is a plain `nn` GEMM. Backward, with
/// `dz = dy ⊙ act'(z)`: `dW += xᵀ · dz`, `db += Σ_rows dz`, `dx = dz · Wᵀ`.
/// With [`Activation::Identity`] no pre-activation is kept and `dz = dy` is used directly.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, d_out]`
/// - weight: `[d_in, d_out]`, bias: `[d_out]`
pub struct Linear<B: Backend> {
    config: LinearConfig,
    max_batch: usize,
    pub weight: Param<B>,
    pub bias: Option<Param<B>>,
    /// Pre-activation `[max_batch, d_out]` (empty when the activation is Identity).
    z: B::Buf,
    dz: B::Buf,
    out: B::Buf,
    d_input: B::Buf,
    /// `Σ_rows dy` before it is added to the bias gradient (Identity case only).
    dbias_tmp: B::Buf,
    /// Rows of the last forward.
    batch: Option<usize>,
    /// Reduced-precision GEMM for inference (bf16); `None` = f32.
    reduced: Option<Box<dyn super::ReducedGemm<B>>>,
}

impl<B: Backend> Linear<B> {
    pub fn config(&self) -> &LinearConfig {
        &self.config
    }

    /// Runs later forwards through a reduced-precision GEMM (inference only; `None`
    /// returns to f32). The weights are whatever `reduced` packed: re-pack after
    /// changing them.
    pub fn set_reduced(&mut self, reduced: Option<Box<dyn super::ReducedGemm<B>>>) {
        self.reduced = reduced;
    }

    /// The reduced-precision kernel in use, if any.
    pub fn reduced_name(&self) -> Option<&'static str> {
        self.reduced.as_ref().map(|r| r.name())
    }

    /// Largest batch the workspaces hold.
    pub fn max_batch_rows(&self) -> usize {
        self.max_batch
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// The last backward's input gradient.
    pub fn d_input(&self) -> &B::Buf {
        &self.d_input
    }

    fn fused(&self) -> bool {
        self.config.activation != Activation::Identity
    }
}

impl<B: Backend> Parameters<B> for Linear<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        v.param("weight", &mut self.weight);
        if let Some(b) = &mut self.bias {
            v.param("bias", b);
        }
    }
}

impl<B: Backend> Layer<B> for Linear<B> {
    fn visit_reduced(&mut self, f: &mut dyn FnMut(super::ReducedSite<'_, B>)) {
        let (k, n) = (self.config.d_in, self.config.d_out);
        f(super::ReducedSite {
            k,
            n,
            max_batch: self.max_batch,
            weight: &self.weight.value,
            layout: super::WeightLayout::Dense,
            slot: &mut self.reduced,
        });
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
        let (d_in, d_out) = (self.config.d_in, self.config.d_out);
        let shape = Shape::new(batch, d_out);
        let spec = GemmSpec::nn(batch, d_out, d_in);
        let bias = self.bias.as_ref().map(|b| &b.value);
        if self.fused() {
            match &mut self.reduced {
                Some(r) => r.gemm(batch, input, &mut self.z).ctx(LAYER)?,
                None => ops.gemm(&spec, input, &self.weight.value, &mut self.z).ctx(LAYER)?,
            }
            ops.bias_act_forward(self.config.activation, shape, bias, &mut self.z, &mut self.out).ctx(LAYER)?;
        } else {
            match &mut self.reduced {
                Some(r) => r.gemm(batch, input, &mut self.out).ctx(LAYER)?,
                None => ops.gemm(&spec, input, &self.weight.value, &mut self.out).ctx(LAYER)?,
            }
            if bias.is_some() {
                ops.bias_act_inplace(Activation::Identity, shape, bias, &mut self.out).ctx(LAYER)?;
            }
        }
        self.batch = Some(batch);
        Ok(&self.out)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.param_backward(ops, input, d_output)?;
        let dz = if self.fused() { &self.dz } else { d_output };
        input_grad(ops, &self.config, batch, dz, &self.weight.value, 0.0, &mut self.d_input)?;
        Ok(&self.d_input)
    }

    fn backward_acc(
        &mut self,
        ops: &B,
        input: &B::Buf,
        d_output: &B::Buf,
        batch: usize,
        d_input_acc: &mut B::Buf,
    ) -> Result<()> {
        let rows = self.param_backward(ops, input, d_output)?;
        same_dim(LAYER, "batch", batch, "forward batch", rows)?;
        let dz = if self.fused() { &self.dz } else { d_output };
        input_grad(ops, &self.config, rows, dz, &self.weight.value, 1.0, d_input_acc)
    }
}

impl<B: Backend> Linear<B> {
    /// Backward's parameter half: `dz` (kept in `self.dz` when fused), `dW += xᵀ · dz`,
    /// `db += Σ_rows dz`. Returns the forward's batch.
    fn param_backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<usize> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        if self.reduced.is_some() {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "reduced",
                reason: "reduced precision is for inference only; backward needs f32".into(),
            });
        }
        let (d_in, d_out) = (self.config.d_in, self.config.d_out);
        let shape = Shape::new(batch, d_out);
        let dz = if self.fused() {
            let dbias = self.bias.as_mut().map(|b| &mut b.grad);
            ops.bias_act_backward(self.config.activation, shape, &self.z, d_output, &mut self.dz, dbias).ctx(LAYER)?;
            &self.dz
        } else {
            if let Some(b) = &mut self.bias {
                ops.sum_cols(shape, d_output, &mut self.dbias_tmp).ctx(LAYER)?;
                ops.axpy(d_out, 1.0, &self.dbias_tmp, &mut b.grad).ctx(LAYER)?;
            }
            d_output
        };
        // dW += xᵀ · dz: [d_in, batch] · [batch, d_out]
        let dw = GemmSpec::new(Transpose::Yes, Transpose::No, d_in, d_out, batch).beta(1.0);
        ops.gemm(&dw, input, dz, &mut self.weight.grad).ctx(LAYER)?;
        Ok(batch)
    }
}

/// A Linear layer's input gradient `dx = dz · Wᵀ + β·dx` (`[batch, d_out] · [d_out,
/// d_in]`), `dz` from [`Linear::param_backward`] (`d_output` itself without an activation).
fn input_grad<B: Backend>(
    ops: &B,
    c: &LinearConfig,
    batch: usize,
    dz: &B::Buf,
    weight: &B::Buf,
    beta: f32,
    dx: &mut B::Buf,
) -> Result<()> {
    let spec = GemmSpec::new(Transpose::No, Transpose::Yes, batch, c.d_in, c.d_out).beta(beta);
    ops.gemm(&spec, dz, weight, dx).ctx(LAYER)
}
