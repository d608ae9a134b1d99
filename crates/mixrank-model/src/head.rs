//! The multi-task head: everything between the input features and the task logits,
//! as one trait ([`Head`]) with one type per architecture and one constructor
//! ([`build_head`]) that maps the config's `architecture` to a type.
//!
//! ```text
//! x ─► [shared MLP] ─► trunk ─► architecture ─► tower_t input ─► tower_t ─► logit_t
//! ```
//! - [`SharedBottom`](crate::SharedBottom): single-task / shared-bottom, one expert (the
//!   bottom), no gate; every tower reads it;
//! - [`Moe`](crate::Moe): OMoE (one gate and one mixture shared by every tower) and MMoE
//!   (a gate and a mixture per task), gates optionally keeping their `top_k` largest
//!   weights per row;
//! - [`Ple`](crate::Ple): levels of task-specific and shared experts with per-task and
//!   shared gates; the towers read the last level's task outputs.
//!
//! Every type builds the optional shared layer ([`Trunk`](crate::trunk::Trunk)) first
//! and the towers ([`Towers`](crate::towers::Towers); per-surface towers with
//! [`HeadShape::surfaces`] > 1, rows routed by [`Head::select_surfaces`]) last, and names its parameters
//! `shared.*`, `experts.<e>.*`, `gates.<g>.*`, `ple.*`, `towers.<t>.*` in that order:
//! the names checkpoints, optimizer state and warm starts are keyed on.
//!
//! A new architecture is a new type implementing [`Head`] plus an arm in
//! [`build_head`] (and its config variant).

use crate::error::{ModelError, Result};
use crate::gates::GateInfo;
use crate::moe::{Gating, Moe};
use crate::ple::Ple;
use crate::shared_bottom::SharedBottom;
use mixrank_data::config::model::{Architecture, ModelSection};
use mixrank_engine::Backend;
use mixrank_nn::{Layer, Parameters, ReducedSite};
use rand::Rng;

/// Logits for every task from `[batch, d_in]` input features.
///
/// Object safe: models hold a `Box<dyn Head<B>>` built by [`build_head`].
///
/// # Contract
/// - [`Head::forward`] runs on the first `batch` rows of `x` (`[batch, d_in]`,
///   `batch <= max_batch`) and leaves one `[batch, 1]` logit buffer per task
///   ([`Head::logits`]);
/// - [`Head::backward`] takes the same `x` and one `[batch, 1]` gradient per task,
///   accumulates parameter gradients (callers zero them) and returns `d_x`
///   (`[batch, d_in]`, the head's own workspace);
/// - [`Parameters::visit_params`] visits every parameter in a fixed order with the
///   names of the module docs.
pub trait Head<B: Backend>: Parameters<B> + Send {
    /// Input width.
    fn d_in(&self) -> usize;
    /// Number of tasks (towers).
    fn n_tasks(&self) -> usize;
    /// Largest batch the workspaces hold.
    fn max_batch(&self) -> usize;

    /// Runs the head on the first `batch` rows of `x`.
    fn forward(&mut self, ops: &B, x: &B::Buf, batch: usize) -> Result<()>;
    /// Task `t`'s logits from the last forward, `[batch, 1]`.
    fn logits(&self, t: usize) -> &B::Buf;
    /// Back-propagates `d_logits[t]` (`[batch, 1]` per task) through the head,
    /// accumulating parameter gradients, and returns `d_x` (`[batch, d_in]`).
    fn backward(&mut self, ops: &B, x: &B::Buf, d_logits: &[&B::Buf]) -> Result<&B::Buf>;

    /// Per-surface towers (`[model.tower] per_surface`): the surface (`[columns] segment`
    /// id) of each row of the next forward, `segment.len()` rows; uploaded once per
    /// batch (see `towers.rs`). A no-op for a head with shared towers; an id outside the
    /// head's surfaces is refused.
    fn select_surfaces(&mut self, ops: &B, segment: &[u32]) -> Result<()>;

    /// Calls `f` on every part of the head that may hold dropout (the shared layer, each
    /// expert's network, the gates (gate dropout), the towers): how train/eval mode and
    /// dropout steps reach them.
    fn visit_layers(&mut self, f: &mut dyn FnMut(&mut dyn Layer<B>));
    /// Visits every GEMM of the forward pass that may run in reduced precision (see
    /// `Layer::visit_reduced`).
    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>));

    /// Every gate and the experts it mixes, in the order [`Head::gate_weights`] indexes
    /// them (none for heads without gates).
    fn gates(&self) -> Vec<GateInfo>;
    /// How many gates [`Head::gates`] lists (a head with a gate count at hand overrides
    /// this, so asking does not build the list).
    fn n_gates(&self) -> usize {
        self.gates().len()
    }
    /// Weights of gate `g` (numbered as [`Head::gates`] lists them) from the last
    /// forward, `[batch, experts of that gate]`.
    fn gate_weights(&self, g: usize) -> Option<&B::Buf>;
    /// The head's one expert list, which every gate mixes (MMoE, OMoE); empty for heads
    /// without one. For cost reports (`mixrank experiment experts`).
    fn experts_mut(&mut self) -> Vec<&mut crate::Expert<B>> {
        Vec::new()
    }
    /// Leaves the listed experts (indices into the head's one expert list) out of every
    /// gate, see [`crate::Model::exclude_experts`]. Default: refused (no such gates).
    fn exclude_experts(&mut self, _ops: &B, _experts: &[usize]) -> Result<()> {
        Err(crate::ModelError::Unsupported {
            key: "architecture".into(),
            message: "masking experts needs gates over one expert list (mmoe or omoe)".into(),
        })
    }

    /// Training mode (dropout on, the default) or evaluation mode (dropout off) for
    /// every layer of the head. Scoring code switches to evaluation and back.
    fn set_training(&mut self, training: bool) {
        self.visit_layers(&mut |l| l.set_training(training));
    }

    /// Dropout mask streams of every layer continue from `step`: masks are a function of
    /// (seed, step), and each training forward advances the step by one, so setting
    /// the trainer's step on resume reproduces an uninterrupted run's masks.
    fn set_dropout_step(&mut self, step: u64) {
        self.visit_layers(&mut |l| l.set_dropout_step(step));
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        self.visit_layers(&mut |l| l.set_dropout_rows(first_row));
    }
}

/// Builds the head the `[model]` section describes, for `n_tasks` tasks over `d_in`
/// input features: the one place that maps [`Architecture`] to a type.
pub fn build_head<B, R>(
    m: &ModelSection,
    d_in: usize,
    n_tasks: usize,
    ops: &B,
    max_batch: usize,
    rng: &mut R,
) -> Result<Box<dyn Head<B>>>
where
    B: Backend + 'static,
    B::Buf: Send,
    R: Rng + ?Sized,
{
    build_head_with_outputs(m, d_in, n_tasks, 1, ops, max_batch, rng)
}

/// [`build_head`] whose towers end in `d_out` units per task instead of one logit (a
/// two-tower model's towers: one embedding per task). [`Head::logits`] then holds
/// `[batch, d_out]` per task and [`Head::backward`] takes gradients of that shape.
pub fn build_head_with_outputs<B, R>(
    m: &ModelSection,
    d_in: usize,
    n_tasks: usize,
    d_out: usize,
    ops: &B,
    max_batch: usize,
    rng: &mut R,
) -> Result<Box<dyn Head<B>>>
where
    B: Backend + 'static,
    B::Buf: Send,
    R: Rng + ?Sized,
{
    build_head_shaped(m, HeadShape { d_in, n_tasks, d_out, d_gate: 0, surfaces: 1 }, ops, max_batch, rng)
}

/// [`build_head_with_outputs`] for any [`HeadShape`]: with `d_gate > 0` the last
/// `d_gate` input columns feed only the gates (`[model.gate] inputs`, OMoE and MMoE;
/// refused by the other heads).
pub fn build_head_shaped<B, R>(
    m: &ModelSection,
    shape: HeadShape,
    ops: &B,
    max_batch: usize,
    rng: &mut R,
) -> Result<Box<dyn Head<B>>>
where
    B: Backend + 'static,
    B::Buf: Send,
    R: Rng + ?Sized,
{
    if shape.d_gate > 0 && !matches!(m.architecture, Architecture::Omoe | Architecture::Mmoe) {
        return Err(ModelError::Unsupported {
            key: "gate.inputs".into(),
            message: format!("{:?}: surface-aware gating is built for omoe and mmoe only", m.architecture),
        });
    }
    Ok(match m.architecture {
        Architecture::SingleTask | Architecture::SharedBottom => {
            Box::new(SharedBottom::new(m, shape, ops, max_batch, rng)?)
        }
        Architecture::Omoe => Box::new(Moe::new(m, Gating::Shared, shape, ops, max_batch, rng)?),
        Architecture::Mmoe => Box::new(Moe::new(m, Gating::PerTask, shape, ops, max_batch, rng)?),
        Architecture::Ple => {
            let p = m
                .ple
                .as_ref()
                .ok_or_else(|| ModelError::Unsupported { key: "ple".into(), message: "required for PLE".into() })?;
            Box::new(Ple::new(m, p, shape, ops, max_batch, rng)?)
        }
        Architecture::TwoTower => {
            return Err(ModelError::Unsupported {
                key: "architecture".into(),
                message: "two_tower is a model of two heads, not a head (build it with build_model)".into(),
            })
        }
    })
}

/// The widths a head is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Input features.
    pub d_in: usize,
    /// Tasks (towers).
    pub n_tasks: usize,
    /// Each tower's output: 1 (a logit) or a two-tower model's embedding width.
    pub d_out: usize,
    /// The last `d_gate` of the `d_in` input columns feed only the gates (surface-aware
    /// gating, `[model.gate] inputs`); 0 without.
    pub d_gate: usize,
    /// Towers per task: 1 (shared by every row), or with `[model.tower] per_surface` the
    /// number of `[columns] segment` values (a row's logit comes from its surface's
    /// tower, chosen by [`Head::select_surfaces`]).
    pub surfaces: usize,
}

/// Checks a forward's batch against the workspaces.
pub(crate) fn check_batch(batch: usize, max_batch: usize) -> Result<()> {
    if batch > max_batch {
        return Err(ModelError::Mismatch(format!("batch {batch} exceeds max_batch {max_batch}")));
    }
    Ok(())
}

/// Checks a backward's logit gradients: after a forward, one per task.
pub(crate) fn check_backward(batch: Option<usize>, n_grads: usize, n_tasks: usize) -> Result<usize> {
    let batch = batch.ok_or_else(|| ModelError::Mismatch("backward called before forward".into()))?;
    if n_grads != n_tasks {
        return Err(ModelError::Mismatch(format!("{n_grads} logit gradients for {n_tasks} tasks")));
    }
    Ok(batch)
}

impl<B: Backend + 'static> dyn Head<B> + '_ {
    /// Switches inference to the backend's reduced precision (on the CPU: bf16 weights
    /// and activations, or bf16 weights widened to f32, with f32 accumulation) for
    /// every GEMM the head's layers expose through `Layer::visit_reduced`: the shared
    /// layer, gates, towers, projections, MLP experts, DCNv2's full-rank cross layers
    /// and deep MLP, MaskNet's block Linears, FinalMLP's streams, gates and fusion
    /// terms. Low-rank and mixture cross layers, layer norms, softmax and mixtures stay
    /// f32. Returns how many GEMMs were converted. Inference only: `backward` then
    /// refuses.
    pub fn use_bf16(&mut self, ops: &B) -> Result<usize> {
        crate::model::pack_bf16(ops, &mut |f| self.visit_reduced(f))
    }
}
