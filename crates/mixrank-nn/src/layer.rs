//! The single-input layer interface shared by the dense building blocks.

use mixrank_engine::Backend;

use rand::RngCore;

use crate::error::{Ctx, Result};
use crate::param::Parameters;

/// A layer mapping `[batch, d_in]` to `[batch, d_out]` with explicit backward.
///
/// See the crate docs for the forward/backward contract (workspaces, accumulation).
pub trait Layer<B: Backend>: Parameters<B> {
    /// Input width.
    fn d_in(&self) -> usize;
    /// Output width.
    fn d_out(&self) -> usize;
    /// Largest batch the workspaces hold.
    fn max_batch(&self) -> usize;

    /// Computes the output for the first `batch` rows of `input` (`[batch, d_in]`) and
    /// returns it (`[batch, d_out]`, a prefix of the layer's own workspace).
    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf>;

    /// Given the forward's `input` and `d_output` (`[batch, d_out]`), accumulates the
    /// parameter gradients and returns `d_input` (`[batch, d_in]`, overwritten).
    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf>;

    /// [`Layer::backward`], with the input gradient *added* into `d_input_acc` (`[batch,
    /// d_in]`) instead of returned: how several layers reading one input (a mixture's
    /// experts and gates) sum their gradients. The default adds `backward`'s result; a layer
    /// whose input gradient is a GEMM accumulates in it (`β = 1`) and saves that pass.
    fn backward_acc(
        &mut self,
        ops: &B,
        input: &B::Buf,
        d_output: &B::Buf,
        batch: usize,
        d_input_acc: &mut B::Buf,
    ) -> Result<()> {
        let n = batch * self.d_in();
        let d = self.backward(ops, input, d_output)?;
        ops.axpy(n, 1.0, d, d_input_acc).ctx("backward_acc")
    }

    /// Visits every GEMM of the forward pass that may run in reduced precision at
    /// inference ([`Linear`](crate::Linear) layers, full-rank cross layers). Default:
    /// none (the layer stays f32).
    fn visit_reduced(&mut self, _f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {}

    /// Training mode (dropout on) or evaluation mode (dropout off). Default: no-op for
    /// layers without dropout.
    fn set_training(&mut self, _training: bool) {}

    /// Sets the step counter of every dropout mask stream (masks are a function of
    /// (seed, step)), so a resumed run draws the masks an uninterrupted run would.
    /// Default: no-op for layers without dropout.
    fn set_dropout_step(&mut self, _step: u64) {}

    fn set_dropout_rows(&mut self, _first_row: u64) {}

    /// What the output's columns are, in the layer's own terms ([`crate::Part::In`]: its
    /// input's columns, [`crate::Part::Out`]: what its container declares for its output,
    /// [`crate::Part::Own`]: its own units), concatenated: how a container that reads the
    /// output learns that it carries the input's columns (a cross network's output, a
    /// parallel DCN's `[cross | deep]`). Default `[Out]`.
    fn output_parts(&self) -> Vec<crate::Part> {
        vec![crate::Part::Out]
    }
}

/// A configuration that builds a [`Layer`] on any backend, so generic code (tests,
/// model builders) can construct layers uniformly.
pub trait LayerConfig {
    type Layer<B: Backend>: Layer<B> + Send;

    /// Builds the layer with workspaces for `max_batch` rows, drawing initial weights
    /// (and dropout seeds) from `rng`.
    fn build<B: Backend>(&self, ops: &B, max_batch: usize, rng: &mut dyn RngCore) -> Result<Self::Layer<B>>;
}

macro_rules! layer_config {
    ($cfg:ty => $layer:ident, rng) => {
        impl LayerConfig for $cfg {
            type Layer<B: Backend> = crate::$layer<B>;
            fn build<B: Backend>(&self, ops: &B, max_batch: usize, rng: &mut dyn RngCore) -> Result<crate::$layer<B>> {
                self.init(ops, max_batch, rng)
            }
        }
    };
    ($cfg:ty => $layer:ident) => {
        impl LayerConfig for $cfg {
            type Layer<B: Backend> = crate::$layer<B>;
            fn build<B: Backend>(&self, ops: &B, max_batch: usize, _rng: &mut dyn RngCore) -> Result<crate::$layer<B>> {
                self.init(ops, max_batch)
            }
        }
    };
}

layer_config!(crate::LinearConfig => Linear, rng);
layer_config!(crate::MlpConfig => Mlp, rng);
layer_config!(crate::TowerConfig => Tower, rng);
layer_config!(crate::LayerNormConfig => LayerNorm);
layer_config!(crate::DropoutConfig => Dropout);
layer_config!(crate::CrossNetV2Config => CrossNetV2, rng);
layer_config!(crate::DcnConfig => Dcn, rng);
layer_config!(crate::GateConfig => Gate, rng);
layer_config!(crate::MaskNetConfig => MaskNet, rng);
layer_config!(crate::FinalMlpConfig => FinalMlp, rng);
layer_config!(crate::CrossNetMixConfig => CrossNetMix, rng);
