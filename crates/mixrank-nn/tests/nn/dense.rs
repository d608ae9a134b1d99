//! Linear, LayerNorm, Dropout, Mlp, Tower: gradient checks, CpuOps vs RefOps, and the
//! forward/backward contract (accumulation, prefix batches, errors).

use crate::common::*;
use mixrank_engine::{Activation, RefOps};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

const SMOOTH: [Activation; 4] = [Activation::Identity, Activation::Tanh, Activation::GeluTanh, Activation::Silu];

/// Gradient check of a single-input layer at `batch` rows; `prep` runs before every
/// forward (e.g. to rewind a dropout counter so each evaluation sees the same mask).
pub fn check_layer<L: Layer<F>>(what: &str, layer: &mut L, batch: usize, seed: u64, prep: impl Fn(&mut L)) {
    let ops = RefOpsF64::new();
    let (d_in, d_out) = (layer.d_in(), layer.d_out());
    let x = away_from_zero(&mut rng(seed ^ 0xA5), batch * d_in, 0.1);
    check_grads(
        what,
        layer,
        &[x],
        |m, x| {
            prep(m);
            m.forward(&ops, &x[0], batch).unwrap()[..batch * d_out].to_vec()
        },
        |m, x, r| {
            prep(m);
            m.forward(&ops, &x[0], batch).unwrap();
            vec![m.backward(&ops, &x[0], &r.to_vec()).unwrap()[..batch * d_in].to_vec()]
        },
        seed,
    );
}

#[test]
fn linear_gradients() {
    let ops = RefOpsF64::new();
    for (i, act) in SMOOTH.into_iter().chain([Activation::Sigmoid]).enumerate() {
        for &(d_in, d_out, batch, bias) in &[(3, 5, 4, true), (1, 1, 1, true), (7, 2, 3, false), (4, 17, 1, true)] {
            let cfg = LinearConfig::new(d_in, d_out).with_activation(act).with_bias(bias);
            let mut layer = cfg.init(&ops, batch + 2, &mut rng(i as u64)).unwrap();
            randomize(&mut layer, &mut rng(100 + i as u64), -1.0, 1.0);
            check_layer(&format!("Linear {act:?} {d_in}->{d_out} b{batch}"), &mut layer, batch, i as u64, |_| {});
        }
    }
}

#[test]
fn linear_relu_gradients() {
    // Fixed seeds; the check would fail loudly if a pre-activation landed within h of
    // ReLU's kink.
    let ops = RefOpsF64::new();
    for seed in 0..4 {
        let mut layer =
            LinearConfig::new(6, 5).with_activation(Activation::Relu).init(&ops, 3, &mut rng(seed)).unwrap();
        randomize(&mut layer, &mut rng(seed + 50), -1.0, 1.0);
        check_layer("Linear relu", &mut layer, 3, seed, |_| {});
    }
}

#[test]
fn layer_norm_gradients() {
    let ops = RefOpsF64::new();
    for (i, act) in SMOOTH.into_iter().enumerate() {
        for &(d, batch) in &[(5, 3), (2, 1), (17, 2)] {
            let mut layer = LayerNormConfig::new(d).with_activation(act).init(&ops, batch).unwrap();
            randomize(&mut layer, &mut rng(7 + i as u64), -1.0, 1.0);
            check_layer(&format!("LayerNorm {act:?} d{d}"), &mut layer, batch, i as u64, |_| {});
        }
    }
}

#[test]
fn dropout_gradient_is_the_mask() {
    let ops = RefOpsF64::new();
    let mut layer = DropoutConfig { d: 7, p: 0.4, seed: 3 }.init(&ops, 5).unwrap();
    // Rewind so every evaluation uses mask 0; the check then verifies dx = dy ⊙ m.
    // (No parameters; only the input gradient is checked.)
    check_layer("Dropout", &mut layer, 5, 1, |l| l.set_step(0));
}

#[test]
fn mlp_gradients() {
    let ops = RefOpsF64::new();
    let cases: Vec<(&str, MlpConfig, usize)> = vec![
        ("plain gelu", MlpConfig::new(5, &[4, 3]).with_activation(Activation::GeluTanh), 3),
        ("output tanh", MlpConfig::new(3, &[6]).with_activation(Activation::Tanh).with_output(2), 1),
        ("layer norm", MlpConfig::new(4, &[5, 3]).with_activation(Activation::Silu).with_layer_norm(true), 4),
        (
            "norm+dropout+output",
            MlpConfig::new(7, &[9, 5])
                .with_activation(Activation::Tanh)
                .with_layer_norm(true)
                .with_dropout(0.3)
                .with_output(3),
            5,
        ),
        ("relu dropout", MlpConfig::new(6, &[8, 4]).with_dropout(0.25), 2),
        ("projection only", MlpConfig { hidden: vec![], ..MlpConfig::new(4, &[]) }.with_output(3), 2),
    ];
    for (i, (name, cfg, batch)) in cases.into_iter().enumerate() {
        let mut mlp = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut mlp, &mut rng(40 + i as u64), -1.0, 1.0);
        check_layer(&format!("Mlp {name}"), &mut mlp, batch, i as u64, |m| m.set_dropout_step(0));
    }
}

#[test]
fn tower_gradients_and_shape() {
    let ops = RefOpsF64::new();
    let cfg = TowerConfig { activation: Activation::Silu, ..TowerConfig::new(5, &[4, 3]) };
    let mut tower = cfg.init(&ops, 3, &mut rng(1)).unwrap();
    assert_eq!((tower.d_in(), tower.d_out()), (5, 1));
    randomize(&mut tower, &mut rng(2), -1.0, 1.0);
    check_layer("Tower", &mut tower, 3, 3, |_| {});
    check_layer("Tower batch 1", &mut tower, 1, 4, |_| {});
    let mut names = Vec::new();
    tower.params(&mut |n, _| names.push(n.to_string()));
    assert_eq!(
        names,
        [
            "blocks.0.linear.weight",
            "blocks.0.linear.bias",
            "blocks.1.linear.weight",
            "blocks.1.linear.bias",
            "output.weight",
            "output.bias"
        ]
    );
    assert_eq!(tower.num_params(), 5 * 4 + 4 + 4 * 3 + 3 + 3 + 1);
}

#[test]
fn cpu_and_reference_within_rounding_bound() {
    compare_backends("Linear relu", &LinearConfig::new(29, 17).with_activation(Activation::Relu), 13, 1, unit_range);
    compare_backends("Linear", &LinearConfig::new(3, 1), 1, 2, unit_range);
    for (i, act) in SMOOTH.into_iter().chain([Activation::Sigmoid, Activation::Relu]).enumerate() {
        let cfg = MlpConfig::new(29, &[64, 33]).with_activation(act).with_output(2);
        compare_backends(&format!("Mlp {act:?}"), &cfg, 37, 10 + i as u64, unit_range);
    }
    let cfg = MlpConfig::new(30, &[24, 16]).with_layer_norm(true).with_dropout(0.2).with_output(3);
    compare_backends("Mlp norm+dropout", &cfg, 19, 20, norm_relu_ranges32);
    // Every GEMM large enough for CpuOps' multithreaded path (m·n·k ≥ 2^20); one layer,
    // since the worst-case bound grows by ~‖W‖_∞ ≈ 10 per 128-wide layer.
    let wide = MlpConfig::new(128, &[128]).with_activation(Activation::GeluTanh).with_dropout(0.1);
    compare_backends("Mlp wide", &wide, 64, 21, unit_range);
    compare_backends("Tower", &TowerConfig::new(40, &[24]), 19, 22, unit_range);
    compare_backends(
        "LayerNorm gelu",
        &LayerNormConfig::new(33).with_activation(Activation::GeluTanh),
        21,
        23,
        unit_range,
    );
}

#[test]
fn parameter_gradients_accumulate_and_input_gradients_overwrite() {
    // In f64: per-row accumulation makes `(g + t1) + t2 …` differ from `2g` by rounding
    // only, i.e. ≤ γ_6 · Σ|t| ≈ 1e-15 for these O(1) values; 1e-12 is far above that and
    // far below the |g| an overwrite bug would leave.
    let ops = RefOpsF64::new();
    let mut mlp = MlpConfig::new(4, &[6]).with_layer_norm(true).with_output(2).init(&ops, 3, &mut rng(5)).unwrap();
    randomize(&mut mlp, &mut rng(8), -1.0, 1.0);
    let x = uniform64(&mut rng(6), 12, -1.0, 1.0);
    let dy = uniform64(&mut rng(7), 6, -1.0, 1.0);
    let once = run(&ops, &mut mlp, &x, &dy, 3);
    // Second backward without zeroing: parameter grads double, d_input is the same.
    mlp.forward(&ops, &x, 3).unwrap();
    let dx = mlp.backward(&ops, &x, &dy).unwrap()[..12].to_vec();
    assert_eq!(dx, once.d_inputs[0]);
    let mut k = 0;
    mlp.params(&mut |name, p| {
        for (a, b) in once.grads[k].1.iter().zip(&p.grad) {
            assert!((2.0 * a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{name}: {a} then {b}");
        }
        assert!(once.grads[k].1.iter().any(|a| a.abs() > 1e-3), "{name}: vacuous");
        k += 1;
    });
    assert_eq!(k, 5);
}

#[test]
fn smaller_batches_reuse_workspaces() {
    // A layer built for 8 rows run on 3 must give exactly what a layer built for 3 gives.
    let ops = RefOps;
    let cfg = MlpConfig::new(5, &[7, 4]).with_layer_norm(true).with_dropout(0.2).with_output(2);
    let mut big = cfg.init(&ops, 8, &mut rng(1)).unwrap();
    let mut small = cfg.init(&ops, 3, &mut rng(1)).unwrap();
    let x8 = uniform32(&mut rng(2), 8 * 5, -1.0, 1.0);
    let dy8 = uniform32(&mut rng(3), 8 * 2, -1.0, 1.0);
    run(&ops, &mut big, &x8, &dy8, 8);
    big.set_dropout_step(0);
    let a = run(&ops, &mut big, &x8[..15], &dy8[..6], 3);
    let b = run(&ops, &mut small, &x8[..15], &dy8[..6], 3);
    assert_eq!(a.out, b.out);
    assert_eq!(a.d_inputs, b.d_inputs);
    assert_eq!(a.grads, b.grads);
}

#[test]
fn eval_mode_disables_dropout() {
    let ops = RefOps;
    let cfg = MlpConfig::new(4, &[16]).with_dropout(0.5);
    let mut with = cfg.init(&ops, 2, &mut rng(1)).unwrap();
    let mut without = MlpConfig { dropout: 0.0, ..cfg.clone() }.init(&ops, 2, &mut rng(1)).unwrap();
    let x = uniform32(&mut rng(2), 8, -1.0, 1.0);
    let train = with.forward(&ops, &x, 2).unwrap().clone();
    with.set_training(false);
    let eval = with.forward(&ops, &x, 2).unwrap()[..32].to_vec();
    // Dropout draws its seed from the init rng after the linear weights, so the weights
    // of both MLPs agree.
    let plain = without.forward(&ops, &x, 2).unwrap()[..32].to_vec();
    assert_eq!(eval, plain);
    assert_ne!(train[..32], eval[..]);
}

#[test]
fn errors_name_the_layer_and_dims() {
    let ops = RefOps;
    let err = MlpConfig::new(4, &[3, 0]).init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "Mlp", field: "hidden", .. }), "{err}");
    let err = MlpConfig::new(4, &[]).init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "Mlp", .. }), "{err}");
    let mut lin = LinearConfig::new(4, 3).init(&ops, 2, &mut rng(0)).unwrap();
    let err = lin.forward(&ops, &vec![0.0; 8], 3).err().unwrap();
    assert_eq!(err, NnError::BatchTooLarge { layer: "Linear", batch: 3, max_batch: 2 });
    let err = lin.forward(&ops, &vec![0.0; 7], 2).err().unwrap();
    assert!(err.to_string().starts_with("Linear: gemm: a holds 7 elements"), "{err}");
    let mut fresh = LinearConfig::new(4, 3).init(&ops, 2, &mut rng(0)).unwrap();
    let err = fresh.backward(&ops, &vec![0.0; 8], &vec![0.0; 6]).err().unwrap();
    assert_eq!(err, NnError::NoForward { layer: "Linear" });
}

#[test]
#[should_panic(expected = "got")]
fn bound_comparison_rejects_a_perturbed_result() {
    // The harness itself: one element off by 1e-4 of the scale must fail the check.
    let ops = mixrank_nn::testing::BoundOps;
    let mut lin = LinearConfig::new(16, 8).init(&ops, 4, &mut rng(1)).unwrap();
    let x = uniform32(&mut rng(2), 64, -1.0, 1.0);
    let out = lin.forward(&ops, &mixrank_nn::testing::BoundOps::exact(&x), 4).unwrap()[..32].to_vec();
    let mut got: Vec<f32> = out.iter().map(|b| b.v as f32).collect();
    assert_within_bound("exact", &got, &out); // passes unperturbed
    let scale = out.iter().map(|b| b.v.abs()).fold(0.0, f64::max);
    got[5] += (1e-4 * scale) as f32;
    assert_within_bound("perturbed", &got, &out);
}

/// `backward_acc` adds exactly what `backward` returns into the caller's buffer (on the
/// reference backend a GEMM's `β = 1` is the same f32 addition as an `axpy`) and leaves
/// the same parameter gradients: Linear (its override), Mlp and Gate (the first Linear's
/// override through their stages) and LayerNorm (the trait's default).
#[test]
fn backward_acc_adds_the_input_gradient_to_the_buffer() {
    fn check<L: Layer<RefOps>>(what: &str, build: impl Fn() -> L, batch: usize) {
        let ops = RefOps;
        let (mut a, mut b) = (build(), build());
        let (d_in, d_out) = (a.d_in(), a.d_out());
        let x = uniform32(&mut rng(11), batch * d_in, -1.0, 1.0);
        let dy = uniform32(&mut rng(12), batch * d_out, -1.0, 1.0);
        let start = uniform32(&mut rng(13), batch * d_in, -1.0, 1.0);
        a.forward(&ops, &x, batch).unwrap();
        let dx = a.backward(&ops, &x, &dy).unwrap()[..batch * d_in].to_vec();
        b.forward(&ops, &x, batch).unwrap();
        let mut acc = start.clone();
        b.backward_acc(&ops, &x, &dy, batch, &mut acc).unwrap();
        let want: Vec<f32> = start.iter().zip(&dx).map(|(s, d)| s + d).collect();
        assert_eq!(acc[..batch * d_in], want[..], "{what}: input gradient");
        assert!(dx.iter().any(|d| d.abs() > 1e-3), "{what}: vacuous");
        let grads = |l: &mut L| {
            let mut g = Vec::new();
            l.params(&mut |_, p| g.push(p.grad.clone()));
            g
        };
        assert_eq!(grads(&mut a), grads(&mut b), "{what}: parameter gradients");
    }
    let ops = RefOps;
    for (act, bias) in [(Activation::Identity, true), (Activation::Relu, false), (Activation::Tanh, true)] {
        let cfg = LinearConfig::new(5, 3).with_activation(act).with_bias(bias);
        check(&format!("Linear {act:?}"), || cfg.init(&ops, 4, &mut rng(1)).unwrap(), 4);
    }
    let mlp = MlpConfig::new(5, &[6, 4]).with_layer_norm(true).with_output(2);
    check("Mlp", || mlp.init(&ops, 4, &mut rng(2)).unwrap(), 3);
    let proj = MlpConfig::new(5, &[]).with_output(3);
    check("Mlp (projection only)", || proj.init(&ops, 4, &mut rng(3)).unwrap(), 4);
    let gate = GateConfig::new(5, 3).with_temperature(0.7);
    check("Gate", || gate.init(&ops, 4, &mut rng(4)).unwrap(), 4);
    let deep = GateConfig::new(5, 3).with_hidden(&[4], Activation::Relu);
    check("Gate (hidden)", || deep.init(&ops, 4, &mut rng(5)).unwrap(), 4);
    let norm = LayerNormConfig::new(5);
    check("LayerNorm (default)", || norm.init(&ops, 4).unwrap(), 4);
}
