//! EmbeddingCollection: values, gradient check of the sparse table gradients in f64,
//! CpuOps vs RefOps, errors.

use crate::common::*;
use mixrank_engine::{Backend, CpuOps, Pooling, RefOps};
use mixrank_nn::testing::{BoundOps, RefOpsF64};
use mixrank_nn::*;

/// Tables: 0 = [7, 3], 1 = [5, 2]. Features: single on 0, mean-pooled on 1, sum-pooled
/// on 0 (sharing table 0 with feature 0).
fn config() -> EmbeddingCollectionConfig {
    EmbeddingCollectionConfig {
        tables: vec![TableConfig::new(7, 3), TableConfig::new(5, 2)],
        features: vec![
            FeatureConfig::single(0),
            FeatureConfig::pooled(1, Pooling::Mean, 16),
            FeatureConfig::pooled(0, Pooling::Sum, 16),
        ],
    }
}

const BATCH: usize = 3;
const SINGLE: [u32; 3] = [2, 6, 2];
// Bags: [1, 4, 1], [], [3]
const OFF1: [u32; 4] = [0, 3, 3, 4];
const IDS1: [u32; 4] = [1, 4, 1, 3];
// Bags: [2], [0, 5], [6, 6]
const OFF2: [u32; 4] = [0, 1, 3, 5];
const IDS2: [u32; 5] = [2, 0, 5, 6, 6];

struct Ids<B: Backend> {
    single: B::Ids,
    off1: B::Ids,
    ids1: B::Ids,
    off2: B::Ids,
    ids2: B::Ids,
}

impl<B: Backend> Ids<B> {
    fn new(ops: &B) -> Self {
        Ids {
            single: ops.upload_ids(&SINGLE).unwrap(),
            off1: ops.upload_ids(&OFF1).unwrap(),
            ids1: ops.upload_ids(&IDS1).unwrap(),
            off2: ops.upload_ids(&OFF2).unwrap(),
            ids2: ops.upload_ids(&IDS2).unwrap(),
        }
    }

    fn inputs(&self) -> Vec<FeatureInput<'_, B>> {
        vec![
            FeatureInput::Single(&self.single),
            FeatureInput::Multi { offsets: &self.off1, ids: &self.ids1 },
            FeatureInput::Multi { offsets: &self.off2, ids: &self.ids2 },
        ]
    }
}

#[test]
fn lookup_values_by_hand() {
    let ops = RefOpsF64::new();
    let mut emb = config().init(&ops, BATCH, &mut rng(0)).unwrap();
    assert_eq!(emb.output_dim(), 3 + 2 + 3);
    // table 0 row r = [r, 10r, 100r]; table 1 row r = [r, -r]
    emb.tables_mut()[0].value = (0..7).flat_map(|r| [r as f64, 10.0 * r as f64, 100.0 * r as f64]).collect();
    emb.tables_mut()[1].value = (0..5).flat_map(|r| [r as f64, -(r as f64)]).collect();
    let ids = Ids::new(&ops);
    let out = emb.forward(&ops, &ids.inputs(), BATCH).unwrap();
    #[rustfmt::skip]
    let expected = [
        2.0, 20.0, 200.0,  2.0, -2.0,  2.0, 20.0, 200.0,  // mean(1,4,1) = 2; sum(2)
        6.0, 60.0, 600.0,  0.0, 0.0,   5.0, 50.0, 500.0,  // empty bag → 0; 0 + 5
        2.0, 20.0, 200.0,  3.0, -3.0,  12.0, 120.0, 1200.0,
    ];
    assert_eq!(&out[..24], &expected);
}

#[test]
fn sparse_gradients_match_finite_differences() {
    // L = Σ R ⊙ out is linear in the tables, so the stencil is exact up to rounding
    // (~1e-16·|L|/h); TOL as everywhere.
    let ops = RefOpsF64::new();
    let mut emb = config().init(&ops, BATCH, &mut rng(1)).unwrap();
    let ids = Ids::new(&ops);
    let r = uniform64(&mut rng(2), BATCH * 8, -1.0, 1.0);
    emb.forward(&ops, &ids.inputs(), BATCH).unwrap();
    emb.backward(&ops, &ids.inputs(), &r).unwrap();
    for t in 0..2 {
        let (rows, dim) = (emb.tables()[t].rows, emb.tables()[t].dim);
        let mut dense = vec![0.0; rows * dim];
        for f in emb.features_of_table(t).collect::<Vec<_>>() {
            let g = emb.grad(f);
            assert!(g.ids[..g.len].windows(2).all(|w| w[0] < w[1]), "ids ascending and distinct");
            for i in 0..g.len {
                for j in 0..dim {
                    dense[g.ids[i] as usize * dim + j] += g.rows[i * dim + j];
                }
            }
        }
        assert!(dense.iter().any(|v| v.abs() > 1e-3));
        for (e, &an) in dense.iter().enumerate() {
            let fd = derivative(|delta| {
                emb.tables_mut()[t].value[e] += delta;
                let l = dot(&emb.forward(&ops, &ids.inputs(), BATCH).unwrap()[..BATCH * 8], &r);
                emb.tables_mut()[t].value[e] -= delta;
                l
            });
            assert!((fd - an).abs() <= TOL * (1.0 + fd.abs()), "table {t}[{e}]: {an} vs {fd}");
        }
        // Untouched rows have no entry: table 1 rows 0 and 2, table 0 rows 1, 3, 4.
        let touched: Vec<usize> =
            (0..rows).filter(|&row| dense[row * dim..(row + 1) * dim].iter().any(|&v| v != 0.0)).collect();
        assert_eq!(touched, if t == 0 { vec![0, 2, 5, 6] } else { vec![1, 3, 4] });
    }
}

/// Lookups are copies and pooled sums; scatters sum rows. Each backend is checked
/// against the propagated rounding bound of the exact values (`BoundOps`).
#[test]
fn cpu_and_reference_within_rounding_bound() {
    /// Output and, per feature, the sparse gradient's ids and rows.
    type Lookup<T> = (Vec<T>, Vec<(Vec<u32>, Vec<T>)>);
    fn go<T: Copy, B: Backend<Buf = Vec<T>, Ids = Vec<u32>>>(ops: &B, dy: &[T]) -> Lookup<T> {
        let mut emb = config().init(ops, BATCH, &mut rng(3)).unwrap();
        let ids = Ids::new(ops);
        let out = emb.forward(ops, &ids.inputs(), BATCH).unwrap()[..BATCH * 8].to_vec();
        emb.backward(ops, &ids.inputs(), &dy.to_vec()).unwrap();
        let grads = (0..3)
            .map(|f| {
                let g = emb.grad(f);
                (g.ids[..g.len].to_vec(), g.rows[..g.len * g.dim].to_vec())
            })
            .collect();
        (out, grads)
    }
    let dy = uniform32(&mut rng(4), BATCH * 8, -1.0, 1.0);
    let a = pool().install(|| go(&CpuOps::new(), &dy));
    let b = go(&RefOps, &dy);
    let e = go(&BoundOps, &BoundOps::exact(&dy));
    for (name, run) in [("CpuOps", &a), ("RefOps", &b)] {
        assert_within_bound(&format!("{name} output"), &run.0, &e.0);
        for (f, ((ids, rows), (eids, erows))) in run.1.iter().zip(&e.1).enumerate() {
            assert_eq!(ids, eids, "{name} feature {f} ids");
            assert_within_bound(&format!("{name} feature {f} grad"), rows, erows);
        }
    }
}

#[test]
fn embedding_errors() {
    let ops = RefOps;
    let mut cfg = config();
    cfg.features.push(FeatureConfig::single(5));
    assert!(matches!(
        cfg.init(&ops, 2, &mut rng(0)),
        Err(NnError::InvalidConfig { layer: "EmbeddingCollection", field: "features.table", .. })
    ));
    let mut emb = config().init(&ops, BATCH, &mut rng(0)).unwrap();
    let ids = Ids::new(&ops);
    let mut inputs = ids.inputs();
    inputs.swap(0, 1);
    let err = emb.forward(&ops, &inputs, BATCH).err().unwrap();
    assert!(err.to_string().contains("feature 0 is single-valued but got a multi-valued input"), "{err}");
    let err = emb.forward(&ops, &ids.inputs()[..2], BATCH).err().unwrap();
    assert!(matches!(err, NnError::DimMismatch { lhs: "inputs", lhs_dim: 2, rhs_dim: 3, .. }));
    let bad = ops.upload_ids(&[2, 7, 0]).unwrap();
    let mut inputs = ids.inputs();
    inputs[0] = FeatureInput::Single(&bad);
    let err = emb.forward(&ops, &inputs, BATCH).err().unwrap();
    assert!(err.to_string().contains("id 7 at position 1 is out of range"), "{err}");
}
