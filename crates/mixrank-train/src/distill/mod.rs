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
pub mod teacher;

use crate::error::{finite_loss, Result, TrainError};
use crate::losses::TaskLosses;
use mixrank_data::config::distill::{DistillTask, TeacherSource};
use mixrank_data::config::{ExperimentConfig, Split};
use mixrank_data::pipeline::StreamOptions;
use mixrank_data::Batch;
use mixrank_engine::Backend;
use mixrank_model::Model;
use rand::SeedableRng;
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
    /// scalar per task comes back. No student logit is read back.
    pub(crate) fn apply(
        &mut self,
        ops: &B,
        b: &Batch,
        stream: (&Split, &StreamOptions),
        model: &dyn Model<B>,
        losses: &mut TaskLosses<B>,
        step: u64,
    ) -> Result<Vec<f64>> {
        let n = b.rows;
        if let Source::Checkpoint(t) = &mut self.source {
            t.score(ops, b, stream.0, stream.1, &mut self.teacher)?;
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
                    "distillation: teacher score of task `{}` is {} in row {r} of batch {step}",
                    self.task_names[ti], teacher[r]
                )));
            }
            let (mask, weights, grad) = losses.task(ti);
            let student = model.logits(ti);
            let task = pointwise::Task {
                loss: d.loss,
                weight: d.weight,
                temperature: d.temperature,
                teacher,
                student,
                mask,
                weights,
                rows: n,
            };
            let l = match self.pointwise.apply(ops, &task, grad)? {
                Some(l) => l,
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
                    let mut rng = pair_rng(self.seed, step, k);
                    self.ranking.apply(ops, &task, &mut rng, grad)? as f64
                }
            };
            out[ti] = finite_loss(l, step, || format!("{} (distillation)", self.task_names[ti]))?;
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
