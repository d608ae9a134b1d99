//! `Backend::softmax_xent_diag` (the two-tower in-batch softmax loss): a hand-computed
//! case, the CPU backend against the reference bit for bit, `Counting` against the CPU
//! backend, and the f64 gradient against central finite differences.

use crate::common::*;
use mixrank_engine::counting::Counting;
use mixrank_engine::{Backend, CpuOps, GradWrite, RefOps, RefOpsF64};

fn write(scale: f32, accumulate: bool) -> GradWrite {
    GradWrite { scale, accumulate }
}

#[test]
fn hand_computed_two_by_two() {
    // Row 0 positive (w = 2), row 1 left out (w = 0).
    let s = vec![1.0f64, 0.0, 3.0, -1.0];
    let w = vec![2.0f64, 0.0];
    let mut g = vec![9.0f64; 4];
    let l = RefOpsF64::new().softmax_xent_diag(2, &s, &w, &mut g, write(0.5, false)).unwrap();
    let p0 = 1f64.exp() / (1f64.exp() + 1.0);
    assert!((l as f64 - (-(p0.ln()))).abs() < 1e-6, "{l}");
    // wᵢ/W = 1; scale 0.5: g[0,0] = 0.5(p0 − 1), g[0,1] = 0.5(1 − p0); row 1 zero.
    let want = [0.5 * (p0 - 1.0), 0.5 * (1.0 - p0), 0.0, 0.0];
    for (a, b) in g.iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{g:?} vs {want:?}");
    }
    // Accumulating adds the same gradient on top; no positive row gives 0 and leaves
    // (or zeroes) the gradient.
    let mut acc = vec![1.0f64; 4];
    RefOpsF64::new().softmax_xent_diag(2, &s, &w, &mut acc, write(0.5, true)).unwrap();
    for (a, b) in acc.iter().zip(want) {
        assert!((a - (1.0 + b)).abs() < 1e-15);
    }
    let mut z = vec![3.0f64; 4];
    assert_eq!(RefOpsF64::new().softmax_xent_diag(2, &s, &vec![0.0, 0.0], &mut z, write(1.0, false)).unwrap(), 0.0);
    assert_eq!(z, vec![0.0; 4]);
}

#[test]
fn cpu_and_counting_match_the_reference_bit_for_bit() {
    let mut g = rng(5);
    for n in [1, 3, 17, 64] {
        let s: Vec<f32> = uniform(&mut g, n * n, -30.0, 30.0);
        let w: Vec<f32> = (0..n).map(|i| if i % 3 == 1 { 0.0 } else { 0.5 + (i % 4) as f32 }).collect();
        for acc in [false, true] {
            let start: Vec<f32> = uniform(&mut g, n * n, -1.0, 1.0);
            let (mut a, mut b) = (start.clone(), start.clone());
            let la = RefOps.softmax_xent_diag(n, &s, &w, &mut a, write(0.7, acc)).unwrap();
            let lb = CpuOps::new().softmax_xent_diag(n, &s, &w, &mut b, write(0.7, acc)).unwrap();
            assert_eq!(la.to_bits(), lb.to_bits(), "n={n}");
            assert_same("grad", &a, &b);
            let c = Counting::new(CpuOps::new());
            let (cs, cw, mut cg) = (c.upload(&s).unwrap(), c.upload(&w).unwrap(), c.upload(&start).unwrap());
            let before = c.traffic();
            let lc = c.softmax_xent_diag(n, &cs, &cw, &mut cg, write(0.7, acc)).unwrap();
            assert_eq!((c.traffic() - before).readbacks, 1, "one scalar comes back");
            assert_eq!(lc.to_bits(), lb.to_bits());
            assert_same("Counting grad", &cg, &b);
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    let mut g = rng(11);
    let n = 6;
    let s: Vec<f64> = uniform(&mut g, n * n, -3.0, 3.0);
    let w: Vec<f64> = vec![1.0, 0.0, 2.5, 0.5, 0.0, 1.5];
    let ops = RefOpsF64::new();
    let scale = 1.3;
    let mut grad = vec![0.0; n * n];
    ops.softmax_xent_diag(n, &s, &w, &mut grad, write(scale, false)).unwrap();
    // The returned loss is an f32; recompute it in f64 for the differences.
    let loss = |s: &[f64]| {
        let (mut l, mut wsum) = (0.0, 0.0);
        for i in 0..n {
            let row = &s[i * n..(i + 1) * n];
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            l += w[i] * (lse - row[i]);
            wsum += w[i];
        }
        scale as f64 * l / wsum
    };
    let h = 1e-6;
    for k in 0..n * n {
        let (mut up, mut down) = (s.clone(), s.clone());
        up[k] += h;
        down[k] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h);
        assert!((grad[k] - fd).abs() < 1e-8, "element {k}: {} vs {fd}", grad[k]);
    }
}
