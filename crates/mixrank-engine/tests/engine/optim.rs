//! The optimizer ops (`mixrank_engine::optim`): `CpuOps` against `RefOps` bit for bit
//! (both run the same f32 arithmetic per element and the same f64 sums in the same
//! order; the CPU only splits elements into fixed chunks across threads), on sizes that
//! take the parallel paths, and the refusals of bad calls.

use crate::common::*;
use mixrank_engine::*;

fn adam_spec(l2: f32, decoupled: f32, clip: Option<f32>) -> AdamSpec {
    AdamSpec {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step_size: 0.03,
        bc2_sqrt: 0.05,
        l2,
        decoupled,
        clip_norm: clip,
    }
}

/// Norm accumulation over two parameters, then an Adam update of each, on `ops`.
fn adam_run<B: Backend<Buf = Vec<f32>>>(ops: &B, spec: &AdamSpec, params: &[(Vec<f32>, Vec<f32>)]) -> Vec<Vec<f32>> {
    let mut acc = ops.alloc(NORM_ACC_LEN).unwrap();
    for (_, g) in params {
        ops.sq_norm_acc(g.len(), g, &mut acc).unwrap();
    }
    let mut out = vec![vec![ops.sq_norm_read(&acc).unwrap() as f32]];
    for (k, (w, g)) in params.iter().enumerate() {
        let n = w.len();
        let mut r = rng(100 + k as u64);
        let (mut w, mut m, mut v) = (w.clone(), uniform(&mut r, n, -0.1, 0.1), uniform(&mut r, n, 0.0, 0.1));
        ops.adam_update(n, spec, &acc, &mut w, g, &mut m, &mut v).unwrap();
        out.extend([w, m, v]);
    }
    out
}

#[test]
fn adam_and_the_norm_match_the_reference_bit_for_bit() {
    let mut r = rng(1);
    // 70k elements: five norm chunks and the parallel path of the update.
    let params: Vec<(Vec<f32>, Vec<f32>)> =
        [70_000, 37].iter().map(|&n| (uniform(&mut r, n, -1.0, 1.0), uniform(&mut r, n, -2.0, 2.0))).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for spec in [adam_spec(0.0, 0.0, None), adam_spec(0.01, 0.0, Some(1.0)), adam_spec(0.0, 0.1, Some(1e6))] {
        let cpu = pool.install(|| adam_run(&CpuOps::new(), &spec, &params));
        let reference = adam_run(&RefOps::default(), &spec, &params);
        for (i, (a, b)) in cpu.iter().zip(&reference).enumerate() {
            assert_same(&format!("{spec:?} output {i}"), a, b);
        }
    }
    // The norm is the f64 sum of squares, read back exactly.
    let acc_sum: f64 = params.iter().flat_map(|(_, g)| g.iter()).map(|&x| x as f64 * x as f64).sum();
    let read = adam_run(&CpuOps::new(), &adam_spec(0.0, 0.0, None), &params)[0][0] as f64;
    assert!((read - acc_sum).abs() <= 1e-6 * acc_sum, "norm² {read} vs {acc_sum}");
}

#[test]
fn a_clip_scales_the_gradient_before_the_moments() {
    // ‖g‖ = 5 clipped to 1: m = (1-β₁)·0.2·g; without a clip m = (1-β₁)·g.
    let ops = RefOps::default();
    let g = vec![3.0f32, 4.0];
    let mut acc = ops.alloc(NORM_ACC_LEN).unwrap();
    ops.sq_norm_acc(2, &g, &mut acc).unwrap();
    assert_eq!(ops.sq_norm_read(&acc).unwrap(), 25.0);
    for (clip, scale) in [(Some(1.0), 0.2f32), (None, 1.0)] {
        let (mut w, mut m, mut v) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
        ops.adam_update(2, &adam_spec(0.0, 0.0, clip), &acc, &mut w, &g, &mut m, &mut v).unwrap();
        for j in 0..2 {
            let want = (1.0 - 0.9f32) * (g[j] * scale);
            assert!((m[j] - want).abs() <= 1e-6 * want.abs(), "clip {clip:?}: m {} vs {want}", m[j]);
        }
    }
}

/// A sparse gradient over `rows` rows: ascending distinct ids and random rows.
fn sparse(r: &mut rand::rngs::StdRng, rows: usize, dim: usize, every: usize, from: usize) -> (Vec<u32>, Vec<f32>) {
    let ids: Vec<u32> = (from..rows).step_by(every).map(|i| i as u32).collect();
    let g = uniform(r, ids.len() * dim, -1.0, 1.0);
    (ids, g)
}

type Outputs = Vec<Vec<f32>>;

/// Merge of two gradients, then row-wise Adagrad and lazy Adam with it, on `ops`.
fn sparse_run<B: Backend<Buf = Vec<f32>, Ids = Vec<u32>>>(
    ops: &B,
    which: SparseRows,
    global: Option<u64>,
    rows: usize,
) -> Outputs {
    let dim = 8;
    let mut r = rng(7);
    let (ia, ga) = sparse(&mut r, rows, dim, 3, 0);
    let (ib, gb) = sparse(&mut r, rows, dim, 5, 1);
    let mut merged = SparseGrad::new(ops, dim, 0).unwrap();
    ops.merge_sparse_grads(dim, (ia.len(), &ia, &ga), (ib.len(), &ib, &gb), &mut merged).unwrap();
    let len = merged.len;
    let shape = TableShape { rows, dim };
    let table0: Vec<f32> = uniform(&mut r, rows * dim, -0.5, 0.5);
    let acc0: Vec<f32> = uniform(&mut r, rows, 0.0, 1.0);
    let spec = RowAdagradSpec { lr: 0.1, eps: 1e-8, weight_decay: 0.01, rows: which };
    let (mut table, mut acc) = (table0.clone(), acc0);
    ops.rowwise_adagrad_update(&spec, shape, len, &merged.ids, &merged.rows, &mut table, &mut acc).unwrap();
    let lazy = LazyAdamSpec {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        global_step: global,
        rows: which,
    };
    let (mut t2, mut m, mut v, mut steps) = (table0, vec![0.0; rows * dim], vec![0.0; rows * dim], vec![2u32; rows]);
    for _ in 0..2 {
        ops.lazy_adam_update(&lazy, shape, len, &merged.ids, &merged.rows, &mut t2, &mut m, &mut v, &mut steps)
            .unwrap();
    }
    let ids: Vec<f32> = merged.ids[..len].iter().map(|&i| i as f32).collect();
    let counts: Vec<f32> = steps.iter().map(|&s| s as f32).collect();
    vec![ids, merged.rows[..len * dim].to_vec(), table, acc, t2, m, v, counts]
}

#[test]
fn sparse_updates_and_the_merge_match_the_reference_bit_for_bit() {
    for which in [SparseRows::Touched, SparseRows::All] {
        for global in [None, Some(9)] {
            let cpu = sparse_run(&CpuOps::new(), which, global, 300);
            let reference = sparse_run(&RefOps::default(), which, global, 300);
            for (i, (a, b)) in cpu.iter().zip(&reference).enumerate() {
                assert_same(&format!("{which:?} {global:?} output {i}"), a, b);
            }
            // The merge is the union of ids 0,3,6,… and 1,6,11,…; 6, 21, … are in both.
            assert!(cpu[0].windows(2).all(|w| w[0] < w[1]), "ascending distinct ids");
            assert_eq!(cpu[0].len(), 100 + 60 - 20);
            // Rows walked: touched rows only, or all rows (counts 2 → 4 or stay 2).
            let walked = cpu[7].iter().filter(|&&c| c == 4.0).count();
            assert_eq!(walked, if which == SparseRows::All { 300 } else { 140 });
        }
    }
}

/// Large enough that the CPU backend splits the touched rows over threads (14,000 rows ×
/// 8 values): still bit for bit the reference, whatever the thread count.
#[test]
fn parallel_sparse_updates_match_the_reference_bit_for_bit() {
    let reference = sparse_run(&RefOps::default(), SparseRows::Touched, None, 30_000);
    assert_eq!(reference[0].len(), 10_000 + 6_000 - 2_000);
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let cpu = pool.install(|| sparse_run(&CpuOps::new(), SparseRows::Touched, None, 30_000));
        for (i, (a, b)) in cpu.iter().zip(&reference).enumerate() {
            assert_same(&format!("{threads} threads, output {i}"), a, b);
        }
    }
}

#[test]
fn bad_optimizer_calls_are_refused_alike() {
    refusals(&CpuOps::new());
    refusals(&RefOps::default());
    fn refusals<B: Backend<Buf = Vec<f32>, Ids = Vec<u32>>>(ops: &B) {
        let acc = vec![0.0f32; NORM_ACC_LEN];
        let (mut w, g, mut m, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 3], vec![0.0; 4]);
        let e = ops.adam_update(4, &adam_spec(0.0, 0.0, None), &acc, &mut w, &g, &mut m, &mut v).unwrap_err();
        assert!(matches!(e, EngineError::BufferTooSmall { operand: "m", .. }), "{e}");
        let mut short = vec![0.0f32; 1];
        assert!(ops.sq_norm_acc(4, &g, &mut short).is_err(), "accumulator too short");
        let shape = TableShape { rows: 4, dim: 2 };
        let (ids, rows) = (vec![1u32, 9], vec![0.0f32; 4]);
        let (mut table, mut s) = (vec![0.0; 8], vec![0.0; 4]);
        let spec = RowAdagradSpec { lr: 0.1, eps: 1e-8, weight_decay: 0.0, rows: SparseRows::Touched };
        let e = ops.rowwise_adagrad_update(&spec, shape, 2, &ids, &rows, &mut table, &mut s).unwrap_err();
        assert!(matches!(e, EngineError::IdOutOfRange { id: 9, position: 1, rows: 4, .. }), "{e}");
    }
}
