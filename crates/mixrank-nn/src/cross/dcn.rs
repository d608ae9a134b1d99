//! The DCN-V2 block: a cross network and a deep MLP, stacked or in parallel.

use mixrank_engine::{Backend, ColCopy};
use rand::Rng;

use crate::cross::{CrossNetMix, CrossNetMixConfig, CrossNetV2, CrossNetV2Config};
use crate::dense::{Mlp, MlpConfig};
use crate::error::{batch_fits, same_dim, Ctx, NnError, Result};
use crate::layer::Layer;
use crate::param::{ParamVisitor, Parameters, Part};

const LAYER: &str = "Dcn";

/// How the cross network and the deep network are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcnStructure {
    /// `y = deep(cross(x))`; `deep.d_in` must equal `cross.d`.
    Stacked,
    /// `y = [cross(x), deep(x)]` (concatenated along features); `deep.d_in` must equal
    /// `cross.d`.
    Parallel,
}

/// Which cross network a [`Dcn`] uses.
#[derive(Debug, Clone, PartialEq)]
pub enum CrossConfig {
    /// Full- or low-rank cross layers.
    V2(CrossNetV2Config),
    /// Mixture of low-rank experts per layer.
    Mix(CrossNetMixConfig),
}

impl CrossConfig {
    /// Input (and output) width.
    pub fn d(&self) -> usize {
        match self {
            CrossConfig::V2(c) => c.d,
            CrossConfig::Mix(c) => c.d,
        }
    }
}

impl From<CrossNetV2Config> for CrossConfig {
    fn from(c: CrossNetV2Config) -> Self {
        CrossConfig::V2(c)
    }
}

impl From<CrossNetMixConfig> for CrossConfig {
    fn from(c: CrossNetMixConfig) -> Self {
        CrossConfig::Mix(c)
    }
}

/// The cross network of a [`Dcn`].
pub enum Cross<B: Backend> {
    V2(CrossNetV2<B>),
    Mix(CrossNetMix<B>),
}

impl<B: Backend> Cross<B> {
    fn layer(&mut self) -> &mut dyn Layer<B> {
        match self {
            Cross::V2(c) => c,
            Cross::Mix(c) => c,
        }
    }

    /// The last forward's output.
    pub fn output(&self) -> &B::Buf {
        match self {
            Cross::V2(c) => c.output(),
            Cross::Mix(c) => c.output(),
        }
    }
}

/// Configuration of a [`Dcn`] block.
#[derive(Debug, Clone, PartialEq)]
pub struct DcnConfig {
    pub cross: CrossConfig,
    pub deep: MlpConfig,
    pub structure: DcnStructure,
}

impl DcnConfig {
    /// Output width: `deep`'s (stacked) or `cross.d + deep`'s (parallel).
    pub fn output_dim(&self) -> usize {
        match self.structure {
            DcnStructure::Stacked => self.deep.output_dim(),
            DcnStructure::Parallel => self.cross.d() + self.deep.output_dim(),
        }
    }

    pub fn init<B: Backend, R: Rng + ?Sized>(&self, ops: &B, max_batch: usize, rng: &mut R) -> Result<Dcn<B>> {
        same_dim(LAYER, "deep.d_in", self.deep.d_in, "cross.d", self.cross.d())?;
        let cross = match &self.cross {
            CrossConfig::V2(c) => Cross::V2(c.init(ops, max_batch, rng)?),
            CrossConfig::Mix(c) => Cross::Mix(c.init(ops, max_batch, rng)?),
        };
        let deep = self.deep.init(ops, max_batch, rng)?;
        let (out, d_cross, d_deep) = match self.structure {
            DcnStructure::Stacked => (ops.alloc(0), ops.alloc(0), ops.alloc(0)),
            DcnStructure::Parallel => (
                ops.alloc(max_batch * self.output_dim()),
                ops.alloc(max_batch * self.cross.d()),
                ops.alloc(max_batch * self.deep.output_dim()),
            ),
        };
        Ok(Dcn {
            config: self.clone(),
            max_batch,
            cross,
            deep,
            out: out.ctx(LAYER)?,
            d_cross: d_cross.ctx(LAYER)?,
            d_deep: d_deep.ctx(LAYER)?,
            d_input: ops.alloc(max_batch * self.cross.d()).ctx(LAYER)?,
            batch: None,
        })
    }
}

/// DCN-V2 (Wang et al., 2021): explicit bounded-degree crosses plus an MLP.
///
/// - stacked: `y = deep(cross(x))`; backward is the chain rule through both.
/// - parallel: `y = [cross(x) | deep(x)]`; backward splits `dy` by columns and sums the
///   two input gradients.
///
/// # Shapes
/// - input: `[batch, cross.d]`
/// - output: `[batch, output_dim()]`
pub struct Dcn<B: Backend> {
    config: DcnConfig,
    max_batch: usize,
    pub cross: Cross<B>,
    pub deep: Mlp<B>,
    /// Concatenated output (parallel only).
    out: B::Buf,
    /// Column blocks of `dy` (parallel only).
    d_cross: B::Buf,
    d_deep: B::Buf,
    /// `∂x` (parallel: sum of both paths).
    d_input: B::Buf,
    batch: Option<usize>,
}

impl<B: Backend> Dcn<B> {
    pub fn config(&self) -> &DcnConfig {
        &self.config
    }

    pub fn set_training(&mut self, training: bool) {
        self.deep.set_training(training);
    }

    pub fn set_dropout_step(&mut self, step: u64) {
        self.deep.set_dropout_step(step);
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        self.deep.set_dropout_rows(first_row);
    }

    fn copy_spec(&self, batch: usize, cols: usize, col: usize, to_concat: bool) -> ColCopy {
        let ld = self.config.output_dim();
        if to_concat {
            ColCopy { rows: batch, cols, src_ld: cols, src_col: 0, dst_ld: ld, dst_col: col, accumulate: false }
        } else {
            ColCopy { rows: batch, cols, src_ld: ld, src_col: col, dst_ld: cols, dst_col: 0, accumulate: false }
        }
    }
}

impl<B: Backend> Parameters<B> for Dcn<B> {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // The cross network maps the input's columns to themselves; stacked, the deep
        // part reads them and writes the output; parallel, it reads the input and
        // writes its own block of the output (`output_parts`).
        v.scope("cross", |v| v.within(&[Part::In], &[Part::In], |v| self.cross.layer().visit_params(v)));
        let deep_out = match self.config.structure {
            DcnStructure::Stacked => Part::Out,
            DcnStructure::Parallel => Part::Own,
        };
        v.scope("deep", |v| v.within(&[Part::In], &[deep_out], |v| self.deep.visit_params(v)));
    }
}

impl<B: Backend> Layer<B> for Dcn<B> {
    fn output_parts(&self) -> Vec<Part> {
        match self.config.structure {
            DcnStructure::Stacked => vec![Part::Out],
            DcnStructure::Parallel => vec![Part::In, Part::Own],
        }
    }

    fn set_dropout_step(&mut self, step: u64) {
        Dcn::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        Dcn::set_dropout_rows(self, first_row)
    }

    fn set_training(&mut self, training: bool) {
        Dcn::set_training(self, training)
    }

    /// The full-rank cross layers and the deep network's Linear layers (low-rank and
    /// mixture cross layers stay f32).
    fn visit_reduced(&mut self, f: &mut dyn FnMut(crate::ReducedSite<'_, B>)) {
        self.cross.layer().visit_reduced(f);
        self.deep.visit_reduced(f);
    }

    fn d_in(&self) -> usize {
        self.config.cross.d()
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
            DcnStructure::Stacked => {
                let c = self.cross.layer().forward(ops, input, batch)?;
                self.deep.forward(ops, c, batch)
            }
            DcnStructure::Parallel => {
                let (dc, dd) = (self.config.cross.d(), self.config.deep.output_dim());
                let spec_c = self.copy_spec(batch, dc, 0, true);
                let spec_d = self.copy_spec(batch, dd, dc, true);
                let c = self.cross.layer().forward(ops, input, batch)?;
                ops.copy_cols(&spec_c, c, &mut self.out).ctx(LAYER)?;
                let h = self.deep.forward(ops, input, batch)?;
                // [batch, d_cross + d_deep]
                ops.copy_cols(&spec_d, h, &mut self.out).ctx(LAYER)?;
                Ok(&self.out)
            }
        }
    }

    fn backward(&mut self, ops: &B, input: &B::Buf, d_output: &B::Buf) -> Result<&B::Buf> {
        let batch = self.batch.ok_or(NnError::NoForward { layer: LAYER })?;
        match self.config.structure {
            DcnStructure::Stacked => {
                let g = self.deep.backward(ops, self.cross.output(), d_output)?;
                self.cross.layer().backward(ops, input, g)
            }
            DcnStructure::Parallel => {
                let (dc, dd) = (self.config.cross.d(), self.config.deep.output_dim());
                let spec_c = self.copy_spec(batch, dc, 0, false);
                let spec_d = self.copy_spec(batch, dd, dc, false);
                ops.copy_cols(&spec_c, d_output, &mut self.d_cross).ctx(LAYER)?;
                ops.copy_cols(&spec_d, d_output, &mut self.d_deep).ctx(LAYER)?;
                let n = batch * dc;
                let gc = self.cross.layer().backward(ops, input, &self.d_cross)?;
                ops.fill(n, 0.0, &mut self.d_input).ctx(LAYER)?;
                ops.axpy(n, 1.0, gc, &mut self.d_input).ctx(LAYER)?;
                let gd = self.deep.backward(ops, input, &self.d_deep)?;
                ops.axpy(n, 1.0, gd, &mut self.d_input).ctx(LAYER)?;
                Ok(&self.d_input)
            }
        }
    }
}
