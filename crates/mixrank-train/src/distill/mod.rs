//! Knowledge distillation: a teacher's scores turned into an extra loss per task, added
//! to the label loss during batch training (the seed's recipe for data the student can
//! no longer see).
//!
//! For each task in `[distill]`, with student logits `s`, teacher logits `t` and row
//! weights `w = sample weight × label mask`:
//!
//! `L_task = w_task · L_label(s, y) + λ · L_distill(s, t)`
//!
//! where `L_distill` is one of [`loss`]'s functions (pointwise soft-label BCE or logit
//! MSE; pairwise RankNet within requests or on pairs sampled in the batch; listwise
//! softmax cross-entropy within requests). The distillation gradient is added into the
//! same per-task logit gradient as the label loss's, so backward is unchanged. The
//! distillation covers the rows the task's label loss covers (the label mask), e.g.
//! conversion only on clicked rows.
//!
//! Teachers ([`teacher`]): the tasks' teacher columns (logged production scores, as
//! probabilities or logits) or a frozen mixrank checkpoint run beside the student.

pub mod loss;
pub mod pairs;
mod pointwise;
mod ranking;
pub(crate) mod ranks;
pub mod teacher;

use crate::error::{finite_loss, Result, TrainError};
use crate::losses::TaskLosses;
use mixrank_data::config::distill::{DistillLoss, DistillTask, TeacherSource};
use mixrank_data::config::{ExperimentConfig, Split};
use mixrank_data::pipeline::StreamOptions;
use mixrank_data::Batch;
use mixrank_engine::Backend;
use mixrank_model::Model;
use rand::SeedableRng;
use ranks::{GlobalRows, LocalRows, Ranks};
use teacher::CheckpointTeacher;

enum Source<B: Backend> {
    Columns,
    Checkpoint(Box<CheckpointTeacher<B>>),
}

/// The distillation term of a training run, built from `[distill]`.
pub struct Distiller<B: Backend> {
    tasks: Vec<DistillTask>,
    task_names: Vec<String>,
    source: Source<B>,
    seed: u64,
    /// `[config task][row]` teacher logits of the current batch (checkpoint source).
    teacher: Vec<Vec<f32>>,
    /// Row weights (sample weight × label mask) of the current task, host.
    weight: Vec<f32>,
    /// Pointwise losses on the backend.
    pointwise: pointwise::Pointwise<B>,
    /// Pairwise and listwise losses on the backend.
    ranking: ranking::Ranking<B>,
    /// Data-parallel training: a ranking-loss task's rows over the global batch
    /// ([`ranks`]), made on the first step that needs them.
    global: Option<GlobalRows<B>>,
    max_rows: usize,
}

impl<B: Backend + 'static> Distiller<B> {
    /// The config's distillation, or `None` without a `[distill]` section. Loads and
    /// verifies a checkpoint teacher.
    pub fn new(cfg: &ExperimentConfig, ops: &B) -> Result<Option<Self>> {
        let Some(d) = &cfg.distill else { return Ok(None) };
        let source = match &d.source {
            TeacherSource::Columns => Source::Columns,
            TeacherSource::Checkpoint(p) => {
                Source::Checkpoint(Box::new(CheckpointTeacher::open(p, cfg, &d.tasks, d.teacher_precision, ops)?))
            }
        };
        Ok(Some(Distiller {
            tasks: d.tasks.clone(),
            task_names: cfg.tasks.iter().map(|t| t.name.clone()).collect(),
            source,
            seed: cfg.train.seed,
            teacher: vec![Vec::new(); cfg.tasks.len()],
            weight: Vec::with_capacity(cfg.data.batch_size),
            pointwise: pointwise::Pointwise::new(ops, cfg.data.batch_size)?,
            ranking: ranking::Ranking::new(ops, cfg.data.batch_size, &d.tasks)?,
            global: None,
            max_rows: cfg.data.batch_size,
        }))
    }

    /// Adds the distillation gradients of batch `b` into the per-task logit gradients
    /// of `losses` (after the label losses wrote theirs) and returns each config task's
    /// distillation loss (0 for tasks without one). `stream` is the student's split and
    /// stream options: a checkpoint teacher reads the same rows with them.
    ///
    /// Every loss runs as a backend op on the student's logits where they are: the
    /// teacher's scores go up (and, for the pairwise and listwise losses, the pairs or
    /// request groups, built on the host from the request ids and row weights), one
    /// scalar per task comes back. No student logit is read back in one process.
    ///
    /// Data-parallel training (`ranks`): `b` is this rank's rows (possibly none: every
    /// rank calls this every step, it is collective); the pointwise losses use the
    /// global weight sums of `losses`, the ranking losses run on the gathered global
    /// batch ([`ranks`]), and the returned losses are the global batch's on every rank.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        ops: &B,
        b: &Batch,
        stream: (&Split, &StreamOptions),
        model: &dyn Model<B>,
        losses: &mut TaskLosses<B>,
        step: u64,
        ranks: Option<Ranks<'_>>,
    ) -> Result<Vec<f64>> {
        let n = b.rows;
        if let Source::Checkpoint(t) = &mut self.source {
            let part = ranks.filter(|r| r.shard_teacher).map(|r| r.group);
            t.score(ops, b, stream.0, stream.1, part, &mut self.teacher)?;
        }
        let mut out = vec![0.0; self.task_names.len()];
        for (k, d) in self.tasks.iter().enumerate() {
            let ti = d.task;
            let teacher: &[f32] = match self.source {
                Source::Columns => b.teacher(ti),
                Source::Checkpoint(_) => &self.teacher[ti][..n],
            };
            self.weight.clear();
            self.weight.extend(b.weights.iter().zip(b.mask(ti)).map(|(w, m)| if *m != 0.0 { *w } else { 0.0 }));
            if let Some(r) = (0..n).find(|&r| self.weight[r] > 0.0 && !teacher[r].is_finite()) {
                return Err(TrainError::Other(format!(
                    "distillation: teacher score of task `{}` is {} in row {r} of batch {step}{}",
                    self.task_names[ti],
                    teacher[r],
                    ranks.map_or(String::new(), |x| format!(" (rank {}'s rows)", x.group.rank()))
                )));
            }
            // One process: the batch's own weight sum (the op computes it); ranks: the global batch's.
            let weight_sum = losses.weight_sums.as_ref().map(|s| s[ti]);
            let (mask, weights, grad) = losses.task(ti);
            let student = model.logits(ti);
            let pointwise = matches!(d.loss, DistillLoss::PointwiseBce | DistillLoss::LogitMse);
            let l = if pointwise {
                if n == 0 {
                    0.0
                } else {
                    let task = pointwise::Task {
                        loss: d.loss,
                        weight: d.weight,
                        temperature: d.temperature,
                        teacher,
                        student,
                        mask,
                        weights,
                        weight_sum,
                        rows: n,
                    };
                    self.pointwise.apply(ops, &task, grad)?.expect("a pointwise loss")
                }
            } else {
                let mut rng = pair_rng(self.seed, step, k);
                match ranks {
                    None => {
                        let task = ranking::Task {
                            loss: d.loss,
                            weight: d.weight,
                            temperature: d.temperature,
                            teacher,
                            row_weight: &self.weight,
                            request_id: &b.request_id,
                            student,
                            mask,
                            weights,
                            rows: n,
                        };
                        self.ranking.apply(ops, &task, &mut rng, grad)? as f64
                    }
                    Some(r) => {
                        let g = match &mut self.global {
                            Some(g) => g,
                            None => self.global.insert(GlobalRows::new(ops, self.max_rows)?),
                        };
                        let local = LocalRows {
                            student,
                            grad,
                            teacher,
                            row_weight: &self.weight,
                            mask: b.mask(ti),
                            weights: &b.weights,
                            request_id: &b.request_id,
                            rows: n,
                        };
                        g.gather(ops, r.group, &local)?;
                        let task = ranking::Task {
                            loss: d.loss,
                            weight: d.weight,
                            temperature: d.temperature,
                            teacher: &g.teacher,
                            row_weight: &g.row_weight,
                            request_id: &g.request_id,
                            student: &g.student,
                            mask: &g.mask,
                            weights: &g.weights,
                            rows: g.rows,
                        };
                        let l = self.ranking.apply(ops, &task, &mut rng, &mut g.grad)? as f64;
                        g.scatter_back(ops, grad, n)?;
                        // The same value on every rank: counted once in the sum below.
                        if r.group.rank() == 0 {
                            l
                        } else {
                            0.0
                        }
                    }
                }
            };
            out[ti] = l;
        }
        if let Some(r) = ranks {
            r.group.all_reduce_sum_f64(&mut out)?;
        }
        for (ti, l) in out.iter().enumerate() {
            finite_loss(*l, step, || format!("{} (distillation)", self.task_names[ti]))?;
        }
        Ok(out)
    }
}

/// The random stream that draws task `k`'s pairs at `step`, from the run's seed.
fn pair_rng(seed: u64, step: u64, k: usize) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(
        seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03),
    )
}
