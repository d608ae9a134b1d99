//! The whole ranking model for one experiment config: embedding lookup of every
//! categorical feature, the head's input assembled from feature groups, the multi-task
//! head, and the position tower when the config asks for one.
//!
//! ```text
//! batch ─► EmbeddingCollection ─► emb ─┬─► head input (its groups) = x ─► Head ─► logit per task
//!   └────► dense ──────────────────────┴─► logit sources (training only) ───────► + chosen tasks
//! ```
//! Without `[model] inputs` and without a position tower the head's input is
//! `[emb | dense]`, concatenated as before feature groups existed (the same ops, so
//! results are bit-identical).

use crate::error::{Context, ModelError, Result};
use crate::gates::GateInfo;
use crate::head::{build_head_shaped, Head, HeadShape};
use crate::inputs::{InputGroup, InputLayout};
use crate::logit_source::{LogitSource, LogitSources, SourceInput};
use crate::lookup::{build_embeddings, BatchIds};
use crate::model::{Model, ModelIo};
use crate::position_tower::PositionTower;
use mixrank_data::config::model::ModelSection;
use mixrank_data::config::ExperimentConfig;
use mixrank_data::Batch;
use mixrank_engine::{Backend, ColCopy};
use mixrank_nn::{EmbeddingCollection, Param, ParamVisitor, Parameters, Part, ReducedSite};
use rand::Rng;

/// Embeddings + dense features + multi-task head (+ additive logit sources in training).
///
/// # Shapes
/// - x: `[batch, d_in]`, the head's feature groups (`[batch, d_emb + dense_width]` by
///   default)
/// - logits: one `[batch, 1]` buffer per task
pub struct RankingModel<B: Backend> {
    pub emb: Option<EmbeddingCollection<B>>,
    pub head: Box<dyn Head<B>>,
    /// Extra logits added to chosen tasks in training mode ([`RankingModel::add_logit_source`]).
    logit_sources: LogitSources<B>,
    /// Training mode (the default) or evaluation mode.
    training: bool,
    /// Tasks and what each part reads ([`Model::io`]).
    io: ModelIo,
    /// Which columns of `[emb | dense]` the head reads, in which order: its groups,
    /// then (surface-aware gating) the groups only its gates read.
    head_input: InputLayout,
    /// How many of `head_input`'s groups are the head's own (the rest are the gates').
    n_head_groups: usize,
    d_emb: usize,
    dense_width: usize,
    max_batch: usize,
    /// `serve_position`: in evaluation mode, these categorical features (position,
    /// read only by the position tower) take this table row for every row.
    fixed_ids: Vec<(usize, u32)>,
    x: B::Buf,
    dense: B::Buf,
    d_emb_buf: B::Buf,
    ids: BatchIds<B>,
    /// `[train] loss_weighting = "uncertainty"`: one learned log-variance `s_t` per task
    /// (Kendall et al., 2018). Not used by the forward pass; the trainer weights task
    /// losses by `exp(-s_t)` and adds `s_t`. A parameter so that Adam updates it and
    /// checkpoints carry it.
    pub task_log_var: Option<mixrank_nn::Param<B>>,
}

impl<B: Backend + 'static> RankingModel<B>
where
    B::Buf: Send,
{
    /// Builds the model the config describes (its `[model]` section is required): the
    /// embeddings, the head over its input groups, and the position tower (a logit
    /// source, initialised after the head) when `[model] position_tower` is set.
    pub fn new<R: Rng + ?Sized>(cfg: &ExperimentConfig, ops: &B, max_batch: usize, rng: &mut R) -> Result<Self> {
        let m: &ModelSection = cfg.model.as_ref().ok_or_else(|| ModelError::Unsupported {
            key: "architecture".into(),
            message: format!("{} has no [model] section", cfg.path.display()),
        })?;
        let emb = build_embeddings(cfg, ops, max_batch, rng)?;
        let d_emb = emb.as_ref().map_or(0, |e| e.output_dim());
        let dense_width = cfg.dense_width();
        // Surface-aware gating: the gates' groups follow the head's in its input, and
        // the head hands them to the gates only.
        let mut spec = cfg.head_input();
        let n_head_groups = spec.groups.len();
        let gate_groups = cfg.gate_input().map(|g| g.groups).unwrap_or_default();
        spec.groups.extend(gate_groups);
        let head_input = InputLayout::new(cfg, &spec);
        let d_in = head_input.width();
        let d_gate: usize = head_input.groups()[n_head_groups..].iter().map(|g| g.width).sum();
        // Per-surface towers: one tower per task and `[columns] segment` value.
        let surfaces = if m.tower.per_surface { cfg.segment_names().len() } else { 1 };
        let shape = HeadShape { d_in, n_tasks: cfg.tasks.len(), d_out: 1, d_gate, surfaces };
        let head = build_head_shaped(m, shape, ops, max_batch, rng)?;
        let buf = |n: usize| ops.alloc(n).at(|| "model workspaces".into());
        let n_tasks = cfg.tasks.len();
        let task_log_var = crate::model::task_log_var(cfg, ops)?;
        let mut model = RankingModel {
            emb,
            head,
            logit_sources: LogitSources::new(ops, n_tasks, max_batch)?,
            training: true,
            io: ModelIo { tasks: cfg.tasks.iter().map(|t| t.name.clone()).collect(), inputs: Vec::new() },
            head_input,
            n_head_groups,
            d_emb,
            dense_width,
            max_batch,
            fixed_ids: Vec::new(),
            x: buf(max_batch * d_in)?,
            dense: buf(max_batch * dense_width)?,
            d_emb_buf: buf(max_batch * d_emb)?,
            ids: BatchIds::new(max_batch),
            task_log_var,
        };
        let tower = cfg.inputs.as_ref().and_then(|i| i.position_tower.as_ref());
        if let (Some(section), Some(inputs)) = (&m.position_tower, tower) {
            let tower = PositionTower::new(cfg, section, inputs, ops, max_batch, rng)?;
            model.add_logit_source(ops, Box::new(tower))?;
            if let Some(sp) = &inputs.serve_position {
                // N's table row, as the encoder maps an integer position N.
                let key = mixrank_data::column::Key::Int(i64::from(sp.position));
                model.fixed_ids = sp
                    .features
                    .iter()
                    .map(|&i| (i, mixrank_data::encode::table_row(&cfg.tables[cfg.categorical[i].table].kind, &key)))
                    .collect();
            }
        }
        model.io.inputs = model.describe_inputs();
        Ok(model)
    }

    /// Input width of the head.
    pub fn d_in(&self) -> usize {
        self.head_input.width()
    }

    /// The feature groups the head reads, in order (one group named `default` without
    /// `[model] inputs`); not the groups only its gates read.
    pub fn input_groups(&self) -> &[InputGroup] {
        &self.head_input.groups()[..self.n_head_groups]
    }

    /// What each part of the model reads: `("head", groups)`, `("gates", groups)` with
    /// `[model.gate] inputs`, then `("logit_sources.<s>", groups)` for each logit source
    /// that reads feature groups.
    pub fn describe_inputs(&self) -> Vec<(String, Vec<InputGroup>)> {
        let mut out = vec![("head".to_string(), self.input_groups().to_vec())];
        let gates = &self.head_input.groups()[self.n_head_groups..];
        if !gates.is_empty() {
            out.push(("gates".to_string(), gates.to_vec()));
        }
        for (s, source) in self.logit_sources.sources().iter().enumerate() {
            if !source.input_groups().is_empty() {
                out.push((format!("logit_sources.{s}"), source.input_groups().to_vec()));
            }
        }
        out
    }

    /// Task `t`'s logits from the last forward (`[batch, 1]`): the head's, plus in
    /// training mode the logit sources feeding task `t`.
    pub fn logits(&self, t: usize) -> &B::Buf {
        self.logit_sources.logits(&*self.head, t)
    }

    /// Adds a network whose logit is added to the tasks its mask names, in training mode
    /// only (see [`crate::logit_source`]); its parameters are visited after the head's,
    /// as `logit_sources.<s>.*`.
    pub fn add_logit_source(&mut self, ops: &B, source: Box<dyn LogitSource<B>>) -> Result<()> {
        self.logit_sources.add(ops, source)
    }

    /// Training mode (dropout on, the default) or evaluation mode (dropout off).
    /// Logit sources are added in training mode only.
    pub fn set_training(&mut self, training: bool) {
        self.head.set_training(training);
        self.logit_sources.set_training(training);
        self.training = training;
    }

    /// Dropout mask streams of the head and the logit sources continue from `step`
    /// (see [`Head::set_dropout_step`]).
    pub fn set_dropout_step(&mut self, step: u64) {
        self.head.set_dropout_step(step);
        self.logit_sources.set_dropout_step(step);
    }

    pub fn set_dropout_rows(&mut self, first_row: u64) {
        self.head.set_dropout_rows(first_row);
        self.logit_sources.set_dropout_rows(first_row);
    }

    /// Runs the model on a batch.
    pub fn forward(&mut self, ops: &B, b: &Batch) -> Result<()> {
        let n = b.rows;
        if n > self.max_batch {
            return Err(ModelError::Mismatch(format!("batch of {n} rows exceeds max_batch {}", self.max_batch)));
        }
        let d_in = self.d_in();
        let copy = |cols, src_ld, dst_col| ColCopy {
            rows: n,
            cols,
            src_ld,
            src_col: 0,
            dst_ld: d_in,
            dst_col,
            accumulate: false,
        };
        // `[emb | dense]`: two copies, as before feature groups; otherwise the layout's.
        let identity = self.head_input.is_identity();
        if self.emb.is_some() {
            let fixed = if self.training { &[][..] } else { &self.fixed_ids[..] };
            self.ids.upload(ops, b, fixed)?;
        }
        if let Some(emb) = &mut self.emb {
            let inputs = self.ids.inputs();
            let e = emb.forward(ops, &inputs, n).at(|| "embeddings forward".into())?;
            if identity {
                ops.copy_cols(&copy(self.d_emb, self.d_emb, 0), e, &mut self.x).at(|| "concat".into())?;
            }
        }
        if self.dense_width > 0 {
            ops.write(&b.dense[..n * self.dense_width], &mut self.dense).at(|| "uploading dense".into())?;
            if identity {
                ops.copy_cols(&copy(self.dense_width, self.dense_width, self.d_emb), &self.dense, &mut self.x)
                    .at(|| "concat".into())?;
            }
        }
        let emb_out = self.emb.as_ref().map(|e| e.output());
        if !identity {
            self.head_input.assemble(ops, n, emb_out, &self.dense, &mut self.x)?;
        }
        self.head.select_surfaces(ops, b.segment.get(..n).unwrap_or(&b.segment))?;
        self.head.forward(ops, &self.x, n)?;
        let input = SourceInput { batch: b, emb: emb_out, dense: &self.dense };
        self.logit_sources.forward(ops, &*self.head, &input, self.training)
    }

    /// Back-propagates the logit gradients of the last forward's batch, accumulating
    /// dense gradients and overwriting the embeddings' sparse gradients.
    ///
    /// The embeddings' output gradient is the head's (its input gradient's embedding
    /// columns, copied back to where each group took them from) plus, in training, the
    /// logit sources' (the position tower's input gradient).
    pub fn backward(&mut self, ops: &B, b: &Batch, d_logits: &[&B::Buf]) -> Result<()> {
        self.backward_overlapped(ops, b, d_logits, &mut |_| Ok(()))
    }

    /// [`RankingModel::backward`], handing the head's parameters to `ready` once their
    /// gradients are final — before the logit sources' and the embeddings' backward
    /// (the head's parameters are the first [`Parameters::visit_params`] visits).
    pub fn backward_overlapped(
        &mut self,
        ops: &B,
        b: &Batch,
        d_logits: &[&B::Buf],
        ready: &mut dyn FnMut(&mut dyn Parameters<B>) -> Result<()>,
    ) -> Result<()> {
        let dx = self.head.backward(ops, &self.x, d_logits)?;
        if self.emb.is_some() {
            if self.head_input.is_identity() {
                let spec = ColCopy {
                    rows: b.rows,
                    cols: self.d_emb,
                    src_ld: self.d_emb + self.dense_width,
                    src_col: 0,
                    dst_ld: self.d_emb,
                    dst_col: 0,
                    accumulate: false,
                };
                ops.copy_cols(&spec, dx, &mut self.d_emb_buf).at(|| "split gradient".into())?;
            } else {
                // Columns the head does not read (features only the tower reads) get 0.
                ops.fill(b.rows * self.d_emb, 0.0, &mut self.d_emb_buf).at(|| "split gradient".into())?;
                self.head_input.add_emb_grad(ops, b.rows, dx, &mut self.d_emb_buf)?;
            }
        }
        // The head's gradients are final (its input gradient is copied out).
        ready(&mut *self.head)?;
        let input = SourceInput { batch: b, emb: self.emb.as_ref().map(|e| e.output()), dense: &self.dense };
        let d_emb = self.emb.is_some().then_some(&mut self.d_emb_buf);
        self.logit_sources.backward(ops, &input, d_logits, d_emb)?;
        if let Some(emb) = &mut self.emb {
            let inputs = self.ids.inputs();
            emb.backward(ops, &inputs, &self.d_emb_buf).at(|| "embeddings backward".into())?;
        }
        Ok(())
    }
}

impl<B: Backend> Parameters<B> for RankingModel<B> {
    /// Dense parameters only; the embedding tables have their own sparse optimizer.
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, B>) {
        // The head reads the model input `head`, then with surface-aware gating the
        // gates' groups, `gates` (its input parts 0 and 1).
        let gates = self.head_input.groups().len() > self.n_head_groups;
        let input: &[Part] = if gates { &[Part::Input("head"), Part::Input("gates")] } else { &[Part::Input("head")] };
        v.within(input, &[Part::Own], |v| self.head.visit_params(v));
        if let Some(p) = &mut self.task_log_var {
            v.param("task_log_var", p);
        }
        self.logit_sources.visit_params(v);
    }
}

impl<B: Backend + 'static> Model<B> for RankingModel<B>
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
        RankingModel::forward(self, ops, batch)
    }

    fn logits(&self, t: usize) -> &B::Buf {
        RankingModel::logits(self, t)
    }

    fn backward(&mut self, ops: &B, batch: &Batch, d_logits: &[&B::Buf]) -> Result<()> {
        RankingModel::backward(self, ops, batch, d_logits)
    }

    fn overlap_len(&mut self) -> usize {
        self.head.num_params()
    }

    fn backward_overlapped(
        &mut self,
        ops: &B,
        batch: &Batch,
        d_logits: &[&B::Buf],
        ready: &mut dyn FnMut(&mut dyn Parameters<B>) -> Result<()>,
    ) -> Result<()> {
        RankingModel::backward_overlapped(self, ops, batch, d_logits, ready)
    }

    fn set_training(&mut self, training: bool) {
        RankingModel::set_training(self, training)
    }

    fn set_dropout_step(&mut self, step: u64) {
        RankingModel::set_dropout_step(self, step)
    }

    fn set_dropout_rows(&mut self, first_row: u64) {
        RankingModel::set_dropout_rows(self, first_row)
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

    fn gates(&self) -> Vec<GateInfo> {
        self.head.gates()
    }

    fn gate_weights(&self, g: usize) -> Option<&B::Buf> {
        self.head.gate_weights(g)
    }

    fn exclude_experts(&mut self, ops: &B, experts: &[usize]) -> Result<()> {
        self.head.exclude_experts(ops, experts)
    }

    fn experts_mut(&mut self) -> Vec<&mut crate::Expert<B>> {
        self.head.experts_mut()
    }

    fn visit_reduced(&mut self, f: &mut dyn FnMut(ReducedSite<'_, B>)) {
        self.head.visit_reduced(f)
    }
}
