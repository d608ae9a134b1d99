//! Inverted dropout with a counter-based, seeded mask.

use mixrank_engine::Backend;

use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{ParamVisitor, Parameters};

const LAYER: &str = "Dropout";

/// Configuration of a [`Dropout`] layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutConfig {
    /// Width of the rows it is applied to.
    pub d: usize,
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f32,
    /// Seed of the mask stream.
    pub seed: u64,
}

impl DropoutConfig {
    pub fn init<B: Backend>(&self, ops: &B, max_batch: usize) -> Result<Dropout<B>> {
        positive(LAYER, "d", self.d)?;
        positive(LAYER, "max_batch", max_batch)?;
        if !(0.0..1.0).contains(&self.p) {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "p",
                reason: format!("{} is not in [0, 1)", self.p),
            });
        }
        let n = max_batch * self.d;
        Ok(Dropout {
            config: *self,
            max_batch,
            training: true,
            step: 0,
            first_row: 0,
            mask: ops.alloc(n).ctx(LAYER)?,
            out: ops.alloc(n).ctx(LAYER)?,
            d_input: ops.alloc(n).ctx(LAYER)?,
            last: None,
        })
    }
}

/// Inverted dropout: in training `y = x ⊙ m` with `m_i = 1/(1-p)` with probability
/// `1-p` and `0` otherwise; in evaluation `y = x`. Backward: `dx = dy ⊙ m`.
///
/// The mask is a pure function of `(seed, step, element index)` (SplitMix64 of a
/// counter, like Philox on GPUs), so a run resumed at the same step draws the same
/// masks without saving RNG state. `step` advances after every training forward. The
/// mask is drawn on the host into a buffer allocated once and copied to the backend
/// (for CPU backends that copy is a memcpy).
///
/// # Shapes
/// - input, output: `[batch, d]`
pub struct Dropout<B: Backend> {
    config: DropoutConfig,
    max_batch: usize,
    training: bool,
    step: u64,
    /// Global row of the batch's first row (data-parallel: the rank's offset).
    first_row: u64,
    mask: B::Buf,
    out: B::Buf,
    d_input: B::Buf,
    /// Elements of the last forward and whether the mask was applied.
    last: Option<(usize, bool)>,
}

/// The counter-based uniform numbers behind every dropout mask
/// ([`mixrank_engine::mask`]): number `i` of step `step` is a pure function of
/// `(seed, step, i)`, so masks need no RNG state and a resumed run draws the same ones.
/// [`Dropout`] draws one per element through `Backend::dropout_mask`; other masks (the
/// position tower's feature dropout) one per block, here.
#[derive(Debug, Clone, Copy)]
pub struct MaskStream {
    base: u64,
}

impl MaskStream {
    pub fn new(seed: u64, step: u64) -> Self {
        MaskStream { base: mixrank_engine::mask::dropout_base(seed, step) }
    }

    /// Number `i` of the stream, uniform in `[0, 1)`.
    pub fn uniform(&self, i: u64) -> f64 {
        mixrank_engine::mask::uniform(self.base, i)
    }
}

impl<B: Backend> Dropout<B> {
    /// Training (mask applied) or evaluation (identity) mode. Default: training.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn training(&self) -> bool {
        self.training
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        &self.out
    }

    /// The last backward's input gradient.
    pub fn d_input(&self) -> &B::Buf {
        &self.d_input
    }

    /// Whether a forward in the current mode changes its input.
    pub fn active(&self) -> bool {
        self.training && self.config.p > 0.0
    }

    /// Index of the next mask (advances after each training forward).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Sets the mask counter, e.g. when resuming or to repeat a mask in a gradient check.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Sets the global row of the next batch's first row: its masks are the global
    /// batch's (data-parallel training, [`crate::Layer::set_dropout_rows`]).
    pub fn set_first_row(&mut self, first_row: u64) {
        self.first_row = first_row;
    }
}

impl<B: Backend> Parameters<B> for Dropout<B> {
    fn visit_params(&mut self, _v: &mut ParamVisitor<'_, B>) {}
}

impl<B: Backend> Layer<B> for Dropout<B> {
    fn output_parts(&self) -> Vec<crate::Part> {
        vec![crate::Part::In]
    }

    fn set_training(&mut self, training: bool) {
        Dropout::set_training(self, training)
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

    /// In evaluation mode (or with `p = 0`) this copies the input; [`crate::Mlp`] skips
    /// the layer instead when [`Dropout::active`] is false.
    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let n = batch * self.config.d;
        let active = self.active();
        if active {
            let first = self.first_row * self.config.d as u64;
            ops.dropout_mask(n, self.config.p, self.config.seed, self.step, first, &mut self.mask).ctx(LAYER)?;
            ops.mul(n, input, &self.mask, &mut self.out).ctx(LAYER)?;
            self.step += 1;
        } else {
            ops.fill(n, 0.0, &mut self.out).ctx(LAYER)?;
            ops.axpy(n, 1.0, input, &mut self.out).ctx(LAYER)?;
        }
        self.last = Some((n, active));
        Ok(&self.out)
    }

    fn backward(&mut self, ops: &B, _input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let (n, active) = self.last.ok_or(NnError::NoForward { layer: LAYER })?;
        if active {
            ops.mul(n, d_output, &self.mask, &mut self.d_input).ctx(LAYER)?;
        } else {
            ops.fill(n, 0.0, &mut self.d_input).ctx(LAYER)?;
            ops.axpy(n, 1.0, d_output, &mut self.d_input).ctx(LAYER)?;
        }
        Ok(&self.d_input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixrank_engine::RefOps;

    #[test]
    fn mask_rate_scale_and_reproducibility() {
        let ops = RefOps;
        let cfg = DropoutConfig { d: 100, p: 0.3, seed: 7 };
        let mut a = cfg.init(&ops, 50).unwrap();
        let x = vec![1.0f32; 5000];
        let y1 = a.forward(&ops, &x, 50).unwrap().clone();
        let y2 = a.forward(&ops, &x, 50).unwrap().clone();
        assert_ne!(y1, y2, "consecutive steps must draw different masks");
        let zeros = y1.iter().filter(|&&v| v == 0.0).count();
        // Binomial(5000, 0.3): sd ≈ 32, so ±150 is a ~4.6σ band.
        assert!((1350..=1650).contains(&zeros), "{zeros}");
        assert!(y1.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        a.set_step(0);
        assert_eq!(a.forward(&ops, &x, 50).unwrap(), &y1, "same step must give the same mask");
        a.set_training(false);
        assert_eq!(a.forward(&ops, &x, 50).unwrap(), &x);
        assert!(DropoutConfig { d: 3, p: 1.0, seed: 0 }.init(&ops, 1).is_err());
    }
}
