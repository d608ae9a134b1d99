//! The one interface every model of mixrank implements, and the one constructor that
//! maps a config to a model.
//!
//! The trainer, evaluation, checkpoints (save, load, verify, warm start, resume),
//! distillation (student and checkpoint teacher), the serving session, `bench infer` and
//! the retention experiment hold a `Box<dyn Model<B>>` and use only this trait, on any
//! [`Backend`] `B`. [`RankingModel`] (embeddings → input features → [`crate::Head`]) and
//! [`TwoTowerModel`] (embeddings → a user head and an item head → dot products) implement
//! it; a model of another shape is a new type implementing [`Model`] plus an arm in
//! [`build_model`].
//!
//! # Contract
//! - [`Model::forward`] runs on a [`Batch`] of at most [`Model::max_batch`] rows and
//!   leaves one `[rows, 1]` logit buffer per task ([`Model::logits`]), in the order of
//!   [`ModelIo::tasks`];
//! - [`Model::backward`] takes the same batch and one `[rows, 1]` gradient per task,
//!   **accumulates** dense parameter gradients (callers zero them with
//!   `mixrank_nn::zero_grads`) and **overwrites** the embeddings' sparse gradients;
//! - dense parameters are visited by [`Parameters::visit_params`] in a fixed order with
//!   stable names (the keys of checkpoints and optimizer state); the embedding tables
//!   (sparse parameters, their own optimizer) are reached through
//!   [`Model::embeddings`] and named `emb.tables.<t>`;
//! - a new model starts in training mode.

use crate::error::{Context, ModelError, Result};
use crate::gates::GateInfo;
use crate::inputs::InputGroup;
use crate::ranking::RankingModel;
use crate::two_tower::TwoTowerModel;
use mixrank_data::config::model::{Architecture, InitSection, LossWeighting};
use mixrank_data::{Batch, ExperimentConfig};
use mixrank_engine::Backend;
use mixrank_nn::{EmbeddingCollection, Init, Param, Parameters, ReducedSite};
use rand::Rng;

/// What a model reads and what it returns: the description serving, evaluation and
/// reports print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIo {
    /// Output tasks, in logit order.
    pub tasks: Vec<String>,
    /// What each part of the model reads: `("head", groups)`, then
    /// `("logit_sources.<s>", groups)` for a logit source over feature groups (the
    /// position tower), each list in concatenation order.
    pub inputs: Vec<(String, Vec<InputGroup>)>,
}

/// A multi-task model on backend `B` (see the module docs for the contract).
pub trait Model<B: Backend>: Parameters<B> + Send {
    /// Tasks and input groups.
    fn io(&self) -> &ModelIo;
    /// Largest batch the workspaces hold.
    fn max_batch(&self) -> usize;

    /// Runs the model on `batch` (uploading its ids and dense values).
    fn forward(&mut self, ops: &B, batch: &Batch) -> Result<()>;
    /// Task `t`'s logits from the last forward, `[rows, 1]`.
    fn logits(&self, t: usize) -> &B::Buf;
    /// Back-propagates one `[rows, 1]` logit gradient per task for the last forward's
    /// batch.
    fn backward(&mut self, ops: &B, batch: &Batch, d_logits: &[&B::Buf]) -> Result<()>;

    /// The number of leading dense parameter values (in [`Parameters::params`] order)
    /// whose gradients [`Model::backward_overlapped`] hands out before the rest of
    /// backward has run: a property of the architecture, the same on every rank. 0: none
    /// (the default).
    fn overlap_len(&mut self) -> usize {
        0
    }

    /// [`Model::backward`], calling `ready` once with the parameters whose gradients
    /// are final while the rest of backward still has to run — the first
    /// [`Model::overlap_len`] values [`Parameters::params`] visits, in that order.
    /// Data-parallel training starts their all-reduce there, overlapped with the rest of
    /// backward. The default runs `backward` and never calls `ready`.
    fn backward_overlapped(
        &mut self,
        ops: &B,
        batch: &Batch,
        d_logits: &[&B::Buf],
        ready: &mut dyn FnMut(&mut dyn Parameters<B>) -> Result<()>,
    ) -> Result<()> {
        let _ = ready;
        self.backward(ops, batch, d_logits)
    }

    /// Training mode (dropout and training-only logit sources on) or evaluation mode.
    fn set_training(&mut self, training: bool);
    /// Dropout mask streams continue from `step` (masks are a function of seed and
    /// step, so a resumed run reproduces an uninterrupted one's).
    fn set_dropout_step(&mut self, step: u64);

    /// The row of the global batch the next forward's first row is (data-parallel
    /// training: this rank's offset), so dropout masks are drawn for the global rows.
    fn set_dropout_rows(&mut self, first_row: u64);

    /// The embedding tables (the sparse parameters), if the model has any.
    fn embeddings(&self) -> Option<&EmbeddingCollection<B>>;
    fn embeddings_mut(&mut self) -> Option<&mut EmbeddingCollection<B>>;

    /// `[train] loss_weighting = "uncertainty"`: the learned per-task log-variances
    /// (also visited as the dense parameter `task_log_var`).
    fn task_log_var(&self) -> Option<&Param<B>>;
    fn task_log_var_mut(&mut self) -> Option<&mut Param<B>>;

    /// Every gate and the experts it mixes (none for models without gates).
    fn gates(&self) -> Vec<GateInfo>;
    /// Gate `g`'s weights from the last forward, `[rows, experts of that gate]`.
    fn gate_weights(&self, g: usize) -> Option<&B::Buf>;
    /// Leaves the listed experts of the head's expert list out of every gate (weight 0,
    /// the rest renormalised) until called again; an empty list restores the model. An
    /// evaluation-time ablation (`mixrank experiment experts`); models whose head has no
    /// gates over one expert list (MMoE, OMoE) refuse it.
    fn exclude_experts(&mut self, ops: &B, experts: &[usize]) -> Result<()>;
    /// The head's one expert list that every gate mixes (MMoE, OMoE; empty otherwise),
    /// in the order [`Model::exclude_experts`] numbers them.
    fn experts_mut(&mut self) -> Vec<&mut crate::Expert<B>>;

    /// Visits every GEMM of the inference forward pass that may run in reduced
    /// precision (see `mixrank_nn::Layer::visit_reduced`).
    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>));

    /// Training losses the model adds itself, beside the per-task losses the trainer
    /// computes from the logits, with their values at the last training backward (the
    /// two-tower in-batch softmax; none for most models).
    fn aux_losses(&self) -> Vec<(&str, f32)> {
        Vec::new()
    }

    /// Data-parallel training: the other ranks, for losses over the whole global batch
    /// (the two-tower in-batch softmax gathers every rank's rows). Ignored by models
    /// without such a loss (the default).
    fn set_batch_peers(&mut self, peers: Option<std::sync::Arc<dyn crate::peers::BatchPeers>>) {
        let _ = peers;
    }

    /// Data-parallel training, on a rank with no rows of this step (which runs neither
    /// forward nor backward): takes part in the exchanges [`Model::backward`] makes with
    /// the other ranks, so they are not left waiting. Nothing by default.
    fn backward_without_rows(&mut self, ops: &B) -> Result<()> {
        let _ = ops;
        Ok(())
    }

    /// The two-tower light ranker, whose towers run apart (cached item embeddings:
    /// `embed-items`, the server's item table); `None` for every other model.
    fn as_two_tower_mut(&mut self) -> Option<&mut crate::two_tower::TwoTowerModel<B>> {
        None
    }
}

impl<B: Backend + 'static> dyn Model<B> + '_ {
    /// Switches inference to the backend's reduced precision ([`Backend::pack_reduced`]:
    /// on the CPU, bf16 weights with f32 accumulation, the kernel chosen by `ops`) for
    /// every GEMM [`Model::visit_reduced`] exposes (see `crate::Head::use_bf16` for
    /// which stay f32). Returns how many GEMMs were converted. Inference only:
    /// `backward` then refuses.
    pub fn use_bf16(&mut self, ops: &B) -> Result<usize> {
        pack_bf16(ops, &mut |f| self.visit_reduced(f))
    }

    /// The name of the reduced-precision kernel [`use_bf16`](Self::use_bf16) installed,
    /// `None` while the model runs in f32.
    pub fn reduced_kernel(&mut self) -> Option<&'static str> {
        let mut name = None;
        self.visit_reduced(&mut |site| {
            if name.is_none() {
                name = site.slot.as_ref().map(|r| r.name());
            }
        });
        name
    }
}

/// A callback over reduced-precision sites (what `visit_reduced` takes).
type SiteFn<'a, B> = dyn FnMut(ReducedSite<'_, B>) + 'a;

/// Packs every site `visit` reaches with the backend's reduced-precision GEMM (the body
/// of `use_bf16` for models and heads). Returns how many GEMMs were converted.
pub(crate) fn pack_bf16<B: Backend + 'static>(ops: &B, visit: &mut dyn FnMut(&mut SiteFn<'_, B>)) -> Result<usize> {
    let mut n = 0;
    let mut err = None;
    visit(&mut |site: ReducedSite<'_, B>| {
        if err.is_some() {
            return;
        }
        match site.pack(ops) {
            Ok(()) => n += 1,
            Err(e) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e).at(|| "bf16 packing".into()),
        None => Ok(n),
    }
}

/// Builds the model the config's `[model]` section describes, with workspaces for
/// `max_batch` rows: the one place that maps a config to a model type.
pub fn build_model<B, R>(cfg: &ExperimentConfig, ops: &B, max_batch: usize, rng: &mut R) -> Result<Box<dyn Model<B>>>
where
    B: Backend + 'static,
    B::Buf: Send,
    R: Rng + ?Sized,
{
    if cfg.model.is_none() {
        return Err(ModelError::Unsupported {
            key: "architecture".into(),
            message: format!("{} has no [model] section", cfg.path.display()),
        });
    }
    let two_tower = cfg.model.as_ref().is_some_and(|m| m.architecture == Architecture::TwoTower);
    let mut model: Box<dyn Model<B>> = if two_tower {
        Box::new(TwoTowerModel::new(cfg, ops, max_batch, rng)?)
    } else {
        Box::new(RankingModel::new(cfg, ops, max_batch, rng)?)
    };
    initialise(cfg, &mut *model, ops, rng)?;
    Ok(model)
}

/// `[train] loss_weighting = "uncertainty"`: one learned log-variance per task, starting
/// at 0 (see [`Model::task_log_var`]); none with fixed weights.
pub(crate) fn task_log_var<B: Backend>(cfg: &ExperimentConfig, ops: &B) -> Result<Option<Param<B>>> {
    let n_tasks = cfg.tasks.len();
    Ok(match cfg.train.loss_weighting {
        LossWeighting::Fixed => None,
        LossWeighting::Uncertainty => Some(
            Param::new(ops, &vec![0.0; n_tasks], &[n_tasks], &[mixrank_nn::Axis::Own], false, "loss weighting")
                .at(|| "train.loss_weighting".into())?,
        ),
    })
}

/// A config initialiser as the layers' [`Init`].
pub fn init_of(s: InitSection) -> Init {
    match s {
        InitSection::XavierUniform => Init::XavierUniform,
        InitSection::XavierNormal => Init::XavierNormal,
        InitSection::HeUniform => Init::HeUniform,
        InitSection::HeNormal => Init::HeNormal,
        InitSection::Normal { std } => Init::Normal { std: std as f32 },
        InitSection::Uniform { a } => Init::Uniform { bound: a as f32 },
    }
}

/// `[model] init` and `embedding_init`, for any model type: after the model is built with
/// its layers' defaults, every dense weight matrix (a parameter with weight decay, shape
/// `[fan_in, fan_out]`: what the layers draw from `Init`) is drawn again from `init`, in
/// visiting order, then every embedding table `[rows, dim]` from `embedding_init`
/// (`fan_in = dim`, `fan_out = rows`), from the same generator. Written through
/// `visit_params` (layers keeping derived copies mark them stale there). Without either
/// key nothing is drawn, so the default model is bit for bit the one built before these
/// keys existed.
fn initialise<B: Backend, R: Rng + ?Sized>(
    cfg: &ExperimentConfig,
    model: &mut dyn Model<B>,
    ops: &B,
    rng: &mut R,
) -> Result<()> {
    let Some(m) = &cfg.model else { return Ok(()) };
    let mut err = None;
    if let Some(init) = m.init.map(init_of) {
        model.params(&mut |name, p| {
            if !p.decay || err.is_some() {
                return;
            }
            let [fan_in, fan_out] = p.shape[..] else {
                err = Some(ModelError::Unsupported {
                    key: "init".into(),
                    message: format!("weight `{name}` has shape {:?}, not [fan_in, fan_out]", p.shape),
                });
                return;
            };
            if let Err(e) =
                ops.write(&init.sample(fan_in, fan_out, rng), &mut p.value).at(|| format!("model.init ({name})"))
            {
                err = Some(e);
            }
        });
    }
    if let (Some(init), Some(emb)) = (m.embedding_init.map(init_of), model.embeddings_mut()) {
        emb.visit_tables(&mut |name, t| {
            if err.is_none() {
                if let Err(e) = ops
                    .write(&init.sample(t.dim, t.rows, rng), &mut t.value)
                    .at(|| format!("model.embedding_init ({name})"))
                {
                    err = Some(e);
                }
            }
        });
    }
    err.map_or(Ok(()), Err)
}
