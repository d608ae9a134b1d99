//! The two-tower light ranker (Pinterest's, seed 002): a user tower over the request's
//! feature groups and an item tower over the ad's, each any head of mixrank (MLP,
//! DCNv2, MMoE with heterogeneous experts, PLE) whose towers end in one `dim`-wide
//! embedding per task; task `t`'s logit is their dot product plus a learned bias.
//!
//! ```text
//! batch ─► EmbeddingCollection ─► emb ─┬─► user groups ─► user head ─► u_t [batch, dim] ─┐
//!   └────► dense ──────────────────────┴─► item groups ─► item head ─► v_t [batch, dim] ─┴─► ⟨u_t, v_t⟩ + b_t = logit_t
//! ```
//! With `score = "cosine"` each embedding is first L2-normalised per row
//! ([`Backend::normalize_rows`]) and the dot product divided by the temperature:
//! `cos(u_t, v_t)/τ + b_t`.
//!
//! Trained pointwise with the tasks' losses (the trainer's, as for every model), so its
//! outputs are calibrated CTRs like the full ranker's. The item tower reads only the
//! item's features (validated: no feature in both towers, no position, no `bias`
//! group), so an item's embeddings do not depend on the request and can be computed
//! once and cached.
//!
//! Parameters: `user.*` and `item.*` (each head's own names: `shared.*`, `experts.<e>.*`,
//! `gates.<g>.*`, `towers.<t>.*`), then `score.<t>.bias`, then `task_log_var`.

use crate::error::{Context, ModelError, Result};
use crate::gates::{GateInfo, TowerName};
use crate::head::{build_head_with_outputs, Head};
use crate::in_batch::InBatchSoftmax;
use crate::inputs::InputLayout;
use crate::lookup::{build_embeddings, BatchIds};
use crate::model::{task_log_var, Model, ModelIo};
use mixrank_data::config::groups::{InputSpec, TwoTowerInputs};
use mixrank_data::config::model::{TowerHeadSection, TwoTowerScore, TwoTowerSection, COSINE_EPS};
use mixrank_data::config::ExperimentConfig;
use mixrank_data::Batch;
use mixrank_engine::{Activation, Backend, BlockShape, Shape};
use mixrank_nn::{Axis, EmbeddingCollection, Param, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// One tower: its input layout, its head (ending in `dim` units per task), its input
/// workspace and its output gradients.
struct Side<B: Backend> {
    layout: InputLayout,
    head: Box<dyn Head<B>>,
    /// The assembled input, `[max_batch, layout.width()]`.
    x: B::Buf,
    /// Per task: the gradient w.r.t. the tower's embedding, `[max_batch, dim]`.
    d_out: Vec<B::Buf>,
    /// Under a cosine score: the normalised embeddings and their row norms.
    unit: Option<Unit<B>>,
}

/// A tower's embeddings normalised per row (the cosine score).
struct Unit<B: Backend> {
    /// Per task: `u_t / ‖u_t‖`, `[max_batch, dim]`.
    y: Vec<B::Buf>,
    /// Per task: `1/sqrt(‖u_t‖² + eps)`, `[max_batch]`.
    rnorm: Vec<B::Buf>,
    /// The gradient w.r.t. one task's normalised embedding, `[max_batch, dim]`.
    d_y: B::Buf,
}

impl<B: Backend> Side<B> {
    /// Task `t`'s embedding as the score reads it (normalised under a cosine score).
    fn embedding(&self, t: usize) -> &B::Buf {
        match &self.unit {
            Some(u) => &u.y[t],
            None => self.head.logits(t),
        }
    }

    /// Normalises the head's embeddings of the last forward (cosine score only).
    fn normalize(&mut self, ops: &B, rows: usize, dim: usize) -> Result<()> {
        if let Some(unit) = &mut self.unit {
            for (t, (y, rnorm)) in unit.y.iter_mut().zip(&mut unit.rnorm).enumerate() {
                ops.normalize_rows(Shape { rows, cols: dim }, COSINE_EPS, self.head.logits(t), y, rnorm)
                    .at(|| format!("normalising task {t}'s embedding"))?;
            }
        }
        Ok(())
    }

    /// Writes `d_out[t]`, the gradient w.r.t. this tower's task-`t` embedding, from the
    /// logit gradient `d` (`[rows, 1]`) and the other tower's score embedding `other`:
    /// `d · other` (times `1/τ` and back through the normalisation under a cosine score).
    #[allow(clippy::too_many_arguments)]
    fn score_grad(
        &mut self,
        ops: &B,
        s: BlockShape,
        t: usize,
        d: &B::Buf,
        other: &B::Buf,
        inv: Option<f32>,
        extra: Option<&B::Buf>,
    ) -> Result<()> {
        let at = || format!("score gradient of task {t}");
        let n = s.rows * s.width;
        match (&mut self.unit, inv) {
            (Some(unit), Some(inv)) => {
                ops.block_outer(s, d, other, &mut unit.d_y).at(at)?;
                ops.scale(n, inv, &mut unit.d_y).at(at)?;
                if let Some(extra) = extra {
                    ops.axpy(n, 1.0, extra, &mut unit.d_y).at(at)?;
                }
                let shape = Shape { rows: s.rows, cols: s.width };
                ops.normalize_rows_backward(shape, &unit.y[t], &unit.rnorm[t], &unit.d_y, &mut self.d_out[t]).at(at)
            }
            _ => {
                ops.block_outer(s, d, other, &mut self.d_out[t]).at(at)?;
                match extra {
                    Some(extra) => ops.axpy(n, 1.0, extra, &mut self.d_out[t]).at(at),
                    None => Ok(()),
                }
            }
        }
    }
}

impl<B: Backend + 'static> Side<B>
where
    B::Buf: Send,
{
    #[allow(clippy::too_many_arguments)]
    fn new<R: Rng + ?Sized>(
        name: &str,
        cfg: &ExperimentConfig,
        section: &TowerHeadSection,
        spec: &InputSpec,
        dim: usize,
        cosine: bool,
        ops: &B,
        max_batch: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let layout = InputLayout::new(cfg, spec);
        let head = build_head_with_outputs(&section.head(), layout.width(), cfg.tasks.len(), dim, ops, max_batch, rng)?;
        let buf = |n: usize| ops.alloc(n).at(|| format!("{name} tower workspaces"));
        let x = buf(max_batch * layout.width())?;
        let n_tasks = cfg.tasks.len();
        let d_out = (0..n_tasks).map(|_| buf(max_batch * dim)).collect::<Result<_>>()?;
        let unit = match cosine {
            false => None,
            true => Some(Unit {
                y: (0..n_tasks).map(|_| buf(max_batch * dim)).collect::<Result<_>>()?,
                rnorm: (0..n_tasks).map(|_| buf(max_batch)).collect::<Result<_>>()?,
                d_y: buf(max_batch * dim)?,
            }),
        };
        Ok(Side { layout, head, x, d_out, unit })
    }
}

/// One of the two towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tower {
    /// The request's (user and context) features.
    User,
    /// The ad's features: its embeddings do not depend on the request.
    Item,
}

/// Embeddings, a user tower, an item tower and a dot-product score per task.
///
/// # Shapes
/// - user tower input: `[batch, d_user]`, item tower input: `[batch, d_item]` (their
///   feature groups)
/// - `u_t`, `v_t`: `[batch, dim]` per task; logits: one `[batch, 1]` buffer per task
pub struct TwoTowerModel<B: Backend> {
    emb: Option<EmbeddingCollection<B>>,
    ids: BatchIds<B>,
    user: Side<B>,
    item: Side<B>,
    /// Per task: the score's bias (`[model.two_tower] bias`), `[1]`.
    bias: Vec<Param<B>>,
    dim: usize,
    /// `1/τ` under a cosine score (the dot product of the unit embeddings is multiplied
    /// by it); `None` under a dot score.
    inv_temperature: Option<f32>,
    logits: Vec<B::Buf>,
    /// Scratch for the bias gradient, `[max_batch]`.
    d_bias_scratch: B::Buf,
    dense: B::Buf,
    d_emb: B::Buf,
    dense_width: usize,
    max_batch: usize,
    /// Rows of the last forward.
    batch: Option<usize>,
    io: ModelIo,
    task_log_var: Option<Param<B>>,
    /// `[model.two_tower.in_batch]`, applied in training mode.
    in_batch: Option<InBatchSoftmax<B>>,
    /// Data-parallel training: the other ranks (the in-batch softmax's negatives).
    peers: Option<std::sync::Arc<dyn crate::peers::BatchPeers>>,
    training: bool,
}

impl<B: Backend + 'static> TwoTowerModel<B>
where
    B::Buf: Send,
{
    /// Builds the model of a config with `architecture = "two_tower"`: the embeddings,
    /// then the user head, the item head and the biases, in that order from `rng`.
    pub fn new<R: Rng + ?Sized>(cfg: &ExperimentConfig, ops: &B, max_batch: usize, rng: &mut R) -> Result<Self> {
        let unsupported = |message: &str| ModelError::Unsupported { key: "two_tower".into(), message: message.into() };
        let section: &TwoTowerSection = cfg
            .model
            .as_ref()
            .and_then(|m| m.two_tower.as_ref())
            .ok_or_else(|| unsupported("the config has no [model.two_tower]"))?;
        let inputs: &TwoTowerInputs = cfg
            .inputs
            .as_ref()
            .and_then(|i| i.two_tower.as_ref())
            .ok_or_else(|| unsupported("the config's two-tower inputs were not resolved"))?;
        let emb = build_embeddings(cfg, ops, max_batch, rng)?;
        let dim = section.dim;
        let inv_temperature = match section.score() {
            TwoTowerScore::Dot => None,
            TwoTowerScore::Cosine { temperature } => Some(1.0 / temperature),
        };
        let cosine = inv_temperature.is_some();
        let user = Side::new("user", cfg, &section.user, &inputs.user, dim, cosine, ops, max_batch, rng)?;
        let item = Side::new("item", cfg, &section.item, &inputs.item, dim, cosine, ops, max_batch, rng)?;
        let n_tasks = cfg.tasks.len();
        let bias = if section.bias {
            (0..n_tasks)
                .map(|_| {
                    Param::new(ops, &[0.0], &[1], &[Axis::Own], false, "score bias")
                        .at(|| "model.two_tower.bias".into())
                })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let buf = |n: usize| ops.alloc(n).at(|| "model workspaces".into());
        let d_emb_width = emb.as_ref().map_or(0, |e| e.output_dim());
        let dense_width = cfg.dense_width();
        let io = ModelIo {
            tasks: cfg.tasks.iter().map(|t| t.name.clone()).collect(),
            inputs: vec![
                ("user".to_string(), user.layout.groups().to_vec()),
                ("item".to_string(), item.layout.groups().to_vec()),
            ],
        };
        Ok(TwoTowerModel {
            emb,
            ids: BatchIds::new(max_batch),
            user,
            item,
            bias,
            dim,
            inv_temperature,
            logits: (0..n_tasks).map(|_| buf(max_batch)).collect::<Result<_>>()?,
            d_bias_scratch: buf(max_batch)?,
            dense: buf(max_batch * dense_width)?,
            d_emb: buf(max_batch * d_emb_width)?,
            dense_width,
            max_batch,
            batch: None,
            io,
            task_log_var: task_log_var(cfg, ops)?,
            in_batch: match &section.in_batch {
                Some(s) => Some(InBatchSoftmax::new(cfg, s, ops, max_batch, dim)?),
                None => None,
            },
            peers: None,
            training: true,
        })
    }

    /// Width of each task's embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Task `t`'s user embeddings from the last forward as the score reads them
    /// (unit length under a cosine score), `[batch, dim]`.
    pub fn user_embedding(&self, t: usize) -> &B::Buf {
        self.user.embedding(t)
    }

    /// Task `t`'s item embeddings from the last forward as the score reads them
    /// (unit length under a cosine score), `[batch, dim]`.
    pub fn item_embedding(&self, t: usize) -> &B::Buf {
        self.item.embedding(t)
    }

    /// `1/τ` of a cosine score (task `t`'s logit is `⟨û_t, v̂_t⟩ · (1/τ) + b_t`, the
    /// product rounded to f32 before the bias is added); `None` under a dot score.
    pub fn inv_temperature(&self) -> Option<f32> {
        self.inv_temperature
    }

    /// Task `t`'s score bias (`score.<t>.bias`, `[1]`), if the model has biases.
    pub fn score_bias(&self, t: usize) -> Option<&B::Buf> {
        self.bias.get(t).map(|b| &b.value)
    }

    /// Runs only one tower on a batch (the embeddings, then that side's head): its
    /// per-task embeddings are then [`TwoTowerModel::tower_embedding`]. The other
    /// tower's features are read by the embedding lookup but not used, so they may be
    /// any value (nulls). `embed-items` runs the item tower alone over the catalogue;
    /// the server runs the user tower alone once per request. Leaves no logits (a
    /// following `backward` is refused).
    pub fn forward_tower(&mut self, ops: &B, b: &Batch, tower: Tower) -> Result<()> {
        let n = b.rows;
        self.stage_inputs(ops, b)?;
        let emb_out = self.emb.as_ref().map(|e| e.output());
        let side = match tower {
            Tower::User => &mut self.user,
            Tower::Item => &mut self.item,
        };
        side.layout.assemble(ops, n, emb_out, &self.dense, &mut side.x)?;
        side.head.forward(ops, &side.x, n)?;
        side.normalize(ops, n, self.dim)?;
        self.batch = None;
        Ok(())
    }

    /// Task `t`'s embeddings of `tower` from the last forward as the score reads them
    /// (unit length under a cosine score), `[batch, dim]`.
    pub fn tower_embedding(&self, tower: Tower, t: usize) -> &B::Buf {
        match tower {
            Tower::User => self.user.embedding(t),
            Tower::Item => self.item.embedding(t),
        }
    }

    /// Both towers' shared inputs of `b`: the embedding lookup and the dense features.
    fn stage_inputs(&mut self, ops: &B, b: &Batch) -> Result<()> {
        let n = b.rows;
        if n > self.max_batch {
            return Err(ModelError::Mismatch(format!("batch of {n} rows exceeds max_batch {}", self.max_batch)));
        }
        if let Some(emb) = &mut self.emb {
            self.ids.upload(ops, b, &[])?;
            emb.forward(ops, &self.ids.inputs(), n).at(|| "embeddings forward".into())?;
        }
        if self.dense_width > 0 {
            ops.write(&b.dense[..n * self.dense_width], &mut self.dense).at(|| "uploading dense".into())?;
        }
        Ok(())
    }

    fn shape(&self, rows: usize) -> BlockShape {
        BlockShape { rows, blocks: 1, width: self.dim }
    }

    /// Runs both towers and the score on a batch.
    pub fn forward(&mut self, ops: &B, b: &Batch) -> Result<()> {
        let n = b.rows;
        self.stage_inputs(ops, b)?;
        let emb_out = self.emb.as_ref().map(|e| e.output());
        for side in [&mut self.user, &mut self.item] {
            side.layout.assemble(ops, n, emb_out, &self.dense, &mut side.x)?;
            side.head.forward(ops, &side.x, n)?;
            side.normalize(ops, n, self.dim)?;
        }
        let s = self.shape(n);
        for (t, logit) in self.logits.iter_mut().enumerate() {
            let (u, v) = (self.user.embedding(t), self.item.embedding(t));
            ops.block_dot(s, u, v, logit, false).at(|| format!("score of task {t}"))?;
            if let Some(inv) = self.inv_temperature {
                ops.scale(n, inv, logit).at(|| format!("score temperature of task {t}"))?;
            }
            if let Some(bias) = self.bias.get(t) {
                ops.bias_act_inplace(Activation::Identity, Shape { rows: n, cols: 1 }, Some(&bias.value), logit)
                    .at(|| format!("score bias of task {t}"))?;
            }
        }
        self.batch = Some(n);
        Ok(())
    }

    /// Back-propagates one `[rows, 1]` logit gradient per task: `∂/∂u_t = d_t · v_t`,
    /// `∂/∂v_t = d_t · u_t`, `∂/∂b_t = Σ d_t` (under a cosine score: `∂/∂û_t =
    /// d_t · v̂_t / τ`, then back through the normalisation), then through each head into
    /// the embeddings (whose sparse gradients it overwrites).
    pub fn backward(&mut self, ops: &B, b: &Batch, d_logits: &[&B::Buf]) -> Result<()> {
        let n = self.batch.ok_or_else(|| ModelError::Mismatch("backward called before forward".into()))?;
        if n != b.rows {
            return Err(ModelError::Mismatch(format!("backward on {} rows after a forward on {n}", b.rows)));
        }
        if d_logits.len() != self.logits.len() {
            return Err(ModelError::Mismatch(format!(
                "{} logit gradients for {} tasks",
                d_logits.len(),
                self.logits.len()
            )));
        }
        let s = self.shape(n);
        let in_batch = self.in_batch.as_mut().filter(|_| self.training);
        if let Some(ib) = in_batch {
            let t = ib.task;
            let peers = self.peers.as_deref();
            ib.backward(ops, b, self.dim, self.user.embedding(t), self.item.embedding(t), peers)?;
        }
        for (t, d) in d_logits.iter().enumerate() {
            let inv = self.inv_temperature;
            let extra = self.in_batch.as_ref().filter(|ib| self.training && ib.task == t);
            self.user.score_grad(ops, s, t, d, self.item.embedding(t), inv, extra.map(|ib| &ib.d_user))?;
            self.item.score_grad(ops, s, t, d, self.user.embedding(t), inv, extra.map(|ib| &ib.d_item))?;
            if let Some(bias) = self.bias.get_mut(t) {
                let shape = Shape { rows: n, cols: 1 };
                ops.bias_act_backward(
                    Activation::Identity,
                    shape,
                    &self.logits[t],
                    d,
                    &mut self.d_bias_scratch,
                    Some(&mut bias.grad),
                )
                .at(|| format!("score bias gradient of task {t}"))?;
            }
        }
        if self.emb.is_some() {
            ops.fill(n * self.emb.as_ref().map_or(0, |e| e.output_dim()), 0.0, &mut self.d_emb)
                .at(|| "embedding gradient".into())?;
        }
        for side in [&mut self.user, &mut self.item] {
            let d_out: Vec<&B::Buf> = side.d_out.iter().collect();
            let dx = side.head.backward(ops, &side.x, &d_out)?;
            if self.emb.is_some() {
                side.layout.add_emb_grad(ops, n, dx, &mut self.d_emb)?;
            }
        }
        if let Some(emb) = &mut self.emb {
            emb.backward(ops, &self.ids.inputs(), &self.d_emb).at(|| "embeddings backward".into())?;
        }
        Ok(())
    }
}

impl<B: Backend> Parameters<B> for TwoTowerModel<B> {
    /// Dense parameters only; the embedding tables have their own sparse optimizer.
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        v.scope("user", |v| v.within(&[Part::Input("user")], &[Part::Own], |v| self.user.head.visit_params(v)));
        v.scope("item", |v| v.within(&[Part::Input("item")], &[Part::Own], |v| self.item.head.visit_params(v)));
        for (t, b) in self.bias.iter_mut().enumerate() {
            v.scope_indexed("score", t, |v| v.param("bias", b));
        }
        if let Some(p) = &mut self.task_log_var {
            v.param("task_log_var", p);
        }
    }
}

impl<B: Backend + 'static> Model<B> for TwoTowerModel<B>
where
    B::Buf: Send,
{
    fn io(&self) -> &ModelIo {
        &self.io
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn forward(&mut self, ops: &B, batch: &Batch) -> Result<()> {
        TwoTowerModel::forward(self, ops, batch)
    }

    fn logits(&self, t: usize) -> &B::Buf {
        &self.logits[t]
    }

    fn backward(&mut self, ops: &B, batch: &Batch, d_logits: &[&B::Buf]) -> Result<()> {
        TwoTowerModel::backward(self, ops, batch, d_logits)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.user.head.set_training(training);
        self.item.head.set_training(training);
    }

    fn aux_losses(&self) -> Vec<(&str, f32)> {
        self.in_batch.iter().filter_map(|ib| ib.loss()).collect()
    }

    fn set_batch_peers(&mut self, peers: Option<std::sync::Arc<dyn crate::peers::BatchPeers>>) {
        self.peers = peers;
    }

    fn backward_without_rows(&mut self, ops: &B) -> Result<()> {
        match (self.in_batch.as_mut().filter(|_| self.training), self.peers.as_deref()) {
            (Some(ib), Some(peers)) => ib.backward_without_rows(ops, self.dim, peers),
            _ => Ok(()),
        }
    }

    fn set_dropout_step(&mut self, step: u64) {
        self.user.head.set_dropout_step(step);
        self.item.head.set_dropout_step(step);
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        self.user.head.set_dropout_rows(first_row);
        self.item.head.set_dropout_rows(first_row);
    }

    fn embeddings(&self) -> Option<&EmbeddingCollection<B>> {
        self.emb.as_ref()
    }

    fn embeddings_mut(&mut self) -> Option<&mut EmbeddingCollection<B>> {
        self.emb.as_mut()
    }

    fn task_log_var(&self) -> Option<&Param<B>> {
        self.task_log_var.as_ref()
    }

    fn task_log_var_mut(&mut self) -> Option<&mut Param<B>> {
        self.task_log_var.as_mut()
    }

    /// The user tower's gates, then the item tower's (each its head's, named by the
    /// tower: an MMoE tower has a gate per task).
    fn gates(&self) -> Vec<GateInfo> {
        let of =
            |side: &Side<B>, tower| side.head.gates().into_iter().map(move |g| GateInfo { tower: Some(tower), ..g });
        of(&self.user, TowerName::User).chain(of(&self.item, TowerName::Item)).collect()
    }

    /// Gate `g` in [`Model::gates`]'s order, from the last forward (`[batch, experts]`:
    /// both towers run on every row of a scored batch).
    fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        let n_user = self.user.head.n_gates();
        if g < n_user {
            self.user.head.gate_weights(g)
        } else {
            self.item.head.gate_weights(g - n_user)
        }
    }

    fn exclude_experts(&mut self, _ops: &B, _experts: &[usize]) -> Result<()> {
        Err(crate::ModelError::Unsupported {
            key: "architecture".into(),
            message: "the two-tower model's experts are per tower; masking them is not supported".into(),
        })
    }

    fn experts_mut(&mut self) -> Vec<&mut crate::Expert<B>> {
        Vec::new()
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.user.head.visit_reduced(f);
        self.item.head.visit_reduced(f);
    }

    fn as_two_tower_mut(&mut self) -> Option<&mut TwoTowerModel<B>> {
        Some(self)
    }
}
