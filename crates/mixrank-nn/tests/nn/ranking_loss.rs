//! The ranking losses of distillation (`Backend::pairwise_ranknet`,
//! `Backend::listwise_softmax`) on CpuOps and RefOps (f32) against the propagated
//! rounding bound of [`BoundOps`]: the student's logits come out of a GEMM (so the bound
//! carries their error into the loss), the gradient is added into a non-zero buffer, and
//! each backend's gradient lies within the bound of the exact values.

use crate::common::*;
use mixrank_engine::{Backend, CpuOps, GemmSpec, GradWrite, GroupSpec, LossInput, PairSpec, RefOps};
use mixrank_nn::testing::{BoundOps, Bounded};
use rand::Rng;

const ROWS: usize = 96;
const K: usize = 8;

struct Inputs {
    x: Vec<f32>,
    w: Vec<f32>,
    teacher: Vec<f32>,
    weights: Vec<f32>,
    mask: Vec<f32>,
    start: Vec<f32>,
    pairs: Vec<u32>,
    offsets: Vec<u32>,
    members: Vec<u32>,
}

fn inputs() -> Inputs {
    let mut g = rng(11);
    let x = uniform32(&mut g, ROWS * K, -1.0, 1.0);
    let w = uniform32(&mut g, K, -1.5, 1.5);
    let mut teacher = uniform32(&mut g, ROWS, -3.0, 3.0);
    let weights = uniform32(&mut g, ROWS, 0.5, 2.0);
    let mut mask = vec![1.0f32; ROWS];
    for i in (3..ROWS).step_by(7) {
        mask[i] = 0.0;
        teacher[i] = f32::NAN;
    }
    let start = uniform32(&mut g, ROWS, -0.1, 0.1);
    let mut pairs = Vec::new();
    for i in 0..ROWS as u32 {
        for _ in 0..4 {
            let j = g.random_range(0..ROWS as u32);
            if j != i {
                pairs.extend([i, j]);
            }
        }
    }
    // Requests of 1..=12 consecutive rows.
    let (mut offsets, mut members) = (vec![0u32], Vec::new());
    while members.len() < ROWS {
        let len = g.random_range(1..=12usize).min(ROWS - members.len());
        members.extend((members.len()..members.len() + len).map(|i| i as u32));
        offsets.push(members.len() as u32);
    }
    Inputs { x, w, teacher, weights, mask, start, pairs, offsets, members }
}

/// Student logits `x·w` (`[ROWS, 1]`), then each loss added into `start` (scale 0.8,
/// temperature 2): the two gradients.
fn run<B: Backend<Ids = Vec<u32>>>(ops: &B, i: &Inputs) -> [B::Buf; 2] {
    let up = |v: &[f32]| ops.upload(v).unwrap();
    let (x, w, teacher, weights, mask) = (up(&i.x), up(&i.w), up(&i.teacher), up(&i.weights), up(&i.mask));
    let mut student = ops.alloc(ROWS).unwrap();
    ops.gemm(&GemmSpec::nn(ROWS, 1, K), &x, &w, &mut student).unwrap();
    let input =
        || LossInput { pred: &student, target: &teacher, weight: Some(&weights), mask: Some(&mask), weight_sum: None };
    let write = GradWrite { scale: 0.8, accumulate: true };
    let (mut gp, mut gl) = (up(&i.start), up(&i.start));
    let spec = PairSpec { rows: ROWS, pairs: i.pairs.len() / 2, temperature: 2.0 };
    let l = ops.pairwise_ranknet(&spec, &i.pairs, input(), &mut gp, write).unwrap();
    assert!(l.is_finite() && l > 0.0, "pairwise loss {l}");
    let spec = GroupSpec { rows: ROWS, groups: i.offsets.len() - 1, temperature: 2.0 };
    let l = ops.listwise_softmax(&spec, &i.offsets, &i.members, input(), &mut gl, write).unwrap();
    assert!(l.is_finite() && l > 0.0, "listwise loss {l}");
    [gp, gl]
}

#[test]
fn ranking_losses_within_rounding_bound() {
    let i = inputs();
    let bound: [Vec<Bounded>; 2] = run(&BoundOps, &i);
    // The bound is not vacuous: the distillation gradient is resolved to well under a
    // percent of its size.
    for b in &bound {
        let added = b.iter().zip(&i.start).map(|(b, s)| (b.v - *s as f64).abs()).fold(0.0, f64::max);
        let worst = b.iter().map(|b| b.e).fold(0.0, f64::max);
        assert!(added > 0.0 && worst < 1e-4 * added, "bound {worst:e} vs gradient {added:e}");
    }
    let cpu = CpuOps::new();
    for (name, got) in [("cpu", run(&cpu, &i)), ("ref", run(&RefOps, &i))] {
        assert_within_bound(&format!("{name} pairwise grad"), &got[0], &bound[0]);
        assert_within_bound(&format!("{name} listwise grad"), &got[1], &bound[1]);
    }
}
