//! The CUDA backend under real layer code: each `mixrank-nn` layer built on `CudaOps`
//! and on `BoundOps` (exact values with a rigorous bound on the rounding error of any
//! f32 backend) from the same seed; forward, input gradient and every parameter gradient
//! of the CUDA run must lie within the bound — the check `mixrank-nn`'s tests make of
//! `CpuOps` and `RefOps` (`tests/nn/common.rs`: `compare_backends`, whose helpers are
//! copied here). Needs an NVIDIA GPU (or `emu/run.sh`).

use mixrank_cuda::CudaOps;
use mixrank_engine::{Activation, Backend};
use mixrank_nn::testing::{BoundOps, Bounded};
use mixrank_nn::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn uniform32(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn unit_range(_: &str) -> (f32, f32) {
    (-1.0, 1.0)
}

/// Ranges for blocks with ReLUs after a layer norm (as `mixrank-nn`'s tests).
fn norm_relu_ranges32(name: &str) -> (f32, f32) {
    if name.ends_with("norm_out.beta") || name.ends_with("mask_agg.bias") {
        (0.2, 1.0)
    } else if name.ends_with("gamma") {
        (0.5, 1.5)
    } else {
        (-1.0, 1.0)
    }
}

/// Every parameter drawn (in f32) from `seed` with per-name ranges, matrices scaled by
/// `sqrt(3 / fan_in)`: the same values on any backend.
fn randomize_on<B: Backend, M: Parameters<B>>(ops: &B, m: &mut M, seed: u64, range: impl Fn(&str) -> (f32, f32)) {
    let mut g = rng(seed);
    m.params(&mut |name, p| {
        let (lo, hi) = range(name);
        let s = if p.shape.len() == 2 { (3.0 / p.shape[0] as f32).sqrt() } else { 1.0 };
        let (lo, hi) = (lo * s, hi * s);
        let host = uniform32(&mut g, p.len(), lo, hi);
        ops.write(&host, &mut p.value).unwrap();
    });
}

/// `|got − v| ≤ e` everywhere, and the bound is meaningful (≤ 1% of the scale for all but
/// 2% of the elements), as `mixrank-nn`'s `assert_within_bound`.
fn assert_within_bound(what: &str, got: &[f32], bound: &[Bounded]) {
    assert_eq!(got.len(), bound.len(), "{what}: lengths");
    let scale = bound.iter().map(|b| b.v.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0, "{what}: all zero, comparison would be vacuous");
    let mut loose = 0;
    for (i, (g, b)) in got.iter().zip(bound).enumerate() {
        let d = (*g as f64 - b.v).abs();
        assert!(d <= b.e + 1e-12 * b.v.abs(), "{what}[{i}]: got {g}, exact {} (bound {:e})", b.v, b.e);
        loose += usize::from(b.e > 1e-2 * scale);
    }
    assert!(loose * 50 <= got.len(), "{what}: {loose} of {} bounds exceed 1% of the scale {scale:e}", got.len());
}

struct Run<T> {
    out: Vec<T>,
    dx: Vec<T>,
    grads: Vec<(String, Vec<T>)>,
}

fn run_cuda<L: Layer<CudaOps>>(ops: &CudaOps, layer: &mut L, x: &[f32], dy: &[f32], batch: usize) -> Run<f32> {
    zero_grads(ops, layer).unwrap();
    let (xb, dyb) = (ops.upload(x).unwrap(), ops.upload(dy).unwrap());
    let (d_in, d_out) = (layer.d_in(), layer.d_out());
    let mut out = vec![0f32; batch * d_out];
    ops.read(layer.forward(ops, &xb, batch).unwrap(), &mut out).unwrap();
    let mut dx = vec![0f32; batch * d_in];
    ops.read(layer.backward(ops, &xb, &dyb).unwrap(), &mut dx).unwrap();
    let mut grads = Vec::new();
    layer.params(&mut |name, p| {
        let mut g = vec![0f32; p.len()];
        ops.read(&p.grad, &mut g).unwrap();
        grads.push((name.to_string(), g));
    });
    Run { out, dx, grads }
}

fn run_bound<L: Layer<BoundOps>>(layer: &mut L, x: &[f32], dy: &[f32], batch: usize) -> Run<Bounded> {
    let ops = BoundOps;
    zero_grads(&ops, layer).unwrap();
    let (xb, dyb) = (BoundOps::exact(x), BoundOps::exact(dy));
    let (d_in, d_out) = (layer.d_in(), layer.d_out());
    let out = layer.forward(&ops, &xb, batch).unwrap()[..batch * d_out].to_vec();
    let dx = layer.backward(&ops, &xb, &dyb).unwrap()[..batch * d_in].to_vec();
    let mut grads = Vec::new();
    layer.params(&mut |name, p| grads.push((name.to_string(), p.grad[..p.len()].to_vec())));
    Run { out, dx, grads }
}

fn compare<C: LayerConfig>(
    ops: &CudaOps,
    what: &str,
    cfg: &C,
    batch: usize,
    seed: u64,
    range: impl Fn(&str) -> (f32, f32) + Copy,
    cancelling: &[&str],
) {
    let mut cuda = cfg.build(ops, batch, &mut rng(seed)).unwrap();
    let mut bnd = cfg.build(&BoundOps, batch, &mut rng(seed)).unwrap();
    randomize_on(ops, &mut cuda, seed + 1, range);
    randomize_on(&BoundOps, &mut bnd, seed + 1, range);
    let x = uniform32(&mut rng(seed + 2), batch * cuda.d_in(), -1.0, 1.0);
    let dy = uniform32(&mut rng(seed + 3), batch * cuda.d_out(), -1.0, 1.0);
    let a = run_cuda(ops, &mut cuda, &x, &dy, batch);
    let e = run_bound(&mut bnd, &x, &dy, batch);
    assert_within_bound(&format!("{what} output"), &a.out, &e.out);
    assert_within_bound(&format!("{what} d_input"), &a.dx, &e.dx);
    assert_eq!(a.grads.len(), e.grads.len());
    for ((pname, g), (_, eg)) in a.grads.iter().zip(&e.grads) {
        let label = format!("{what} d{pname}");
        if cancelling.iter().any(|c| pname.ends_with(c)) {
            for (i, (v, b)) in g.iter().zip(eg).enumerate() {
                assert!((*v as f64 - b.v).abs() <= b.e + 1e-12 * b.v.abs(), "{label}[{i}]: {v} vs {}", b.v);
            }
        } else {
            assert_within_bound(&label, g, eg);
        }
    }
    eprintln!("{what}: ok");
}

fn gpu() -> CudaOps {
    CudaOps::new(0).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn dense_layers_within_the_rounding_bound() {
    let g = gpu();
    compare(&g, "Linear relu", &LinearConfig::new(29, 17).with_activation(Activation::Relu), 13, 1, unit_range, &[]);
    compare(&g, "Linear", &LinearConfig::new(3, 1), 1, 2, unit_range, &[]);
    let acts = [
        Activation::Identity,
        Activation::Tanh,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Relu,
    ];
    for (i, act) in acts.into_iter().enumerate() {
        let cfg = MlpConfig::new(29, &[64, 33]).with_activation(act).with_output(2);
        compare(&g, &format!("Mlp {act:?}"), &cfg, 37, 10 + i as u64, unit_range, &[]);
    }
    let cfg = MlpConfig::new(30, &[24, 16]).with_layer_norm(true).with_dropout(0.2).with_output(3);
    compare(&g, "Mlp norm+dropout", &cfg, 19, 20, norm_relu_ranges32, &[]);
    let wide = MlpConfig::new(128, &[128]).with_activation(Activation::GeluTanh).with_dropout(0.1);
    compare(&g, "Mlp wide", &wide, 64, 21, unit_range, &[]);
    compare(&g, "Tower", &TowerConfig::new(40, &[24]), 19, 22, unit_range, &[]);
    let ln = LayerNormConfig::new(33).with_activation(Activation::GeluTanh);
    compare(&g, "LayerNorm gelu", &ln, 21, 23, unit_range, &[]);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn cross_and_gated_layers_within_the_rounding_bound() {
    let g = gpu();
    for (seed, rank) in [(1, CrossRank::Full), (2, CrossRank::LowRank { rank: 8 })] {
        let cfg = CrossNetV2Config::new(37, 3).with_rank(rank);
        compare(&g, &format!("CrossNetV2 {rank:?}"), &cfg, 23, seed, unit_range, &[]);
    }
    let mix = CrossNetMixConfig::new(16, 2, 4, 3).with_activation(Activation::GeluTanh);
    compare(&g, "CrossNetMix", &mix, 9, 5, unit_range, &["gate.bias", "gate.weight"]);
    for (seed, structure) in [(3, DcnStructure::Stacked), (4, DcnStructure::Parallel)] {
        let cfg = DcnConfig {
            cross: CrossNetV2Config::new(37, 2).with_rank(CrossRank::LowRank { rank: 8 }).into(),
            deep: MlpConfig::new(37, &[32, 16]).with_dropout(0.1),
            structure,
        };
        compare(&g, &format!("Dcn {structure:?}"), &cfg, 23, seed, unit_range, &[]);
    }
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
        compare(&g, &format!("FinalMlp {context:?}"), &cfg, 9, seed, unit_range, &[]);
    }
    for (seed, structure) in [(1, MaskNetStructure::Serial), (2, MaskNetStructure::Parallel)] {
        let cfg = MaskNetConfig { dropout: 0.2, ..MaskNetConfig::new(8, 2, 6, 4, structure) };
        compare(&g, &format!("MaskNet {structure:?}"), &cfg, 3, seed, norm_relu_ranges32, &[]);
    }
    compare(&g, "Gate", &GateConfig::new(45, 4).with_temperature(0.8), 31, 1, unit_range, &[]);
    compare(&g, "Gate b1", &GateConfig::new(7, 3), 1, 2, unit_range, &[]);
    compare(&g, "Gate top-2", &GateConfig::new(30, 5).with_top_k(2), 17, 3, unit_range, &[]);
}
