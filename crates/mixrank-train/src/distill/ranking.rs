//! The pairwise and listwise distillation losses on the backend, where the student's
//! logits are: the pairs and request groups are built on the host from the batch's
//! request ids and row weights ([`super::pairs`]) and go up as id buffers beside the
//! teacher's scores; the engine's ops ([`Backend::pairwise_ranknet`],
//! [`Backend::listwise_softmax`]) add the gradient and one scalar (the loss) comes back.
//! [`crate::distill::loss::pairwise`] and [`crate::distill::loss::listwise`] are the same
//! losses on host slices, the references the tests hold these to.
//!
//! Buffers are sized once, for the largest batch and every distilled task's `k`, so a step
//! allocates nothing; a batch that needs more (never, with the trainer's batches) grows them.

use super::pairs::{self, Groups};
use crate::error::{engine, Result};
use mixrank_data::config::distill::{DistillLoss, DistillTask, PairSampling};
use mixrank_engine::{Backend, GradWrite, GroupSpec, LossInput, PairSpec};
use rand::rngs::StdRng;

/// Staging for the teacher's scores, the pairs and the groups.
pub(crate) struct Ranking<B: Backend> {
    teacher: B::Buf,
    /// `[i₀, j₀, i₁, j₁, …]`.
    pairs: B::Ids,
    offsets: B::Ids,
    members: B::Ids,
    host_pairs: Vec<(u32, u32)>,
    flat: Vec<u32>,
    eligible: Vec<u32>,
}

/// One distilled task's inputs for a batch of `rows` rows.
pub(crate) struct Task<'a, B: Backend> {
    pub loss: DistillLoss,
    pub weight: f64,
    pub temperature: f64,
    /// Teacher logits (values for regression tasks), host.
    pub teacher: &'a [f32],
    /// Row weights (sample weight × label mask), host: rows with weight > 0 take part.
    pub row_weight: &'a [f32],
    /// The batch's request ids, host.
    pub request_id: &'a [u64],
    /// Student logits, backend.
    pub student: &'a B::Buf,
    /// The task's label mask and the sample weights, backend.
    pub mask: &'a B::Buf,
    pub weights: &'a B::Buf,
    pub rows: usize,
}

/// Ids `2·rows·k` for the pairs of `rows` rows with `k` partners each (both builders
/// emit at most `rows × k` pairs).
fn pair_ids(rows: usize, k: usize) -> usize {
    2 * rows * k
}

impl<B: Backend> Ranking<B> {
    /// Buffers for batches of up to `max_rows` rows and the ranking losses of `tasks`
    /// (empty for tasks without one).
    pub fn new(ops: &B, max_rows: usize, tasks: &[DistillTask]) -> Result<Self> {
        let mut k = 0;
        let (mut pairwise, mut listwise) = (false, false);
        for t in tasks {
            match t.loss {
                DistillLoss::Pairwise { per_row, .. } => {
                    pairwise = true;
                    k = k.max(per_row);
                }
                DistillLoss::Listwise => listwise = true,
                DistillLoss::PointwiseBce | DistillLoss::LogitMse => {}
            }
        }
        let rows = if pairwise || listwise { max_rows } else { 0 };
        let groups = if listwise { max_rows } else { 0 };
        Ok(Ranking {
            teacher: ops.alloc(rows).map_err(engine("distillation buffers"))?,
            pairs: ops.alloc_ids(pair_ids(rows, k)).map_err(engine("distillation buffers"))?,
            offsets: ops.alloc_ids(groups + usize::from(listwise)).map_err(engine("distillation buffers"))?,
            members: ops.alloc_ids(groups).map_err(engine("distillation buffers"))?,
            host_pairs: Vec::new(),
            flat: Vec::new(),
            eligible: Vec::new(),
        })
    }

    /// Adds the task's distillation gradient into `grad` and returns its loss. `rng` draws
    /// the pairs.
    pub fn apply(&mut self, ops: &B, t: &Task<'_, B>, rng: &mut StdRng, grad: &mut B::Buf) -> Result<f32> {
        let n = t.rows;
        let eligible = |r: usize| t.row_weight[r] > 0.0;
        let write = GradWrite { scale: t.weight as f32, accumulate: true };
        let temperature = t.temperature as f32;
        match t.loss {
            // Handled by `super::pointwise`.
            DistillLoss::PointwiseBce | DistillLoss::LogitMse => unreachable!("pointwise losses run in pointwise.rs"),
            DistillLoss::Pairwise { sampling, per_row } => {
                match sampling {
                    PairSampling::Request => {
                        let groups = Groups::by_request(&t.request_id[..n], eligible);
                        pairs::request_pairs(&groups, per_row, rng, &mut self.host_pairs);
                    }
                    PairSampling::Batch => {
                        self.eligible.clear();
                        self.eligible.extend((0..n as u32).filter(|&r| eligible(r as usize)));
                        pairs::batch_pairs(&self.eligible, per_row, rng, &mut self.host_pairs);
                    }
                }
                self.flat.clear();
                self.flat.extend(self.host_pairs.iter().flat_map(|&(i, j)| [i, j]));
                self.upload_teacher(ops, t.teacher)?;
                upload_ids(ops, &self.flat, &mut self.pairs, "uploading distillation pairs")?;
                let spec = PairSpec { rows: n, pairs: self.host_pairs.len(), temperature };
                let input = LossInput {
                    pred: t.student,
                    target: &self.teacher,
                    weight: Some(t.weights),
                    mask: Some(t.mask),
                    weight_sum: None,
                };
                ops.pairwise_ranknet(&spec, &self.pairs, input, grad, write).map_err(engine("distillation loss"))
            }
            DistillLoss::Listwise => {
                let groups = Groups::by_request(&t.request_id[..n], eligible);
                self.upload_teacher(ops, t.teacher)?;
                upload_ids(ops, groups.offsets(), &mut self.offsets, "uploading request groups")?;
                upload_ids(ops, groups.members(), &mut self.members, "uploading request groups")?;
                let spec = GroupSpec { rows: n, groups: groups.len(), temperature };
                let input = LossInput {
                    pred: t.student,
                    target: &self.teacher,
                    weight: Some(t.weights),
                    mask: Some(t.mask),
                    weight_sum: None,
                };
                ops.listwise_softmax(&spec, &self.offsets, &self.members, input, grad, write)
                    .map_err(engine("distillation loss"))
            }
        }
    }

    fn upload_teacher(&mut self, ops: &B, teacher: &[f32]) -> Result<()> {
        if ops.len(&self.teacher) < teacher.len() {
            self.teacher = ops.alloc(teacher.len()).map_err(engine("distillation buffers"))?;
        }
        ops.write(teacher, &mut self.teacher).map_err(engine("uploading teacher scores"))
    }
}

/// Writes `host` into `dst`, growing `dst` first when it is too short.
fn upload_ids<B: Backend>(ops: &B, host: &[u32], dst: &mut B::Ids, what: &'static str) -> Result<()> {
    if ops.ids_len(dst) < host.len() {
        *dst = ops.alloc_ids(host.len()).map_err(engine("distillation buffers"))?;
    }
    ops.write_ids(host, dst).map_err(engine(what))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::distill::loss::{listwise, pairwise, Rows};
    use crate::distill::pair_rng;
    use mixrank_engine::counting::Counting;
    use mixrank_engine::RefOps;
    use rand::{Rng, SeedableRng};

    /// The host path these ops replaced, as `Distiller::apply` ran it: the same pairs
    /// from the same random stream, the loss on host slices of the student's logits.
    fn host_path(t: &Task<'_, Counting<RefOps>>, rng: &mut StdRng, grad: &mut [f32]) -> f64 {
        let n = t.rows;
        let rows = Rows { student: &t.student[..n], teacher: t.teacher, weight: t.row_weight };
        let mut pairs = Vec::new();
        let eligible = |r: usize| t.row_weight[r] > 0.0;
        match t.loss {
            DistillLoss::Pairwise { sampling: PairSampling::Request, per_row } => {
                let groups = Groups::by_request(t.request_id, eligible);
                pairs::request_pairs(&groups, per_row, rng, &mut pairs);
                pairwise(&rows, &pairs, t.temperature, t.weight, grad)
            }
            DistillLoss::Pairwise { sampling: PairSampling::Batch, per_row } => {
                let eligible: Vec<u32> = (0..n as u32).filter(|&r| eligible(r as usize)).collect();
                pairs::batch_pairs(&eligible, per_row, rng, &mut pairs);
                pairwise(&rows, &pairs, t.temperature, t.weight, grad)
            }
            DistillLoss::Listwise => {
                listwise(&rows, &Groups::by_request(t.request_id, eligible), t.temperature, t.weight, grad)
            }
            DistillLoss::PointwiseBce | DistillLoss::LogitMse => unreachable!(),
        }
    }

    /// The three ranking losses as `(loss, weight, temperature)` — pairs within
    /// requests (3 per row), pairs in the batch (`batch_pairs` per row), listwise — and
    /// as config tasks.
    pub(crate) fn three_losses(batch_pairs: usize) -> ([(DistillLoss, f64, f64); 3], Vec<DistillTask>) {
        let losses = [
            (DistillLoss::Pairwise { sampling: PairSampling::Request, per_row: 3 }, 0.5, 2.0),
            (DistillLoss::Pairwise { sampling: PairSampling::Batch, per_row: batch_pairs }, 1.0, 1.0),
            (DistillLoss::Listwise, 0.75, 0.5),
        ];
        let tasks = losses
            .iter()
            .map(|&(loss, weight, temperature)| DistillTask {
                task: 0,
                loss,
                weight,
                temperature,
                teacher_task: String::new(),
            })
            .collect();
        (losses, tasks)
    }

    /// Request ids of `n` rows: requests of 1..=9 rows, their rows spread over the batch.
    pub(crate) fn shuffled_requests(g: &mut StdRng, n: usize) -> Vec<u64> {
        let mut request_id: Vec<u64> = Vec::new();
        while request_id.len() < n {
            let (id, len) = (g.random::<u64>(), g.random_range(1..=9));
            request_id.extend(std::iter::repeat_n(id, len));
        }
        request_id.truncate(n);
        for a in (1..n).rev() {
            request_id.swap(a, g.random_range(0..=a));
        }
        request_id
    }

    /// Several steps of a student trained by plain gradient descent on the three ranking
    /// losses, on the ops and on the host path side by side from the same start: the
    /// logit gradients are equal bit for bit at every step (so the two students stay
    /// equal), the losses equal up to the ops' f32 result (2⁻²⁴ relative). Weights and
    /// temperatures are f32 numbers: the ops take them in f32, the host path took f64.
    /// A step moves the teacher's scores and the pairs or groups up and one scalar back.
    #[test]
    fn ranking_ops_train_as_the_host_path_did() {
        let ops = Counting::new(RefOps);
        let n = 300;
        let mut g = StdRng::seed_from_u64(8);
        let (tasks, cfg_tasks) = three_losses(4);
        let mut ranking = Ranking::new(&ops, n, &cfg_tasks).unwrap();
        let request_id = shuffled_requests(&mut g, n);
        let start: Vec<f32> = (0..n).map(|_| g.random_range(-2.0..2.0)).collect();
        // The host path's student lives in a `Counting` buffer too (the task type holds
        // backend buffers); it is read through `Deref`, not through the counted ops.
        let mut host_student = ops.upload(&start).unwrap();
        let mut student = ops.upload(&start).unwrap();
        let mut grad = ops.alloc(n).unwrap();
        let seed = 77;
        let mut before = ops.traffic();
        for step in 1..=6u64 {
            // Labels mask every 7th row (its teacher score NaN); some sample weights are 0.
            let mut teacher: Vec<f32> = (0..n).map(|_| g.random_range(-3.0..3.0)).collect();
            let weights: Vec<f32> = (0..n).map(|r| if r % 11 == 4 { 0.0 } else { g.random_range(0.5..2.0) }).collect();
            let mask: Vec<f32> =
                (0..n).map(|r| if (r + step as usize).is_multiple_of(7) { 0.0 } else { 1.0 }).collect();
            for r in (0..n).filter(|r| mask[*r] == 0.0) {
                teacher[r] = f32::NAN;
            }
            let row_weight: Vec<f32> =
                weights.iter().zip(&mask).map(|(w, m)| if *m != 0.0 { *w } else { 0.0 }).collect();
            let (mask_buf, weights_buf) = (ops.upload(&mask).unwrap(), ops.upload(&weights).unwrap());
            let label_grad: Vec<f32> = (0..n).map(|_| g.random_range(-0.1..0.1)).collect();
            let (mut host_total, mut total) = (vec![0f32; n], vec![0f32; n]);
            for (k, &(loss, weight, temperature)) in tasks.iter().enumerate() {
                let task = Task {
                    loss,
                    weight,
                    temperature,
                    teacher: &teacher,
                    row_weight: &row_weight,
                    request_id: &request_id,
                    student: &student,
                    mask: &mask_buf,
                    weights: &weights_buf,
                    rows: n,
                };
                let mut host_grad = label_grad.clone();
                let host_task = Task { student: &host_student, ..task };
                let want = host_path(&host_task, &mut pair_rng(seed, step, k), &mut host_grad);
                ops.write(&label_grad, &mut grad).unwrap();
                let t0 = ops.traffic();
                let got = ranking.apply(&ops, &task, &mut pair_rng(seed, step, k), &mut grad).unwrap();
                let t = ops.traffic() - t0;
                assert!(
                    want > 0.0 && ((got as f64 - want) / want).abs() <= 1.0 / (1u64 << 24) as f64,
                    "{got} vs {want}"
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&grad), bits(&host_grad), "step {step}, {loss:?}: logit gradients");
                // Teacher and pairs (2 uploads) or teacher, offsets and members (3); the loss.
                let uploads = if loss == DistillLoss::Listwise { 3 } else { 2 };
                assert_eq!((t.allocs, t.uploads, t.readbacks, t.readback_elems), (0, uploads, 1, 1), "{loss:?}");
                for r in 0..n {
                    total[r] += grad[r];
                    host_total[r] += host_grad[r];
                }
            }
            // A gradient step on both students (the same bits, so they stay equal).
            for r in 0..n {
                student[r] -= 0.5 * total[r];
                host_student[r] -= 0.5 * host_total[r];
            }
            assert_eq!(student, host_student);
            let after = ops.traffic();
            assert_eq!((after - before).readback_elems, tasks.len() as u64, "step {step}: only the losses came back");
            before = after;
        }
    }
}
