//! Shared harnesses: finite-difference gradient checks in f64 (through `RefOpsF64`) and
//! CpuOps-vs-RefOps comparisons with a derived rounding bound.

#![allow(dead_code)] // each test module uses a subset

use mixrank_engine::{Backend, CpuOps, RefOps};
pub use mixrank_nn::testing::gradcheck::{check_grads, derivative, TOL};
use mixrank_nn::testing::{BoundOps, Bounded, RefOpsF64};
use mixrank_nn::{zero_grads, Layer, LayerConfig, Parameters};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type F = RefOpsF64;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn uniform64(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `n` values with magnitude uniform in `[gap, 1)` and a random sign: inputs that are
/// never so close to 0 that every gradient through a product with them vanishes.
pub fn away_from_zero(rng: &mut StdRng, n: usize, gap: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(gap..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
}

pub fn uniform32(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Overwrites every parameter with `U(lo, hi)` (so biases, norm scales and shifts are
/// not at their special init values, which could hide a missing gradient term).
pub fn randomize<M: Parameters<F>>(m: &mut M, rng: &mut StdRng, lo: f64, hi: f64) {
    m.params(&mut |_, p| {
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(lo..hi);
        }
    });
}

/// Like [`randomize`] with magnitudes in `[gap, hi)` and random signs: for random tiny
/// shapes, where a parameter near 0 can make another parameter's gradient vanish.
pub fn randomize_away<M: Parameters<F>>(m: &mut M, rng: &mut StdRng, gap: f64, hi: f64) {
    m.params(&mut |_, p| {
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(gap..hi) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        }
    });
}

/// Like [`randomize`], with the range chosen per parameter name.
pub fn randomize_by<M: Parameters<F>>(m: &mut M, rng: &mut StdRng, range: impl Fn(&str) -> (f64, f64)) {
    m.params(&mut |name, p| {
        let (lo, hi) = range(name);
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(lo..hi);
        }
    });
}

/// Ranges for blocks with ReLUs (after a LayerNorm or the mask aggregation): a positive shift and scale keep most
/// units alive, so small test shapes do not end up with an all-dead (all-zero) output.
pub fn norm_relu_ranges(name: &str) -> (f64, f64) {
    if name.ends_with("norm_out.beta") || name.ends_with("mask_agg.bias") {
        (0.2, 1.0)
    } else if name.ends_with("gamma") {
        (0.5, 1.5)
    } else {
        (-1.0, 1.0)
    }
}

/// Names and gradients (copied) of every parameter, in visit order.
pub fn grads<B: Backend, M: Parameters<B>>(ops: &B, m: &mut M) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    m.params(&mut |name, p| {
        let mut g = vec![0.0; p.len()];
        ops.read(&p.grad, &mut g).unwrap();
        out.push((name.to_string(), g));
    });
    out
}

/// A 2-thread pool, as the engine requires CpuOps be called from inside one.
pub fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap()
}

/// Unit roundoff of f32.
pub const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// `γ_n = n·u / (1 - n·u)`.
pub fn gamma(n: usize) -> f64 {
    n as f64 * U32 / (1.0 - n as f64 * U32)
}

/// Results of one forward + backward: output, input gradient(s), parameter gradients.
#[derive(Debug)]
pub struct Run<T> {
    pub out: Vec<T>,
    pub d_inputs: Vec<Vec<T>>,
    pub grads: Vec<(String, Vec<T>)>,
}

/// Forward + backward of a layer on a backend with host (`Vec`) buffers, gradients
/// zeroed first.
pub fn run<T: Copy, B: Backend<Buf = Vec<T>>, L: Layer<B>>(
    ops: &B,
    layer: &mut L,
    x: &[T],
    dy: &[T],
    batch: usize,
) -> Run<T> {
    zero_grads(ops, layer).unwrap();
    let x = x.to_vec();
    let (d_in, d_out) = (layer.d_in(), layer.d_out());
    let out = layer.forward(ops, &x, batch).unwrap()[..batch * d_out].to_vec();
    let dx = layer.backward(ops, &x, &dy.to_vec()).unwrap()[..batch * d_in].to_vec();
    let mut grads = Vec::new();
    layer.params(&mut |name, p| grads.push((name.to_string(), p.grad[..p.len()].to_vec())));
    Run { out, d_inputs: vec![dx], grads }
}

/// Sets every parameter to values drawn (in f32) from `seed` with per-name ranges, the
/// same on any backend. Matrix ranges are scaled by `sqrt(3 / fan_in)` (unit variance
/// per output at unit input variance), so activations keep their scale with depth as
/// they do at a real init, instead of growing by `sqrt(fan_in)` per layer.
pub fn randomize_on<B: Backend, M: Parameters<B>>(ops: &B, m: &mut M, seed: u64, range: impl Fn(&str) -> (f32, f32)) {
    let mut g = rng(seed);
    m.params(&mut |name, p| {
        let (lo, hi) = range(name);
        let s = if p.shape.len() == 2 { (3.0 / p.shape[0] as f32).sqrt() } else { 1.0 };
        let (lo, hi) = (lo * s, hi * s);
        let host = uniform32(&mut g, p.len(), lo, hi);
        ops.write(&host, &mut p.value).unwrap();
    });
}

/// `|got - v| ≤ e` for every element (plus 1e-12·|v| for the f64 evaluation of `v`),
/// and the bound is meaningful: `e ≤ 1e-2 · max|v|` over the tensor for at least 98% of
/// the elements, so a real bug (a dropped term or a wrong index moves many results by
/// O(max|v|)) could not hide in it.
///
/// The bounds are worst case: they grow by about `‖W‖_∞` per layer and by layer norm's
/// `(2 + x̂²)·rstd` where actual rounding errors mostly cancel, so the compared networks
/// are kept a few layers deep for the bound to stay under that 1%.
pub fn assert_within_bound(what: &str, got: &[f32], bound: &[Bounded]) {
    assert_eq!(got.len(), bound.len(), "{what}: lengths");
    let scale = bound.iter().map(|b| b.v.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0, "{what}: all zero, comparison would be vacuous");
    let mut loose = 0;
    for (i, (g, b)) in got.iter().zip(bound).enumerate() {
        let d = (*g as f64 - b.v).abs();
        assert!(d <= b.e + 1e-12 * b.v.abs(), "{what}[{i}]: got {g}, exact {} (bound {:e})", b.v, b.e);
        loose += usize::from(b.e > 1e-2 * scale);
    }
    // Elements downstream of a ReLU whose input lies within its error bound of 0 get a
    // bound of O(|dy|) (the backends may legitimately disagree on the mask there); they
    // are rare, so demand meaningful bounds on all but 2% of the elements.
    assert!(loose * 50 <= got.len(), "{what}: {loose} of {} bounds exceed 1% of the scale {scale:e}", got.len());
}

/// CpuOps and RefOps (f32) against the [`BoundOps`] run of the same layer, inputs and
/// parameters: each backend's output, input gradient and parameter gradients must lie
/// within the propagated rounding bound of the exact values (so the two backends agree
/// within twice that). Parameters are drawn from `range` (see [`randomize_on`]).
pub fn compare_backends<C: LayerConfig>(
    what: &str,
    cfg: &C,
    batch: usize,
    seed: u64,
    range: impl Fn(&str) -> (f32, f32) + Copy,
) {
    compare_backends_except(what, cfg, batch, seed, range, &[]);
}

/// [`compare_backends`], where parameters whose name ends in one of `cancelling` are only
/// checked against their bound, not for the bound's tightness: their gradients are sums
/// that cancel by construction (a softmax gate's bias gradient sums logit gradients that
/// add to 0 in every row), so the value is far below the worst-case bound of its terms.
pub fn compare_backends_except<C: LayerConfig>(
    what: &str,
    cfg: &C,
    batch: usize,
    seed: u64,
    range: impl Fn(&str) -> (f32, f32) + Copy,
    cancelling: &[&str],
) {
    let (cpu_ops, ref_ops, bound_ops) = (CpuOps::new(), RefOps, BoundOps);
    let mut cpu = cfg.build(&cpu_ops, batch, &mut rng(seed)).unwrap();
    let mut refr = cfg.build(&ref_ops, batch, &mut rng(seed)).unwrap();
    let mut bnd = cfg.build(&bound_ops, batch, &mut rng(seed)).unwrap();
    randomize_on(&cpu_ops, &mut cpu, seed + 1, range);
    randomize_on(&ref_ops, &mut refr, seed + 1, range);
    randomize_on(&bound_ops, &mut bnd, seed + 1, range);
    let x = uniform32(&mut rng(seed + 2), batch * cpu.d_in(), -1.0, 1.0);
    let dy = uniform32(&mut rng(seed + 3), batch * cpu.d_out(), -1.0, 1.0);
    let a = pool().install(|| run(&cpu_ops, &mut cpu, &x, &dy, batch));
    let b = run(&ref_ops, &mut refr, &x, &dy, batch);
    let e = run(&bound_ops, &mut bnd, &BoundOps::exact(&x), &BoundOps::exact(&dy), batch);
    for (name, r) in [("CpuOps", &a), ("RefOps", &b)] {
        assert_within_bound(&format!("{what} {name} output"), &r.out, &e.out);
        assert_within_bound(&format!("{what} {name} d_input"), &r.d_inputs[0], &e.d_inputs[0]);
        assert_eq!(r.grads.len(), e.grads.len());
        for ((pname, g), (_, eg)) in r.grads.iter().zip(&e.grads) {
            let label = format!("{what} {name} d{pname}");
            if cancelling.iter().any(|c| pname.ends_with(c)) {
                for (i, (v, b)) in g.iter().zip(eg).enumerate() {
                    assert!((*v as f64 - b.v).abs() <= b.e + 1e-12 * b.v.abs(), "{label}[{i}]: {v} vs {}", b.v);
                }
            } else {
                assert_within_bound(&label, g, eg);
            }
        }
    }
}

/// Uniform `(-1, 1)` for every parameter.
pub fn unit_range(_: &str) -> (f32, f32) {
    (-1.0, 1.0)
}

/// [`norm_relu_ranges`] in f32.
pub fn norm_relu_ranges32(name: &str) -> (f32, f32) {
    let (lo, hi) = norm_relu_ranges(name);
    (lo as f32, hi as f32)
}
