//! The pointwise distillation losses on the backend, where the student's logits are:
//! only the teacher's scores go up and the loss value (one scalar) comes back.
//! [`crate::distill::loss::pointwise_bce`] and [`crate::distill::loss::logit_mse`] are
//! the same losses on host slices, the references the tests hold these to.

use crate::error::{engine, Result};
use mixrank_data::config::distill::DistillLoss;
use mixrank_engine::{Backend, GradWrite, LossInput};

/// Staging for the teacher's targets and the student's logits over the temperature.
pub(crate) struct Pointwise<B: Backend> {
    host: Vec<f32>,
    target: B::Buf,
    scaled: B::Buf,
}

/// One distilled task's inputs for a batch of `rows` rows.
pub(crate) struct Task<'a, B: Backend> {
    pub loss: DistillLoss,
    pub weight: f64,
    pub temperature: f64,
    /// Teacher logits (values for regression tasks), host.
    pub teacher: &'a [f32],
    /// Student logits, backend.
    pub student: &'a B::Buf,
    /// The task's label mask and the sample weights, backend.
    pub mask: &'a B::Buf,
    pub weights: &'a B::Buf,
    /// The denominator of the weighted mean: `None`, the rows' own `Σ w·m` (one
    /// process); data-parallel training gives the global batch's.
    pub weight_sum: Option<f64>,
    pub rows: usize,
}

impl<B: Backend> Pointwise<B> {
    pub fn new(ops: &B, max_rows: usize) -> Result<Self> {
        let alloc = || ops.alloc(max_rows).map_err(engine("distillation buffers"));
        Ok(Pointwise { host: Vec::with_capacity(max_rows), target: alloc()?, scaled: alloc()? })
    }

    /// Adds the task's distillation gradient into `grad` and returns its loss, or `None`
    /// for a loss that is not pointwise (pairwise, listwise: run on the host).
    pub fn apply(&mut self, ops: &B, t: &Task<'_, B>, grad: &mut B::Buf) -> Result<Option<f64>> {
        let n = t.rows;
        Ok(Some(match t.loss {
            DistillLoss::PointwiseBce => {
                // T² · BCE(s/T, σ(t/T)), gradient T · w(σ(s/T) − q) / Σw: the BCE op on
                // the scaled logits with the gradient scaled by T.
                let temp = t.temperature;
                self.host.clear();
                self.host.extend(t.teacher.iter().map(|&x| (1.0 / (1.0 + (-(x as f64) / temp).exp())) as f32));
                ops.write(&self.host, &mut self.target).map_err(engine("uploading teacher soft labels"))?;
                ops.fill(n, 0.0, &mut self.scaled).map_err(engine("scaling student logits"))?;
                ops.axpy(n, (1.0 / temp) as f32, t.student, &mut self.scaled)
                    .map_err(engine("scaling student logits"))?;
                let input = LossInput {
                    pred: &self.scaled,
                    target: &self.target,
                    weight: Some(t.weights),
                    mask: Some(t.mask),
                    weight_sum: t.weight_sum,
                };
                let write = GradWrite { scale: (t.weight * temp) as f32, accumulate: true };
                ops.bce_with_logits(n, input, grad, write).map_err(engine("distillation loss"))? as f64 * temp * temp
            }
            DistillLoss::LogitMse => {
                ops.write(t.teacher, &mut self.target).map_err(engine("uploading teacher scores"))?;
                let input = LossInput {
                    pred: t.student,
                    target: &self.target,
                    weight: Some(t.weights),
                    mask: Some(t.mask),
                    weight_sum: t.weight_sum,
                };
                let write = GradWrite { scale: t.weight as f32, accumulate: true };
                ops.mse(n, input, grad, write).map_err(engine("distillation loss"))? as f64
            }
            DistillLoss::Pairwise { .. } | DistillLoss::Listwise => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::loss::{logit_mse, pointwise_bce, Rows};
    use mixrank_engine::RefOps;
    use rand::{Rng, SeedableRng};

    /// The backend form equals the host reference: loss and the gradient it adds. Both
    /// evaluate each row's term in f32 with different association (`s·(1/T)` vs `s/T`,
    /// softplus grouped differently) and sum in f64, so they agree to a few ulps of each
    /// term: checked at 1e-5 relative (≈ 170 u).
    #[test]
    fn backend_losses_match_the_host_references() {
        let ops = RefOps::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 97;
        let student: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
        let teacher: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
        let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let weights: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..2.0)).collect();
        let row_weight: Vec<f32> = weights.iter().zip(&mask).map(|(w, m)| w * m).collect();
        let start: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut p = Pointwise::new(&ops, n).unwrap();
        for (loss, weight, temperature) in [(DistillLoss::PointwiseBce, 0.7, 2.5), (DistillLoss::LogitMse, 1.3, 1.0)] {
            let task = Task {
                loss,
                weight,
                temperature,
                teacher: &teacher,
                student: &student,
                mask: &mask,
                weights: &weights,
                weight_sum: None,
                rows: n,
            };
            let mut grad = start.clone();
            let got = p.apply(&ops, &task, &mut grad).unwrap().expect("pointwise");
            let mut want_grad = start.clone();
            let rows = Rows { student: &student, teacher: &teacher, weight: &row_weight };
            let want = match loss {
                DistillLoss::PointwiseBce => pointwise_bce(&rows, temperature, weight, &mut want_grad),
                _ => logit_mse(&rows, weight, &mut want_grad),
            };
            assert!((got - want).abs() <= 1e-5 * want.abs(), "{loss:?}: {got} vs {want}");
            for (i, (g, w)) in grad.iter().zip(&want_grad).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1e-3), "{loss:?} row {i}: {g} vs {w}");
            }
            assert_ne!(grad, start, "{loss:?}: a gradient was added");
        }
        let pairwise = Task {
            loss: DistillLoss::Listwise,
            weight: 1.0,
            temperature: 1.0,
            teacher: &teacher,
            student: &student,
            mask: &mask,
            weights: &weights,
            weight_sum: None,
            rows: n,
        };
        assert!(p.apply(&ops, &pairwise, &mut start.clone()).unwrap().is_none());
    }
}
