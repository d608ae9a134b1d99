//! Multi-layer perceptron: a stack of Linear → [LayerNorm] → activation → [Dropout]
//! blocks, optionally followed by a plain linear projection.

use mixrank_engine::{Activation, Backend};
use rand::Rng;

use crate::dense::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use crate::error::{positive, NnError, Result};
use crate::layer::Layer;
use crate::param::{Init, ParamVisitor, Parameters, Part};

const LAYER: &str = "Mlp";

/// Configuration of an [`Mlp`].
#[derive(Debug, Clone, PartialEq)]
pub struct MlpConfig {
    /// Input width.
    pub d_in: usize,
    /// Widths of the hidden blocks, in order (may be empty if `d_out` is set).
    pub hidden: Vec<usize>,
    /// Activation of every hidden block. Default ReLU.
    pub activation: Activation,
    /// Dropout probability after every hidden block's activation, in `[0, 1)`. Default 0.
    pub dropout: f32,
    /// Layer norm between each hidden block's linear map and its activation. The linear
    /// map then has no bias (the norm's `β` takes its place). Default false.
    pub layer_norm: bool,
    /// Width of a final linear projection with bias and no activation (e.g. 1 for a
    /// logit). Default none: the output is the last hidden block's.
    pub d_out: Option<usize>,
    /// Weight initialisation of every linear map. Default Xavier uniform.
    pub init: Init,
}

impl MlpConfig {
    /// ReLU blocks of the given widths, no dropout, no norm, no output projection.
    pub fn new(d_in: usize, hidden: &[usize]) -> Self {
        MlpConfig {
            d_in,
            hidden: hidden.to_vec(),
            activation: Activation::Relu,
            dropout: 0.0,
            layer_norm: false,
            d_out: None,
            init: Init::XavierUniform,
        }
    }

    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    pub fn with_layer_norm(mut self, on: bool) -> Self {
        self.layer_norm = on;
        self
    }

    pub fn with_output(mut self, d_out: usize) -> Self {
        self.d_out = Some(d_out);
        self
    }

    /// Width of the output.
    pub fn output_dim(&self) -> usize {
        self.d_out.or(self.hidden.last().copied()).unwrap_or(self.d_in)
    }

    /// Builds the MLP with workspaces for up to `max_batch` rows; dropout seeds are drawn
    /// from `rng`.
    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<Mlp<B>> {
        positive(LAYER, "d_in", self.d_in)?;
        if self.hidden.is_empty() && self.d_out.is_none() {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "hidden",
                reason: "no hidden blocks and no d_out: the MLP would be empty".into(),
            });
        }
        let mut blocks = Vec::with_capacity(self.hidden.len());
        let mut width = self.d_in;
        for &h in &self.hidden {
            positive(LAYER, "hidden", h)?;
            let fused = if self.layer_norm { Activation::Identity } else { self.activation };
            let linear = LinearConfig::new(width, h)
                .with_bias(!self.layer_norm)
                .with_activation(fused)
                .with_init(self.init)
                .init(ops, max_batch, rng)?;
            let norm = if self.layer_norm {
                Some(LayerNormConfig::new(h).with_activation(self.activation).init(ops, max_batch)?)
            } else {
                None
            };
            let dropout = if self.dropout != 0.0 {
                Some(DropoutConfig { d: h, p: self.dropout, seed: rng.random() }.init(ops, max_batch)?)
            } else {
                None
            };
            blocks.push(Block { linear, norm, dropout, dropped: false });
            width = h;
        }
        let output = match self.d_out {
            Some(d) => Some(LinearConfig::new(width, d).with_init(self.init).init(ops, max_batch, rng)?),
            None => None,
        };
        Ok(Mlp { config: self.clone(), max_batch, blocks, output })
    }
}

/// One hidden block: `dropout(act(norm(x · W [+ b])))`.
struct Block<B: Backend> {
    /// Carries the activation itself when there is no norm.
    linear: Linear<B>,
    /// Carries the activation when present.
    norm: Option<LayerNorm<B>>,
    dropout: Option<Dropout<B>>,
    /// Whether the last forward applied the dropout mask.
    dropped: bool,
}

impl<B: Backend> Block<B> {
    fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()> {
        let mut h = self.linear.forward(ops, x, batch)?;
        if let Some(norm) = &mut self.norm {
            h = norm.forward(ops, h, batch)?;
        }
        self.dropped = false;
        if let Some(d) = &mut self.dropout {
            if d.active() {
                d.forward(ops, h, batch)?;
                self.dropped = true;
            }
        }
        Ok(())
    }

    fn output(&self) -> &B::Buf {
        match (&self.dropout, &self.norm) {
            (Some(d), _) if self.dropped => d.output(),
            (_, Some(n)) => n.output(),
            _ => self.linear.output(),
        }
    }

    /// Backward; the input gradient is the Linear layer's (`acc`: added into that
    /// buffer instead, see [`Layer::backward_acc`]).
    fn backward(&mut self, ops: &B, x: &B::Buf, dy: &B::Buf, acc: Option<(usize, &mut B::Buf)>) -> Result<()> {
        let g = match &mut self.dropout {
            Some(d) if self.dropped => d.backward(ops, x, dy)?,
            _ => dy,
        };
        let g = match &mut self.norm {
            Some(n) => n.backward(ops, self.linear.output(), g)?,
            None => g,
        };
        match acc {
            Some((batch, d_x)) => self.linear.backward_acc(ops, x, g, batch, d_x),
            None => self.linear.backward(ops, x, g).map(|_| ()),
        }
    }
}

/// `y = [W_out ·] block_L(… block_1(x))` with `block(x) = dropout(act(norm(x·W + b)))`.
///
/// Each stage's backward is its own layer's (see [`Linear`], [`LayerNorm`],
/// [`Dropout`]); the MLP only routes activations forward and gradients back, without
/// copies.
///
/// # Shapes
/// - input: `[batch, d_in]`
/// - output: `[batch, d_out]` (or `[batch, hidden.last()]` without a projection)
pub struct Mlp<B: Backend> {
    config: MlpConfig,
    max_batch: usize,
    blocks: Vec<Block<B>>,
    output: Option<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Backward through every stage; the first stage's input gradient is returned by
    /// its Linear layer or, with `acc`, added into that buffer.
    fn backward_inner(
        &mut self,
        ops: &B,
        input: &B::Buf,
        d_output: &B::Buf,
        mut acc: Option<(usize, &mut B::Buf)>,
    ) -> Result<()> {
        if let Some(o) = &mut self.output {
            let x = self.blocks.last().map_or(input, |b| b.output());
            // The projection is the first stage only without blocks.
            match acc.take_if(|_| self.blocks.is_empty()) {
                Some((batch, d_x)) => o.backward_acc(ops, x, d_output, batch, d_x)?,
                None => {
                    o.backward(ops, x, d_output)?;
                }
            }
        }
        let n = self.blocks.len();
        for i in (0..n).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let (cur, after) = rest.split_first_mut().expect("i < n");
            let x = if i == 0 { input } else { before[i - 1].output() };
            let dy = match (after.first(), &self.output) {
                (Some(next), _) => next.linear.d_input(),
                (None, Some(o)) => o.d_input(),
                (None, None) => d_output,
            };
            cur.backward(ops, x, dy, if i == 0 { acc.take() } else { None })?;
        }
        Ok(())
    }

    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// Training (dropout on) or evaluation mode. Default: training.
    pub fn set_training(&mut self, training: bool) {
        for b in &mut self.blocks {
            if let Some(d) = &mut b.dropout {
                d.set_training(training);
            }
        }
    }

    /// Sets every dropout mask counter (resume, or repeating a mask in a gradient check).
    pub fn set_dropout_step(&mut self, step: u64) {
        for b in &mut self.blocks {
            if let Some(d) = &mut b.dropout {
                d.set_step(step);
            }
        }
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        for b in &mut self.blocks {
            if let Some(d) = &mut b.dropout {
                d.set_first_row(first_row);
            }
        }
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        match (&self.output, self.blocks.last()) {
            (Some(o), _) => o.output(),
            (None, Some(b)) => b.output(),
            (None, None) => unreachable!("init rejects an empty MLP"),
        }
    }

    /// The last backward's input gradient.
    pub fn d_input(&self) -> &B::Buf {
        match (self.blocks.first(), &self.output) {
            (Some(b), _) => b.linear.d_input(),
            (None, Some(o)) => o.d_input(),
            (None, None) => unreachable!("init rejects an empty MLP"),
        }
    }
}

impl<B: Backend> Parameters<B> for Mlp<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // Block 0 reads the MLP's input; the last block writes its output unless a
        // projection follows; everything between is the MLP's own hidden units.
        let n = self.blocks.len();
        let last_out = if self.output.is_some() { Part::Own } else { Part::Out };
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let input = if i == 0 { Part::In } else { Part::Own };
            let output = if i + 1 == n { last_out } else { Part::Own };
            v.scope_indexed("blocks", i, |v| {
                v.scope("linear", |v| v.within(&[input], &[output], |v| b.linear.visit_params(v)));
                if let Some(norm) = &mut b.norm {
                    v.scope("norm", |v| v.within(&[output], &[output], |v| norm.visit_params(v)));
                }
            });
        }
        if let Some(o) = &mut self.output {
            let input = if n == 0 { Part::In } else { Part::Own };
            v.scope("output", |v| v.within(&[input], &[Part::Out], |v| o.visit_params(v)));
        }
    }
}

impl<B: Backend> Layer<B> for Mlp<B> {
    fn set_dropout_step(&mut self, step: u64) {
        Mlp::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        Mlp::set_dropout_rows(self, first_row)
    }

    fn set_training(&mut self, training: bool) {
        Mlp::set_training(self, training)
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        for b in &mut self.blocks {
            b.linear.visit_reduced(f);
        }
        if let Some(o) = &mut self.output {
            o.visit_reduced(f);
        }
    }

    fn d_in(&self) -> usize {
        self.config.d_in
    }

    fn d_out(&self) -> usize {
        self.config.output_dim()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = if i == 0 { input } else { before[i - 1].output() };
            rest[0].forward(ops, x, batch)?;
        }
        if let Some(o) = &mut self.output {
            let x = self.blocks.last().map_or(input, |b| b.output());
            o.forward(ops, x, batch)?;
        }
        Ok(self.output())
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        self.backward_inner(ops, input, d_output, None)?;
        Ok(self.d_input())
    }

    fn backward_acc(
        &mut self,
        ops: &B,
        input: &B::Buf,
        d_output: &B::Buf,
        batch: usize,
        d_input_acc: &mut B::Buf,
    ) -> Result<()> {
        self.backward_inner(ops, input, d_output, Some((batch, d_input_acc)))
    }
}
