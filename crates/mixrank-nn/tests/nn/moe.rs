//! Gate and MoeMix: gradient checks (alone and composed as one MMoE task head),
//! CpuOps vs RefOps with derived bounds, errors.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_engine::{Backend, CpuOps, RefOps};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

#[test]
fn gate_gradients() {
    let ops = RefOpsF64::new();
    for (i, &(d_in, e, t, batch)) in [(5, 3, 1.0, 4), (1, 2, 0.5, 1), (7, 4, 2.5, 3), (3, 5, 1.0, 1)].iter().enumerate()
    {
        let mut gate = GateConfig::new(d_in, e).with_temperature(t).init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut gate, &mut rng(9 + i as u64), -1.0, 1.0);
        check_layer(&format!("Gate {d_in}->{e} T{t} b{batch}"), &mut gate, batch, i as u64, |_| {});
        // Rows are distributions.
        let x = uniform64(&mut rng(1), batch * d_in, -3.0, 3.0);
        let g = gate.forward(&ops, &x, batch).unwrap();
        for r in 0..batch {
            let row = &g[r * e..(r + 1) * e];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12 && row.iter().all(|&v| v > 0.0));
        }
    }
}

#[test]
fn gate_with_hidden_layers_gradients_and_parameter_names() {
    let ops = RefOpsF64::new();
    for (i, &(d_in, hidden, e, act)) in
        [(5, &[4][..], 3, mixrank_engine::Activation::Tanh), (3, &[6, 2][..], 4, mixrank_engine::Activation::GeluTanh)]
            .iter()
            .enumerate()
    {
        let cfg = GateConfig::new(d_in, e).with_temperature(0.7).with_hidden(hidden, act);
        let mut gate = cfg.init(&ops, 3, &mut rng(20 + i as u64)).unwrap();
        randomize(&mut gate, &mut rng(30 + i as u64), -1.0, 1.0);
        check_layer(&format!("Gate {d_in}->{hidden:?}->{e}"), &mut gate, 3, i as u64, |_| {});
        let mut names = Vec::new();
        gate.params(&mut |n, _| names.push(n.to_string()));
        // The hidden layers come first under `hidden.`; the final map keeps the names
        // of the lightweight gate.
        assert!(names.first().is_some_and(|n| n.starts_with("hidden.")), "{names:?}");
        let light = GateConfig::new(d_in, e).init(&ops, 3, &mut rng(0)).unwrap();
        let mut light_names = Vec::new();
        let mut light = light;
        light.params(&mut |n, _| light_names.push(n.to_string()));
        assert!(names.ends_with(&light_names), "{names:?} vs {light_names:?}");
    }
}

#[test]
fn top_k_gate_gradients_and_sparsity() {
    // The selection is piecewise constant; the fixed seeds keep every kept/dropped pair of
    // logits far more than the stencil width (4e-4) apart, or the check would fail loudly.
    let ops = RefOpsF64::new();
    for (i, &(d_in, e, k, t, batch)) in [(5, 4, 2, 1.0, 3), (3, 5, 3, 0.7, 1), (4, 3, 1, 1.0, 2)].iter().enumerate() {
        let cfg = GateConfig::new(d_in, e).with_temperature(t).with_top_k(k);
        let mut gate = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut gate, &mut rng(70 + i as u64), -1.0, 1.0);
        if k > 1 {
            check_layer(&format!("Gate top{k} of {e} b{batch}"), &mut gate, batch, i as u64, |_| {});
        }
        let x = uniform64(&mut rng(80 + i as u64), batch * d_in, -1.0, 1.0);
        let g = gate.forward(&ops, &x, batch).unwrap();
        for r in 0..batch {
            let row = &g[r * e..(r + 1) * e];
            assert_eq!(row.iter().filter(|&&v| v > 0.0).count(), k, "row {r}: {row:?}");
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // k = 1 is a hard argmax: weight 1, zero gradient everywhere (nothing to check).
    }
    let err = GateConfig::new(3, 4).with_top_k(5).init(&RefOps, 1, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "Gate", field: "top_k", .. }));
}

#[test]
fn gate_dropout_gradients_rows_and_modes() {
    // Dropping is constant in the weights (a function of (seed, step, index) only), so
    // the finite differences see the same mask as long as the step is pinned.
    let ops = RefOpsF64::new();
    for (i, &(d_in, e, top_k, t, batch)) in
        [(5, 4, None, 1.0, 6), (3, 6, Some(4), 0.8, 5), (4, 3, None, 1.5, 8)].iter().enumerate()
    {
        let mut cfg = GateConfig::new(d_in, e).with_temperature(t).with_dropout(0.3);
        if let Some(k) = top_k {
            cfg = cfg.with_top_k(k);
        }
        let mut gate = cfg.init(&ops, batch, &mut rng(40 + i as u64)).unwrap();
        randomize(&mut gate, &mut rng(50 + i as u64), -1.0, 1.0);
        check_layer(&format!("Gate dropout e{e} top{top_k:?} b{batch}"), &mut gate, batch, i as u64, |g| {
            g.set_dropout_step(3)
        });
        let x = uniform64(&mut rng(60 + i as u64), batch * d_in, -1.0, 1.0);
        gate.set_dropout_step(3);
        let first = gate.forward(&ops, &x, batch).unwrap()[..batch * e].to_vec();
        let second = gate.forward(&ops, &x, batch).unwrap()[..batch * e].to_vec();
        gate.set_dropout_step(3);
        assert_eq!(gate.forward(&ops, &x, batch).unwrap()[..batch * e], first[..], "same step, same mask");
        assert_ne!(first, second, "the step advances after a training forward");
        let kept = top_k.unwrap_or(e);
        let mut dropped = 0;
        for row in first.chunks(e) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "renormalised: {row:?}");
            let live = row.iter().filter(|&&v| v > 0.0).count();
            assert!((1..=kept).contains(&live), "{row:?}");
            dropped += kept - live;
        }
        assert!(dropped > 0, "p = 0.3 over {} weights drops some", batch * kept);
        // Evaluation: no dropout, the weights of the same gate without it.
        gate.set_training(false);
        let eval = gate.forward(&ops, &x, batch).unwrap()[..batch * e].to_vec();
        let mut plain_cfg = GateConfig::new(d_in, e).with_temperature(t);
        if let Some(k) = top_k {
            plain_cfg = plain_cfg.with_top_k(k);
        }
        let mut plain = plain_cfg.init(&ops, batch, &mut rng(40 + i as u64)).unwrap();
        randomize(&mut plain, &mut rng(50 + i as u64), -1.0, 1.0);
        assert_eq!(plain.forward(&ops, &x, batch).unwrap()[..batch * e], eval[..], "off in evaluation");
        // The kept weights are the undropped ones renormalised.
        for (row, full) in first.chunks(e).zip(eval.chunks(e)) {
            let mass: f64 = full.iter().zip(row).filter(|(_, &d)| d > 0.0).map(|(f, _)| f).sum();
            for (&d, &f) in row.iter().zip(full) {
                if d > 0.0 {
                    assert!((d - f / mass).abs() < 1e-12, "{d} vs {f}/{mass}");
                }
            }
        }
    }
}

#[test]
fn gate_dropout_off_is_the_plain_gate_and_bad_p_is_refused() {
    let ops = RefOps;
    let x = uniform32(&mut rng(1), 4 * 5, -1.0, 1.0);
    let mut plain = GateConfig::new(5, 3).init(&ops, 4, &mut rng(7)).unwrap();
    let mut off = GateConfig::new(5, 3).with_dropout(0.0).init(&ops, 4, &mut rng(7)).unwrap();
    assert_eq!(plain.forward(&ops, &x, 4).unwrap(), off.forward(&ops, &x, 4).unwrap());
    for p in [1.0, -0.1, 1.5, f32::NAN] {
        let err = GateConfig::new(3, 4).with_dropout(p).init(&RefOps, 1, &mut rng(0)).err().unwrap();
        assert!(matches!(err, NnError::InvalidConfig { layer: "Gate", field: "dropout", .. }), "{p}");
    }
}

#[test]
fn excluded_experts_get_zero_weight_and_the_rest_renormalise() {
    let ops = RefOpsF64::new();
    let (d_in, e, batch) = (4, 4, 5);
    let x = uniform64(&mut rng(2), batch * d_in, -1.0, 1.0);
    for top_k in [None, Some(2)] {
        let mut cfg = GateConfig::new(d_in, e);
        if let Some(k) = top_k {
            cfg = cfg.with_top_k(k);
        }
        let mut gate = cfg.init(&ops, batch, &mut rng(3)).unwrap();
        let full = gate.forward(&ops, &x, batch).unwrap()[..batch * e].to_vec();
        gate.exclude_experts(&ops, &[1]).unwrap();
        let cut = gate.forward(&ops, &x, batch).unwrap()[..batch * e].to_vec();
        for (c, f) in cut.chunks(e).zip(full.chunks(e)) {
            assert_eq!(c[1], 0.0);
            assert!((c.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert_eq!(c.iter().filter(|&&v| v > 0.0).count(), top_k.unwrap_or(e - 1), "{c:?}");
            if top_k.is_none() {
                for j in [0, 2, 3] {
                    assert!((c[j] - f[j] / (1.0 - f[1])).abs() < 1e-12);
                }
            }
        }
        gate.exclude_experts(&ops, &[]).unwrap();
        assert_eq!(gate.forward(&ops, &x, batch).unwrap()[..batch * e], full[..], "restored");
        assert!(gate.exclude_experts(&ops, &[4]).is_err());
        assert!(gate.exclude_experts(&ops, &[0, 1, 2, 3]).is_err());
    }
}

#[test]
fn temperature_flattens_the_mixture() {
    let ops = RefOpsF64::new();
    let x = uniform64(&mut rng(3), 6, -1.0, 1.0);
    let mut spread = Vec::new();
    for t in [0.5, 1.0, 4.0] {
        let mut gate = GateConfig::new(6, 3).with_temperature(t).init(&ops, 1, &mut rng(2)).unwrap();
        let g = gate.forward(&ops, &x, 1).unwrap()[..3].to_vec();
        spread.push(g.iter().cloned().fold(f64::MIN, f64::max) - g.iter().cloned().fold(f64::MAX, f64::min));
    }
    assert!(spread[0] > spread[1] && spread[1] > spread[2], "{spread:?}");
}

/// Parameter-free mix as a gradient-check target.
struct NoParams;
impl Parameters<F> for NoParams {
    fn visit_params(&mut self, _v: &mut ParamVisitor<'_, F>) {}
}

#[test]
fn mix_gradients() {
    let ops = RefOpsF64::new();
    for &(e, d, batch) in &[(3, 4, 2), (1, 1, 1), (4, 7, 3)] {
        let mut mix = MoeMix::new(&ops, e, d, batch).unwrap();
        let mut g = rng(e as u64);
        let mut inputs: Vec<Vec<f64>> = (0..e).map(|_| uniform64(&mut g, batch * d, -1.0, 1.0)).collect();
        inputs.push(uniform64(&mut g, batch * e, 0.0, 1.0));
        let mix = std::cell::RefCell::new(&mut mix);
        check_grads(
            &format!("MoeMix e{e} d{d} b{batch}"),
            &mut NoParams,
            &inputs,
            |_, x| {
                let refs: Vec<&Vec<f64>> = x[..e].iter().collect();
                mix.borrow_mut().forward(&ops, &refs, &x[e], batch).unwrap()[..batch * d].to_vec()
            },
            |_, x, r| {
                let refs: Vec<&Vec<f64>> = x[..e].iter().collect();
                let mut m = mix.borrow_mut();
                m.forward(&ops, &refs, &x[e], batch).unwrap();
                m.backward(&ops, &refs, &x[e], &r.to_vec()).unwrap();
                let mut out: Vec<Vec<f64>> = (0..e).map(|i| m.d_expert(i)[..batch * d].to_vec()).collect();
                out.push(m.d_gates()[..batch * e].to_vec());
                out
            },
            7,
        );
    }
}

/// One MMoE task head: `y = Σ_e softmax(x·W + b)_e · X_e`, checked end to end so the
/// gate's and the mix's backward compose.
struct Head {
    gate: Gate<F>,
    mix: MoeMix<F>,
}

impl Parameters<F> for Head {
    fn visit_params(&mut self, v: &mut ParamVisitor<'_, F>) {
        v.scope("gate", |v| self.gate.visit_params(v));
    }
}

#[test]
fn gated_mixture_gradients() {
    let ops = RefOpsF64::new();
    let (d_in, e, d, batch) = (5, 3, 4, 3);
    let mut head = Head {
        gate: GateConfig::new(d_in, e).with_temperature(0.7).init(&ops, batch, &mut rng(1)).unwrap(),
        mix: MoeMix::new(&ops, e, d, batch).unwrap(),
    };
    randomize(&mut head, &mut rng(2), -1.0, 1.0);
    let mut g = rng(3);
    let mut inputs = vec![uniform64(&mut g, batch * d_in, -1.0, 1.0)];
    inputs.extend((0..e).map(|_| uniform64(&mut g, batch * d, -1.0, 1.0)));
    let fwd = |h: &mut Head, x: &[Vec<f64>]| -> Vec<f64> {
        let refs: Vec<&Vec<f64>> = x[1..].iter().collect();
        let w = h.gate.forward(&ops, &x[0], batch).unwrap();
        h.mix.forward(&ops, &refs, w, batch).unwrap()[..batch * d].to_vec()
    };
    check_grads(
        "gate+mix",
        &mut head,
        &inputs,
        fwd,
        |h, x, r| {
            fwd(h, x);
            let refs: Vec<&Vec<f64>> = x[1..].iter().collect();
            h.mix.backward(&ops, &refs, h.gate.output(), &r.to_vec()).unwrap();
            let dg = h.mix.d_gates().clone();
            let dx = h.gate.backward(&ops, &x[0], &dg).unwrap()[..batch * d_in].to_vec();
            let mut out = vec![dx];
            out.extend((0..e).map(|i| h.mix.d_expert(i)[..batch * d].to_vec()));
            out
        },
        4,
    );
}

/// Mix on both backends. `out` and `d_experts` are pointwise products and sums in the
/// same order on both (bit-identical); `dg[:, e] = Σ_j dy_j X_ej` is a GEMM whose two
/// results each lie within `γ_d · Σ_j |dy_j X_ej|` of the exact sum.
#[test]
fn mix_cpu_matches_reference() {
    let pool = pool();
    let (e, d, batch) = (4, 129, 33);
    let mut g = rng(5);
    let xs: Vec<Vec<f32>> = (0..e).map(|_| uniform32(&mut g, batch * d, -1.0, 1.0)).collect();
    let gates = uniform32(&mut g, batch * e, 0.0, 1.0);
    let dy = uniform32(&mut g, batch * d, -1.0, 1.0);
    fn go<B: Backend<Buf = Vec<f32>>>(
        ops: &B,
        xs: &[Vec<f32>],
        gates: &Vec<f32>,
        dy: &Vec<f32>,
        d: usize,
        batch: usize,
    ) -> (Vec<f32>, Vec<Vec<f32>>, Vec<f32>) {
        let e = xs.len();
        let mut mix = MoeMix::new(ops, e, d, batch).unwrap();
        let refs: Vec<&Vec<f32>> = xs.iter().collect();
        let out = mix.forward(ops, &refs, gates, batch).unwrap().clone();
        mix.backward(ops, &refs, gates, dy).unwrap();
        (out, (0..e).map(|i| mix.d_expert(i).clone()).collect(), mix.d_gates().clone())
    }
    let a = pool.install(|| go(&CpuOps::new(), &xs, &gates, &dy, d, batch));
    let b = go(&RefOps, &xs, &gates, &dy, d, batch);
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    for r in 0..batch {
        for (k, xk) in xs.iter().enumerate() {
            let s: f64 = (0..d).map(|j| (dy[r * d + j] * xk[r * d + j]).abs() as f64).sum();
            let diff = (a.2[r * e + k] as f64 - b.2[r * e + k] as f64).abs();
            assert!(diff <= 2.0 * gamma(d + 1) * s, "dg[{r},{k}]: {diff:e}");
        }
    }
}

#[test]
fn gate_cpu_and_reference_within_rounding_bound() {
    compare_backends("Gate", &GateConfig::new(45, 4).with_temperature(0.8), 31, 1, unit_range);
    compare_backends("Gate b1", &GateConfig::new(7, 3), 1, 2, unit_range);
    compare_backends("Gate top-2", &GateConfig::new(30, 5).with_top_k(2), 17, 3, unit_range);
}

#[test]
fn moe_errors() {
    let ops = RefOps;
    let mut mix = MoeMix::new(&ops, 3, 2, 4).unwrap();
    let x = vec![0.0f32; 8];
    let err = mix.forward(&ops, &[&x, &x], &vec![0.0; 12], 4).err().unwrap();
    assert_eq!(
        err,
        NnError::DimMismatch { layer: "MoeMix", lhs: "expert outputs", lhs_dim: 2, rhs: "n_experts", rhs_dim: 3 }
    );
    assert!(matches!(mix.forward(&ops, &[&x, &x, &x], &vec![0.0; 12], 5), Err(NnError::BatchTooLarge { .. })));
    let err = GateConfig::new(3, 2).with_temperature(0.0).init(&ops, 1, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "Gate", field: "temperature", .. }));
}
