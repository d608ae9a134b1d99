//! Optimizers on hand-computed steps.
//!
//! Expected values are computed in f64 from the documented formulas; the optimizers run
//! in f32, about ten roundings per element, so results agree to `16u·(|w| + |Δw|)`.

use crate::common::*;
use mixrank_engine::{CpuOps, Pooling, RefOps};
use mixrank_nn::*;

fn close(what: &str, got: f32, want: f64, scale: f64) {
    let tol = 16.0 * U32 * scale;
    assert!((got as f64 - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol:e})");
}

/// A 2→1 linear layer with weight [w0, w1], bias b and the given gradients.
fn linear(w: [f32; 2], b: f32, gw: [f32; 2], gb: f32) -> Linear<RefOps> {
    let mut lin = LinearConfig::new(2, 1).init(&RefOps, 1, &mut rng(0)).unwrap();
    lin.weight.value = w.to_vec();
    lin.weight.grad = gw.to_vec();
    let bias = lin.bias.as_mut().unwrap();
    bias.value = vec![b];
    bias.grad = vec![gb];
    lin
}

/// One Adam element update, in f64, from the documented formula. The betas are the f32
/// values the optimizer holds (`1 - 0.999f32` is not `0.001`: 1.3e-5 relative apart).
fn adam_ref(w: f64, g: f64, m: f64, v: f64, t: i32, lr: f64, decoupled: f64) -> (f64, f64, f64) {
    let (b1, b2, eps) = (0.9f32 as f64, 0.999f32 as f64, 1e-8f32 as f64);
    let m = b1 * m + (1.0 - b1) * g;
    let v = b2 * v + (1.0 - b2) * g * g;
    let mh = m / (1.0 - b1.powi(t));
    let vh = v / (1.0 - b2.powi(t));
    (w - lr * mh / (vh.sqrt() + eps) - lr * decoupled * w, m, v)
}

#[test]
fn adam_step_from_known_moments() {
    let mut lin = linear([0.5, -1.5], 0.25, [0.2, -0.4], 1.0);
    let mut adam = Adam::new(AdamConfig::default(), &RefOps, &mut lin).unwrap();
    // Resume at step 4 with known moments: the next step is t = 5.
    adam.set_state(&RefOps, 4, vec![vec![0.1, -0.05], vec![0.3]], vec![vec![0.04, 0.01], vec![0.2]]).unwrap();
    adam.step(&RefOps, &mut lin, 0.01).unwrap();
    let stats = adam.stats(&RefOps).unwrap();
    assert_eq!(adam.steps(), 5);
    assert!((stats.grad_norm - (0.04f64 + 0.16 + 1.0).sqrt()).abs() < 1e-7);
    assert_eq!(stats.clip_scale, 1.0);
    let cases = [(0.5, 0.2, 0.1, 0.04), (-1.5, -0.4, -0.05, 0.01)];
    for (j, &(w, g, m, v)) in cases.iter().enumerate() {
        let (w1, m1, v1) = adam_ref(w, g, m, v, 5, 0.01, 0.0);
        close(&format!("w{j}"), lin.weight.value[j], w1, w.abs() + (w1 - w).abs());
        close(&format!("m{j}"), adam.moments(&RefOps, 0).unwrap().0[j], m1, m1.abs());
        close(&format!("v{j}"), adam.moments(&RefOps, 0).unwrap().1[j], v1, v1);
    }
    let (b1, _, _) = adam_ref(0.25, 1.0, 0.3, 0.2, 5, 0.01, 0.0);
    close("bias", lin.bias.as_ref().unwrap().value[0], b1, 0.25 + (b1 - 0.25).abs());
}

#[test]
fn adamw_decays_only_weights_and_l2_goes_through_the_moments() {
    // Zero gradients from zero moments: the Adam part of the update is exactly 0.
    let lr = 0.1;
    let mut lin = linear([2.0, -4.0], 3.0, [0.0, 0.0], 0.0);
    let cfg = AdamConfig { weight_decay: WeightDecay::Decoupled(0.5), ..AdamConfig::default() };
    let mut adamw = Adam::new(cfg, &RefOps, &mut lin).unwrap();
    adamw.step(&RefOps, &mut lin, lr).unwrap();
    assert_eq!(lin.weight.value, vec![2.0 - 0.1 * 0.5 * 2.0, -4.0 + 0.1 * 0.5 * 4.0]);
    assert_eq!(lin.bias.as_ref().unwrap().value, vec![3.0], "biases are not decayed");

    let mut lin = linear([2.0, -4.0], 3.0, [0.0, 0.0], 0.0);
    let cfg = AdamConfig { weight_decay: WeightDecay::L2(0.5), ..AdamConfig::default() };
    let mut adam = Adam::new(cfg, &RefOps, &mut lin).unwrap();
    adam.step(&RefOps, &mut lin, lr).unwrap();
    // g = λw; first step: m̂ = g, v̂ = g², so w -= lr·sign(g) (up to eps).
    let (w0, _, _) = adam_ref(2.0, 1.0, 0.0, 0.0, 1, lr as f64, 0.0);
    close("L2 w0", lin.weight.value[0], w0, 2.0);
    assert_eq!(lin.bias.as_ref().unwrap().value, vec![3.0]);
    assert!((adam.moments(&RefOps, 0).unwrap().0[0] - 0.1).abs() < 1e-7, "m = (1-β₁)·λw = 0.1");
}

#[test]
fn global_norm_clipping_scales_every_gradient() {
    // ‖g‖ = ‖(3, 4, 0)‖ = 5, clipped to 1: the moments see 0.2·g.
    let mut lin = linear([0.0, 0.0], 0.0, [3.0, 4.0], 0.0);
    let cfg = AdamConfig { clip_norm: Some(1.0), ..AdamConfig::default() };
    let mut adam = Adam::new(cfg, &RefOps, &mut lin).unwrap();
    adam.step(&RefOps, &mut lin, 1e-3).unwrap();
    let stats = adam.stats(&RefOps).unwrap();
    assert_eq!(stats.grad_norm, 5.0);
    assert!((stats.clip_scale - 0.2).abs() < 1e-12);
    close("m0", adam.moments(&RefOps, 0).unwrap().0[0], 0.1 * 0.6, 0.06);
    close("m1", adam.moments(&RefOps, 0).unwrap().0[1], 0.1 * 0.8, 0.08);
    // Under the threshold nothing changes.
    let mut lin = linear([0.0, 0.0], 0.0, [0.3, 0.4], 0.0);
    let mut adam = Adam::new(AdamConfig { clip_norm: Some(1.0), ..AdamConfig::default() }, &RefOps, &mut lin).unwrap();
    adam.step(&RefOps, &mut lin, 1e-3).unwrap();
    assert_eq!(adam.stats(&RefOps).unwrap().clip_scale, 1.0);
}

#[test]
fn adam_state_must_match_the_module() {
    let mut lin = linear([0.0, 0.0], 0.0, [0.0, 0.0], 0.0);
    let mut adam = Adam::new(AdamConfig::default(), &RefOps, &mut lin).unwrap();
    let mut other = LinearConfig::new(3, 1).init(&RefOps, 1, &mut rng(0)).unwrap();
    let err = adam.step(&RefOps, &mut other, 0.1).err().unwrap();
    assert!(matches!(err, NnError::DimMismatch { layer: "Adam", lhs: "parameter length", lhs_dim: 3, .. }), "{err}");
    assert!(adam.set_state(&RefOps, 0, vec![], vec![]).is_err());
}

/// One table [6, 2], one single-valued feature; backward with a known `dout` so the
/// sparse gradient is known: rows 1 and 4 touched (row 4 twice).
fn embedding_with_grad() -> (EmbeddingCollection<RefOps>, Vec<f32>) {
    let cfg =
        EmbeddingCollectionConfig { tables: vec![TableConfig::new(6, 2)], features: vec![FeatureConfig::single(0)] };
    let mut emb = cfg.init(&RefOps, 3, &mut rng(1)).unwrap();
    let ids = vec![4u32, 1, 4];
    emb.forward(&RefOps, &[FeatureInput::Single(&ids)], 3).unwrap();
    let dout = vec![0.5, -1.0, 2.0, 0.25, 1.5, 3.0];
    emb.backward(&RefOps, &[FeatureInput::Single(&ids)], &dout).unwrap();
    let before = emb.tables()[0].value.clone();
    (emb, before)
}

#[test]
fn rowwise_adagrad_updates_touched_rows_only() {
    let (mut emb, before) = embedding_with_grad();
    let mut opt = RowWiseAdagrad::new(
        RowWiseAdagradConfig { initial_accumulator: 0.1, ..RowWiseAdagradConfig::new(0.5) },
        &RefOps,
        &emb,
    )
    .unwrap();
    opt.step(&RefOps, &mut emb).unwrap();
    let after = &emb.tables()[0].value;
    // Row 1: g = (2, 0.25); row 4: g = (0.5 + 1.5, -1 + 3) = (2, 2).
    for (row, g) in [(1usize, [2.0f64, 0.25]), (4, [2.0, 2.0])] {
        let s = 0.1 + (g[0] * g[0] + g[1] * g[1]) / 2.0;
        close(&format!("acc {row}"), opt.accumulators(&RefOps, 0).unwrap()[row], s, s);
        for j in 0..2 {
            let w = before[row * 2 + j] as f64;
            let want = w - 0.5 * g[j] / (s.sqrt() + 1e-8);
            close(&format!("w[{row},{j}]"), after[row * 2 + j], want, w.abs() + (want - w).abs());
        }
    }
    for row in [0, 2, 3, 5] {
        assert_eq!(after[row * 2..row * 2 + 2], before[row * 2..row * 2 + 2], "row {row} must be bit-identical");
        assert_eq!(opt.accumulators(&RefOps, 0).unwrap()[row], 0.1);
    }
}

#[test]
fn sparse_weight_decay_adds_l2_on_touched_rows_only() {
    let wd = 0.3f64;
    // Row-wise Adagrad: g_r + wd·w_r feeds both the accumulator and the step.
    let (mut emb, before) = embedding_with_grad();
    let cfg = RowWiseAdagradConfig { weight_decay: wd as f32, ..RowWiseAdagradConfig::new(0.5) };
    let mut opt = RowWiseAdagrad::new(cfg, &RefOps, &emb).unwrap();
    opt.step(&RefOps, &mut emb).unwrap();
    let after = emb.tables()[0].value.clone();
    for (row, g) in [(1usize, [2.0f64, 0.25]), (4, [2.0, 2.0])] {
        let gd: Vec<f64> = (0..2).map(|j| g[j] + wd * before[row * 2 + j] as f64).collect();
        let s = (gd[0] * gd[0] + gd[1] * gd[1]) / 2.0;
        for j in 0..2 {
            let w = before[row * 2 + j] as f64;
            let want = w - 0.5 * gd[j] / (s.sqrt() + 1e-8);
            close(&format!("adagrad w[{row},{j}]"), after[row * 2 + j], want, w.abs() + (want - w).abs());
        }
    }
    for row in [0, 2, 3, 5] {
        assert_eq!(after[row * 2..row * 2 + 2], before[row * 2..row * 2 + 2], "row {row} must be bit-identical");
    }
    // Lazy Adam: the decayed gradient enters the moments.
    let (mut emb, before) = embedding_with_grad();
    let cfg = LazyAdamConfig { weight_decay: wd as f32, ..LazyAdamConfig::new(0.01) };
    let mut opt = LazyAdam::new(cfg, &RefOps, &emb).unwrap();
    opt.step(&RefOps, &mut emb).unwrap();
    let after = emb.tables()[0].value.clone();
    for (row, g) in [(1usize, [2.0f64, 0.25]), (4, [2.0, 2.0])] {
        for j in 0..2 {
            let w = before[row * 2 + j] as f64;
            let (want, m, _) = adam_ref(w, g[j] + wd * w, 0.0, 0.0, 1, 0.01, 0.0);
            close(&format!("lazy w[{row},{j}]"), after[row * 2 + j], want, w.abs() + (want - w).abs());
            close("m", opt.state(&RefOps, 0).unwrap().0[row * 2 + j], m, m.abs());
        }
    }
    for row in [0, 2, 3, 5] {
        assert_eq!(after[row * 2..row * 2 + 2], before[row * 2..row * 2 + 2], "row {row} must be bit-identical");
    }
}

/// `decay_scope = Table`: the update of every row is the optimizer applied to the
/// gradient of `J(W) = Σ dout·lookup(W) + wd/2·‖W‖²` over the whole table. The gradient
/// is read back from row-wise Adagrad's update (`g = Δw·(sqrt(s) + eps)/lr`, `s` the
/// accumulator after the step) and compared with central finite differences of `J`
/// (exact for a quadratic up to f32 rounding of the lookup). Under `Touched` the
/// untouched rows stay bit-identical; under `Table` they decay.
#[test]
fn table_scope_decay_applies_the_whole_table_l2_gradient_to_every_row() {
    let wd = 0.3f64;
    let (lr, eps) = (0.5f64, 1e-8f64);
    let ids = vec![4u32, 1, 4];
    let dout = vec![0.5f32, -1.0, 2.0, 0.25, 1.5, 3.0];
    // J in f64 from the collection's own forward.
    let objective = |table: &[f32]| -> f64 {
        let cfg = EmbeddingCollectionConfig {
            tables: vec![TableConfig::new(6, 2)],
            features: vec![FeatureConfig::single(0)],
        };
        let mut emb = cfg.init(&RefOps, 3, &mut rng(1)).unwrap();
        emb.tables_mut()[0].value.copy_from_slice(table);
        let out = emb.forward(&RefOps, &[FeatureInput::Single(&ids)], 3).unwrap().clone();
        let lin: f64 = out.iter().zip(&dout).map(|(&o, &d)| o as f64 * d as f64).sum();
        lin + wd / 2.0 * table.iter().map(|&w| w as f64 * w as f64).sum::<f64>()
    };
    for scope in [DecayScope::Touched, DecayScope::Table] {
        let (mut emb, before) = embedding_with_grad();
        let cfg = RowWiseAdagradConfig {
            weight_decay: wd as f32,
            decay_scope: scope,
            ..RowWiseAdagradConfig::new(lr as f32)
        };
        let mut opt = RowWiseAdagrad::new(cfg, &RefOps, &emb).unwrap();
        opt.step(&RefOps, &mut emb).unwrap();
        let after = emb.tables()[0].value.clone();
        for row in 0..6 {
            let touched = row == 1 || row == 4;
            if scope == DecayScope::Touched && !touched {
                assert_eq!(after[row * 2..row * 2 + 2], before[row * 2..row * 2 + 2], "touched scope: row {row} kept");
                assert_eq!(opt.accumulators(&RefOps, 0).unwrap()[row], 0.0);
                continue;
            }
            let s = opt.accumulators(&RefOps, 0).unwrap()[row] as f64;
            assert!(s > 0.0, "{scope:?}: row {row} was updated");
            for j in 0..2 {
                let e = row * 2 + j;
                let g = (before[e] as f64 - after[e] as f64) * (s.sqrt() + eps) / lr;
                let h = 1e-2f32;
                let (mut up, mut down) = (before.clone(), before.clone());
                up[e] += h;
                down[e] -= h;
                let fd = (objective(&up) - objective(&down)) / (up[e] as f64 - down[e] as f64);
                let tol = 1e-3 * (1.0 + fd.abs());
                assert!(
                    (g - fd).abs() <= tol,
                    "{scope:?} row {row} col {j}: update's gradient {g}, finite differences {fd}"
                );
                if !touched {
                    // Closed form: an untouched row's gradient is wd·w alone.
                    let want = wd * before[e] as f64;
                    assert!((g - want).abs() <= 1e-4 * (1.0 + want.abs()), "row {row}: {g} vs wd·w = {want}");
                    assert_ne!(after[e], before[e], "table scope: untouched row {row} decays");
                }
            }
        }
    }
    // Lazy Adam under `Table`: an untouched row's moments take its L2 gradient.
    let (mut emb, before) = embedding_with_grad();
    let cfg = LazyAdamConfig { weight_decay: wd as f32, decay_scope: DecayScope::Table, ..LazyAdamConfig::new(0.01) };
    let mut opt = LazyAdam::new(cfg, &RefOps, &emb).unwrap();
    opt.step(&RefOps, &mut emb).unwrap();
    let after = emb.tables()[0].value.clone();
    for row in [0usize, 2, 3, 5] {
        for j in 0..2 {
            let w = before[row * 2 + j] as f64;
            let (want, m, _) = adam_ref(w, wd * w, 0.0, 0.0, 1, 0.01, 0.0);
            close(&format!("lazy w[{row},{j}]"), after[row * 2 + j], want, w.abs() + (want - w).abs());
            close("m", opt.state(&RefOps, 0).unwrap().0[row * 2 + j], m, m.abs());
        }
        assert_eq!(opt.state(&RefOps, 0).unwrap().2[row], 1, "row {row} counted as updated");
    }
}

#[test]
fn lazy_adam_touches_only_listed_rows_with_per_row_or_global_correction() {
    for correction in [BiasCorrection::PerRow, BiasCorrection::GlobalStep] {
        let (mut emb, before) = embedding_with_grad();
        let cfg = LazyAdamConfig { bias_correction: correction, ..LazyAdamConfig::new(0.01) };
        let mut opt = LazyAdam::new(cfg, &RefOps, &emb).unwrap();
        opt.step(&RefOps, &mut emb).unwrap();
        let after1 = emb.tables()[0].value.clone();
        for (row, g) in [(1usize, [2.0f64, 0.25]), (4, [2.0, 2.0])] {
            for j in 0..2 {
                let w = before[row * 2 + j] as f64;
                let (want, m, v) = adam_ref(w, g[j], 0.0, 0.0, 1, 0.01, 0.0);
                close(&format!("w[{row},{j}]"), after1[row * 2 + j], want, w.abs() + (want - w).abs());
                close("m", opt.state(&RefOps, 0).unwrap().0[row * 2 + j], m, m.abs());
                close("v", opt.state(&RefOps, 0).unwrap().1[row * 2 + j], v, v);
            }
        }
        for row in [0, 2, 3, 5] {
            assert_eq!(after1[row * 2..row * 2 + 2], before[row * 2..row * 2 + 2], "row {row} must be bit-identical");
            assert_eq!(opt.state(&RefOps, 0).unwrap().0[row * 2..row * 2 + 2], [0.0, 0.0]);
            assert_eq!(opt.state(&RefOps, 0).unwrap().2[row], 0);
        }
        // Step 2 touches only row 0 (first time): per-row correction uses k = 1, the
        // global approximation k = 2.
        let ids = vec![0u32];
        emb.forward(&RefOps, &[FeatureInput::Single(&ids)], 1).unwrap();
        emb.backward(&RefOps, &[FeatureInput::Single(&ids)], &vec![1.0, -1.0]).unwrap();
        opt.step(&RefOps, &mut emb).unwrap();
        let after2 = emb.tables()[0].value.clone();
        let k = if correction == BiasCorrection::PerRow { 1 } else { 2 };
        for j in 0..2 {
            let w = before[j] as f64;
            let g = if j == 0 { 1.0 } else { -1.0 };
            let (want, _, _) = adam_ref(w, g, 0.0, 0.0, k, 0.01, 0.0);
            close(&format!("{correction:?} w[0,{j}]"), after2[j], want, w.abs() + (want - w).abs());
        }
        assert_eq!(after2[2..], after1[2..], "rows 1..6 untouched in step 2");
        assert_eq!(opt.state(&RefOps, 0).unwrap().2[..5], [1, 1, 0, 0, 1]);
    }
}

#[test]
fn features_sharing_a_table_update_it_once_with_the_summed_gradient() {
    let cfg = EmbeddingCollectionConfig {
        tables: vec![TableConfig::new(5, 1)],
        features: vec![FeatureConfig::single(0), FeatureConfig::pooled(0, Pooling::Sum, 8)],
    };
    let mut emb = cfg.init(&RefOps, 2, &mut rng(2)).unwrap();
    let single = vec![3u32, 1];
    let (offsets, ids) = (vec![0u32, 2, 3], vec![3u32, 0, 3]);
    let inputs = [FeatureInput::Single(&single), FeatureInput::Multi { offsets: &offsets, ids: &ids }];
    emb.forward(&RefOps, &inputs, 2).unwrap();
    // out columns: [single, pooled]; dout rows (1, 10), (2, 20)
    emb.backward(&RefOps, &inputs, &vec![1.0, 10.0, 2.0, 20.0]).unwrap();
    let mut opt = RowWiseAdagrad::new(RowWiseAdagradConfig::new(1.0), &RefOps, &emb).unwrap();
    opt.step(&RefOps, &mut emb).unwrap();
    // Row 3: 1 (single, ex 0) + 10 (bag 0) + 20 (bag 1) = 31; row 0: 10; row 1: 2.
    assert_eq!(opt.accumulators(&RefOps, 0).unwrap(), [100.0, 4.0, 0.0, 961.0, 0.0]);
}

#[test]
fn sparse_state_round_trips_and_resumes_identically() {
    // Two optimizers: one runs two steps, the other one step, is saved and restored into
    // a fresh optimizer, then steps again; the tables must end bit-identical.
    let run = |split: bool| {
        let (mut emb, _) = embedding_with_grad();
        let mut opt = LazyAdam::new(LazyAdamConfig::new(0.01), &RefOps, &emb).unwrap();
        let mut ada = RowWiseAdagrad::new(RowWiseAdagradConfig::new(0.1), &RefOps, &emb).unwrap();
        opt.step(&RefOps, &mut emb).unwrap();
        ada.step(&RefOps, &mut emb).unwrap();
        if split {
            let (m, v, rs) = opt.state(&RefOps, 0).unwrap();
            let acc = ada.accumulators(&RefOps, 0).unwrap();
            opt = LazyAdam::new(LazyAdamConfig::new(0.01), &RefOps, &emb).unwrap();
            opt.set_state(&RefOps, 0, 1, &m, &v, &rs).unwrap();
            ada = RowWiseAdagrad::new(RowWiseAdagradConfig::new(0.1), &RefOps, &emb).unwrap();
            ada.set_accumulators(&RefOps, 0, &acc).unwrap();
        }
        opt.step(&RefOps, &mut emb).unwrap();
        ada.step(&RefOps, &mut emb).unwrap();
        emb.tables()[0].value.clone()
    };
    assert_eq!(run(false), run(true));
    let (emb, _) = embedding_with_grad();
    let mut ada = RowWiseAdagrad::new(RowWiseAdagradConfig::new(0.1), &RefOps, &emb).unwrap();
    assert!(ada.set_accumulators(&RefOps, 0, &[0.0; 5]).is_err());
}

#[test]
fn adam_is_independent_of_the_thread_count() {
    // A weight spanning several parallel chunks, clipped (so the norm's partial sums
    // matter): 1 and 2 threads must give bit-identical parameters and norms.
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let ops = CpuOps::new();
            let mut lin = LinearConfig::new(300, 200).init(&ops, 1, &mut rng(3)).unwrap();
            lin.weight.grad = uniform32(&mut rng(4), 60_000, -1.0, 1.0);
            let mut adam =
                Adam::new(AdamConfig { clip_norm: Some(1.0), ..AdamConfig::default() }, &ops, &mut lin).unwrap();
            adam.step(&ops, &mut lin, 1e-2).unwrap();
            let stats = adam.stats(&ops).unwrap();
            assert!(stats.clip_scale < 1.0, "the case clips");
            (stats.grad_norm, lin.weight.value)
        })
    };
    const { assert!(60_000 > 3 * mixrank_engine::optim::NORM_CHUNK) };
    let (n1, w1) = run(1);
    let (n2, w2) = run(2);
    assert_eq!(n1, n2);
    assert_eq!(w1, w2);
}

/// The optimizer ops on `CpuOps` (f32) stay within the rounding bounds `BoundOps`
/// propagates through the same updates from the same f32 inputs: Adam with an active
/// clip and both decays, row-wise Adagrad and lazy Adam over touched and all rows,
/// after a merge of two sparse gradients.
#[test]
fn optimizer_ops_stay_within_the_derived_rounding_bounds() {
    use mixrank_engine::{
        AdamSpec, Backend, LazyAdamSpec, RowAdagradSpec, SparseGrad, SparseRows, TableShape, NORM_ACC_LEN,
    };
    use mixrank_nn::testing::BoundOps;
    let (cpu, bound) = (CpuOps::new(), BoundOps);
    let n = 3000;
    let (w, g) = (uniform32(&mut rng(11), n, -1.0, 1.0), uniform32(&mut rng(12), n, -0.5, 0.5));
    let (m, v) = (uniform32(&mut rng(13), n, -0.1, 0.1), uniform32(&mut rng(14), n, 0.01, 0.1));
    for (l2, decoupled) in [(0.01, 0.0), (0.0, 0.1)] {
        let spec = AdamSpec {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step_size: (1e-2 / (1.0 - 0.9f64.powi(3))) as f32,
            bc2_sqrt: (1.0 - 0.999f64.powi(3)).sqrt() as f32,
            l2,
            decoupled,
            clip_norm: Some(1.0),
        };
        let mut acc = cpu.alloc(NORM_ACC_LEN).unwrap();
        cpu.sq_norm_acc(n, &g, &mut acc).unwrap();
        let (mut wc, mut mc, mut vc) = (w.clone(), m.clone(), v.clone());
        cpu.adam_update(n, &spec, &acc, &mut wc, &g, &mut mc, &mut vc).unwrap();
        let mut bacc = bound.alloc(NORM_ACC_LEN).unwrap();
        let gb = BoundOps::exact(&g);
        bound.sq_norm_acc(n, &gb, &mut bacc).unwrap();
        assert!(bound.sq_norm_read(&bacc).unwrap().sqrt() > 1.0, "the case clips");
        let (mut wb, mut mb, mut vb) = (BoundOps::exact(&w), BoundOps::exact(&m), BoundOps::exact(&v));
        bound.adam_update(n, &spec, &bacc, &mut wb, &gb, &mut mb, &mut vb).unwrap();
        assert_within_bound("adam w", &wc, &wb);
        assert_within_bound("adam m", &mc, &mb);
        assert_within_bound("adam v", &vc, &vb);
    }
    // Sparse: two gradients of a [40, 4] table merged, then each sparse update.
    let (rows, dim) = (40, 4);
    let shape = TableShape { rows, dim };
    let ia: Vec<u32> = (0..rows as u32).step_by(3).collect();
    let ib: Vec<u32> = (1..rows as u32).step_by(4).collect();
    let (ga, gb) =
        (uniform32(&mut rng(15), ia.len() * dim, -1.0, 1.0), uniform32(&mut rng(16), ib.len() * dim, -1.0, 1.0));
    let mut mc = SparseGrad::new(&cpu, dim, ia.len() + ib.len()).unwrap();
    cpu.merge_sparse_grads(dim, (ia.len(), &ia, &ga), (ib.len(), &ib, &gb), &mut mc).unwrap();
    let mut mbd = SparseGrad::new(&bound, dim, 0).unwrap();
    let (gab, gbb) = (BoundOps::exact(&ga), BoundOps::exact(&gb));
    bound.merge_sparse_grads(dim, (ia.len(), &ia, &gab), (ib.len(), &ib, &gbb), &mut mbd).unwrap();
    assert_eq!(mc.len, mbd.len);
    assert_eq!(mc.ids[..mc.len], mbd.ids[..mbd.len]);
    assert_within_bound("merged rows", &mc.rows[..mc.len * dim], &mbd.rows[..mbd.len * dim]);
    let table = uniform32(&mut rng(17), rows * dim, -0.5, 0.5);
    for which in [SparseRows::Touched, SparseRows::All] {
        let spec = RowAdagradSpec { lr: 0.1, eps: 1e-8, weight_decay: 0.01, rows: which };
        let (mut tc, mut sc) = (table.clone(), vec![0.5f32; rows]);
        cpu.rowwise_adagrad_update(&spec, shape, mc.len, &mc.ids, &mc.rows, &mut tc, &mut sc).unwrap();
        let (mut tb, mut sb) = (BoundOps::exact(&table), BoundOps::exact(&vec![0.5f32; rows]));
        bound.rowwise_adagrad_update(&spec, shape, mbd.len, &mbd.ids, &mbd.rows, &mut tb, &mut sb).unwrap();
        assert_within_bound(&format!("{which:?} adagrad table"), &tc, &tb);
        assert_within_bound(&format!("{which:?} adagrad accumulators"), &sc, &sb);
        let spec = LazyAdamSpec {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            global_step: None,
            rows: which,
        };
        let z = vec![0f32; rows * dim];
        let (mut tc, mut m1, mut v1, mut s1) = (table.clone(), z.clone(), z.clone(), vec![0u32; rows]);
        let (mut tb, mut m2, mut v2, mut s2) =
            (BoundOps::exact(&table), BoundOps::exact(&z), BoundOps::exact(&z), vec![0u32; rows]);
        for _ in 0..3 {
            cpu.lazy_adam_update(&spec, shape, mc.len, &mc.ids, &mc.rows, &mut tc, &mut m1, &mut v1, &mut s1).unwrap();
            bound
                .lazy_adam_update(&spec, shape, mbd.len, &mbd.ids, &mbd.rows, &mut tb, &mut m2, &mut v2, &mut s2)
                .unwrap();
        }
        assert_eq!(s1, s2);
        assert_within_bound(&format!("{which:?} lazy adam table"), &tc, &tb);
        assert_within_bound(&format!("{which:?} lazy adam m"), &m1, &m2);
    }
}
