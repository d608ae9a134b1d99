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
pub mod teacher;

use crate::error::{engine, Result, TrainError};
use crate::losses::TaskLosses;
use loss::Rows;
use mixrank_data::config::distill::{DistillLoss, DistillTask, PairSampling, TeacherSource};
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
    student: Vec<f32>,
    /// Host copy of a task's logit gradient for the host-side ranking losses.
    grad: Vec<f32>,
    weight: Vec<f32>,
    eligible: Vec<u32>,
    pairs: Vec<(u32, u32)>,
    /// Pointwise losses on the backend.
    pointwise: pointwise::Pointwise<B>,
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
            student: Vec::new(),
            grad: Vec::new(),
            weight: Vec::new(),
            eligible: Vec::new(),
            pairs: Vec::new(),
            pointwise: pointwise::Pointwise::new(ops, cfg.data.batch_size)?,
        }))
    }

    /// Adds the distillation gradients of batch `b` into the per-task logit gradients
    /// of `losses` (after the label losses wrote theirs) and returns each config task's
    /// distillation loss (0 for tasks without one). `stream` is the student's split and
    /// stream options: a checkpoint teacher reads the same rows with them.
    ///
    /// The pointwise losses (soft-label BCE, logit MSE) run as backend ops on the
    /// student's logits where they are: only the teacher's scores go up, one scalar per
    /// task comes back. The pairwise and listwise losses read the student's logits back
    /// and run on the host (pair construction is not a backend op yet).
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
            let task = pointwise::Task {
                loss: d.loss,
                weight: d.weight,
                temperature: d.temperature,
                teacher,
                student: model.logits(ti),
                mask,
                weights,
                rows: n,
            };
            if let Some(l) = self.pointwise.apply(ops, &task, grad)? {
                out[ti] = finite(l, step, &self.task_names[ti])?;
                continue;
            }
            self.student.resize(n, 0.0);
            ops.read(model.logits(ti), &mut self.student).map_err(engine("reading student logits"))?;
            let rows = Rows { student: &self.student, teacher, weight: &self.weight };
            // The ranking losses run on the host: the task's gradient comes back and
            // goes up again with the loss's term added.
            self.grad.resize(n, 0.0);
            ops.read(grad, &mut self.grad).map_err(engine("reading a logit gradient"))?;
            let host_grad = &mut self.grad[..n];
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                self.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03),
            );
            let l = match d.loss {
                // Handled by `self.pointwise` above (`pointwise.rs`).
                DistillLoss::PointwiseBce | DistillLoss::LogitMse => {
                    unreachable!("pointwise losses run as backend ops")
                }
                DistillLoss::Pairwise { sampling: PairSampling::Request, per_row } => {
                    let groups = pairs::Groups::by_request(&b.request_id, |r| self.weight[r] > 0.0);
                    pairs::request_pairs(&groups, per_row, &mut rng, &mut self.pairs);
                    loss::pairwise(&rows, &self.pairs, d.temperature, d.weight, host_grad)
                }
                DistillLoss::Pairwise { sampling: PairSampling::Batch, per_row } => {
                    self.eligible.clear();
                    self.eligible.extend((0..n as u32).filter(|&r| self.weight[r as usize] > 0.0));
                    pairs::batch_pairs(&self.eligible, per_row, &mut rng, &mut self.pairs);
                    loss::pairwise(&rows, &self.pairs, d.temperature, d.weight, host_grad)
                }
                DistillLoss::Listwise => {
                    let groups = pairs::Groups::by_request(&b.request_id, |r| self.weight[r] > 0.0);
                    loss::listwise(&rows, &groups, d.temperature, d.weight, host_grad)
                }
            };
            ops.write(&self.grad, grad).map_err(engine("writing a logit gradient"))?;
            out[ti] = finite(l, step, &self.task_names[ti])?;
        }
        Ok(out)
    }
}

/// A distillation loss value, or the divergence error naming the task and step.
fn finite(l: f64, step: u64, task: &str) -> Result<f64> {
    if l.is_finite() {
        Ok(l)
    } else {
        Err(TrainError::Diverged { step, task: format!("{task} (distillation)"), loss: l as f32 })
    }
}
