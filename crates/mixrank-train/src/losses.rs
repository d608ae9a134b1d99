//! The label losses of one step: per task BCE (binary), MSE or Huber (regression) on
//! the model's logits with the batch's label masks and sample weights, scaled by the
//! task's weight (fixed, or learned uncertainty weights: [`crate::weighting`]), written
//! as per-task logit gradients for the backward pass.

use crate::data_parallel::task_weight_sums;
use crate::error::{engine, finite_loss, Result};
use crate::weighting::TaskWeighting;
use mixrank_data::config::{ExperimentConfig, RegressionLoss, TaskKind};
use mixrank_data::Batch;
use mixrank_engine::Backend;
use mixrank_engine::{GradWrite, LossInput};
use mixrank_model::Model;

/// Backend buffers reused every step: the batch's labels, masks and sample weights
/// (uploaded once per step: the batch's inputs), and the per-task logit gradients.
pub struct TaskLosses<B: Backend> {
    labels: Vec<B::Buf>,
    masks: Vec<B::Buf>,
    weights: B::Buf,
    /// `∂L/∂logit_t`, one buffer per task (the distiller adds into them).
    pub grads: Vec<B::Buf>,
    weighting: TaskWeighting,
    task_weights: Vec<f64>,
    /// This step's loss per task (unweighted).
    pub step_loss: Vec<f32>,
    /// Data-parallel training: each task's weight sum over the *global* batch
    /// (`crate::data_parallel`), the denominator of every rank's weighted mean, so that
    /// the ranks' gradients sum to the global batch's and each row's term is the one a
    /// single process computes. `None` (one process): the batch's own, computed the same
    /// way ([`task_weight_sums`]); either way the loss ops are given it.
    pub weight_sums: Option<Vec<f64>>,
}

impl<B: Backend> TaskLosses<B> {
    pub fn new(cfg: &ExperimentConfig, ops: &B) -> Result<Self> {
        let n = cfg.tasks.len();
        let bs = cfg.data.batch_size;
        let alloc = || ops.alloc(bs).map_err(engine("loss buffers"));
        Ok(TaskLosses {
            labels: (0..n).map(|_| alloc()).collect::<Result<_>>()?,
            masks: (0..n).map(|_| alloc()).collect::<Result<_>>()?,
            weights: alloc()?,
            grads: (0..n).map(|_| alloc()).collect::<Result<_>>()?,
            weighting: TaskWeighting::new(n),
            task_weights: cfg.tasks.iter().map(|t| t.weight).collect(),
            step_loss: vec![0.0; n],
            weight_sums: None,
        })
    }

    /// Task `t`'s label mask and the batch's sample weights (uploaded by
    /// [`TaskLosses::compute`]) beside its logit gradient, for the distiller to add into.
    pub fn task(&mut self, t: usize) -> (&B::Buf, &B::Buf, &mut B::Buf) {
        (&self.masks[t], &self.weights, &mut self.grads[t])
    }

    /// Computes every task's loss on the forward pass's logits and writes the logit
    /// gradients; fails on a non-finite loss (divergence) naming the task and step.
    pub fn compute(
        &mut self,
        cfg: &ExperimentConfig,
        ops: &B,
        model: &dyn Model<B>,
        b: &Batch,
        step: u64,
    ) -> Result<()> {
        let n = b.rows;
        for ti in 0..cfg.tasks.len() {
            ops.write(b.label(ti), &mut self.labels[ti]).map_err(engine("uploading labels"))?;
            ops.write(b.mask(ti), &mut self.masks[ti]).map_err(engine("uploading label masks"))?;
        }
        ops.write(&b.weights, &mut self.weights).map_err(engine("uploading sample weights"))?;
        self.weighting.refresh(ops, model)?;
        let own;
        let sums = match &self.weight_sums {
            Some(s) => s,
            None => {
                own = task_weight_sums(b);
                &own
            }
        };
        for (ti, task) in cfg.tasks.iter().enumerate() {
            let input = LossInput {
                pred: model.logits(ti),
                target: &self.labels[ti],
                weight: Some(&self.weights),
                mask: Some(&self.masks[ti]),
                weight_sum: Some(sums[ti]),
            };
            let scale = task.weight as f32 * self.weighting.factor(ti);
            let write = GradWrite { scale, accumulate: false };
            let grads = &mut self.grads[ti];
            let loss = match (task.kind, task.regression_loss) {
                (TaskKind::Binary, _) => ops.bce_with_logits(n, input, grads, write),
                (TaskKind::Regression, RegressionLoss::Mse) => ops.mse(n, input, grads, write),
                (TaskKind::Regression, RegressionLoss::Huber { delta }) => {
                    ops.huber(n, delta as f32, input, grads, write)
                }
            }
            .map_err(engine("loss"))?;
            finite_loss(loss as f64, step, || task.name.clone())?;
            self.step_loss[ti] = loss;
        }
        Ok(())
    }

    /// Reads the learned task weights without computing losses (a data-parallel rank
    /// with no rows this step, whose weighting gradients must still match the others').
    pub fn refresh_weighting(&mut self, ops: &B, model: &dyn Model<B>) -> Result<()> {
        self.step_loss.iter_mut().for_each(|l| *l = 0.0);
        self.weighting.refresh(ops, model)
    }

    /// After the model's backward: the learned task weights' own gradients.
    pub fn write_weighting_grads(&self, ops: &B, model: &mut dyn Model<B>) -> Result<()> {
        self.weighting.write_grads(ops, model, &self.task_weights, &self.step_loss)
    }
}
