//! Helpers shared by the engine's integration tests.

use mixrank_engine::{Activation, Float};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const ACTIVATIONS: [Activation; 6] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::GeluTanh,
    Activation::Silu,
];

/// Unit roundoff of f32.
pub const U32: f64 = 1.0 / (1u64 << 24) as f64;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform<T: Float>(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<T> {
    (0..n).map(|_| T::from_f64(rng.random_range(lo..hi))).collect()
}

/// `n` values uniform in `[-1, 1)` with magnitude at least `gap` (keeps ReLU's kink and
/// similar away from finite-difference stencils).
pub fn away_from_zero(rng: &mut StdRng, n: usize, gap: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v: f64 = rng.random_range(gap..1.0);
            if rng.random_bool(0.5) {
                v
            } else {
                -v
            }
        })
        .collect()
}

pub fn ids(rng: &mut StdRng, n: usize, rows: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..rows as u32)).collect()
}

/// CSR offsets for `batch` bags of 0..=max_bag ids each.
pub fn offsets(rng: &mut StdRng, batch: usize, max_bag: usize) -> Vec<u32> {
    let mut offsets = vec![0u32];
    for _ in 0..batch {
        let len = rng.random_range(0..=max_bag as u32);
        offsets.push(offsets.last().unwrap() + len);
    }
    offsets
}

/// Dimension strategy: the awkward sizes 1, 3, 17 plus anything up to 40.
pub fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(17), 1usize..=40]
}

/// Exact equality (NaN equal to NaN, +0 equal to -0), for ops that run the same
/// arithmetic in the same order in both backends.
pub fn assert_same(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x == y || (x.is_nan() && y.is_nan()), "{what}[{i}]: {x} vs {y}");
    }
}

/// `|a - b| <= tol[i]` elementwise.
pub fn assert_within(what: &str, a: &[f64], b: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let t = tol(i);
        assert!((x - y).abs() <= t, "{what}[{i}]: {x} vs {y} (tol {t:e})");
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
