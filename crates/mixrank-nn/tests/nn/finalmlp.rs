//! FinalMLP pieces: gradient checks, CpuOps vs RefOps, errors.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_engine::{Activation, RefOps};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

#[test]
fn bilinear_fusion_gradients() {
    let ops = RefOpsF64::new();
    for (i, &(d_x, d_y, heads, d_out, batch)) in
        [(4, 6, 2, 1, 3), (3, 3, 1, 2, 1), (6, 4, 2, 3, 2), (1, 5, 1, 1, 2)].iter().enumerate()
    {
        let mut f = BilinearFusionConfig::new(d_x, d_y, heads, d_out).init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut f, &mut rng(10 + i as u64), -1.0, 1.0);
        let mut g = rng(20 + i as u64);
        let inputs = vec![uniform64(&mut g, batch * d_x, -1.0, 1.0), uniform64(&mut g, batch * d_y, -1.0, 1.0)];
        check_grads(
            &format!("BilinearFusion {d_x}x{d_y} h{heads} o{d_out} b{batch}"),
            &mut f,
            &inputs,
            |f, x| f.forward(&ops, &x[0], &x[1], batch).unwrap()[..batch * d_out].to_vec(),
            |f, x, r| {
                f.forward(&ops, &x[0], &x[1], batch).unwrap();
                f.backward(&ops, &x[0], &x[1], &r.to_vec()).unwrap();
                vec![f.d_x()[..batch * d_x].to_vec(), f.d_y()[..batch * d_y].to_vec()]
            },
            i as u64,
        );
    }
}

#[test]
fn bilinear_fusion_matches_formula() {
    // One head, d_out 1: out = w_xᵀx + b + w_yᵀy + xᵀ W y.
    let ops = RefOpsF64::new();
    let mut f = BilinearFusionConfig::new(2, 2, 1, 1).init(&ops, 1, &mut rng(0)).unwrap();
    f.params(&mut |name, p| match name {
        "w_x.weight" => p.value.copy_from_slice(&[1.0, 2.0]),
        "w_x.bias" => p.value.copy_from_slice(&[0.5]),
        "w_y.weight" => p.value.copy_from_slice(&[-1.0, 3.0]),
        "w_xy" => p.value.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]),
        other => panic!("unexpected {other}"),
    });
    let out = f.forward(&ops, &vec![1.0, -1.0], &vec![2.0, 1.0], 1).unwrap();
    // lin: 1 - 2 + 0.5 - 2 + 3 = 0.5; xᵀWy = [1,-1]·[[1,2],[3,4]]·[2,1] = [-2,-2]·[2,1] = -6
    assert_eq!(out[0], 0.5 - 6.0);
}

fn final_cfg(context: GateContext, d_in: usize, dropout: f32) -> FinalMlpConfig {
    FinalMlpConfig {
        d_in,
        mlp1: MlpConfig::new(d_in, &[6, 4]).with_activation(Activation::Tanh).with_dropout(dropout),
        mlp2: MlpConfig::new(d_in, &[6]).with_activation(Activation::GeluTanh),
        gate_hidden: vec![3],
        context,
        heads: 2,
        d_out: 1,
    }
}

#[test]
fn final_mlp_gradients() {
    let ops = RefOpsF64::new();
    let contexts = [GateContext::Input, GateContext::Learned { d: 3 }, GateContext::Columns { start: 1, len: 3 }];
    for (i, context) in contexts.into_iter().enumerate() {
        for (batch, dropout) in [(1, 0.0), (3, 0.25)] {
            let mut cfg = final_cfg(context, 5, dropout);
            cfg.gate_hidden = vec![4];
            cfg.mlp1.hidden = vec![6, 4];
            cfg.d_out = 2;
            let mut net = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
            randomize(&mut net, &mut rng(30 + i as u64), -1.0, 1.0);
            check_layer(&format!("FinalMlp {context:?} b{batch}"), &mut net, batch, i as u64, |m| {
                m.set_dropout_step(0)
            });
        }
    }
}

#[test]
fn cpu_and_reference_within_rounding_bound() {
    // Smooth stream activations: with a learned context every row shares the gate MLP's
    // ReLU pre-activations, so one unit within its rounding bound of the kink would make
    // the (correct) bound loose for all rows at once.
    for (seed, context) in
        [(1, GateContext::Input), (2, GateContext::Learned { d: 8 }), (3, GateContext::Columns { start: 8, len: 10 })]
    {
        let cfg = FinalMlpConfig {
            d_in: 24,
            mlp1: MlpConfig::new(24, &[16]).with_activation(Activation::GeluTanh).with_dropout(0.1),
            mlp2: MlpConfig::new(24, &[8]).with_activation(Activation::Silu),
            gate_hidden: vec![8],
            context,
            heads: 4,
            d_out: 1,
        };
        compare_backends(&format!("FinalMlp {context:?}"), &cfg, 9, seed, unit_range);
    }
}

#[test]
fn final_mlp_config_errors() {
    let ops = RefOps;
    let mut cfg = final_cfg(GateContext::Input, 5, 0.0);
    cfg.mlp2.d_in = 4;
    let err = cfg.init(&ops, 2, &mut rng(0)).err().unwrap();
    assert_eq!(err, NnError::DimMismatch { layer: "FinalMlp", lhs: "mlp2.d_in", lhs_dim: 4, rhs: "d_in", rhs_dim: 5 });
    let err = final_cfg(GateContext::Columns { start: 3, len: 3 }, 5, 0.0).init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::DimMismatch { layer: "FinalMlp", lhs_dim: 6, rhs_dim: 5, .. }), "{err}");
    let mut cfg = final_cfg(GateContext::Input, 5, 0.0);
    cfg.heads = 3;
    let err = cfg.init(&ops, 2, &mut rng(0)).err().unwrap();
    assert!(matches!(err, NnError::InvalidConfig { layer: "BilinearFusion", field: "heads", .. }), "{err}");
}
