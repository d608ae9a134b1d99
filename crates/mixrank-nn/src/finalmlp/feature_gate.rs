//! FinalMLP's feature-selection gate.

use mixrank_engine::{Activation, Backend, ColCopy, Shape};
use rand::Rng;

use crate::dense::{Mlp, MlpConfig};
use crate::error::{batch_fits, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{ParamVisitor, Parameters};

const LAYER: &str = "FeatureGate";

/// Feature selection for one FinalMLP stream: `g = 2·σ(mlp(context))` with `g ∈ (0, 2)`
/// per input feature, and the gated input `x ⊙ g` (the 2 makes the neutral gate 1 at
/// `mlp(·) = 0`).
///
/// Backward: `dx = d(x⊙g) ⊙ g`, `dg = d(x⊙g) ⊙ x`, `dz = 2·σ'(z) ⊙ dg`, then the MLP's
/// backward to the context.
///
/// # Shapes
/// - context: `[batch, mlp.d_in]`, x: `[batch, d]` with `d = mlp.d_out`
/// - output: `[batch, d]`
pub struct FeatureGate<B: Backend> {
    d: usize,
    max_batch: usize,
    pub mlp: Mlp<B>,
    /// Gate pre-activation (a copy of the MLP output, which `bias_act_forward` mutates).
    z: B::Buf,
    /// `σ(z)`, scaled to `g = 2σ(z)` in place.
    g: B::Buf,
    out: B::Buf,
    d_x: B::Buf,
    d_g: B::Buf,
    d_z: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> FeatureGate<B> {
    /// A gate whose MLP maps the context to `mlp.output_dim()` gates.
    pub fn new<R: Rng + ?Sized>(ops: &B, mlp: &MlpConfig, max_batch: usize, rng: &mut R) -> Result<Self> {
        let d = mlp.output_dim();
        let n = max_batch * d;
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        Ok(FeatureGate {
            d,
            max_batch,
            mlp: mlp.init(ops, max_batch, rng)?,
            z: alloc(n)?,
            g: alloc(n)?,
            out: alloc(n)?,
            d_x: alloc(n)?,
            d_g: alloc(n)?,
            d_z: alloc(n)?,
            batch: None,
        })
    }

    /// `x ⊙ 2σ(mlp(context))` for the first `batch` rows.
    pub fn forward(&mut self, ops: &B, context: &B::Buf, x: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let (d, n) = (self.d, batch * self.d);
        let z = self.mlp.forward(ops, context, batch)?;
        let copy = ColCopy { rows: batch, cols: d, src_ld: d, src_col: 0, dst_ld: d, dst_col: 0, accumulate: false };
        ops.copy_cols(&copy, z, &mut self.z).ctx(LAYER)?;
        ops.bias_act_forward(Activation::Sigmoid, Shape::new(batch, d), None, &mut self.z, &mut self.g).ctx(LAYER)?;
        ops.scale(n, 2.0, &mut self.g).ctx(LAYER)?;
        ops.mul(n, x, &self.g, &mut self.out).ctx(LAYER)?;
        self.batch = Some(batch);
        Ok(&self.out)
    }

    /// Afterwards [`FeatureGate::d_x`] and [`FeatureGate::d_context`] hold the input
    /// gradients (overwritten); the MLP's parameter gradients are accumulated.
    pub fn backward(&mut self, ops: &B, context: &B::Buf, x: &B::Buf, d_output: &B::Buf) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let (d, n) = (self.d, batch * self.d);
        ops.mul_backward(n, x, &self.g, d_output, &mut self.d_x, &mut self.d_g).ctx(LAYER)?;
        ops.scale(n, 2.0, &mut self.d_g).ctx(LAYER)?;
        ops.bias_act_backward(Activation::Sigmoid, Shape::new(batch, d), &self.z, &self.d_g, &mut self.d_z, None)
            .ctx(LAYER)?;
        self.mlp.backward(ops, context, &self.d_z)?;
        Ok(())
    }

    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// Gradient w.r.t. the gated input `x`.
    pub fn d_x(&self) -> &B::Buf {
        &self.d_x
    }

    /// Gradient w.r.t. the context.
    pub fn d_context(&self) -> &B::Buf {
        self.mlp.d_input()
    }
}

impl<B: Backend> Parameters<B> for FeatureGate<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        self.mlp.visit_params(v);
    }
}
