//! One data-parallel step against one process on the same global batch: the summed
//! gradients (dense and sparse) of 2 and 3 in-process ranks, on uneven shards, equal
//! the single process's within a summation-order bound, bit for bit the same on every
//! rank. Runs the trainer's own pieces (`shard`, `task_shares`, `TaskLosses`,
//! `reduce_gradients`).
//!
//! The tolerance. Every gradient entry is a sum over the batch's rows of per-row terms
//! `c_i` (the loss gradient of row `i` scaled by `1/W_global`, back-propagated). One
//! process sums the `B` terms in one order; N ranks sum each shard's terms and then the
//! shards' sums, another order: that alone differs by at most `2·γ(B)·Σ|c_i|` (Higham,
//! *Accuracy and Stability*, §4.2; `γ(m) = m·u/(1 − m·u)`, `u = 2⁻²⁴`), with `Σ|c_i|`
//! measured here by back-propagating every row alone. On the reference backend (naive
//! loops: a row is computed the same way in a batch of any size) the per-row terms
//! differ between the two runs only through the loss scale (`W_local/W_global` rounded
//! to f32, then divided by `W_local`, vs `1/W_global`: a few ulps of each row's logit
//! gradient), but that difference goes through the whole backward pass, whose sums
//! cancel, so it is not bounded relative to `|c_i|` by a closed form we derived: a
//! first-order bound `2·γ(B + K + 2)·Σ|c_i|` (K the widest layer input) holds for every
//! dense entry here but is exceeded (by 2.2×) by 2 embedding-row entries. The test
//! therefore asserts the measured-and-stated tolerance `|g_N − g_1| ≤ 1e-4·Σ_i|c_i|`
//! entry by entry (empirical, not derived; the largest ratio is printed), and exact
//! equality where `Σ|c_i| = 0`.

use crate::data_parallel::{reduce_gradients, shard, task_shares, task_weight_sums};
use crate::losses::TaskLosses;
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::stats::fit_train_stats;
use mixrank_data::{Batch, DenseMode, Encoder, ExperimentConfig};
use mixrank_dist::{Collective, InProcess};
// The reference backend: its naive loops compute a row the same way in a batch of any
// size, so the two runs' per-row terms differ only through the loss scale's rounding.
use mixrank_engine::RefOps as Ops;
use mixrank_model::{build_model, Model};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Rows of the global batch: uneven over 2 ranks (13 + 12) and 3 (8 + 8 + 9).
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

/// Forward, losses (with `share`), backward on `b`; the model's gradients.
fn backprop(cfg: &ExperimentConfig, ops: &Ops, m: &mut dyn Model<Ops>, b: &Batch, share: Vec<f32>) {
    let mut losses = TaskLosses::new(cfg, ops).unwrap();
    losses.share = share;
    m.forward(ops, b).unwrap();
    losses.compute(cfg, ops, m, b, 0).unwrap();
    mixrank_nn::zero_grads(ops, m).unwrap();
    let refs: Vec<&Vec<f32>> = losses.grads.iter().collect();
    m.backward(ops, b, &refs).unwrap();
}

/// Every rank's summed gradient after one data-parallel step.
fn ranks(cfg: &Arc<ExperimentConfig>, b: &Batch, n: usize) -> Vec<Grads> {
    std::thread::scope(|s| {
        let hs: Vec<_> = InProcess::group(n)
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let ops = Ops::default();
                    let mut m = model(cfg, &ops);
                    let local = shard(b, &c);
                    let share = task_shares(&local, &c).unwrap();
                    assert_eq!(local.rows, crate::data_parallel::shard_range(B, c.rank(), n).len());
                    backprop(cfg, &ops, &mut *m, &local, share);
                    reduce_gradients(&c, &ops, &mut *m, true).unwrap();
                    grads_of(&mut *m)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn gamma(m: usize) -> f64 {
    let u = f64::from(f32::EPSILON) / 2.0;
    m as f64 * u / (1.0 - m as f64 * u)
}

#[test]
fn data_parallel_step_equals_one_process_within_a_stated_tolerance() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, enc) = config(d.path());
    let b = first_batch(&cfg, &enc);
    let ops = Ops::default();
    let mut m = model(&cfg, &ops);
    let one = {
        backprop(&cfg, &ops, &mut *m, &b, vec![1.0; cfg.tasks.len()]);
        grads_of(&mut *m)
    };
    // Σ|c_i|: every row alone, its loss scaled by its share of the global weight sums.
    let global = task_weight_sums(&b);
    let mut abs = Grads { dense: vec![0.0; one.dense.len()], sparse: vec![BTreeMap::new(); one.sparse.len()] };
    for i in 0..B {
        let row = b.gather(&[i]);
        let share: Vec<f32> = task_weight_sums(&row)
            .iter()
            .zip(&global)
            .map(|(&l, &g)| if g > 0.0 { (l / g) as f32 } else { 0.0 })
            .collect();
        backprop(&cfg, &ops, &mut *m, &row, share);
        let g = grads_of(&mut *m);
        abs.dense.iter_mut().zip(&g.dense).for_each(|(a, x)| *a += x.abs());
        for (acc, rows) in abs.sparse.iter_mut().zip(&g.sparse) {
            for (id, r) in rows {
                let e = acc.entry(*id).or_insert_with(|| vec![0.0; r.len()]);
                e.iter_mut().zip(r).for_each(|(a, x)| *a += x.abs());
            }
        }
    }
    // The widest layer input: the largest first dimension of a [fan_in, fan_out] weight.
    let mut k = 0;
    m.params(&mut |_, p| k = k.max(p.shape[0]));
    let first_order = 2.0 * gamma(B + k + 2) as f32;
    let tol = 1e-4f32;
    let mut worst = 0f32;
    let mut beyond_first_order = 0;
    for n in [2, 3] {
        let got = ranks(&cfg, &b, n);
        for (r, g) in got.iter().enumerate() {
            assert_eq!(g, &got[0], "{n} ranks: rank {r}'s gradient differs from rank 0's");
        }
        let g = &got[0];
        assert_eq!(g.dense.len(), one.dense.len());
        for (j, ((x, y), s)) in g.dense.iter().zip(&one.dense).zip(&abs.dense).enumerate() {
            let bound = tol * s;
            assert!((x - y).abs() <= bound, "{n} ranks, dense entry {j}: {x} vs {y}, bound {bound}");
            if *s > 0.0 {
                worst = worst.max((x - y).abs() / s);
            }
            if (x - y).abs() > first_order * s {
                beyond_first_order += 1;
            }
        }
        assert!(!g.sparse.is_empty(), "the model has embedding tables");
        for (f, ((a, o), s)) in g.sparse.iter().zip(&one.sparse).zip(&abs.sparse).enumerate() {
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                o.keys().collect::<Vec<_>>(),
                "{n} ranks, feature {f}: touched ids"
            );
            for (id, row) in a {
                for ((x, y), s) in row.iter().zip(&o[id]).zip(&s[id]) {
                    if *s > 0.0 {
                        worst = worst.max((x - y).abs() / s);
                    }
                    if (x - y).abs() > first_order * s {
                        beyond_first_order += 1;
                    }
                    let bound = tol * s;
                    assert!((x - y).abs() <= bound, "{n} ranks, feature {f} id {id}: {x} vs {y}, bound {bound}");
                }
            }
        }
    }
    assert!(worst > 0.0, "the two summation orders differ somewhere (else the test shows nothing)");
    eprintln!(
        "largest |g_N - g_1| / sum|c_i| = {worst:e}; tolerance {tol:e}; first-order bound {first_order:e} \
         (K = {k}) exceeded by {beyond_first_order} entries"
    );
}
