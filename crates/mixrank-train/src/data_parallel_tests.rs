//! One data-parallel step against one process on the same global batch: the summed
//! gradients (dense and sparse) of 2 and 3 in-process ranks, on uneven shards, equal
//! the single process's within a derived summation-order bound, bit for bit the same on
//! every rank. Runs the trainer's own pieces (`shard`, `task_weight_sums`, `TaskLosses`,
//! `reduce_gradients`) on the reference backend (naive loops: a row is computed the same
//! way in a batch of any size).
//!
//! **The terms.** Every gradient entry is a sum of terms: a dense entry one term per row
//! (the weight gradient's product `x·δ`, the bias gradient's `δ`), a sparse entry (one
//! component of an embedding row's gradient) one term `w_bag·δ` per occurrence of the id
//! in the batch. Every term is computed from its row alone, including the row's loss
//! gradient `fl(fl(fl(scale/W)·wᵢ)·∂ℓᵢ)`: the loss ops are given the task's denominator
//! `W` (`LossInput::weight_sum`), the global batch's `Σ wᵢ·mᵢ` computed in f64 in row
//! order by `task_weight_sums`, which one process computes from its batch and every rank
//! from the global batch it holds, the same bits; the op rounds `scale/W` to f32 once.
//! So a term is the same f32 in the one-process run, on whichever rank holds its row, and
//! when its row is back-propagated alone (with the same `W`). The test checks this: the
//! logit gradients of the two runs are bit for bit equal, and each run's gradient is
//! exactly (`==`) the f32 sum, in that run's order, of the terms measured row by row.
//!
//! **The bound.** With the terms `c_1 … c_m` of an entry identical, the runs differ only
//! in the order of their additions. One process sums recursively, `(…((0 + c_1) + c_2) +
//! …) + c_m`; N ranks sum each shard's terms recursively and then the shards' sums in rank
//! order (the all-reduce, the sparse merge). Each is a binary tree of f32 additions over
//! the same `m` leaves (`0 + c_1` is exact). With `ŝ` either result and `s = Σ c_t` the
//! exact sum, every addition rounds as `(a + b)(1 + δ)`, `|δ| ≤ u = 2⁻²⁴`, so
//! `ŝ = Σ_t c_t·Π_{k on t's path}(1 + δ_k)` and `|ŝ − s| ≤ Σ_t γ(h_t)·|c_t| ≤ γ(h)·Σ_t |c_t|`
//! (Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2; `γ(k) = k·u/(1 − k·u)`,
//! `h_t` the number of additions on `c_t`'s path, `h` the largest). One process: `h = m −
//! 1`. N ranks: a term passes through `m_r − 1` additions in its rank's sum (`m_r` terms
//! there) and at most `k − 1` in the rank-order sum of the `k` ranks holding terms of the
//! entry, each of which holds at least one, so `h ≤ m_r − 1 + k − 1 ≤ m − 1` (an MPI
//! all-reduce may add the shards' sums in another tree: any tree of `k` leaves has
//! depth ≤ `k − 1`, so the same holds). Hence, entry by entry,
//!
//! `|g_N − g_1| ≤ |g_N − s| + |s − g_1| ≤ 2·γ(m − 1)·Σ_t |c_t|`,
//!
//! with `m = B` for a dense entry and `m` the id's occurrences in the batch for a sparse
//! one (a bag may hold an id twice). `Σ_t |c_t|` is the sum of `|term|` of every row
//! back-propagated alone (a row holding an id twice gives `fl(o + o) = 2o`, exactly
//! `|o| + |o|`), accumulated in f64 (relative error ≤ `B·2⁻⁵³`, negligible beside `γ`).
//! Where `Σ|c_t| = 0` the bound demands exact equality. The test asserts this bound on
//! every entry and prints the largest `|g_N − g_1| / bound` (measured on this batch:
//! 0.063 for dense entries, 0.45 for sparse ones, with 2 and with 3 ranks).

use crate::data_parallel::{backward_overlapped, reduce_gradients, shard, shard_range, task_weight_sums};
use crate::losses::TaskLosses;
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::stats::fit_train_stats;
use mixrank_data::{Batch, DenseMode, Encoder, ExperimentConfig};
use mixrank_dist::{Collective, InProcess};
use mixrank_engine::Backend;
// The reference backend: its naive loops compute a row the same way in a batch of any
// size, so a term does not depend on the rows beside it.
use mixrank_engine::RefOps as Ops;
use mixrank_model::{build_model, Model};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Rows of the global batch: uneven over 2 ranks (12 + 13) and 3 (8 + 8 + 9).
const B: usize = 25;

/// A gradient: every dense parameter's entries (visiting order), then per feature the
/// sparse rows by id.
#[derive(Debug, Clone, PartialEq)]
struct Grads {
    dense: Vec<f32>,
    sparse: Vec<BTreeMap<u32, Vec<f32>>>,
}

fn grads_of(model: &mut dyn Model<Ops>) -> Grads {
    let mut dense = Vec::new();
    model.params(&mut |_, p| dense.extend_from_slice(&p.grad[..p.len()]));
    let mut sparse = Vec::new();
    if let Some(e) = model.embeddings() {
        for f in 0..e.config().features.len() {
            let g = e.grad(f);
            let rows =
                (0..g.len).map(|i| (g.ids[i], g.rows[i * g.dim..(i + 1) * g.dim].to_vec())).collect::<BTreeMap<_, _>>();
            sparse.push(rows);
        }
    }
    Grads { dense, sparse }
}

fn config(dir: &std::path::Path) -> (Arc<ExperimentConfig>, Arc<Encoder>) {
    let p = mixrank_data::simulate::EngagementParams { requests_per_day: 30, days: 3, ..Default::default() };
    let sim = mixrank_data::simulate::simulate_engagement(&p, &dir.join("data")).unwrap();
    let model = dir.join("model.toml");
    // No dropout: masks are drawn per local row (docs/distributed.md).
    std::fs::write(
        &model,
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 8\ntower = { hidden = [4] }\n\
         [[model.experts]]\nkind = \"mlp\"\ncount = 2\nhidden = [16]\n",
    )
    .unwrap();
    let mut cfg = ExperimentConfig::load(&sim.config).unwrap().with_model_file(&model).unwrap();
    cfg.data.batch_size = B;
    let cfg = Arc::new(cfg);
    let stats = fit_train_stats(cfg.clone(), cfg.split("train").unwrap(), Some(10_000)).unwrap();
    assert!(stats.vocabularies.is_empty(), "the simulated config learns no vocabulary");
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(stats.dense))).unwrap());
    (cfg, enc)
}

fn first_batch(cfg: &ExperimentConfig, enc: &Arc<Encoder>) -> Batch {
    let split = cfg.split("train").unwrap();
    let b =
        BatchStream::start(enc.clone(), split, StreamOptions::from_config(cfg, true)).unwrap().next().unwrap().unwrap();
    assert_eq!(b.rows, B);
    b
}

fn model(cfg: &ExperimentConfig, ops: &Ops) -> Box<dyn Model<Ops>> {
    build_model(cfg, ops, B, &mut rand::rngs::StdRng::seed_from_u64(cfg.train.seed)).unwrap()
}

/// Forward, losses (normalised by `weight_sums`, or, with `None`, by the batch's own as
/// one process does), backward on `b`: the model then holds the gradients. Returns the
/// per-task logit gradients.
fn backprop(
    cfg: &ExperimentConfig,
    ops: &Ops,
    m: &mut dyn Model<Ops>,
    b: &Batch,
    weight_sums: Option<Vec<f64>>,
) -> Vec<Vec<f32>> {
    let mut losses = TaskLosses::new(cfg, ops).unwrap();
    losses.weight_sums = weight_sums;
    m.forward(ops, b).unwrap();
    losses.compute(cfg, ops, m, b, 0).unwrap();
    mixrank_nn::zero_grads(ops, m).unwrap();
    let refs: Vec<&Vec<f32>> = losses.grads.iter().collect();
    m.backward(ops, b, &refs).unwrap();
    losses
        .grads
        .iter()
        .map(|g| {
            let mut v = vec![0f32; b.rows];
            ops.read(g, &mut v).unwrap();
            v
        })
        .collect()
}

/// One rank's step: its logit gradients, its gradient before the exchange and after.
struct RankStep {
    logits: Vec<Vec<f32>>,
    local: Grads,
    reduced: Grads,
}

fn ranks(cfg: &Arc<ExperimentConfig>, b: &Batch, n: usize) -> Vec<RankStep> {
    std::thread::scope(|s| {
        let hs: Vec<_> = InProcess::group(n)
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let ops = Ops::default();
                    let mut m = model(cfg, &ops);
                    let local = shard(b, &c);
                    assert_eq!(local.rows, shard_range(B, c.rank(), n).len());
                    // As `Run::step` does: the denominators from the global batch.
                    let logits = backprop(cfg, &ops, &mut *m, &local, Some(task_weight_sums(b)));
                    let before = grads_of(&mut *m);
                    reduce_gradients(&c, &ops, &mut *m, true, None).unwrap();
                    RankStep { logits, local: before, reduced: grads_of(&mut *m) }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// One row back-propagated alone: its terms, and per feature how often each id occurs
/// in its bag.
struct Row {
    terms: Grads,
    occurs: Vec<BTreeMap<u32, usize>>,
}

fn occurrences(b: &Batch, i: usize) -> Vec<BTreeMap<u32, usize>> {
    b.cat
        .iter()
        .map(|c| {
            let ids = match &c.offsets {
                Some(o) => &c.ids[o[i] as usize..o[i + 1] as usize],
                None => &c.ids[i..i + 1],
            };
            let mut m = BTreeMap::new();
            ids.iter().for_each(|&id| *m.entry(id).or_insert(0) += 1);
            m
        })
        .collect()
}

/// The f32 sum from 0, in order, of `rows`' terms: what one process (all rows) or one
/// rank (its shard) computes if its terms are the rows' own. A row holding an id twice
/// adds its two equal occurrences (`fl(o + o) / 2 = o` exactly); sparse entries whose id
/// some row holds more often are not reproducible from the row's total and go to
/// `skipped` (per feature, by id).
fn sum_in_order(rows: &[Row], skipped: &mut [std::collections::BTreeSet<u32>]) -> Grads {
    let mut out = Grads {
        dense: vec![0.0; rows[0].terms.dense.len()],
        sparse: vec![BTreeMap::new(); rows[0].terms.sparse.len()],
    };
    for r in rows {
        out.dense.iter_mut().zip(&r.terms.dense).for_each(|(a, x)| *a += x);
        for (f, (acc, terms)) in out.sparse.iter_mut().zip(&r.terms.sparse).enumerate() {
            for (id, t) in terms {
                let e = acc.entry(*id).or_insert_with(|| vec![0.0; t.len()]);
                match r.occurs[f].get(id).copied().unwrap_or(0) {
                    1 => e.iter_mut().zip(t).for_each(|(a, x)| *a += x),
                    2 => e.iter_mut().zip(t).for_each(|(a, x)| {
                        *a += x / 2.0;
                        *a += x / 2.0;
                    }),
                    k => {
                        assert!(k > 2, "feature {f}: row's gradient touches id {id} its bag does not hold");
                        skipped[f].insert(*id);
                    }
                }
            }
        }
    }
    out
}

/// The ranks' gradients summed in rank order, as the all-reduce (dense) and the merge
/// (sparse: an id's first holder's row, then the others' added) do.
fn sum_over_ranks(parts: &[&Grads]) -> Grads {
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        out.dense.iter_mut().zip(&p.dense).for_each(|(a, x)| *a += x);
        for (acc, rows) in out.sparse.iter_mut().zip(&p.sparse) {
            for (id, row) in rows {
                match acc.get_mut(id) {
                    Some(a) => a.iter_mut().zip(row).for_each(|(a, x)| *a += x),
                    None => {
                        acc.insert(*id, row.clone());
                    }
                }
            }
        }
    }
    out
}

/// `a == b` entry by entry as numbers (±0 alike), except the sparse entries of `skipped`.
fn assert_same(what: &str, a: &Grads, b: &Grads, skipped: &[std::collections::BTreeSet<u32>]) {
    assert_eq!(a.dense.len(), b.dense.len(), "{what}: dense length");
    for (j, (x, y)) in a.dense.iter().zip(&b.dense).enumerate() {
        assert!(x == y, "{what}: dense entry {j}: {x:e} vs {y:e}");
    }
    for (f, (ra, rb)) in a.sparse.iter().zip(&b.sparse).enumerate() {
        assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>(), "{what}: feature {f}'s ids");
        for (id, row) in ra.iter().filter(|(id, _)| !skipped[f].contains(id)) {
            for (k, (x, y)) in row.iter().zip(&rb[id]).enumerate() {
                assert!(x == y, "{what}: feature {f} id {id} [{k}]: {x:e} vs {y:e}");
            }
        }
    }
}

fn gamma(k: usize) -> f64 {
    let u = f64::from(f32::EPSILON) / 2.0;
    k as f64 * u / (1.0 - k as f64 * u)
}

#[test]
fn data_parallel_step_equals_one_process_within_the_summation_order_bound() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, enc) = config(d.path());
    let b = first_batch(&cfg, &enc);
    let ops = Ops::default();
    let mut m = model(&cfg, &ops);
    // One process, as the trainer runs it: the losses normalised by the batch's own sums.
    let one_logits = backprop(&cfg, &ops, &mut *m, &b, None);
    let one = grads_of(&mut *m);
    // Every row alone, normalised by the global batch's sums: its terms.
    let global = task_weight_sums(&b);
    let rows: Vec<Row> = (0..B)
        .map(|i| {
            let logits = backprop(&cfg, &ops, &mut *m, &b.gather(&[i]), Some(global.clone()));
            for (t, l) in logits.iter().enumerate() {
                assert_eq!(l[0].to_bits(), one_logits[t][i].to_bits(), "task {t} row {i}: logit gradient alone");
            }
            Row { terms: grads_of(&mut *m), occurs: occurrences(&b, i) }
        })
        .collect();
    let mut skipped = vec![std::collections::BTreeSet::new(); one.sparse.len()];
    // The one process's gradient is its rows' terms summed in row order.
    assert_same("one process vs its rows' terms", &one, &sum_in_order(&rows, &mut skipped), &skipped);
    // Per entry: Σ|c_t| (f64) and the number of terms m.
    let mut abs_dense = vec![0f64; one.dense.len()];
    let mut abs_sparse: Vec<BTreeMap<u32, (usize, Vec<f64>)>> = vec![BTreeMap::new(); one.sparse.len()];
    for r in &rows {
        abs_dense.iter_mut().zip(&r.terms.dense).for_each(|(a, x)| *a += f64::from(x.abs()));
        for (f, (acc, terms)) in abs_sparse.iter_mut().zip(&r.terms.sparse).enumerate() {
            for (id, t) in terms {
                let e = acc.entry(*id).or_insert_with(|| (0, vec![0.0; t.len()]));
                e.0 += r.occurs[f][id];
                e.1.iter_mut().zip(t).for_each(|(a, x)| *a += f64::from(x.abs()));
            }
        }
    }
    // Per (ranks, dense or sparse): entries, entries that differ, the largest
    // |g_N − g_1| / bound and |g_N − g_1| / Σ|c_t|.
    let mut stats: BTreeMap<(usize, &str), (usize, usize, f64, f64)> = BTreeMap::new();
    let mut check = |key: (usize, &'static str), what: &dyn Fn() -> String, x: f32, y: f32, s: f64, m: usize| {
        let diff = (f64::from(x) - f64::from(y)).abs();
        let bound = 2.0 * gamma(m.max(1) - 1) * s;
        assert!(diff <= bound, "{}: {x:e} vs {y:e}, |diff| {diff:e} > bound {bound:e}", what());
        let e = stats.entry(key).or_default();
        e.0 += 1;
        if diff > 0.0 {
            e.1 += 1;
            e.2 = e.2.max(diff / bound);
            e.3 = e.3.max(diff / s);
        }
    };
    for n in [2, 3] {
        let got = ranks(&cfg, &b, n);
        for (r, g) in got.iter().enumerate() {
            assert_eq!(g.reduced, got[0].reduced, "{n} ranks: rank {r}'s gradient differs from rank 0's");
        }
        // The terms: every rank's logit gradients are one process's rows', bit for bit,
        // and every rank's gradient is its rows' terms summed in row order.
        for (r, g) in got.iter().enumerate() {
            let range = shard_range(B, r, n);
            for (t, l) in g.logits.iter().enumerate() {
                let mine: Vec<u32> = l.iter().map(|x| x.to_bits()).collect();
                let one: Vec<u32> = one_logits[t][range.clone()].iter().map(|x| x.to_bits()).collect();
                assert_eq!(mine, one, "{n} ranks, rank {r}, task {t}: logit gradients");
            }
            let what = format!("{n} ranks, rank {r} vs its rows' terms");
            assert_same(&what, &g.local, &sum_in_order(&rows[range], &mut skipped), &skipped);
        }
        let g = &got[0].reduced;
        let locals: Vec<&Grads> = got.iter().map(|r| &r.local).collect();
        assert_same(&format!("{n} ranks vs the rank-order sum"), g, &sum_over_ranks(&locals), &skipped);
        // The bound.
        assert_eq!(g.dense.len(), one.dense.len());
        for (j, ((&x, &y), &s)) in g.dense.iter().zip(&one.dense).zip(&abs_dense).enumerate() {
            check((n, "dense"), &|| format!("{n} ranks, dense entry {j}"), x, y, s, B);
        }
        assert!(!g.sparse.is_empty(), "the model has embedding tables");
        for (f, ((a, o), s)) in g.sparse.iter().zip(&one.sparse).zip(&abs_sparse).enumerate() {
            assert_eq!(a.keys().collect::<Vec<_>>(), o.keys().collect::<Vec<_>>(), "{n} ranks, feature {f}: ids");
            for (id, row) in a {
                let (m, s) = &s[id];
                for (k, ((&x, &y), &s)) in row.iter().zip(&o[id]).zip(s).enumerate() {
                    let what = || format!("{n} ranks, feature {f} id {id} [{k}] ({m} terms)");
                    check((n, "sparse"), &what, x, y, s, *m);
                }
            }
        }
    }
    for ((n, kind), (entries, differ, worst, worst_rel)) in &stats {
        eprintln!(
            "{n} ranks, {kind}: {differ} of {entries} entries differ; largest |g_N - g_1| / bound \
             {worst:.3e}, largest |g_N - g_1| / sum|c_t| {worst_rel:.3e}"
        );
        assert!(*differ > 0, "{n} ranks, {kind}: the summation orders differ somewhere (else nothing is shown)");
    }
    let skipped: usize = skipped.iter().map(|s| s.len()).sum();
    eprintln!("2·γ(B−1) = {:.3e}; {skipped} sparse rows not reproducible from their rows' terms", 2.0 * gamma(B - 1));
}

/// The trainer's overlapped all-reduce (the head's gradients summed on a thread while
/// the embeddings' backward runs, then the rest) gives every rank the bits of the
/// synchronous one, on 2 and 3 uneven shards.
#[test]
fn overlapped_all_reduce_equals_the_synchronous_one() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, enc) = config(d.path());
    let b = first_batch(&cfg, &enc);
    let cfg = &cfg;
    let b = &b;
    for n in [2, 3] {
        std::thread::scope(|s| {
            let hs: Vec<_> = InProcess::group(n)
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let c: Arc<dyn Collective> = Arc::new(c);
                        let ops = Ops::default();
                        let local = shard(b, &*c);
                        let sums = Some(task_weight_sums(b));
                        // Synchronous: backward, then both buckets summed.
                        let mut m = model(cfg, &ops);
                        backprop(cfg, &ops, &mut *m, &local, sums.clone());
                        reduce_gradients(&*c, &ops, &mut *m, true, None).unwrap();
                        let sync = grads_of(&mut *m);
                        // Overlapped, as `Run::step` does it.
                        let mut m = model(cfg, &ops);
                        let mut losses = TaskLosses::new(cfg, &ops).unwrap();
                        losses.weight_sums = sums;
                        m.forward(&ops, &local).unwrap();
                        losses.compute(cfg, &ops, &*m, &local, 0).unwrap();
                        mixrank_nn::zero_grads(&ops, &mut *m).unwrap();
                        let refs: Vec<&Vec<f32>> = losses.grads.iter().collect();
                        let lead = backward_overlapped(&c, &ops, &mut *m, &local, &refs).unwrap();
                        let (split, total) = (m.overlap_len(), m.num_params());
                        // Without a position tower every dense parameter is the head's.
                        assert!(split > 0 && split <= total, "the head's {split} of {total} values");
                        assert_eq!(lead.as_ref().map(Vec::len), Some(split));
                        reduce_gradients(&*c, &ops, &mut *m, true, lead).unwrap();
                        let over = grads_of(&mut *m);
                        let bits = |g: &Grads| g.dense.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&over), bits(&sync), "{n} ranks, rank {}: dense", c.rank());
                        assert_eq!(over.sparse.len(), sync.sparse.len());
                        for (f, (a, b)) in over.sparse.iter().zip(&sync.sparse).enumerate() {
                            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "feature {f}");
                            for (id, row) in a {
                                let want = &b[id];
                                assert!(
                                    row.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()),
                                    "feature {f} id {id}"
                                );
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }
}
