//! Finite-difference gradient checks in f64: the one stencil and tolerance every
//! gradient check of the workspace uses (layers in `mixrank-nn`'s tests, whole heads in
//! `mixrank-model`'s), so a check elsewhere is exactly as strict as the layer-level ones.

use crate::{Param, Parameters};
use mixrank_engine::reference::RefOpsF64;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type F = RefOpsF64;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn grads64<M: Parameters<F> + ?Sized>(m: &mut M) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    m.params(&mut |name, p| out.push((name.to_string(), p.grad[..p.len()].to_vec())));
    out
}

fn zero_grads64<M: Parameters<F> + ?Sized>(m: &mut M) {
    m.params(&mut |_, p: &mut Param<F>| p.grad.fill(0.0));
}

/// Adds `delta` to element `elem` of the `index`-th parameter (visit order).
fn nudge<M: Parameters<F> + ?Sized>(m: &mut M, index: usize, elem: usize, delta: f64) {
    let mut k = 0;
    m.params(&mut |_, p| {
        if k == index {
            p.value[elem] += delta;
        }
        k += 1;
    });
}

/// Finite-difference step and tolerance.
///
/// Derivatives use the fourth-order central stencil
/// `(8(L(θ+h) - L(θ-h)) - (L(θ+2h) - L(θ-2h))) / 12h`, whose truncation error is
/// `h⁴·|L⁽⁵⁾|/30` and rounding error `≈ 1.5·1e-16·|L|/h`. With `h = 1e-4` in f64 that
/// is `3e-18·|L⁽⁵⁾| + 2e-12·|L|`: below 1e-8 for `|L| ≤ 10³` and `|L⁽⁵⁾| ≤ 3e9`, which
/// covers layer norm over rows with a standard deviation down to ~0.02 (its derivatives
/// scale like `rstd^k`). `TOL · (1 + |g|)` with `TOL = 1e-7` keeps an order of
/// magnitude of margin, while any real gradient bug (a dropped term, a wrong transpose, a
/// missed accumulation) is off by 1e-3 or more.
pub const H: f64 = 1e-4;
pub const TOL: f64 = 1e-7;

/// The fourth-order central difference of `loss` around 0 (see [`H`]).
pub fn derivative(mut loss: impl FnMut(f64) -> f64) -> f64 {
    (8.0 * (loss(H) - loss(-H)) - (loss(2.0 * H) - loss(-2.0 * H))) / (12.0 * H)
}

/// Checks every parameter gradient and every input gradient of `L = Σ R ⊙ f(inputs)`.
///
/// `forward` runs the module on `inputs` and returns (a copy of) its output;
/// `backward` runs forward then backward with cotangent `R` and returns the gradient of
/// each input. Parameter gradients are zeroed first, so accumulation bugs show.
/// Also asserts every parameter receives a non-zero gradient, so a check can not pass
/// vacuously on a dead path.
pub fn check_grads<M: Parameters<F> + ?Sized>(
    what: &str,
    module: &mut M,
    inputs: &[Vec<f64>],
    forward: impl Fn(&mut M, &[Vec<f64>]) -> Vec<f64>,
    backward: impl Fn(&mut M, &[Vec<f64>], &[f64]) -> Vec<Vec<f64>>,
    seed: u64,
) {
    let mut g = StdRng::seed_from_u64(seed);
    let out = forward(module, inputs);
    let r: Vec<f64> = (0..out.len()).map(|_| g.random_range(-1.0..1.0)).collect();
    zero_grads64(module);
    let d_inputs = backward(module, inputs, &r);
    let analytic = grads64(module);

    let loss = |m: &mut M, x: &[Vec<f64>]| dot(&forward(m, x), &r);
    for (index, (name, grad)) in analytic.iter().enumerate() {
        assert!(grad.iter().any(|v| v.abs() > 1e-6), "{what}: {name} has an all-zero gradient");
        for (elem, &an) in grad.iter().enumerate() {
            let fd = derivative(|delta| {
                nudge(module, index, elem, delta);
                let l = loss(module, inputs);
                nudge(module, index, elem, -delta);
                l
            });
            assert!((fd - an).abs() <= TOL * (1.0 + fd.abs()), "{what}: d{name}[{elem}] analytic {an} vs numeric {fd}");
        }
    }
    assert_eq!(d_inputs.len(), inputs.len());
    let mut x = inputs.to_vec();
    for (i, dx) in d_inputs.iter().enumerate() {
        assert!(dx.iter().any(|v| v.abs() > 1e-6), "{what}: input {i} has an all-zero gradient");
        for elem in 0..dx.len() {
            let orig = x[i][elem];
            let fd = derivative(|delta| {
                x[i][elem] = orig + delta;
                loss(module, &x)
            });
            x[i][elem] = orig;
            let an = dx[elem];
            assert!(
                (fd - an).abs() <= TOL * (1.0 + fd.abs()),
                "{what}: d_input{i}[{elem}] analytic {an} vs numeric {fd}"
            );
        }
    }
}
