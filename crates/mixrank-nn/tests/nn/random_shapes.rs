//! Gradient checks on random small shapes (proptest), on top of the fixed cases in each
//! layer's module.

use crate::common::*;
use crate::dense::check_layer;
use mixrank_engine::Activation;
use mixrank_nn::testing::RefOpsF64;
use mixrank_nn::*;
use proptest::prelude::*;

fn smooth() -> impl Strategy<Value = Activation> {
    prop_oneof![Just(Activation::Tanh), Just(Activation::GeluTanh), Just(Activation::Silu), Just(Activation::Sigmoid)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn mlp_random_shapes(
        d_in in 1usize..6,
        hidden in proptest::collection::vec(3usize..7, 0..3),
        d_out in proptest::option::of(1usize..4),
        act in smooth(),
        norm: bool,
        batch in 1usize..5,
        seed: u64,
    ) {
        // An MLP needs at least one layer.
        let d_out = if hidden.is_empty() { Some(d_out.unwrap_or(2)) } else { d_out };
        // With one input feature and no bias before the norm, the normalised row is
        // x·w / |x·w|-like: flat in x (a vanishing, vacuous gradient) and with curvature
        // ~ rstd^k that breaks the finite-difference error budget. Not a shape a model uses.
        let norm = norm && d_in >= 2;
        let cfg = MlpConfig { d_out, ..MlpConfig::new(d_in, &hidden).with_activation(act).with_layer_norm(norm) };
        let ops = RefOpsF64::new();
        let mut mlp = cfg.init(&ops, batch, &mut rng(seed)).unwrap();
        randomize_away(&mut mlp, &mut rng(seed ^ 1), 0.1, 1.0);
        check_layer(&format!("{cfg:?} b{batch}"), &mut mlp, batch, seed, |_| {});
    }

    #[test]
    fn cross_net_random_shapes(d in 1usize..7, layers in 1usize..4, rank in 0usize..4, batch in 1usize..5, seed: u64) {
        let rank = if rank == 0 || rank > d { CrossRank::Full } else { CrossRank::LowRank { rank } };
        let ops = RefOpsF64::new();
        let mut net = CrossNetV2Config::new(d, layers).with_rank(rank).init(&ops, batch, &mut rng(seed)).unwrap();
        randomize_away(&mut net, &mut rng(seed ^ 1), 0.1, 0.8);
        check_layer(&format!("CrossNetV2 d{d} L{layers} {rank:?} b{batch}"), &mut net, batch, seed, |_| {});
    }

    #[test]
    fn gate_random_shapes(d_in in 1usize..6, experts in 2usize..6, t in 0.3f32..3.0, batch in 1usize..5, seed: u64) {
        let ops = RefOpsF64::new();
        let mut gate = GateConfig::new(d_in, experts).with_temperature(t).init(&ops, batch, &mut rng(seed)).unwrap();
        randomize_away(&mut gate, &mut rng(seed ^ 1), 0.1, 1.0);
        check_layer(&format!("Gate {d_in}->{experts} T{t} b{batch}"), &mut gate, batch, seed, |_| {});
    }
}
