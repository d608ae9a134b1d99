//! The dense optimizer ops on the CPU: the same per-element code as the reference
//! ([`crate::optim`]), split over fixed chunks so results do not depend on threads.

use rayon::prelude::*;

use crate::error::Result;
use crate::optim::{self, AdamSpec, NORM_CHUNK};

/// `acc += Σ x²`: per-chunk f64 partials (in parallel), added in chunk order.
pub fn sq_norm_acc(n: usize, x: &[f32], acc: &mut [f32]) -> Result<()> {
    crate::check::vector("sq_norm_acc", "x", x.len(), n)?;
    let mut sq = optim::load_acc(acc)?;
    let partial = |c: &[f32]| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    if super::worth_splitting(n) {
        // Partials of up to BLOCK chunks at a time in a stack array (no allocation),
        // added one by one in chunk order, as the sequential branch does.
        const BLOCK: usize = 64;
        let mut partials = [0f64; BLOCK];
        for block in x[..n].chunks(BLOCK * NORM_CHUNK) {
            let k = block.len().div_ceil(NORM_CHUNK);
            block.par_chunks(NORM_CHUNK).zip(partials[..k].par_iter_mut()).for_each(|(c, p)| *p = partial(c));
            for p in &partials[..k] {
                sq += p;
            }
        }
    } else {
        for c in x[..n].chunks(NORM_CHUNK) {
            sq += partial(c);
        }
    }
    <f32 as crate::Float>::store_acc(sq, acc);
    Ok(())
}

/// The Adam update, in parallel over fixed chunks of elements.
pub fn adam_update(
    n: usize,
    spec: &AdamSpec,
    acc: &[f32],
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) -> Result<()> {
    optim::check_adam(n, w, g, m, v)?;
    let cs = optim::clip_scale(optim::load_acc(acc)?, spec.clip_norm) as f32;
    let (w, g, m, v) = (&mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
    if super::worth_splitting(n) {
        w.par_chunks_mut(NORM_CHUNK)
            .zip(g.par_chunks(NORM_CHUNK))
            .zip(m.par_chunks_mut(NORM_CHUNK))
            .zip(v.par_chunks_mut(NORM_CHUNK))
            .for_each(|(((w, g), m), v)| optim::adam_chunk(spec, cs, w, g, m, v));
    } else {
        optim::adam_chunk(spec, cs, w, g, m, v);
    }
    Ok(())
}
