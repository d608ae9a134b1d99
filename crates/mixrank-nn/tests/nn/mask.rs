//! MaskBlock and MaskNet: gradient checks, structure, errors.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;

#[test]
fn mask_block_gradients_two_inputs() {
    let ops = RefOpsF64::new();
    // Normalised widths stay ≥ 3: a 2-wide layer norm maps every row to ±1, so its
    // gradient vanishes and the check would be vacuous.
    for (i, &(d_emb, d_hidden, d_mask, d_out, norm, batch)) in
        [(5, 4, 3, 6, true, 3), (3, 7, 2, 3, false, 1), (1, 3, 1, 3, true, 2)].iter().enumerate()
    {
        let cfg = MaskBlockConfig { norm_hidden: norm, ..MaskBlockConfig::new(d_emb, d_hidden, d_mask, d_out) };
        let mut block = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
        randomize_by(&mut block, &mut rng(20 + i as u64), norm_relu_ranges);
        let mut g = rng(40 + i as u64);
        let inputs = vec![uniform64(&mut g, batch * d_emb, -1.0, 1.0), uniform64(&mut g, batch * d_hidden, -1.0, 1.0)];
        check_grads(
            &format!("MaskBlock {i}"),
            &mut block,
            &inputs,
            |b, x| b.forward(&ops, &x[0], &x[1], batch).unwrap()[..batch * d_out].to_vec(),
            |b, x, r| {
                b.forward(&ops, &x[0], &x[1], batch).unwrap();
                b.backward(&ops, &x[0], &x[1], &r.to_vec()).unwrap();
                vec![b.d_emb()[..batch * d_emb].to_vec(), b.d_hidden()[..batch * d_hidden].to_vec()]
            },
            i as u64,
        );
    }
}

#[test]
fn mask_net_gradients() {
    let ops = RefOpsF64::new();
    for (i, structure) in [MaskNetStructure::Serial, MaskNetStructure::Parallel].into_iter().enumerate() {
        for &(blocks, batch, dropout) in &[(1, 2, 0.0), (3, 3, 0.0), (2, 1, 0.0), (2, 3, 0.3)] {
            let cfg = MaskNetConfig { dropout, ..MaskNetConfig::new(6, blocks, 4, 3, structure) };
            let mut net = cfg.init(&ops, batch, &mut rng(i as u64)).unwrap();
            assert_eq!(net.d_out(), if i == 0 { 4 } else { 4 * blocks });
            randomize_by(&mut net, &mut rng(60 + blocks as u64), norm_relu_ranges);
            let what = format!("MaskNet {structure:?} x{blocks} b{batch} p{dropout}");
            check_layer(&what, &mut net, batch, blocks as u64, |m| m.set_dropout_step(0));
        }
    }
}

#[test]
fn mask_net_activation_and_parallel_mlp_gradients() {
    let ops = RefOpsF64::new();
    let cases = [
        (MaskNetStructure::Serial, vec![], 0.0),
        (MaskNetStructure::Parallel, vec![5], 0.0),
        (MaskNetStructure::Parallel, vec![5, 3], 0.3),
    ];
    for (i, (structure, mlp_hidden, dropout)) in cases.into_iter().enumerate() {
        let cfg = MaskNetConfig {
            activation: mixrank_engine::Activation::Tanh,
            dropout,
            mlp_hidden: mlp_hidden.clone(),
            ..MaskNetConfig::new(6, 2, 4, 3, structure)
        };
        let mut net = cfg.init(&ops, 3, &mut rng(70 + i as u64)).unwrap();
        let concat = if structure == MaskNetStructure::Serial { 4 } else { 8 };
        assert_eq!(net.d_out(), mlp_hidden.last().copied().unwrap_or(concat));
        assert_eq!(net.mlp.is_some(), !mlp_hidden.is_empty());
        randomize_by(&mut net, &mut rng(80 + i as u64), norm_relu_ranges);
        let what = format!("MaskNet {structure:?} tanh mlp {mlp_hidden:?} p{dropout}");
        check_layer(&what, &mut net, 3, 90 + i as u64, |m| m.set_dropout_step(0));
    }
}

#[test]
fn mask_net_activation_reaches_every_block() {
    // Same seed, same weights: only the blocks' output activation differs.
    let ops = mixrank_engine::RefOps;
    let x: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
    for structure in [MaskNetStructure::Serial, MaskNetStructure::Parallel] {
        let out = |activation| {
            let cfg = MaskNetConfig { activation, ..MaskNetConfig::new(6, 2, 4, 3, structure) };
            let mut net = cfg.init(&ops, 2, &mut rng(5)).unwrap();
            let n = 2 * net.d_out();
            net.forward(&ops, &x, 2).unwrap()[..n].to_vec()
        };
        let relu = out(mixrank_engine::Activation::Relu);
        let tanh = out(mixrank_engine::Activation::Tanh);
        assert!(relu.iter().all(|&v| v >= 0.0), "{structure:?}: ReLU output {relu:?}");
        assert!(tanh.iter().any(|&v| v < 0.0), "{structure:?}: tanh output has no negative value: {tanh:?}");
    }
}

#[test]
fn parallel_mask_net_mlp_parameters_and_serial_refusal() {
    let ops = mixrank_engine::RefOps;
    let cfg = MaskNetConfig { mlp_hidden: vec![7, 2], ..MaskNetConfig::new(8, 3, 5, 3, MaskNetStructure::Parallel) };
    let mut net = cfg.init(&ops, 1, &mut rng(0)).unwrap();
    assert_eq!(net.d_out(), 2);
    let mut mlp = Vec::new();
    net.params(&mut |n, p| {
        if n.starts_with("mlp.") {
            mlp.push(p.shape.to_vec());
        }
    });
    assert_eq!(mlp, [vec![15, 7], vec![7], vec![7, 2], vec![2]], "MLP over the 3 × 5 concatenation");
    let serial = MaskNetConfig { mlp_hidden: vec![7], ..MaskNetConfig::new(8, 2, 5, 3, MaskNetStructure::Serial) };
    assert!(matches!(
        serial.init(&ops, 1, &mut rng(0)),
        Err(NnError::InvalidConfig { layer: "MaskNet", field: "mlp_hidden", .. })
    ));
}

#[test]
fn mask_net_parameter_names_and_serial_widths() {
    let ops = mixrank_engine::RefOps;
    let mut net = MaskNetConfig::new(8, 2, 5, 3, MaskNetStructure::Serial).init(&ops, 1, &mut rng(0)).unwrap();
    let mut names = Vec::new();
    net.params(&mut |n, p| names.push(format!("{n}{:?}", p.shape)));
    assert_eq!(
        names,
        [
            "blocks.0.mask_agg.weight[8, 3]",
            "blocks.0.mask_agg.bias[3]",
            "blocks.0.mask_proj.weight[3, 8]",
            "blocks.0.mask_proj.bias[8]",
            "blocks.0.norm_in.gamma[8]",
            "blocks.0.norm_in.beta[8]",
            "blocks.0.hidden.weight[8, 5]",
            "blocks.0.norm_out.gamma[5]",
            "blocks.0.norm_out.beta[5]",
            // Later serial blocks mask the previous output (width 5), not re-normalised.
            "blocks.1.mask_agg.weight[8, 3]",
            "blocks.1.mask_agg.bias[3]",
            "blocks.1.mask_proj.weight[3, 5]",
            "blocks.1.mask_proj.bias[5]",
            "blocks.1.hidden.weight[5, 5]",
            "blocks.1.norm_out.gamma[5]",
            "blocks.1.norm_out.beta[5]",
        ]
    );
    assert!(matches!(
        MaskNetConfig::new(8, 0, 5, 3, MaskNetStructure::Serial).init(&ops, 1, &mut rng(0)),
        Err(NnError::InvalidConfig { layer: "MaskNet", field: "blocks", .. })
    ));
    assert!(matches!(
        MaskBlockConfig::new(8, 4, 0, 3).init(&ops, 1, &mut rng(0)),
        Err(NnError::InvalidConfig { layer: "MaskBlock", field: "d_mask", .. })
    ));
}

#[test]
fn cpu_and_reference_within_rounding_bound() {
    // Small widths: the worst-case bound compounds through two layer norms and a product
    // per block (see `assert_within_bound`), and must stay under 1% of the scale.
    for (seed, structure) in [(1, MaskNetStructure::Serial), (2, MaskNetStructure::Parallel)] {
        let cfg = MaskNetConfig { dropout: 0.2, ..MaskNetConfig::new(8, 2, 6, 4, structure) };
        compare_backends(&format!("MaskNet {structure:?}"), &cfg, 3, seed, norm_relu_ranges32);
    }
}
