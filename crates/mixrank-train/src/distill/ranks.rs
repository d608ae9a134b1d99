//! Distillation in data-parallel training ([`crate::data_parallel`]).
//!
//! The pointwise losses are sums of per-row terms: each rank computes its own rows'
//! terms with the global batch's weight sum as the denominator (the label losses'
//! [`crate::losses::TaskLosses::weight_sums`]), as the label losses do, and the ranks'
//! partial losses add up to the global batch's.
//!
//! The pairwise and listwise losses are not: a request's rows, and the pairs sampled in
//! the batch, straddle the ranks' shards. So every rank gathers, per distilled task, the
//! rows the loss reads from every rank — student logit, the logit gradient so far (the
//! label loss's and any earlier distillation term's), teacher score, row weight, label
//! mask, sample weight and request id, 32 bytes a row — in rank order, and runs the
//! loss on the whole global batch with the same pair stream as one process
//! ([`super::pair_rng`] of the step). With replicated reading the gathered rows are the
//! global batch's rows in order (the shards are contiguous), so the pairs, the groups
//! and every row's gradient are bit for bit one process's; each rank then keeps its own
//! rows' part. With sharded reading the gathered batch is the ranks' parts side by side,
//! the global batch of that job. The loss value is the same on every rank (rank 0
//! reports it in the all-reduce of the step's distillation losses).

use crate::error::{engine, Result};
use crate::wire::put;
use mixrank_dist::Collective;
use mixrank_engine::Backend;

/// A data-parallel rank's part in a step's distillation.
#[derive(Clone, Copy)]
pub(crate) struct Ranks<'a> {
    pub group: &'a dyn Collective,
    /// The checkpoint teacher's stream yields global batches (replicated reading), of
    /// which this rank scores its shard; with sharded reading it yields this rank's rows.
    pub shard_teacher: bool,
}

/// One rank's rows of a distilled task, as [`GlobalRows::gather`] reads them.
pub(crate) struct LocalRows<'a, B: Backend> {
    /// Student logits and the logit gradient so far, backend.
    pub student: &'a B::Buf,
    pub grad: &'a B::Buf,
    /// Teacher logits, row weights (sample weight × label mask), the label mask, the
    /// sample weights and request ids, host.
    pub teacher: &'a [f32],
    pub row_weight: &'a [f32],
    pub mask: &'a [f32],
    pub weights: &'a [f32],
    pub request_id: &'a [u64],
    pub rows: usize,
}

/// A distilled task's rows over the whole global batch (every rank's, in rank order).
pub(crate) struct GlobalRows<B: Backend> {
    pub student: B::Buf,
    pub grad: B::Buf,
    pub mask: B::Buf,
    pub weights: B::Buf,
    pub teacher: Vec<f32>,
    pub row_weight: Vec<f32>,
    pub request_id: Vec<u64>,
    /// Rows of the global batch, and this rank's first row in it.
    pub rows: usize,
    pub offset: usize,
    host: [Vec<f32>; 4],
    bytes: Vec<u8>,
}

/// Bytes a row takes in the gather: six `f32` and the `u64` request id.
const ROW_BYTES: usize = 6 * 4 + 8;

impl<B: Backend> GlobalRows<B> {
    /// Buffers for global batches of up to `max_rows` rows (grown when a batch needs more).
    pub fn new(ops: &B, max_rows: usize) -> Result<Self> {
        let alloc = || ops.alloc(max_rows).map_err(engine("distillation buffers"));
        Ok(GlobalRows {
            student: alloc()?,
            grad: alloc()?,
            mask: alloc()?,
            weights: alloc()?,
            teacher: Vec::new(),
            row_weight: Vec::new(),
            request_id: Vec::new(),
            rows: 0,
            offset: 0,
            host: Default::default(),
            bytes: Vec::new(),
        })
    }

    /// Gathers every rank's `local` rows (a collective: every rank calls it, a rank
    /// without rows too) and uploads the global student logits, gradient, mask and
    /// weights.
    pub fn gather(&mut self, ops: &B, group: &dyn Collective, local: &LocalRows<'_, B>) -> Result<()> {
        let n = local.rows;
        let [student, grad, _, _] = &mut self.host;
        student.resize(n, 0.0);
        grad.resize(n, 0.0);
        if n > 0 {
            ops.read(local.student, student).map_err(engine("reading student logits for distillation"))?;
            ops.read(local.grad, grad).map_err(engine("reading logit gradients for distillation"))?;
        }
        self.bytes.clear();
        for r in 0..n {
            put(
                &mut self.bytes,
                &[student[r], grad[r], local.teacher[r], local.row_weight[r], local.mask[r], local.weights[r]],
            );
            put(&mut self.bytes, &[local.request_id[r]]);
        }
        let parts = group.all_gather_bytes(&self.bytes)?;
        self.offset = parts[..group.rank()].iter().map(|p| p.len() / ROW_BYTES).sum();
        self.rows = parts.iter().map(|p| p.len() / ROW_BYTES).sum();
        for h in &mut self.host {
            h.clear();
        }
        self.teacher.clear();
        self.row_weight.clear();
        self.request_id.clear();
        let f = |row: &[u8], i: usize| f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        for row in parts.iter().flat_map(|p| p.chunks_exact(ROW_BYTES)) {
            let [student, grad, mask, weights] = &mut self.host;
            student.push(f(row, 0));
            grad.push(f(row, 1));
            self.teacher.push(f(row, 2));
            self.row_weight.push(f(row, 3));
            mask.push(f(row, 4));
            weights.push(f(row, 5));
            self.request_id.push(u64::from_le_bytes(row[24..32].try_into().expect("8 bytes")));
        }
        let [student, grad, mask, weights] = &self.host;
        for (host, buf) in
            [(student, &mut self.student), (grad, &mut self.grad), (mask, &mut self.mask), (weights, &mut self.weights)]
        {
            if ops.len(buf) < host.len() {
                *buf = ops.alloc(host.len()).map_err(engine("distillation buffers"))?;
            }
            ops.write(host, buf).map_err(engine("uploading distillation rows"))?;
        }
        Ok(())
    }

    /// Writes this rank's rows of the global gradient (after the loss added into it)
    /// over its `rows` rows of `local`.
    pub fn scatter_back(&mut self, ops: &B, local: &mut B::Buf, rows: usize) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let host = &mut self.host[1];
        host.resize(self.rows, 0.0);
        ops.read(&self.grad, host).map_err(engine("reading distillation gradients"))?;
        ops.write(&host[self.offset..self.offset + rows], local).map_err(engine("writing distillation gradients"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_parallel::shard_range;
    use crate::distill::pair_rng;
    use crate::distill::ranking::tests::{shuffled_requests, three_losses};
    use crate::distill::ranking::{Ranking, Task};
    use mixrank_data::config::distill::DistillLoss;
    use mixrank_dist::InProcess;
    use mixrank_engine::RefOps;
    use rand::{Rng, SeedableRng};

    /// A ranking task over `rows` rows: `(loss, weight, temperature)`, `[teacher, row
    /// weight]`, request ids, `[student, mask, weights]`.
    fn task<'a>(
        (loss, weight, temperature): (DistillLoss, f64, f64),
        rows: usize,
        [teacher, row_weight]: [&'a [f32]; 2],
        request_id: &'a [u64],
        [student, mask, weights]: [&'a Vec<f32>; 3],
    ) -> Task<'a, RefOps> {
        Task { loss, weight, temperature, teacher, row_weight, request_id, student, mask, weights, rows }
    }

    /// The pairwise and listwise losses on 2 and 3 ranks, each holding a contiguous
    /// shard of a batch (uneven shards, requests straddling them), give every row the
    /// logit gradient one process gives it, bit for bit, and the same loss: each rank
    /// gathers the global rows and runs the loss with the step's pair stream.
    #[test]
    fn ranking_losses_on_gathered_shards_are_one_process_bit_for_bit() {
        let ops = RefOps;
        let n = 61;
        let mut g = rand::rngs::StdRng::seed_from_u64(5);
        let request_id = shuffled_requests(&mut g, n);
        let teacher: Vec<f32> = (0..n).map(|_| g.random_range(-3.0..3.0)).collect();
        let weights: Vec<f32> = (0..n).map(|r| if r % 11 == 4 { 0.0 } else { g.random_range(0.5..2.0) }).collect();
        let mask: Vec<f32> = (0..n).map(|r| if r % 7 == 3 { 0.0 } else { 1.0 }).collect();
        let row_weight: Vec<f32> = weights.iter().zip(&mask).map(|(w, m)| if *m != 0.0 { *w } else { 0.0 }).collect();
        let student: Vec<f32> = (0..n).map(|_| g.random_range(-2.0..2.0)).collect();
        let label_grad: Vec<f32> = (0..n).map(|_| g.random_range(-0.1..0.1)).collect();
        let (losses, cfg_tasks) = three_losses(2);
        let (seed, step) = (11, 4);
        for (k, &(loss, weight, temperature)) in losses.iter().enumerate() {
            // One process.
            let mut ranking = Ranking::new(&ops, n, &cfg_tasks).unwrap();
            let mut one = label_grad.clone();
            let spec = (loss, weight, temperature);
            let t = task(spec, n, [&teacher, &row_weight], &request_id, [&student, &mask, &weights]);
            let want = ranking.apply(&ops, &t, &mut pair_rng(seed, step, k), &mut one).unwrap();
            for size in [2, 3] {
                let results: Vec<(Vec<f32>, f32)> = std::thread::scope(|s| {
                    let hs: Vec<_> = InProcess::group(size)
                        .into_iter()
                        .map(|c| {
                            let (cfg_tasks, ops) = (&cfg_tasks, RefOps);
                            let (teacher, row_weight, request_id) = (&teacher, &row_weight, &request_id);
                            let (student, mask, weights, label_grad) = (&student, &mask, &weights, &label_grad);
                            s.spawn(move || {
                                let r = shard_range(n, c.rank(), size);
                                let mut grad = label_grad[r.clone()].to_vec();
                                let local = LocalRows::<RefOps> {
                                    student: &student[r.clone()].to_vec(),
                                    grad: &grad.clone(),
                                    teacher: &teacher[r.clone()],
                                    row_weight: &row_weight[r.clone()],
                                    mask: &mask[r.clone()],
                                    weights: &weights[r.clone()],
                                    request_id: &request_id[r.clone()],
                                    rows: r.len(),
                                };
                                let mut gr = GlobalRows::new(&ops, n).unwrap();
                                gr.gather(&ops, &c, &local).unwrap();
                                let mut ranking = Ranking::new(&ops, n, cfg_tasks).unwrap();
                                let host = [&gr.teacher[..], &gr.row_weight[..]];
                                let t = task(spec, gr.rows, host, &gr.request_id, [&gr.student, &gr.mask, &gr.weights]);
                                let l = ranking.apply(&ops, &t, &mut pair_rng(seed, step, k), &mut gr.grad).unwrap();
                                gr.scatter_back(&ops, &mut grad, r.len()).unwrap();
                                (grad, l)
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let joined: Vec<u32> = results.iter().flat_map(|(g, _)| g.iter().map(|x| x.to_bits())).collect();
                let bits: Vec<u32> = one.iter().map(|x| x.to_bits()).collect();
                assert_eq!(joined, bits, "{loss:?} on {size} ranks: every row's gradient");
                assert_ne!(one, label_grad, "{loss:?}: a gradient was added");
                for (r, (_, l)) in results.iter().enumerate() {
                    assert_eq!(l.to_bits(), want.to_bits(), "{loss:?} on {size} ranks: rank {r}'s loss");
                }
            }
        }
    }
}
