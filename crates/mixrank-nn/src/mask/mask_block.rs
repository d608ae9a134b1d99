//! MaskNet's MaskBlock: an instance-guided mask applied to a layer-normed hidden input.

use mixrank_engine::{Activation, Backend};
use rand::Rng;

use crate::dense::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{Init, ParamVisitor, Parameters, Part};

const LAYER: &str = "MaskBlock";

/// Configuration of a [`MaskBlock`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskBlockConfig {
    /// Width of the feature embedding `V_emb` that drives the mask.
    pub d_emb: usize,
    /// Width of the hidden input `V_hidden` being masked.
    pub d_hidden: usize,
    /// Width of the mask generator's aggregation layer (the paper's reduction ratio ×
    /// `d_emb`).
    pub d_mask: usize,
    /// Output width.
    pub d_out: usize,
    /// Layer-normalise `V_hidden` before masking (the paper does for the embedding
    /// input; a previous MaskBlock's output is already normalised). Default true.
    pub norm_hidden: bool,
    /// Activation after `LN_out` (FuxiCTR's `hidden_activations`). Default ReLU.
    pub activation: Activation,
    /// Dropout after the output activation (FuxiCTR's `net_dropout`), in `[0, 1)`. Default 0.
    pub dropout: f32,
    /// Weight initialisation. Default Xavier uniform.
    pub init: Init,
}

impl MaskBlockConfig {
    pub fn new(d_emb: usize, d_hidden: usize, d_mask: usize, d_out: usize) -> Self {
        MaskBlockConfig {
            d_emb,
            d_hidden,
            d_mask,
            d_out,
            norm_hidden: true,
            activation: Activation::Relu,
            dropout: 0.0,
            init: Init::XavierUniform,
        }
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<MaskBlock<B>> {
        for (field, v) in
            [("d_emb", self.d_emb), ("d_hidden", self.d_hidden), ("d_mask", self.d_mask), ("d_out", self.d_out)]
        {
            positive(LAYER, field, v)?;
        }
        let init = self.init;
        Ok(MaskBlock {
            config: self.clone(),
            max_batch,
            mask_agg: LinearConfig::new(self.d_emb, self.d_mask)
                .with_activation(Activation::Relu)
                .with_init(init)
                .init(ops, max_batch, rng)?,
            mask_proj: LinearConfig::new(self.d_mask, self.d_hidden).with_init(init).init(ops, max_batch, rng)?,
            norm_in: if self.norm_hidden {
                Some(LayerNormConfig::new(self.d_hidden).init(ops, max_batch)?)
            } else {
                None
            },
            hidden: LinearConfig::new(self.d_hidden, self.d_out)
                .with_bias(false)
                .with_init(init)
                .init(ops, max_batch, rng)?,
            norm_out: LayerNormConfig::new(self.d_out).with_activation(self.activation).init(ops, max_batch)?,
            dropout: if self.dropout != 0.0 {
                Some(DropoutConfig { d: self.d_out, p: self.dropout, seed: rng.random() }.init(ops, max_batch)?)
            } else {
                None
            },
            dropped: false,
            masked: ops.alloc(max_batch * self.d_hidden).ctx(LAYER)?,
            d_mask: ops.alloc(max_batch * self.d_hidden).ctx(LAYER)?,
            d_normed: ops.alloc(max_batch * self.d_hidden).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// MaskBlock (Wang et al., 2021, "MaskNet"):
///
/// `m = W₂ · ReLU(W₁ · V_emb + b₁) + b₂` (instance-guided mask, `[batch, d_hidden]`),
/// `y = dropout(act(LN_out(W_h · (m ⊙ LN_in(V_hidden)))))` (`W_h` without bias: the
/// norm's `β` replaces it; `act` is ReLU unless configured).
///
/// Backward: through `LN_out`+act and `W_h` to `d(m ⊙ h)`, then `dm = d(m⊙h) ⊙ h`,
/// `dh = d(m⊙h) ⊙ m`, and each branch through its own layers.
///
/// # Shapes
/// - emb: `[batch, d_emb]`, hidden: `[batch, d_hidden]`
/// - output: `[batch, d_out]`
pub struct MaskBlock<B: Backend> {
    config: MaskBlockConfig,
    max_batch: usize,
    pub mask_agg: Linear<B>,
    pub mask_proj: Linear<B>,
    pub norm_in: Option<LayerNorm<B>>,
    pub hidden: Linear<B>,
    pub norm_out: LayerNorm<B>,
    pub dropout: Option<Dropout<B>>,
    /// Whether the last forward applied the dropout mask.
    dropped: bool,
    /// `m ⊙ LN_in(V_hidden)`.
    masked: B::Buf,
    d_mask: B::Buf,
    /// Gradient w.r.t. the (normalised) hidden input.
    d_normed: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> MaskBlock<B> {
    /// The block's Linear layers (mask aggregation, mask projection, hidden), for
    /// reduced-precision inference; the layer norms stay f32.
    pub fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        self.mask_agg.visit_reduced(f);
        self.mask_proj.visit_reduced(f);
        self.hidden.visit_reduced(f);
    }

    pub fn config(&self) -> &MaskBlockConfig {
        &self.config
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Computes `y` for the first `batch` rows.
    pub fn forward(&mut self, ops: &B, emb: &B::Buf, hidden: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        let n = batch * self.config.d_hidden;
        let a = self.mask_agg.forward(ops, emb, batch)?;
        let m = self.mask_proj.forward(ops, a, batch)?;
        let h = match &mut self.norm_in {
            Some(norm) => norm.forward(ops, hidden, batch)?,
            None => hidden,
        };
        ops.mul(n, m, h, &mut self.masked).ctx(LAYER)?;
        let o = self.hidden.forward(ops, &self.masked, batch)?;
        let y = self.norm_out.forward(ops, o, batch)?;
        self.dropped = false;
        if let Some(d) = &mut self.dropout {
            if d.active() {
                d.forward(ops, y, batch)?;
                self.dropped = true;
            }
        }
        self.batch = Some(batch);
        Ok(self.output())
    }

    /// Training (dropout on) or evaluation mode. Default: training.
    pub fn set_training(&mut self, training: bool) {
        if let Some(d) = &mut self.dropout {
            d.set_training(training);
        }
    }

    /// Sets the dropout mask counter (resume, or repeating a mask in a gradient check).
    pub fn set_dropout_step(&mut self, step: u64) {
        if let Some(d) = &mut self.dropout {
            d.set_step(step);
        }
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        if let Some(d) = &mut self.dropout {
            d.set_first_row(first_row);
        }
    }

    /// Accumulates parameter gradients; afterwards [`MaskBlock::d_emb`] and
    /// [`MaskBlock::d_hidden`] hold the two input gradients (overwritten).
    pub fn backward(&mut self, ops: &B, emb: &B::Buf, hidden: &B::Buf, d_output: &B::Buf) -> Result<()> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let n = batch * self.config.d_hidden;
        let g = match &mut self.dropout {
            Some(d) if self.dropped => d.backward(ops, self.norm_out.output(), d_output)?,
            _ => d_output,
        };
        let g = self.norm_out.backward(ops, self.hidden.output(), g)?;
        let g = self.hidden.backward(ops, &self.masked, g)?;
        let h = match &self.norm_in {
            Some(norm) => norm.output(),
            None => hidden,
        };
        ops.mul_backward(n, self.mask_proj.output(), h, g, &mut self.d_mask, &mut self.d_normed).ctx(LAYER)?;
        if let Some(norm) = &mut self.norm_in {
            norm.backward(ops, hidden, &self.d_normed)?;
        }
        let g = self.mask_proj.backward(ops, self.mask_agg.output(), &self.d_mask)?;
        self.mask_agg.backward(ops, emb, g)?;
        Ok(())
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        match &self.dropout {
            Some(d) if self.dropped => d.output(),
            _ => self.norm_out.output(),
        }
    }

    /// Gradient w.r.t. `V_emb` from the last backward.
    pub fn d_emb(&self) -> &B::Buf {
        self.mask_agg.d_input()
    }

    /// Gradient w.r.t. `V_hidden` from the last backward.
    pub fn d_hidden(&self) -> &B::Buf {
        match &self.norm_in {
            Some(norm) => norm.d_input(),
            None => &self.d_normed,
        }
    }
}

impl<B: Backend> Parameters<B> for MaskBlock<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // Input part 0 is the embedding driving the mask, part 1 the hidden input masked.
        let (emb, hidden) = (Part::InPart(0), Part::InPart(1));
        v.scope("mask_agg", |v| v.within(&[emb], &[Part::Own], |v| self.mask_agg.visit_params(v)));
        v.scope("mask_proj", |v| v.within(&[Part::Own], &[hidden], |v| self.mask_proj.visit_params(v)));
        if let Some(norm) = &mut self.norm_in {
            v.scope("norm_in", |v| v.within(&[hidden], &[hidden], |v| norm.visit_params(v)));
        }
        v.scope("hidden", |v| v.within(&[hidden], &[Part::Out], |v| self.hidden.visit_params(v)));
        v.scope("norm_out", |v| v.within(&[Part::Out], &[Part::Out], |v| self.norm_out.visit_params(v)));
    }
}
