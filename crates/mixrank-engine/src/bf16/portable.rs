//! Portable bf16 kernel: the same packed layout, plain f32 loops the compiler vectorises.

use super::{Block, NR};
use half::bf16;

/// bf16 → f32 is exact: the bf16 bits are the top half of the f32 bits.
#[inline(always)]
fn f(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

pub fn block(b: &Block<'_>, c: &mut [f32]) {
    b.assert_bounds(c.len());
    for r in 0..b.mr {
        let a = &b.a[r * b.lda..][..2 * b.kp];
        let mut acc = [0.0f32; NR];
        for p in 0..b.kp {
            let (a0, a1) = (f(a[2 * p]), f(a[2 * p + 1]));
            let w = &b.panel[p * 2 * NR..][..2 * NR];
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc += a0 * f(w[2 * j]) + a1 * f(w[2 * j + 1]);
            }
        }
        c[r * b.ldc..][..b.n_valid].copy_from_slice(&acc[..b.n_valid]);
    }
}
