//! Validation across the ranks (data-parallel training): every rank scores its share of
//! each batch of the split and rank 0 puts the predictions back together in the order
//! one process scores them.
//!
//! Every rank reads the whole split (file order, no shuffling: the same batches on every
//! rank) and forwards its rows of each batch — the rows [`crate::data_parallel::shard_range`]
//! gives it, as in a training step with replicated reading. With sharded tables each
//! batch's rows are looked up from their owners first ([`ShardedTables::lookup`]), so
//! validation needs no whole tables on rank 0. Then:
//! - every rank sends its predictions, labels, masks, weights, segments, request ids
//!   and kept columns to rank 0 (an all-to-all in which only rank 0 receives), which
//!   interleaves them batch by batch, rank by rank: the rows of one process's
//!   [`crate::evaluate::evaluate`] in its order, so every metric (and every bootstrap
//!   interval, which resamples by row index) is computed from the same arrays;
//! - the gates' per-segment sums are all-reduced (`f64`: the means differ from one
//!   process's by `f64` rounding only).
//!
//! Each row's prediction is the model's forward of that row; the forward of a row does
//! not depend on the other rows of its batch (evaluation mode), so rank 0 gets one
//! process's predictions (`tests/distributed.rs` compares them).

use crate::data_parallel::{shard, shard_range};
use crate::error::Result;
use crate::evaluate::{Collector, Predictions};
use crate::sharded_tables::ShardedTables;
use crate::wire::{put, Reader};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::Encoder;
use mixrank_dist::Collective;
use mixrank_engine::Backend;
use mixrank_model::Model;
use std::sync::Arc;

/// Collective. Scores `split` across the ranks of `group`; `Some` (every row, in one
/// process's order) on rank 0, `None` on the others. The model is left in evaluation mode.
pub fn evaluate_across<B: Backend>(
    model: &mut dyn Model<B>,
    ops: &B,
    enc: Arc<Encoder>,
    split: &mixrank_data::config::Split,
    group: &dyn Collective,
    mut tables: Option<&mut ShardedTables<B>>,
) -> Result<Option<Predictions>> {
    model.set_training(false);
    let cfg = enc.shared_config();
    let opts = StreamOptions::from_config(&cfg, false);
    let mut mine = Collector::new(&*model, cfg.clone());
    let mut batches = Vec::new();
    for b in BatchStream::start(enc, split, opts)? {
        let b = b?;
        batches.push(b.rows);
        let local = shard(&b, group);
        let local = match tables.as_deref_mut() {
            // Collective: every rank takes part, with or without rows.
            Some(s) => s.lookup(group, ops, &local, model)?.0,
            None => local,
        };
        if local.rows > 0 {
            let _awake = ops.keep_awake();
            model.forward(ops, &local)?;
            mine.add(&*model, ops, &local)?;
        }
    }
    let mut sums = mine.sums();
    group.all_reduce_sum_f64(&mut sums)?;
    mine.set_sums(&sums);
    let mut send = vec![Vec::new(); group.size()];
    if group.rank() != 0 {
        send[0] = encode(&mine.p);
    }
    let received = group.all_to_all_bytes(&send)?;
    if group.rank() != 0 {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(group.size());
    for (r, bytes) in received.iter().enumerate().skip(1) {
        let p = decode(&mine.p, bytes, r)?;
        let want: usize = batches.iter().map(|&rows| shard_range(rows, r, group.size()).len()).sum();
        if p.weights.len() != want {
            return Err(crate::error::TrainError::Distributed(format!(
                "rank {r} scored {} validation rows, its share of the batches is {want}",
                p.weights.len()
            )));
        }
        parts.push(p);
    }
    let mine = mine.finish();
    let mut all = Predictions { gates: mine.gates.clone(), ..Predictions::empty(mine.preds.len(), mine.kept.len()) };
    let mut parts: Vec<(Predictions, usize)> = std::iter::once(mine).chain(parts).map(|p| (p, 0)).collect();
    for &rows in &batches {
        for (r, (p, at)) in parts.iter_mut().enumerate() {
            let n = shard_range(rows, r, group.size()).len();
            append(&mut all, p, *at..*at + n);
            *at += n;
        }
    }
    Ok(Some(all))
}

/// Appends `p`'s rows `rows` to `out`.
fn append(out: &mut Predictions, p: &Predictions, rows: std::ops::Range<usize>) {
    let cols = |o: &mut Vec<Vec<f32>>, s: &[Vec<f32>]| {
        o.iter_mut().zip(s).for_each(|(o, s)| o.extend_from_slice(&s[rows.clone()]));
    };
    cols(&mut out.preds, &p.preds);
    cols(&mut out.labels, &p.labels);
    cols(&mut out.masks, &p.masks);
    cols(&mut out.kept, &p.kept);
    out.weights.extend_from_slice(&p.weights[rows.clone()]);
    out.segments.extend_from_slice(&p.segments[rows.clone()]);
    out.requests.extend_from_slice(&p.requests[rows]);
}

/// A rank's rows: the row count, then every column.
fn encode(p: &Predictions) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, &[p.weights.len() as u64]);
    for c in p.preds.iter().chain(&p.labels).chain(&p.masks).chain(&p.kept) {
        put(&mut out, c);
    }
    put(&mut out, &p.weights);
    put(&mut out, &p.segments);
    put(&mut out, &p.requests);
    out
}

/// Rank `rank`'s rows, laid out as `like`'s columns.
fn decode(like: &Predictions, bytes: &[u8], rank: usize) -> Result<Predictions> {
    let mut rd = Reader::new(bytes, rank, "validation predictions");
    let n = rd.len()?;
    let mut p = Predictions::empty(like.preds.len(), like.kept.len());
    for c in p.preds.iter_mut().chain(&mut p.labels).chain(&mut p.masks).chain(&mut p.kept) {
        *c = rd.f32s(n)?;
    }
    p.weights = rd.f32s(n)?;
    p.segments = rd.u32s(n)?;
    p.requests = rd.take(n)?;
    rd.done()?;
    Ok(p)
}
