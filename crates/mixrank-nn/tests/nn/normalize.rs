//! Row normalisation (`Backend::normalize_rows`, the cosine score's op) on CpuOps and
//! RefOps (f32) against the propagated rounding bound of [`BoundOps`]: each backend's
//! `y`, `rnorm` and `dx` lie within the bound of the exact values, the backward fed each
//! backend's own forward outputs (so the bound carries the forward's error through).

use crate::common::*;
use mixrank_engine::{Backend, CpuOps, RefOps, Shape};
use mixrank_nn::testing::{BoundOps, Bounded};

fn run<B: Backend>(ops: &B, shape: Shape, x: &B::Buf, dy: &B::Buf) -> (B::Buf, B::Buf, B::Buf) {
    let (mut y, mut s, mut dx) =
        (ops.alloc(shape.len()).unwrap(), ops.alloc(shape.rows).unwrap(), ops.alloc(shape.len()).unwrap());
    ops.normalize_rows(shape, 1e-6, x, &mut y, &mut s).unwrap();
    ops.normalize_rows_backward(shape, &y, &s, dy, &mut dx).unwrap();
    (y, s, dx)
}

#[test]
fn normalize_rows_within_rounding_bound() {
    let shape = Shape::new(9, 33);
    let mut x = uniform32(&mut rng(1), shape.len(), -2.0, 2.0);
    // One row of small values, where eps is a visible part of the norm.
    x[..33].iter_mut().for_each(|v| *v *= 1e-3);
    let dy = uniform32(&mut rng(2), shape.len(), -1.0, 1.0);
    let (yb, sb, dxb): (Vec<Bounded>, _, _) = run(&BoundOps, shape, &BoundOps::exact(&x), &BoundOps::exact(&dy));
    let cpu = run(&CpuOps::new(), shape, &x, &dy);
    let reference = run(&RefOps, shape, &x, &dy);
    for (name, (y, s, dx)) in [("cpu", cpu), ("ref", reference)] {
        assert_within_bound(&format!("{name} y"), &y, &yb);
        assert_within_bound(&format!("{name} rnorm"), &s, &sb);
        assert_within_bound(&format!("{name} dx"), &dx, &dxb);
    }
}
