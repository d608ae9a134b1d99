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
pub mod teacher;

use crate::error::{engine, Result, TrainError};
use loss::Rows;
use mixrank_data::config::distill::{DistillLoss, DistillTask, PairSampling, TeacherSource};
use mixrank_data::config::{ExperimentConfig, Split};
use mixrank_data::pipeline::StreamOptions;
use mixrank_data::Batch;
use mixrank_model::Model;
use mixrank_nn::HostBackend;
use rand::SeedableRng;
use teacher::CheckpointTeacher;

enum Source<B: HostBackend> {
    Columns,
    Checkpoint(Box<CheckpointTeacher<B>>),
}

/// The distillation term of a training run, built from `[distill]`.
pub struct Distiller<B: HostBackend> {
    tasks: Vec<DistillTask>,
    task_names: Vec<String>,
    source: Source<B>,
    seed: u64,
    /// `[config task][row]` teacher logits of the current batch (checkpoint source).
    teacher: Vec<Vec<f32>>,
    student: Vec<f32>,
    weight: Vec<f32>,
    eligible: Vec<u32>,
    pairs: Vec<(u32, u32)>,
}

impl<B: HostBackend + 'static> Distiller<B> {
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
            weight: Vec::new(),
            eligible: Vec::new(),
            pairs: Vec::new(),
        }))
    }

    /// Adds the distillation gradients of batch `b` into `grads[task][..rows]` (after the
    /// label losses wrote theirs) and returns each config task's distillation loss
    /// (0 for tasks without one). `stream` is the student's split and stream options:
    /// a checkpoint teacher reads the same rows with them.
    pub fn apply(
        &mut self,
        ops: &B,
        b: &Batch,
        stream: (&Split, &StreamOptions),
        model: &dyn Model<B>,
        grads: &mut [Vec<f32>],
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
            self.student.resize(n, 0.0);
            ops.read(model.logits(ti), &mut self.student).map_err(engine("reading student logits"))?;
            self.weight.clear();
            self.weight.extend(b.weights.iter().zip(b.mask(ti)).map(|(w, m)| if *m != 0.0 { *w } else { 0.0 }));
            if let Some(r) = (0..n).find(|&r| self.weight[r] > 0.0 && !teacher[r].is_finite()) {
                return Err(TrainError::Other(format!(
                    "distillation: teacher score of task `{}` is {} in row {r} of batch {step}",
                    self.task_names[ti], teacher[r]
                )));
            }
            let rows = Rows { student: &self.student, teacher, weight: &self.weight };
            let grad = &mut grads[ti][..n];
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                self.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03),
            );
            let l = match d.loss {
                DistillLoss::PointwiseBce => loss::pointwise_bce(&rows, d.temperature, d.weight, grad),
                DistillLoss::LogitMse => loss::logit_mse(&rows, d.weight, grad),
                DistillLoss::Pairwise { sampling: PairSampling::Request, per_row } => {
                    let groups = pairs::Groups::by_request(&b.request_id, |r| self.weight[r] > 0.0);
                    pairs::request_pairs(&groups, per_row, &mut rng, &mut self.pairs);
                    loss::pairwise(&rows, &self.pairs, d.temperature, d.weight, grad)
                }
                DistillLoss::Pairwise { sampling: PairSampling::Batch, per_row } => {
                    self.eligible.clear();
                    self.eligible.extend((0..n as u32).filter(|&r| self.weight[r as usize] > 0.0));
                    pairs::batch_pairs(&self.eligible, per_row, &mut rng, &mut self.pairs);
                    loss::pairwise(&rows, &self.pairs, d.temperature, d.weight, grad)
                }
                DistillLoss::Listwise => {
                    let groups = pairs::Groups::by_request(&b.request_id, |r| self.weight[r] > 0.0);
                    loss::listwise(&rows, &groups, d.temperature, d.weight, grad)
                }
            };
            if !l.is_finite() {
                return Err(TrainError::Diverged {
                    step,
                    task: format!("{} (distillation)", self.task_names[ti]),
                    loss: l as f32,
                });
            }
            out[ti] = l;
        }
        Ok(out)
    }
}
