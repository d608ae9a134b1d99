//! Mixed-precision training's GEMM (`GemmOperands::Bf16`): every operand element rounded
//! to bf16 (ties to even), f32 accumulation. On the CPU backend it is exactly the f32 GEMM
//! of the pre-rounded operands, in every transpose combination and with offsets and
//! leading dimensions; and it differs from the f32 GEMM of the raw operands.

use crate::common::*;
use mixrank_engine::{round_bf16, Backend, CpuOps, GemmOperands, GemmSpec, MatLayout, Transpose};

#[test]
fn bf16_operands_are_the_f32_gemm_of_the_rounded_operands() {
    let f32_ops = CpuOps::new();
    let bf16_ops = CpuOps::new().with_gemm_operands(GemmOperands::Bf16);
    assert_eq!((f32_ops.gemm_operands(), bf16_ops.gemm_operands()), (GemmOperands::F32, GemmOperands::Bf16));
    let mut r = rng(11);
    for (ta, tb) in [
        (Transpose::No, Transpose::No),
        (Transpose::Yes, Transpose::No),
        (Transpose::No, Transpose::Yes),
        (Transpose::Yes, Transpose::Yes),
    ] {
        let (m, n, k) = (37, 29, 41);
        let mut spec = GemmSpec::new(ta, tb, m, n, k);
        // Offsets and padded leading dimensions: only the used extents are read.
        spec.a = MatLayout { offset: 3, ld: spec.a.ld + 2 };
        spec.b = MatLayout { offset: 5, ld: spec.b.ld + 1 };
        spec.beta = 0.5;
        let len = |[rows, _]: [usize; 2], l: MatLayout| l.offset + rows * l.ld;
        let a: Vec<f32> = uniform(&mut r, len(spec.stored_a(), spec.a), -2.0, 2.0);
        let b: Vec<f32> = uniform(&mut r, len(spec.stored_b(), spec.b), -2.0, 2.0);
        let c0: Vec<f32> = uniform(&mut r, m * n, -1.0, 1.0);
        let (ra, rb): (Vec<f32>, Vec<f32>) =
            (a.iter().map(|&x| round_bf16(x)).collect(), b.iter().map(|&x| round_bf16(x)).collect());
        let (mut got, mut want, mut plain) = (c0.clone(), c0.clone(), c0.clone());
        bf16_ops.gemm(&spec, &a, &b, &mut got).unwrap();
        f32_ops.gemm(&spec, &ra, &rb, &mut want).unwrap();
        f32_ops.gemm(&spec, &a, &b, &mut plain).unwrap();
        assert_same(&format!("{ta:?}/{tb:?}"), &got, &want);
        assert!(got != plain, "{ta:?}/{tb:?}: the operands were not rounded");
    }
}

#[test]
fn round_bf16_is_round_to_nearest_even() {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1).
    assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
    // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
    assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
    assert_eq!(round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 1.0 + 2f32.powi(-7));
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_bf16(-3.0), -3.0);
}
