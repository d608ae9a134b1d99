//! CrossNetV2 and the DCN block: gradient checks, CpuOps vs RefOps, config errors.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_engine::{Activation, RefOps};
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

#[test]
fn cross_net_gradients() {
    let ops = RefOpsF64::new();
    let cases = [
        (5, 1, CrossRank::Full, 3),
        (4, 2, CrossRank::Full, 1),
        (3, 3, CrossRank::Full, 2),
        (7, 2, CrossRank::LowRank { rank: 2 }, 3),
        (6, 3, CrossRank::LowRank { rank: 1 }, 1),
        (1, 4, CrossRank::LowRank { rank: 1 }, 2),
    ];
    for (i, &(d, layers, rank, batch)) in cases.iter().enumerate() {
        let cfg = CrossNetV2Config::new(d, layers).with_rank(rank);
        let mut net = cfg.init(&ops, batch + 1, &mut rng(i as u64)).unwrap();
        randomize(&mut net, &mut rng(30 + i as u64), -0.8, 0.8);
        check_layer(&format!("CrossNetV2 d{d} L{layers} {rank:?} b{batch}"), &mut net, batch, i as u64, |_| {});
    }
}

#[test]
fn cross_net_mix_gradients() {
    let ops = RefOpsF64::new();
    let cases = [
        (5, 2, 2, 3, Activation::Tanh, 3),
        (4, 1, 1, 1, Activation::GeluTanh, 2),
        (3, 3, 2, 2, Activation::Silu, 1),
        (6, 2, 3, 4, Activation::Relu, 2),
    ];
    for (i, &(d, layers, rank, experts, act, batch)) in cases.iter().enumerate() {
        let cfg = CrossNetMixConfig::new(d, layers, rank, experts).with_activation(act);
        let mut net = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize(&mut net, &mut rng(50 + i as u64), -0.8, 0.8);
        check_layer(&format!("CrossNetMix {cfg:?} b{batch}"), &mut net, batch, i as u64, |_| {});
    }
}

#[test]
fn cross_net_mix_parameter_names() {
    let ops = RefOps;
    let mut net = CrossNetMixConfig::new(6, 1, 2, 2).init(&ops, 1, &mut rng(0)).unwrap();
    let mut names = Vec::new();
    net.params(&mut |n, p| names.push(format!("{n}{:?}", p.shape)));
    assert_eq!(
        names,
        [
            "layers.0.experts.0.v.weight[6, 2]",
            "layers.0.experts.0.c.weight[2, 2]",
            "layers.0.experts.0.u.weight[2, 6]",
            "layers.0.experts.1.v.weight[6, 2]",
            "layers.0.experts.1.c.weight[2, 2]",
            "layers.0.experts.1.u.weight[2, 6]",
            "layers.0.gate.weight[6, 2]",
            "layers.0.gate.bias[2]",
            "layers.0.b[6]",
        ]
    );
    assert!(matches!(
        CrossNetMixConfig::new(4, 1, 5, 2).init(&ops, 1, &mut rng(0)),
        Err(NnError::InvalidConfig { layer: "CrossNetMix", field: "rank", .. })
    ));
}

#[test]
fn cross_net_matches_formula() {
    // One full-rank layer by hand: x₁ = x₀ ⊙ (x₀·W + b) + x₀ (W stored [in, out]).
    let ops = RefOpsF64::new();
    let mut net = CrossNetV2Config::new(2, 1).init(&ops, 1, &mut rng(0)).unwrap();
    net.params(&mut |name, p| match name {
        "layers.0.w" => p.value.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]),
        "layers.0.b" => p.value.copy_from_slice(&[0.5, -1.0]),
        other => panic!("unexpected {other}"),
    });
    let y = net.forward(&ops, &vec![1.0, -2.0], 1).unwrap();
    // x·W = [1·1 - 2·3, 1·2 - 2·4] = [-5, -6]; +b = [-4.5, -7]; x⊙ = [-4.5, 14]; +x = [-3.5, 12]
    assert_eq!(&y[..2], &[-3.5, 12.0]);
}

#[test]
fn cross_net_runs_its_full_rank_gemms_in_bf16_and_refuses_backward() {
    // The hand example above has bf16-exact operands, so the bf16 GEMM (f32
    // accumulation) reproduces it exactly; backward then refuses.
    use mixrank_engine::bf16::Bf16Kernel;
    let ops = mixrank_engine::CpuOps::new();
    for kernel in
        [Some(Bf16Kernel::detect()), Some(Bf16Kernel::portable()), Bf16Kernel::widen().ok()].into_iter().flatten()
    {
        let mut net = CrossNetV2Config::new(2, 1).init(&ops, 1, &mut rng(0)).unwrap();
        net.params(&mut |name, p| match name {
            "layers.0.w" => p.value.copy_from_slice(&[1.0, 2.0, 3.0, 4.0]),
            "layers.0.b" => p.value.copy_from_slice(&[0.5, -1.0]),
            other => panic!("unexpected {other}"),
        });
        let mut sites = 0;
        net.visit_reduced(&mut |site| {
            assert_eq!((site.k, site.n, site.max_batch), (2, 2, 1));
            *site.slot =
                Some(Box::new(HostBf16::new(kernel, site.k, site.n, &site.dense_weight(), site.max_batch).unwrap()));
            sites += 1;
        });
        assert_eq!(sites, 1);
        let x = vec![1.0f32, -2.0];
        assert_eq!(&net.forward(&ops, &x, 1).unwrap()[..2], &[-3.5, 12.0], "{}", kernel.name());
        let e = net.backward(&ops, &x, &vec![1.0, 1.0]).err().unwrap().to_string();
        assert!(e.contains("inference only"), "{e}");
    }
    // Low-rank layers expose no reduced GEMM.
    let mut low =
        CrossNetV2Config::new(4, 2).with_rank(CrossRank::LowRank { rank: 2 }).init(&ops, 1, &mut rng(0)).unwrap();
    let mut sites = 0;
    low.visit_reduced(&mut |_| sites += 1);
    assert_eq!(sites, 0);
}

fn dcn_config(structure: DcnStructure, act: Activation, dropout: f32) -> DcnConfig {
    DcnConfig {
        cross: CrossNetV2Config::new(6, 2).with_rank(CrossRank::LowRank { rank: 3 }).into(),
        deep: MlpConfig::new(6, &[5, 4]).with_activation(act).with_dropout(dropout).with_layer_norm(dropout > 0.0),
        structure,
    }
}

#[test]
fn dcn_gradients() {
    let ops = RefOpsF64::new();
    for (i, structure) in [DcnStructure::Stacked, DcnStructure::Parallel].into_iter().enumerate() {
        for (j, (act, dropout)) in [(Activation::Tanh, 0.0), (Activation::GeluTanh, 0.3)].into_iter().enumerate() {
            let cfg = dcn_config(structure, act, dropout);
            let mut dcn = cfg.init(&ops, 3, &mut rng(i as u64)).unwrap();
            assert_eq!(dcn.d_out(), if structure == DcnStructure::Stacked { 4 } else { 10 });
            randomize(&mut dcn, &mut rng(10 + j as u64), -0.8, 0.8);
            for batch in [1, 3] {
                check_layer(&format!("Dcn {structure:?} {act:?} b{batch}"), &mut dcn, batch, j as u64, |m| {
                    m.set_dropout_step(0)
                });
            }
        }
    } // With the mixture cross network.
    let cfg = DcnConfig {
        cross: CrossNetMixConfig::new(6, 2, 2, 3).with_activation(Activation::Tanh).into(),
        ..dcn_config(DcnStructure::Parallel, Activation::Silu, 0.0)
    };
    let mut dcn = cfg.init(&ops, 2, &mut rng(7)).unwrap();
    randomize(&mut dcn, &mut rng(8), -0.8, 0.8);
    check_layer("Dcn mix parallel", &mut dcn, 2, 9, |_| {});
}

#[test]
fn cpu_and_reference_within_rounding_bound() {
    for (seed, rank) in [(1, CrossRank::Full), (2, CrossRank::LowRank { rank: 8 })] {
        compare_backends(
            &format!("CrossNetV2 {rank:?}"),
            &CrossNetV2Config::new(37, 3).with_rank(rank),
            23,
            seed,
            unit_range,
        );
    }
    let mix = CrossNetMixConfig::new(16, 2, 4, 3).with_activation(Activation::GeluTanh);
    compare_backends_except("CrossNetMix", &mix, 9, 5, unit_range, &["gate.bias", "gate.weight"]);
    for (seed, structure) in [(3, DcnStructure::Stacked), (4, DcnStructure::Parallel)] {
        let cfg = DcnConfig {
            cross: CrossNetV2Config::new(37, 2).with_rank(CrossRank::LowRank { rank: 8 }).into(),
            deep: MlpConfig::new(37, &[32, 16]).with_dropout(0.1),
            structure,
        };
        compare_backends(&format!("Dcn {structure:?}"), &cfg, 23, seed, unit_range);
    }
}

#[test]
fn dcn_and_cross_config_errors() {
    let ops = RefOps;
    let mut cfg = dcn_config(DcnStructure::Stacked, Activation::Relu, 0.0);
    cfg.deep.d_in = 5;
    let err = cfg.init(&ops, 2, &mut rng(0)).err().unwrap();
    assert_eq!(err, NnError::DimMismatch { layer: "Dcn", lhs: "deep.d_in", lhs_dim: 5, rhs: "cross.d", rhs_dim: 6 });
    assert_eq!(err.to_string(), "Dcn: deep.d_in = 5 does not match cross.d = 6");
    let err = CrossNetV2Config::new(4, 2).with_rank(CrossRank::LowRank { rank: 5 }).init(&ops, 2, &mut rng(0));
    assert!(matches!(err, Err(NnError::InvalidConfig { layer: "CrossNetV2", field: "rank", .. })));
    assert!(CrossNetV2Config::new(4, 0).init(&ops, 2, &mut rng(0)).is_err());
}
