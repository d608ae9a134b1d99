//! How task losses combine into the training objective.
//!
//! - `fixed`: `L = Σ_t w_t · L_t` with the tasks' configured weights `w_t`;
//! - `uncertainty` (Kendall, Gal & Cipolla, CVPR 2018, in the form most multi-task
//!   libraries use): `L = Σ_t w_t · (exp(-s_t) · L_t + s_t)` with one learned
//!   log-variance `s_t` per task ([`mixrank_model::Model::task_log_var`]). A task
//!   whose loss stays high gets a larger `s_t`, hence a smaller weight `exp(-s_t)`; the
//!   `+ s_t` term keeps the weights from collapsing to zero. Gradients:
//!   `∂L/∂z_t = w_t · exp(-s_t) · ∂L_t/∂z_t` and `∂L/∂s_t = w_t · (1 - exp(-s_t) · L_t)`.

use crate::error::{engine, Result};
use mixrank_engine::Backend;
use mixrank_model::Model;

/// Per-task loss weights for the current step.
pub struct TaskWeighting {
    /// `exp(-s_t)` read before the step (1 for fixed weighting).
    factors: Vec<f32>,
    host: Vec<f32>,
}

impl TaskWeighting {
    pub fn new(n_tasks: usize) -> Self {
        TaskWeighting { factors: vec![1.0; n_tasks], host: vec![0.0; n_tasks] }
    }

    /// Reads the current `exp(-s_t)`; call once per step before the losses.
    pub fn refresh<B: Backend>(&mut self, ops: &B, model: &dyn Model<B>) -> Result<()> {
        if let Some(p) = model.task_log_var() {
            ops.read(&p.value, &mut self.host).map_err(engine("reading task log-variances"))?;
            for (f, s) in self.factors.iter_mut().zip(&self.host) {
                *f = (-s).exp();
            }
        }
        Ok(())
    }

    /// The factor task `t`'s configured weight is multiplied by this step.
    pub fn factor(&self, t: usize) -> f32 {
        self.factors[t]
    }

    /// Writes `∂L/∂s_t = w_t · (1 - exp(-s_t) · L_t)` into the log-variances' gradient
    /// (after the model's gradients were zeroed, before the optimizer step).
    pub fn write_grads<B: Backend>(
        &self,
        ops: &B,
        model: &mut dyn Model<B>,
        task_weights: &[f64],
        losses: &[f32],
    ) -> Result<()> {
        if let Some(p) = model.task_log_var_mut() {
            let g: Vec<f32> = (0..self.factors.len())
                .map(|t| (task_weights[t] * (1.0 - self.factors[t] as f64 * losses[t] as f64)) as f32)
                .collect();
            ops.write(&g, &mut p.grad).map_err(engine("task log-variance gradients"))?;
        }
        Ok(())
    }
}
