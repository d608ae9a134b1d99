//! MaskNet: MaskBlocks in series or in parallel over the feature embedding.

use mixrank_engine::{Activation, Backend, ColCopy};
use rand::Rng;

use crate::dense::{Mlp, MlpConfig};
use crate::error::{batch_fits, positive, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::mask::{MaskBlock, MaskBlockConfig};
use crate::param::{Init, ParamVisitor, Parameters, Part};

const LAYER: &str = "MaskNet";

/// How MaskBlocks are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskNetStructure {
    /// `h₀ = block₀(e, e)`, `h_i = block_i(e, h_{i-1})`; output `h_last`.
    Serial,
    /// `h_i = block_i(e, e)` for all `i`; output `[h₀ | h₁ | …]`, or that through an MLP
    /// when `mlp_hidden` is given (FuxiCTR's `ParallelMaskNet`).
    Parallel,
}

/// Configuration of a [`MaskNet`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskNetConfig {
    /// Width of the concatenated feature embedding.
    pub d_emb: usize,
    /// Number of MaskBlocks.
    pub blocks: usize,
    /// Output width of each block.
    pub d_block: usize,
    /// Width of each block's mask aggregation layer.
    pub d_mask: usize,
    pub structure: MaskNetStructure,
    /// Activation after each block's output layer norm, and of the MLP's hidden layers
    /// (FuxiCTR's `hidden_activations`). Default ReLU.
    pub activation: Activation,
    /// Dropout after each block's output and after each MLP hidden layer, in `[0, 1)`.
    /// Default 0.
    pub dropout: f32,
    /// Parallel only: hidden sizes of an MLP over the concatenated block outputs
    /// (FuxiCTR's `ParallelMaskNet` `dnn`); empty = none. Default empty.
    pub mlp_hidden: Vec<usize>,
    /// Weight initialisation. Default Xavier uniform.
    pub init: Init,
}

impl MaskNetConfig {
    pub fn new(d_emb: usize, blocks: usize, d_block: usize, d_mask: usize, structure: MaskNetStructure) -> Self {
        MaskNetConfig {
            d_emb,
            blocks,
            d_block,
            d_mask,
            structure,
            activation: Activation::Relu,
            dropout: 0.0,
            mlp_hidden: Vec::new(),
            init: Init::XavierUniform,
        }
    }

    /// Output width: `d_block` (serial), `blocks · d_block` (parallel), or the last MLP
    /// width (parallel with `mlp_hidden`).
    pub fn output_dim(&self) -> usize {
        match (self.structure, self.mlp_hidden.last()) {
            (MaskNetStructure::Serial, _) => self.d_block,
            (MaskNetStructure::Parallel, None) => self.concat_dim(),
            (MaskNetStructure::Parallel, Some(&d)) => d,
        }
    }

    /// Width of the concatenated block outputs (parallel).
    fn concat_dim(&self) -> usize {
        self.blocks * self.d_block
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<MaskNet<B>> {
        positive(LAYER, "blocks", self.blocks)?;
        positive(LAYER, "max_batch", max_batch)?;
        let parallel = self.structure == MaskNetStructure::Parallel;
        if !parallel && !self.mlp_hidden.is_empty() {
            return Err(NnError::InvalidConfig {
                layer: LAYER,
                field: "mlp_hidden",
                reason: "only a parallel MaskNet has an MLP after its blocks".into(),
            });
        }
        let mut blocks = Vec::with_capacity(self.blocks);
        for i in 0..self.blocks {
            // Serial blocks after the first mask the previous (already normalised) output.
            let serial_later = self.structure == MaskNetStructure::Serial && i > 0;
            let d_hidden = if serial_later { self.d_block } else { self.d_emb };
            let cfg = MaskBlockConfig {
                norm_hidden: !serial_later,
                activation: self.activation,
                dropout: self.dropout,
                init: self.init,
                ..MaskBlockConfig::new(self.d_emb, d_hidden, self.d_mask, self.d_block)
            };
            blocks.push(cfg.init(ops, max_batch, rng)?);
        }
        let mlp = if self.mlp_hidden.is_empty() {
            None
        } else {
            let c = MlpConfig {
                init: self.init,
                ..MlpConfig::new(self.concat_dim(), &self.mlp_hidden)
                    .with_activation(self.activation)
                    .with_dropout(self.dropout)
            };
            Some(c.init(ops, max_batch, rng)?)
        };
        let alloc = |len: usize| ops.alloc(len).ctx(LAYER);
        Ok(MaskNet {
            config: self.clone(),
            max_batch,
            blocks,
            mlp,
            out: alloc(if parallel { max_batch * self.concat_dim() } else { 0 })?,
            d_part: alloc(if parallel { max_batch * self.d_block } else { 0 })?,
            d_input: alloc(max_batch * self.d_emb)?,
            batch: None,
        })
    }
}

/// MaskNet (Wang et al., 2021): serial or parallel stacks of [`MaskBlock`]s, each
/// guided by the same feature embedding.
///
/// The input gradient sums every block's `d_emb` plus, where a block's hidden input is
/// the embedding itself, its `d_hidden`.
///
/// # Shapes
/// - input (embedding): `[batch, d_emb]`
/// - output: `[batch, d_block]` (serial), `[batch, blocks · d_block]` (parallel) or
///   `[batch, mlp_hidden.last()]` (parallel with an MLP)
pub struct MaskNet<B: Backend> {
    config: MaskNetConfig,
    max_batch: usize,
    pub blocks: Vec<MaskBlock<B>>,
    /// The MLP over the concatenated block outputs (parallel with `mlp_hidden` only).
    pub mlp: Option<Mlp<B>>,
    /// Concatenated block outputs (parallel only).
    out: B::Buf,
    /// One block's column slice of `dy` (parallel only).
    d_part: B::Buf,
    d_input: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> MaskNet<B> {
    pub fn config(&self) -> &MaskNetConfig {
        &self.config
    }

    /// Training (dropout on) or evaluation mode. Default: training.
    pub fn set_training(&mut self, training: bool) {
        self.blocks.iter_mut().for_each(|b| b.set_training(training));
        if let Some(m) = &mut self.mlp {
            m.set_training(training);
        }
    }

    /// Sets every dropout mask counter.
    pub fn set_dropout_step(&mut self, step: u64) {
        self.blocks.iter_mut().for_each(|b| b.set_dropout_step(step));
        if let Some(m) = &mut self.mlp {
            m.set_dropout_step(step);
        }
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        self.blocks.iter_mut().for_each(|b| b.set_dropout_rows(first_row));
        if let Some(m) = &mut self.mlp {
            m.set_dropout_rows(first_row);
        }
    }

    fn block_cols(&self, batch: usize, i: usize, to_concat: bool) -> ColCopy {
        Self::cols(self.config.d_block, self.config.concat_dim(), batch, i, to_concat)
    }

    /// Block `i`'s columns of the `[batch, ld]` concatenation, `w` wide.
    fn cols(w: usize, ld: usize, batch: usize, i: usize, to_concat: bool) -> ColCopy {
        if to_concat {
            ColCopy { rows: batch, cols: w, src_ld: w, src_col: 0, dst_ld: ld, dst_col: i * w, accumulate: false }
        } else {
            ColCopy { rows: batch, cols: w, src_ld: ld, src_col: i * w, dst_ld: w, dst_col: 0, accumulate: false }
        }
    }
}

impl<B: Backend> Parameters<B> for MaskNet<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // Each block reads (embedding, hidden): serial, the input then the previous
        // block's output, the last block writing the output; parallel, the input twice,
        // the blocks' outputs concatenated (then through the MLP, if any).
        let (n, serial) = (self.blocks.len(), self.config.structure == MaskNetStructure::Serial);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let hidden = if serial && i > 0 { Part::Own } else { Part::In };
            let out = if serial && i + 1 == n { Part::Out } else { Part::Own };
            v.scope_indexed("blocks", i, |v| v.within(&[Part::In, hidden], &[out], |v| b.visit_params(v)));
        }
        if let Some(m) = &mut self.mlp {
            v.scope("mlp", |v| v.within(&[Part::Own], &[Part::Out], |v| m.visit_params(v)));
        }
    }
}

impl<B: Backend> Layer<B> for MaskNet<B> {
    fn set_dropout_step(&mut self, step: u64) {
        MaskNet::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        MaskNet::set_dropout_rows(self, first_row)
    }

    fn set_training(&mut self, training: bool) {
        MaskNet::set_training(self, training)
    }

    /// Every block's Linear layers and the MLP's (the layer norms stay f32).
    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        self.blocks.iter_mut().for_each(|b| b.visit_reduced(f));
        if let Some(m) = &mut self.mlp {
            m.visit_reduced(f);
        }
    }

    fn d_in(&self) -> usize {
        self.config.d_emb
    }

    fn d_out(&self) -> usize {
        self.config.output_dim()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, input: &B::Buf, batch: usize) -> Result<&B::Buf> {
        batch_fits(LAYER, batch, self.max_batch)?;
        self.batch = Some(batch);
        match self.config.structure {
            MaskNetStructure::Serial => {
                for i in 0..self.blocks.len() {
                    let (before, rest) = self.blocks.split_at_mut(i);
                    let hidden = if i == 0 { input } else { before[i - 1].output() };
                    rest[0].forward(ops, input, hidden, batch)?;
                }
                Ok(self.blocks.last().expect("blocks >= 1").output())
            }
            MaskNetStructure::Parallel => {
                for i in 0..self.blocks.len() {
                    let spec = self.block_cols(batch, i, true);
                    let h = self.blocks[i].forward(ops, input, input, batch)?;
                    // [batch, blocks · d_block]
                    ops.copy_cols(&spec, h, &mut self.out).ctx(LAYER)?;
                }
                match &mut self.mlp {
                    Some(m) => m.forward(ops, &self.out, batch),
                    None => Ok(&self.out),
                }
            }
        }
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        let n = batch * self.config.d_emb;
        ops.fill(n, 0.0, &mut self.d_input).ctx(LAYER)?;
        match self.config.structure {
            MaskNetStructure::Serial => {
                let count = self.blocks.len();
                for i in (0..count).rev() {
                    let (before, rest) = self.blocks.split_at_mut(i);
                    let (cur, after) = rest.split_first_mut().expect("i < count");
                    let hidden = if i == 0 { input } else { before[i - 1].output() };
                    let dy = after.first().map_or(d_output, |next| next.d_hidden());
                    cur.backward(ops, input, hidden, dy)?;
                    ops.axpy(n, 1.0, cur.d_emb(), &mut self.d_input).ctx(LAYER)?;
                }
                ops.axpy(n, 1.0, self.blocks[0].d_hidden(), &mut self.d_input).ctx(LAYER)?;
            }
            MaskNetStructure::Parallel => {
                let (w, ld) = (self.config.d_block, self.config.concat_dim());
                let d_concat = match &mut self.mlp {
                    Some(m) => m.backward(ops, &self.out, d_output)?,
                    None => d_output,
                };
                for i in 0..self.blocks.len() {
                    let spec = Self::cols(w, ld, batch, i, false);
                    ops.copy_cols(&spec, d_concat, &mut self.d_part).ctx(LAYER)?;
                    let b = &mut self.blocks[i];
                    b.backward(ops, input, input, &self.d_part)?;
                    ops.axpy(n, 1.0, b.d_emb(), &mut self.d_input).ctx(LAYER)?;
                    ops.axpy(n, 1.0, b.d_hidden(), &mut self.d_input).ctx(LAYER)?;
                }
            }
        }
        Ok(&self.d_input)
    }
}
