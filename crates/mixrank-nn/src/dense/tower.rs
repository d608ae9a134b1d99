//! A per-task tower: an MLP ending in one logit.

use mixrank_engine::{Activation, Backend};
use rand::Rng;

use crate::dense::{Mlp, MlpConfig};
use crate::error::Result;
use crate::layer::Layer;
use crate::param::{Init, ParamVisitor, Parameters};

/// Configuration of a [`Tower`].
#[derive(Debug, Clone, PartialEq)]
pub struct TowerConfig {
    /// Input width (the mixed expert output of its task).
    pub d_in: usize,
    /// Hidden widths before the logit (e.g. `[64]` in the bench model).
    pub hidden: Vec<usize>,
    /// Activation of the hidden blocks. Default ReLU.
    pub activation: Activation,
    /// Dropout after each hidden block. Default 0.
    pub dropout: f32,
    /// Layer norm in each hidden block. Default false.
    pub layer_norm: bool,
    /// Weight initialisation. Default Xavier uniform.
    pub init: Init,
    /// Output width: 1 (a logit, the default), or an embedding's width (a two-tower
    /// model's towers).
    pub d_out: usize,
}

impl TowerConfig {
    pub fn new(d_in: usize, hidden: &[usize]) -> Self {
        TowerConfig {
            d_in,
            hidden: hidden.to_vec(),
            activation: Activation::Relu,
            dropout: 0.0,
            layer_norm: false,
            init: Init::XavierUniform,
            d_out: 1,
        }
    }

    /// The equivalent MLP configuration (hidden blocks plus a `d_out`-wide projection).
    pub fn mlp(&self) -> MlpConfig {
        MlpConfig {
            d_in: self.d_in,
            hidden: self.hidden.clone(),
            activation: self.activation,
            dropout: self.dropout,
            layer_norm: self.layer_norm,
            d_out: Some(self.d_out),
            init: self.init,
        }
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<Tower<B>> {
        Ok(Tower { mlp: self.mlp().init(ops, max_batch, rng)? })
    }
}

/// `logit = w_outᵀ · mlp(x) + b_out`: the task head that turns the mixed expert
/// representation into one logit per example (the model returns logits; the trainer
/// owns the loss).
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, 1]` (never squeezed, so batch 1 stays `[1, 1]`)
pub struct Tower<B: Backend> {
    mlp: Mlp<B>,
}

impl<B: Backend> Tower<B> {
    pub fn set_training(&mut self, training: bool) {
        self.mlp.set_training(training);
    }

    pub fn set_dropout_step(&mut self, step: u64) {
        self.mlp.set_dropout_step(step);
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        self.mlp.set_dropout_rows(first_row);
    }

    pub fn output(&self) -> &B::Buf {
        self.mlp.output()
    }

    pub fn d_input(&self) -> &B::Buf {
        self.mlp.d_input()
    }
}

impl<B: Backend> Parameters<B> for Tower<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        self.mlp.visit_params(v);
    }
}

impl<B: Backend> Layer<B> for Tower<B> {
    fn set_dropout_step(&mut self, step: u64) {
        Tower::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        Tower::set_dropout_rows(self, first_row)
    }

    fn set_training(&mut self, training: bool) {
        Tower::set_training(self, training)
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        self.mlp.visit_reduced(f);
    }

    fn d_in(&self) -> usize {
        self.mlp.d_in()
    }

    fn d_out(&self) -> usize {
        self.mlp.d_out()
    }

    fn max_batch(&self) -> usize {
        self.mlp.max_batch()
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        self.mlp.forward(ops, input, batch)
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        self.mlp.backward(ops, input, d_output)
    }
}
