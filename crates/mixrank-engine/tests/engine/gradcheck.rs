//! Every backward against central finite differences of its forward, in f64 through the
//! generic reference functions. (CpuOps' backwards equal the reference's, see
//! `cpu_vs_ref`, so this checks them too.)
//!
//! Each check contracts the op's output with a random cotangent `R`, `L(x) = Σ R ⊙ f(x)`,
//! and compares the backward's `dL/dx` (fed `dy = R`) with `(L(x+h) - L(x-h)) / 2h`.
//! With h = 1e-5 in f64 the truncation error is ~h²·|L'''|/6 ≈ 1e-11 and the rounding
//! error ~1e-16·|L|/h ≈ 1e-10 for the O(1..10) values used, so `1e-7·(1 + |g|)` leaves
//! three orders of magnitude of margin while any real gradient bug (a dropped term, a
//! wrong transpose) shows up at 1e-2 or worse.

use crate::common::*;
use mixrank_engine::reference as r;
use mixrank_engine::*;
use proptest::prelude::*;

const H: f64 = 1e-5;
const TOL: f64 = 1e-7;

/// Central-difference gradient of `f` at `x`.
fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + H;
            let plus = f(&x);
            x[i] = orig - H;
            let minus = f(&x);
            x[i] = orig;
            (plus - minus) / (2.0 * H)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_grad(what: &str, analytic: &[f64], x: &[f64], f: impl Fn(&[f64]) -> f64) {
    let numeric = numeric_grad(x, f);
    assert_within(what, analytic, &numeric, |i| TOL * (1.0 + numeric[i].abs()));
}

fn flip(t: Transpose) -> Transpose {
    match t {
        Transpose::No => Transpose::Yes,
        Transpose::Yes => Transpose::No,
    }
}

/// The gradients of stored A and B for `C = α·op(A)·op(B) + β·C`, computed with the gemm
/// op itself the way a Linear backward does.
fn check_gemm_grad(seed: u64, ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize) {
    let mut g = rng(seed);
    let (alpha, beta) = (0.7f32, 0.3f32);
    let spec = GemmSpec::new(ta, tb, m, n, k).alpha(alpha).beta(beta);
    let a: Vec<f64> = uniform(&mut g, m * k, -1.0, 1.0);
    let b: Vec<f64> = uniform(&mut g, k * n, -1.0, 1.0);
    let c: Vec<f64> = uniform(&mut g, m * n, -1.0, 1.0);
    let dc: Vec<f64> = uniform(&mut g, m * n, -1.0, 1.0);
    let loss = |a: &[f64], b: &[f64], c: &[f64]| {
        let mut out = c.to_vec();
        r::gemm(&spec, a, b, &mut out).unwrap();
        dot(&out, &dc)
    };
    // d(stored A): No → α·dC·op(B)ᵀ [m, k]; Yes → α·op(B)·dCᵀ [k, m].
    let mut da = vec![0.0; m * k];
    let spec_da = match ta {
        Transpose::No => GemmSpec::new(Transpose::No, flip(tb), m, k, n),
        Transpose::Yes => GemmSpec::new(tb, Transpose::Yes, k, m, n),
    };
    match ta {
        Transpose::No => r::gemm(&spec_da.alpha(alpha), &dc, &b, &mut da).unwrap(),
        Transpose::Yes => r::gemm(&spec_da.alpha(alpha), &b, &dc, &mut da).unwrap(),
    }
    // d(stored B): No → α·op(A)ᵀ·dC [k, n]; Yes → α·dCᵀ·op(A) [n, k].
    let mut db = vec![0.0; k * n];
    match tb {
        Transpose::No => {
            let s = GemmSpec::new(flip(ta), Transpose::No, k, n, m).alpha(alpha);
            r::gemm(&s, &a, &dc, &mut db).unwrap()
        }
        Transpose::Yes => {
            let s = GemmSpec::new(Transpose::Yes, ta, n, k, m).alpha(alpha);
            r::gemm(&s, &dc, &a, &mut db).unwrap()
        }
    }
    assert_grad("gemm dA", &da, &a, |a| loss(a, &b, &c));
    assert_grad("gemm dB", &db, &b, |b| loss(&a, b, &c));
    let dc_in: Vec<f64> = dc.iter().map(|v| beta as f64 * v).collect();
    assert_grad("gemm dC_in", &dc_in, &c, |c| loss(&a, &b, c));
}

#[test]
fn gemm_gradients_all_transposes() {
    for (i, ta) in [Transpose::No, Transpose::Yes].into_iter().enumerate() {
        for (j, tb) in [Transpose::No, Transpose::Yes].into_iter().enumerate() {
            check_gemm_grad(10 * i as u64 + j as u64, ta, tb, 3, 5, 4);
            check_gemm_grad(100 + i as u64, ta, tb, 1, 17, 3);
        }
    }
}

#[test]
fn bias_act_gradients() {
    let shape = Shape::new(3, 5);
    for (s, act) in ACTIVATIONS.into_iter().enumerate() {
        let mut g = rng(s as u64);
        // Pre-activations stay ≥ 0.2 away from 0 after the bias (ReLU's kink).
        let x = away_from_zero(&mut g, shape.len(), 0.3);
        let bias: Vec<f64> = uniform(&mut g, shape.cols, -0.1, 0.1);
        let dy: Vec<f64> = uniform(&mut g, shape.len(), -1.0, 1.0);
        let loss = |x: &[f64], bias: &[f64]| {
            let (mut z, mut y) = (x.to_vec(), vec![0.0; x.len()]);
            r::bias_act_forward(act, shape, Some(bias), &mut z, &mut y).unwrap();
            dot(&y, &dy)
        };
        let (mut z, mut y) = (x.clone(), vec![0.0; x.len()]);
        r::bias_act_forward(act, shape, Some(&bias), &mut z, &mut y).unwrap();
        let mut dz = vec![0.0; x.len()];
        let mut dbias = vec![0.0; shape.cols];
        r::bias_act_backward(act, shape, &z, &dy, &mut dz, Some(&mut dbias)).unwrap();
        assert_grad(&format!("{act:?} dz"), &dz, &x, |x| loss(x, &bias));
        assert_grad(&format!("{act:?} dbias"), &dbias, &bias, |b| loss(&x, b));
    }
}

#[test]
fn mul_gradients() {
    let mut g = rng(1);
    let n = 7;
    let a: Vec<f64> = uniform(&mut g, n, -2.0, 2.0);
    let b: Vec<f64> = uniform(&mut g, n, -2.0, 2.0);
    let dout: Vec<f64> = uniform(&mut g, n, -1.0, 1.0);
    let loss = |a: &[f64], b: &[f64]| {
        let mut out = vec![0.0; n];
        r::mul(n, a, b, &mut out).unwrap();
        dot(&out, &dout)
    };
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    r::mul_backward(n, &a, &b, &dout, &mut da, &mut db).unwrap();
    assert_grad("mul da", &da, &a, |a| loss(a, &b));
    assert_grad("mul db", &db, &b, |b| loss(&a, b));
}

#[test]
fn copy_cols_gradient_is_the_reverse_copy() {
    let mut g = rng(2);
    let fwd = ColCopy { rows: 4, cols: 3, src_ld: 5, src_col: 1, dst_ld: 7, dst_col: 2, accumulate: false };
    let src: Vec<f64> = uniform(&mut g, 4 * 5, -1.0, 1.0);
    let ddst: Vec<f64> = uniform(&mut g, 4 * 7, -1.0, 1.0);
    let loss = |src: &[f64]| {
        let mut dst = vec![0.0; 4 * 7];
        r::copy_cols(&fwd, src, &mut dst).unwrap();
        dot(&dst, &ddst)
    };
    let back = ColCopy { src_ld: 7, src_col: 2, dst_ld: 5, dst_col: 1, accumulate: true, ..fwd };
    let mut dsrc = vec![0.0; 4 * 5];
    r::copy_cols(&back, &ddst, &mut dsrc).unwrap();
    assert_grad("copy_cols dsrc", &dsrc, &src, loss);
}

#[test]
fn softmax_gradient() {
    let mut g = rng(3);
    let shape = Shape::new(4, 6);
    let x: Vec<f64> = uniform(&mut g, shape.len(), -3.0, 3.0);
    let dy: Vec<f64> = uniform(&mut g, shape.len(), -1.0, 1.0);
    let loss = |x: &[f64]| {
        let mut y = vec![0.0; x.len()];
        r::softmax_rows(shape, x, &mut y).unwrap();
        dot(&y, &dy)
    };
    let mut y = vec![0.0; x.len()];
    r::softmax_rows(shape, &x, &mut y).unwrap();
    let mut dx = vec![0.0; x.len()];
    r::softmax_rows_backward(shape, &y, &dy, &mut dx).unwrap();
    assert_grad("softmax dx", &dx, &x, loss);
}

#[test]
fn normalize_rows_gradient() {
    let mut g = rng(12);
    let shape = Shape::new(4, 6);
    let mut x: Vec<f64> = uniform(&mut g, shape.len(), -3.0, 3.0);
    // A row of small values, where `eps` is a visible part of the norm.
    x[18..].iter_mut().for_each(|v| *v *= 0.05);
    let dy: Vec<f64> = uniform(&mut g, shape.len(), -1.0, 1.0);
    let eps = 1e-2;
    let loss = |x: &[f64]| {
        let (mut y, mut s) = (vec![0.0; x.len()], vec![0.0; shape.rows]);
        r::normalize_rows(shape, eps, x, &mut y, &mut s).unwrap();
        dot(&y, &dy)
    };
    let (mut y, mut s) = (vec![0.0; x.len()], vec![0.0; shape.rows]);
    r::normalize_rows(shape, eps, &x, &mut y, &mut s).unwrap();
    let mut dx = vec![0.0; x.len()];
    r::normalize_rows_backward(shape, &y, &s, &dy, &mut dx).unwrap();
    assert_grad("normalize_rows dx", &dx, &x, loss);
}

#[test]
fn layer_norm_gradients() {
    let mut g = rng(4);
    let spec = LayerNormSpec { rows: 3, cols: 7, eps: 1e-3 };
    let n = spec.rows * spec.cols;
    let x: Vec<f64> = uniform(&mut g, n, -2.0, 3.0);
    let gamma: Vec<f64> = uniform(&mut g, spec.cols, 0.5, 1.5);
    let beta: Vec<f64> = uniform(&mut g, spec.cols, -1.0, 1.0);
    let dy: Vec<f64> = uniform(&mut g, n, -1.0, 1.0);
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
        let (mut y, mut m, mut s) = (vec![0.0; n], vec![0.0; spec.rows], vec![0.0; spec.rows]);
        r::layer_norm_forward(&spec, x, gamma, beta, &mut y, &mut m, &mut s).unwrap();
        dot(&y, &dy)
    };
    let (mut y, mut m, mut s) = (vec![0.0; n], vec![0.0; spec.rows], vec![0.0; spec.rows]);
    r::layer_norm_forward(&spec, &x, &gamma, &beta, &mut y, &mut m, &mut s).unwrap();
    let mut dx = vec![0.0; n];
    let (mut dgamma, mut dbeta) = (vec![0.0; spec.cols], vec![0.0; spec.cols]);
    r::layer_norm_backward(&spec, &x, &gamma, &m, &s, &dy, &mut dx, &mut dgamma, &mut dbeta).unwrap();
    assert_grad("layer_norm dx", &dx, &x, |x| loss(x, &gamma, &beta));
    assert_grad("layer_norm dgamma", &dgamma, &gamma, |gm| loss(&x, gm, &beta));
    assert_grad("layer_norm dbeta", &dbeta, &beta, |b| loss(&x, &gamma, b));
}

/// Scatters a compact gradient back into a dense `[table_rows, dim]` one.
fn densify(ids: &[u32], rows: &[f64], table_rows: usize, dim: usize) -> Vec<f64> {
    let mut dense = vec![0.0; table_rows * dim];
    for (u, &id) in ids.iter().enumerate() {
        dense[id as usize * dim..][..dim].copy_from_slice(&rows[u * dim..][..dim]);
    }
    dense
}

#[test]
fn embedding_gradients_single_and_pooled() {
    let mut g = rng(5);
    let spec = GatherSpec { batch: 6, dim: 3, table_rows: 5, out_cols: 8, col_offset: 2 };
    let table: Vec<f64> = uniform(&mut g, spec.table_rows * spec.dim, -1.0, 1.0);
    let dout: Vec<f64> = uniform(&mut g, spec.batch * spec.out_cols, -1.0, 1.0);
    let single = [4u32, 0, 4, 2, 4, 0]; // repeated ids must sum
    let loss = |t: &[f64]| {
        let mut out = vec![0.0; spec.batch * spec.out_cols];
        r::gather_rows(&spec, &single, t, &mut out).unwrap();
        dot(&out, &dout)
    };
    let (ids, rows) = r::scatter_rows_grad(&spec, &single, &dout).unwrap();
    assert_eq!(ids, [0, 2, 4]);
    let dense = densify(&ids, &rows, spec.table_rows, spec.dim);
    assert_grad("gather_rows dtable", &dense, &table, loss);

    // Bags: [1, 1, 3], [], [0], [3, 4, 1, 1], [2], [] — duplicates within and across.
    let offsets = [0u32, 3, 3, 4, 8, 9, 9];
    let bag_ids = [1u32, 1, 3, 0, 3, 4, 1, 1, 2];
    for pooling in [Pooling::Sum, Pooling::Mean] {
        let loss = |t: &[f64]| {
            let mut out = vec![0.0; spec.batch * spec.out_cols];
            r::gather_pooled(&spec, pooling, &offsets, &bag_ids, t, &mut out).unwrap();
            dot(&out, &dout)
        };
        let (ids, rows) = r::scatter_pooled_grad(&spec, pooling, &offsets, &bag_ids, &dout).unwrap();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        let dense = densify(&ids, &rows, spec.table_rows, spec.dim);
        assert_grad(&format!("gather_pooled {pooling:?} dtable"), &dense, &table, loss);
    }
}

/// Gradients of both losses w.r.t. predictions, with weights, a mask over a NaN label,
/// a grad scale and accumulation into a non-zero buffer.
#[test]
fn loss_gradients() {
    let mut g = rng(6);
    let n = 9;
    let pred: Vec<f64> = uniform(&mut g, n, -3.0, 3.0);
    let mut target: Vec<f64> = uniform(&mut g, n, 0.0, 1.0);
    let weight: Vec<f64> = uniform(&mut g, n, 0.5, 2.0);
    let mut mask = vec![1.0; n];
    mask[4] = 0.0;
    target[4] = f64::NAN;
    type LossFn = fn(usize, LossInput<'_, [f64]>, &mut [f64], GradWrite) -> Result<f64>;
    let losses: [(&str, LossFn); 2] = [("bce", loss::bce_with_logits), ("mse", loss::mse)];
    for (name, f) in losses {
        let input = |p: &'_ [f64]| -> f64 {
            let inp = LossInput {
                pred: p,
                target: &target[..],
                weight: Some(&weight[..]),
                mask: Some(&mask[..]),
                weight_sum: None,
            };
            f(n, inp, &mut vec![0.0; n], GradWrite::default()).unwrap()
        };
        let start: Vec<f64> = uniform(&mut g, n, -1.0, 1.0);
        let mut grad = start.clone();
        let inp =
            LossInput { pred: &pred[..], target: &target, weight: Some(&weight), mask: Some(&mask), weight_sum: None };
        let value = f(n, inp, &mut grad, GradWrite { scale: 2.5, accumulate: true }).unwrap();
        assert!(value.is_finite(), "{name}: masked NaN label leaked into the loss");
        assert_eq!(grad[4], start[4], "{name}: masked example got a gradient");
        let analytic: Vec<f64> = grad.iter().zip(&start).map(|(g, s)| (g - s) / 2.5).collect();
        assert_grad(&format!("{name} dpred"), &analytic, &pred, input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// GEMM gradients on random small shapes, including 1 and 17.
    #[test]
    fn gemm_gradients_random_shapes(seed: u64, ta: bool, tb: bool, m in 1usize..6, n in prop_oneof![Just(1usize), Just(17), 1usize..6], k in 1usize..6) {
        let t = |b: bool| if b { Transpose::Yes } else { Transpose::No };
        check_gemm_grad(seed, t(ta), t(tb), m, n, k);
    }
}
