//! The trunk: the optional `[model.shared]` layer every head applies to its input
//! first (YouTube's shared layer), or the input itself.
//!
//! ```text
//! x ─► [shared MLP] ─► trunk      (trunk = x without a shared layer)
//! ```

use crate::error::{Context, Result};
use crate::expert::activation;
use mixrank_data::config::model::ModelSection;
use mixrank_engine::Backend;
use mixrank_nn::{Layer, Mlp, MlpConfig, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// The optional shared layer; parameters under `shared.*`.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, d_out]` (`d_out = d_in` without a shared layer)
pub struct Trunk<B: Backend> {
    shared: Option<Mlp<B>>,
    d_in: usize,
}

impl<B: Backend> Trunk<B> {
    /// Builds `m.shared` over `d_in` input features (draws from `rng` only when present).
    pub fn new<R: Rng + ?Sized>(m: &ModelSection, d_in: usize, ops: &B, max_batch: usize, rng: &mut R) -> Result<Self> {
        let shared = match &m.shared {
            Some(s) => Some(
                MlpConfig::new(d_in, &s.hidden)
                    .with_activation(activation(s.activation))
                    .with_dropout(s.dropout as f32)
                    .with_layer_norm(s.layer_norm)
                    .init(ops, max_batch, rng)
                    .at(|| "model.shared".into())?,
            ),
            None => None,
        };
        Ok(Trunk { shared, d_in })
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// What the trunk's columns are, given what its input is (`input`, in the head's
    /// terms): the input itself without a shared layer, the shared layer's own units
    /// with one.
    pub fn output_parts(&self, input: &[Part]) -> Vec<Part> {
        if self.shared.is_some() {
            vec![Part::Own]
        } else {
            input.to_vec()
        }
    }

    /// Width of the trunk: what experts and gates read.
    pub fn d_out(&self) -> usize {
        self.shared.as_ref().map_or(self.d_in, |s| s.d_out())
    }

    /// Runs the shared layer, if any, on the first `batch` rows of `x`.
    pub fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()> {
        if let Some(s) = &mut self.shared {
            s.forward(ops, x, batch).at(|| "model.shared forward".into())?;
        }
        Ok(())
    }

    /// The trunk of the last forward on `x`: the shared layer's output, or `x`.
    pub fn output<'a>(&'a self, x: &'a B::Buf) -> &'a B::Buf {
        match &self.shared {
            Some(s) => s.output(),
            None => x,
        }
    }

    /// Given the forward's `x` and the gradient w.r.t. the trunk, returns `d_x`: the
    /// shared layer's input gradient, or `d_trunk` itself (no copy).
    pub fn backward<'a>(&'a mut self, ops: &B, x: &B::Buf, d_trunk: &'a B::Buf) -> Result<&'a B::Buf> {
        match &mut self.shared {
            Some(s) => s.backward(ops, x, d_trunk).at(|| "model.shared backward".into()),
            None => Ok(d_trunk),
        }
    }

    pub fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>)) {
        if let Some(s) = &mut self.shared {
            f(s);
        }
    }

    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        if let Some(s) = &mut self.shared {
            s.visit_reduced(f);
        }
    }
}

impl<B: Backend> Parameters<B> for Trunk<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        if let Some(s) = &mut self.shared {
            v.scope("shared", |v| v.within(&[Part::In], &[Part::Own], |v| s.visit_params(v)));
        }
    }
}
