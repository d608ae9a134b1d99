//! Data-parallel training: N replicas of the model, each training on its share of
//! every global batch, kept identical by exchanging gradients through a
//! [`Collective`] (in-process threads or MPI; `mixrank-dist`).
//!
//! One step on rank `r` of `n` (called by `Run::step` around the model's backward):
//! 1. **Shard** ([`shard_range`]): every rank runs the same input pipeline (same seed,
//!    so the same global batches in the same order) and keeps the contiguous rows
//!    `⌊r·B/n⌋ .. ⌊(r+1)·B/n⌋` of each batch of `B` rows. Uneven batches (the last of an
//!    epoch) split the same way; a rank may get no rows (it still takes part in every
//!    exchange, with zero gradients). Every row of a global batch is trained on by
//!    exactly one rank, so every row of the split once per epoch.
//! 2. **Loss normalisation**: each task's loss is a weighted mean over the rows its
//!    label mask keeps. The denominator must be the *global* batch's `W_t = Σ w_i·m_i`,
//!    and every rank hands it to the loss ops (`LossInput::weight_sum`;
//!    [`crate::losses::TaskLosses::weight_sums`]) instead of its own rows' sum: the
//!    sum of the ranks' gradients is then the gradient of the global batch's loss.
//!    Every rank holds the global batch, so it computes `W_t` from it exactly as one
//!    process does ([`task_weight_sums`], the same bits), and the loss op rounds
//!    `scale/W_t` once: each row's logit gradient is bit for bit one process's. With
//!    sharded reading (no rank holds the global batch) the ranks all-reduce their sums
//!    instead ([`all_reduced_weight_sums`]), the same value on every rank.
//! 3. **Dense gradients** ([`reduce_gradients`]): summed over the ranks in two all-reduces
//!    of flat `f32` buffers: the head's parameters, then the others. With `[train]
//!    overlap_all_reduce` the head's starts on a communication thread as soon as the
//!    head's backward is done, overlapped with the rest of backward (the embeddings'
//!    scatter; [`backward_overlapped`]).
//! 4. **Sparse gradients**: the embedding gradients are the touched rows and their
//!    summed gradients, sorted by id, per feature. Every rank all-gathers every rank's
//!    (ids, rows) and merges them (rows of one id summed in rank order), so every
//!    replica hands the same sparse gradient to the sparse optimizer and every table
//!    stays identical (replicated tables). With `[train] embedding_sharding = "rows"`
//!    the tables are split across the ranks instead and the gradients go to their rows'
//!    owners by all-to-all ([`crate::sharded_tables`]).
//!
//! The result equals one process training on the global batch up to summation order:
//! each gradient entry is a sum over the batch's rows of per-row terms that are bit for
//! bit one process's, grouped by rank (the bound and its test: `data_parallel_tests`).
//! [`weights_checksum`] (XXH3 of every dense weight and table) is compared across
//! ranks at every checkpoint and at the end ([`check_replicas`]).

use crate::error::{engine, Result, TrainError};
use crate::wire::{put, Reader};
use mixrank_data::Batch;
use mixrank_dist::Collective;
use mixrank_engine::Backend;
use mixrank_model::Model;
use mixrank_nn::EmbeddingCollection;
use std::ops::Range;
use std::sync::Arc;

impl From<mixrank_dist::DistError> for TrainError {
    fn from(e: mixrank_dist::DistError) -> Self {
        TrainError::Distributed(e.to_string())
    }
}

/// The model's view of the group ([`mixrank_model::peers::BatchPeers`]): the two-tower
/// in-batch softmax gathers every rank's rows through it.
pub struct Peers(pub Arc<dyn Collective>);

impl mixrank_model::peers::BatchPeers for Peers {
    fn all_gather(&self, local: &[f32]) -> std::result::Result<Vec<Vec<f32>>, String> {
        mixrank_dist::all_gather_f32(&*self.0, local).map_err(|e| e.to_string())
    }
    fn rank(&self) -> usize {
        self.0.rank()
    }
}

/// The rows of a global batch of `rows` that rank `rank` of `size` trains on.
pub fn shard_range(rows: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    rows * rank / size..rows * (rank + 1) / size
}

/// Rank `c.rank()`'s rows of the global batch `b`.
pub fn shard(b: &Batch, c: &dyn Collective) -> Batch {
    let idx: Vec<usize> = shard_range(b.rows, c.rank(), c.size()).collect();
    b.gather(&idx)
}

/// `Σ wᵢ` over the rows task `t`'s label mask keeps, per task, in `f64` and row order
/// (the denominator of the loss ops' weighted mean).
pub fn task_weight_sums(b: &Batch) -> Vec<f64> {
    (0..b.n_tasks)
        .map(|t| b.mask(t).iter().zip(&b.weights).filter(|(&m, _)| m != 0.0).map(|(_, &w)| w as f64).sum())
        .collect()
}

/// Each task's weight sum over the global batch when no rank holds it (sharded
/// reading): the all-reduce of every rank's [`task_weight_sums`] (the same value on
/// every rank; it may differ from a sum in row order in its last bits).
pub fn all_reduced_weight_sums(local: &Batch, c: &dyn Collective) -> Result<Vec<f64>> {
    let mut global = task_weight_sums(local);
    c.all_reduce_sum_f64(&mut global)?;
    Ok(global)
}

/// What one rank contributed to one step's gradient exchange, in bytes of payload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exchanged {
    /// The dense gradients' all-reduce buffer (every parameter, `f32`).
    pub dense_bytes: u64,
    /// This rank's sparse gradients in the all-gather (touched ids and rows).
    pub sparse_bytes: u64,
}

/// Runs the model's backward on this rank's rows with the all-reduce of its leading
/// dense parameters' gradients (the head's: [`Model::backward_overlapped`]) started on a
/// communication thread as soon as they are final, overlapped with the rest of backward
/// (the logit sources' and the embeddings' scatter); returns them summed over the ranks,
/// for [`reduce_gradients`]. The thread is joined before this returns, so no other
/// collective runs beside it (MPI is initialised `MPI_THREAD_SERIALIZED`).
pub fn backward_overlapped<B: Backend>(
    c: &Arc<dyn Collective>,
    ops: &B,
    model: &mut dyn Model<B>,
    b: &Batch,
    d_logits: &[&B::Buf],
) -> Result<Option<Vec<f32>>> {
    std::thread::scope(|s| {
        let mut pending = None;
        let done = model.backward_overlapped(ops, b, d_logits, &mut |lead| {
            let mut buf = vec![0f32; lead.num_params()];
            read_grads(ops, lead, &mut buf, 0).map_err(|e| mixrank_model::ModelError::Engine {
                context: "reading gradients for the overlapped all-reduce".into(),
                source: Box::new(e),
            })?;
            let c = c.clone();
            pending = Some(s.spawn(move || c.all_reduce_sum_f32(&mut buf).map(|_| buf)));
            Ok(())
        });
        let reduced = match pending {
            Some(h) => Some(h.join().map_err(|_| TrainError::Distributed("the all-reduce thread panicked".into()))??),
            None => None,
        };
        done?;
        Ok(reduced)
    })
}

/// Sums every dense parameter's gradient over the ranks, in two buckets: the leading
/// [`Model::overlap_len`] values (the head's; `lead`: already summed by
/// [`backward_overlapped`], or `None` — a rank without rows, or a model that hands none
/// out early — to sum here) and the rest. Every rank makes the same two calls (the split
/// is the architecture's). Then, with `replicated_tables`, merges the embeddings' sparse
/// gradients (see the module docs; sharded tables exchange theirs in
/// [`crate::sharded_tables::ShardedTables::exchange_grads`]).
pub fn reduce_gradients<B: Backend>(
    c: &dyn Collective,
    ops: &B,
    model: &mut dyn Model<B>,
    replicated_tables: bool,
    lead: Option<Vec<f32>>,
) -> Result<Exchanged> {
    let split = model.overlap_len();
    let mut total = 0;
    model.params(&mut |_, p| total += p.len());
    if split > total || lead.as_ref().is_some_and(|l| l.len() != split) {
        return Err(TrainError::Distributed(format!(
            "the head's {} overlapped gradient values do not lead the model's {total}",
            lead.map_or(split, |l| l.len())
        )));
    }
    let mut flat = vec![0f32; total];
    let skip = if lead.is_some() { split } else { 0 };
    let mut err = read_grads(ops, model, &mut flat, skip).err();
    match lead {
        Some(l) => flat[..split].copy_from_slice(&l),
        None if split > 0 => c.all_reduce_sum_f32(&mut flat[..split])?,
        None => {}
    }
    if split < total {
        c.all_reduce_sum_f32(&mut flat[split..])?;
    }
    let mut at = 0;
    model.params(&mut |_, p| {
        let n = p.len();
        if let Err(e) = ops.write(&flat[at..at + n], &mut p.grad) {
            err.get_or_insert(e);
        }
        at += n;
    });
    if let Some(e) = err {
        return Err(engine("moving dense gradients for the all-reduce")(e));
    }
    let sparse_bytes = match model.embeddings_mut() {
        Some(e) if replicated_tables => merge_sparse(c, ops, e)?,
        _ => 0,
    };
    Ok(Exchanged { dense_bytes: 4 * total as u64, sparse_bytes })
}

/// Reads the gradients of `params` (in [`mixrank_nn::Parameters::params`] order) into
/// `flat`, leaving its first `skip` values (whole parameters) as they are; the first
/// engine error, after every read was tried.
fn read_grads<B: Backend>(
    ops: &B,
    params: &mut (impl mixrank_nn::Parameters<B> + ?Sized),
    flat: &mut [f32],
    skip: usize,
) -> std::result::Result<(), mixrank_engine::EngineError> {
    let (mut at, mut err) = (0, None);
    params.params(&mut |_, p| {
        let n = p.len();
        if at >= skip {
            if let Err(e) = ops.read(&p.grad, &mut flat[at..at + n]) {
                err.get_or_insert(e);
            }
        }
        at += n;
    });
    err.map_or(Ok(()), Err)
}

/// One feature's sparse gradient: sorted unique ids and their `dim`-wide rows.
pub(crate) struct Touched {
    pub(crate) ids: Vec<u32>,
    pub(crate) rows: Vec<f32>,
}

/// Appends one feature's `(len, ids, rows)` as little-endian bytes (the layout
/// [`decode_sparse`] reads).
pub(crate) fn encode_touched(out: &mut Vec<u8>, ids: &[u32], rows: &[f32]) {
    put(out, &[ids.len() as u32]);
    put(out, ids);
    put(out, rows);
}

/// Encodes every feature's `(len, ids, rows)` as little-endian bytes.
fn encode_sparse<B: Backend>(ops: &B, e: &EmbeddingCollection<B>, n_features: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let read = engine("reading sparse gradients for the all-gather");
    for f in 0..n_features {
        let g = e.grad(f);
        let (mut ids, mut rows) = (vec![0u32; g.len], vec![0f32; g.len * g.dim]);
        ops.read_ids(&g.ids, &mut ids).map_err(&read)?;
        ops.read(&g.rows, &mut rows).map_err(&read)?;
        encode_touched(&mut out, &ids, &rows);
    }
    Ok(out)
}

pub(crate) fn decode_sparse(bytes: &[u8], dims: &[usize], rank: usize) -> Result<Vec<Touched>> {
    let mut rd = Reader::new(bytes, rank, "sparse gradients");
    let mut out = Vec::with_capacity(dims.len());
    for &dim in dims {
        let len = rd.u32s(1)?[0] as usize;
        let ids = rd.u32s(len)?;
        let rows = rd.f32s(len.saturating_mul(dim))?;
        out.push(Touched { ids, rows });
    }
    rd.done()?;
    Ok(out)
}

/// Merges sorted sparse gradients: the union of the ids, each id's rows summed in the
/// order of `parts` (rank order).
pub(crate) fn merge(parts: &[&Touched], dim: usize) -> Touched {
    let mut pos = vec![0usize; parts.len()];
    let mut out = Touched { ids: Vec::new(), rows: Vec::new() };
    loop {
        let next = parts.iter().zip(&pos).filter_map(|(p, &i)| p.ids.get(i).copied()).min();
        let Some(id) = next else { break };
        let start = out.rows.len();
        let mut first = true;
        for (p, i) in parts.iter().zip(pos.iter_mut()) {
            if p.ids.get(*i) == Some(&id) {
                let row = &p.rows[*i * dim..(*i + 1) * dim];
                if first {
                    out.rows.extend_from_slice(row);
                    first = false;
                } else {
                    out.rows[start..].iter_mut().zip(row).for_each(|(a, &x)| *a += x);
                }
                *i += 1;
            }
        }
        out.ids.push(id);
    }
    out
}

/// Replaces every feature's sparse gradient by the merge of all ranks' (module docs);
/// the bytes this rank sent to other ranks: its payload once to each (what a ring
/// all-gather sends per rank, and what the sharded tables' all-to-all counts).
fn merge_sparse<B: Backend>(c: &dyn Collective, ops: &B, e: &mut EmbeddingCollection<B>) -> Result<u64> {
    let n_features = e.config().features.len();
    let dims: Vec<usize> = (0..n_features).map(|f| e.grad(f).dim).collect();
    let mine = encode_sparse(ops, e, n_features)?;
    let sent = mine.len() as u64 * (c.size() as u64 - 1);
    let gathered = c.all_gather_bytes(&mine)?;
    let per_rank: Vec<Vec<Touched>> =
        gathered.iter().enumerate().map(|(r, b)| decode_sparse(b, &dims, r)).collect::<Result<_>>()?;
    for (f, &dim) in dims.iter().enumerate() {
        let parts: Vec<&Touched> = per_rank.iter().map(|r| &r[f]).collect();
        let m = merge(&parts, dim);
        let g = e.grad_mut(f);
        let room = ops.ids_len(&g.ids);
        if m.ids.len() > room || m.rows.len() > ops.len(&g.rows) {
            return Err(TrainError::Distributed(format!(
                "feature {f}: {} touched rows across ranks exceed the gradient's room for {room}",
                m.ids.len(),
            )));
        }
        let write = engine("writing merged sparse gradients");
        ops.write_ids(&m.ids, &mut g.ids).map_err(&write)?;
        ops.write(&m.rows, &mut g.rows).map_err(&write)?;
        g.len = m.ids.len();
    }
    Ok(sent)
}

/// Empties every feature's sparse gradient (a rank with no rows this step).
pub fn clear_sparse<B: Backend>(model: &mut dyn Model<B>) {
    if let Some(e) = model.embeddings_mut() {
        for f in 0..e.config().features.len() {
            e.grad_mut(f).len = 0;
        }
    }
}

/// XXH3 of every dense parameter's value (visiting order) and, with `tables`, every
/// embedding table.
pub fn weights_checksum<B: Backend>(ops: &B, model: &mut dyn Model<B>, tables: bool) -> Result<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut feed = |v: &[f32]| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.update(&bytes);
    };
    let mut err = None;
    model.params(&mut |_, p| match p.read_value(ops) {
        Ok(v) => feed(&v),
        Err(e) => {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = model.embeddings().filter(|_| tables) {
        for t in e.tables() {
            match t.read_value(ops) {
                Ok(v) => feed(&v),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
    }
    match err {
        Some(e) => Err(crate::error::layer("reading the weights for their checksum")(e)),
        None => Ok(h.digest()),
    }
}

/// Compares the replicas' weights: every rank's [`weights_checksum`] must be rank 0's.
/// Returns the checksum. With sharded tables (`tables` false) the ranks hold different
/// rows, and only the dense weights are compared.
pub fn check_replicas<B: Backend>(
    c: &dyn Collective,
    ops: &B,
    model: &mut dyn Model<B>,
    step: u64,
    tables: bool,
) -> Result<u64> {
    let mine = weights_checksum(ops, model, tables)?;
    let all = mixrank_dist::all_gather_u64(c, &[mine])?;
    let sums: Vec<u64> = all.iter().map(|v| v.first().copied().unwrap_or(0)).collect();
    if sums.iter().any(|&s| s != sums[0]) {
        let list: Vec<String> = sums.iter().enumerate().map(|(r, s)| format!("rank {r}: {s:016x}")).collect();
        return Err(TrainError::Distributed(format!(
            "the replicas' weights differ at step {step} ({})",
            list.join(", ")
        )));
    }
    Ok(sums[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for rows in [0, 1, 2, 5, 7, 64, 65] {
            for size in 1..=4 {
                let mut next = 0;
                for r in 0..size {
                    let s = shard_range(rows, r, size);
                    assert_eq!(s.start, next, "rows {rows} size {size} rank {r}");
                    assert!(s.len() <= rows.div_ceil(size) && s.len() + 1 >= rows / size);
                    next = s.end;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn merge_unions_sorted_ids_and_sums_rows_in_rank_order() {
        let a = Touched { ids: vec![1, 4], rows: vec![1.0, 2.0, 3.0, 4.0] };
        let b = Touched { ids: vec![0, 4, 9], rows: vec![5.0, 6.0, 0.5, 0.25, 7.0, 8.0] };
        let e = Touched { ids: vec![], rows: vec![] };
        let m = merge(&[&a, &e, &b], 2);
        assert_eq!(m.ids, vec![0, 1, 4, 9]);
        assert_eq!(m.rows, vec![5.0, 6.0, 1.0, 2.0, 3.5, 4.25, 7.0, 8.0]);
    }
}
