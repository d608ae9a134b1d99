//! The optimizer ops on the CPU: the same per-element code as the reference
//! ([`crate::optim`]), split over fixed chunks (dense) or disjoint row ranges (sparse) so
//! results do not depend on threads.

use rayon::prelude::*;

use crate::error::Result;
use crate::optim::{self, AdamSpec, LazyAdamSpec, RowAdagradSpec, SparseRows, TableShape, NORM_CHUNK};

/// `acc += Σ x²`: per-chunk f64 partials (in parallel), added in chunk order — the
/// sequential [`optim::sq_norm_acc`]'s sum, whatever the thread count.
pub fn sq_norm_acc(n: usize, x: &[f32], acc: &mut [f32]) -> Result<()> {
    if !super::worth_splitting(n) {
        return optim::sq_norm_acc(n, x, acc);
    }
    crate::check::vector("sq_norm_acc", "x", x.len(), n)?;
    let mut sq = optim::load_acc(acc)?;
    let partial = |c: &[f32]| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    // Partials of up to BLOCK chunks at a time in a stack array (no allocation), added
    // one by one in chunk order, as the sequential sum does.
    const BLOCK: usize = 64;
    let mut partials = [0f64; BLOCK];
    for block in x[..n].chunks(BLOCK * NORM_CHUNK) {
        let k = block.len().div_ceil(NORM_CHUNK);
        block.par_chunks(NORM_CHUNK).zip(partials[..k].par_iter_mut()).for_each(|(c, p)| *p = partial(c));
        for p in &partials[..k] {
            sq += p;
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

/// Elements per leaf of the parallel sparse updates (about 15 µs of work). Halved from
/// 8,192 once the pool's workers were kept awake through a step (`KeepAwake`: a join
/// costs a microsecond or two): the small MMoE's tables of ~960 touched rows × 8 then
/// split in two, its sparse phase 1.65 → 0.74 ms (median of 3 pairs), the bench model's
/// unchanged within the noise (docs/BENCHMARKS.md).
const SPARSE_LEAF: usize = 1 << 12;

/// Fewest touched rows worth splitting over threads. A sparse row's update reads and
/// writes rows at random places in tables far larger than the caches (several cache
/// misses per row, ~0.3 µs on the bench model's 26 tables of 6.4 MB), so a few hundred
/// rows already outweigh a rayon join; an element count (the dense ops' threshold)
/// kept every table of 2,028 rows × 16 on one thread.
const SPARSE_MIN_ROWS: usize = 256;

/// Rows ahead of the current one whose cache lines a sparse leaf prefetches.
const PREFETCH_ROWS: usize = 8;

/// Whether a sparse update may be split over rows: the touched rows only (the ids
/// strictly ascending, so the halves of the id list own disjoint row ranges of the
/// table) and enough rows. Otherwise the sequential host loop runs (same per-row code).
fn splittable(which: SparseRows, ids: &[u32]) -> bool {
    which == SparseRows::Touched
        && ids.len() >= SPARSE_MIN_ROWS
        && rayon::current_num_threads() > 1
        && ids.windows(2).all(|w| w[0] < w[1])
}

/// Asks the CPU to start loading `row` of a `[rows, dim]` slice (its first and last
/// cache line: a row need not start on a line). A hint only: no effect on results.
#[inline(always)]
fn prefetch_row<T>(s: &[T], row: usize, dim: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (a, b) = (row * dim, (row + 1) * dim - 1);
        if b < s.len() {
            let p = s.as_ptr();
            // SAFETY: both addresses are inside `s`; a prefetch reads nothing the
            // program can observe (SSE is part of x86-64's baseline).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p.add(a) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(p.add(b) as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, row, dim);
}

/// [`Backend::lazy_adam_update`](crate::Backend::lazy_adam_update): the touched rows
/// split over threads (disjoint row ranges, found by halving the ascending id list), each
/// row by [`optim::lazy_adam_row`] — bit for bit the sequential result.
#[allow(clippy::too_many_arguments)]
pub fn lazy_adam(
    spec: &LazyAdamSpec,
    shape: TableShape,
    len: usize,
    ids: &[u32],
    rows: &[f32],
    table: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    steps: &mut [u32],
) -> Result<()> {
    optim::check_sparse("lazy_adam", shape, len, &ids[..len.min(ids.len())], rows)?;
    let (ids, rows) = (&ids[..len], &rows[..len * shape.dim]);
    if !splittable(spec.rows, ids) {
        return optim::lazy_adam(spec, shape, ids, rows, table, m, v, steps);
    }
    optim::check_lazy_adam_state(shape, table, m, v, steps)?;
    let n = shape.rows * shape.dim;
    lazy_adam_split(
        spec,
        shape.dim,
        0,
        ids,
        rows,
        (&mut table[..n], &mut m[..n], &mut v[..n], &mut steps[..shape.rows]),
    );
    Ok(())
}

/// Rows `base ..` of the table (`part`: table, m, v, row steps from row `base`) for the
/// ascending `ids`, all `>= base`.
fn lazy_adam_split(
    spec: &LazyAdamSpec,
    dim: usize,
    base: usize,
    ids: &[u32],
    rows: &[f32],
    part: (&mut [f32], &mut [f32], &mut [f32], &mut [u32]),
) {
    let (table, m, v, steps) = part;
    if ids.len() < 2 || ids.len() * dim <= SPARSE_LEAF {
        let mut memo = optim::BiasMemo::new();
        for (i, &id) in ids.iter().enumerate() {
            if let Some(&ahead) = ids.get(i + PREFETCH_ROWS) {
                let r = ahead as usize - base;
                prefetch_row(table, r, dim);
                prefetch_row(m, r, dim);
                prefetch_row(v, r, dim);
                prefetch_row(steps, r, 1);
            }
            let r = id as usize - base;
            let e = r * dim..(r + 1) * dim;
            let g = Some(&rows[i * dim..(i + 1) * dim]);
            optim::lazy_adam_row(
                spec,
                g,
                &mut table[e.clone()],
                &mut m[e.clone()],
                &mut v[e],
                &mut steps[r],
                &mut memo,
            );
        }
        return;
    }
    let mid = ids.len() / 2;
    let cut = ids[mid] as usize - base;
    let (t0, t1) = table.split_at_mut(cut * dim);
    let (m0, m1) = m.split_at_mut(cut * dim);
    let (v0, v1) = v.split_at_mut(cut * dim);
    let (s0, s1) = steps.split_at_mut(cut);
    let (ids0, ids1) = ids.split_at(mid);
    let (rows0, rows1) = rows.split_at(mid * dim);
    rayon::join(
        || lazy_adam_split(spec, dim, base, ids0, rows0, (t0, m0, v0, s0)),
        || lazy_adam_split(spec, dim, base + cut, ids1, rows1, (t1, m1, v1, s1)),
    );
}

/// [`Backend::rowwise_adagrad_update`](crate::Backend::rowwise_adagrad_update), split
/// over threads as [`lazy_adam`], each row by [`optim::rowwise_adagrad_row`].
pub fn rowwise_adagrad(
    spec: &RowAdagradSpec,
    shape: TableShape,
    len: usize,
    ids: &[u32],
    rows: &[f32],
    table: &mut [f32],
    acc: &mut [f32],
) -> Result<()> {
    optim::check_sparse("rowwise_adagrad", shape, len, &ids[..len.min(ids.len())], rows)?;
    let (ids, rows) = (&ids[..len], &rows[..len * shape.dim]);
    if !splittable(spec.rows, ids) {
        return optim::rowwise_adagrad(spec, shape, ids, rows, table, acc);
    }
    optim::check_adagrad_state(shape, table, acc)?;
    let n = shape.rows * shape.dim;
    adagrad_split(spec, shape.dim, 0, ids, rows, &mut table[..n], &mut acc[..shape.rows]);
    Ok(())
}

fn adagrad_split(
    spec: &RowAdagradSpec,
    dim: usize,
    base: usize,
    ids: &[u32],
    rows: &[f32],
    table: &mut [f32],
    acc: &mut [f32],
) {
    if ids.len() < 2 || ids.len() * dim <= SPARSE_LEAF {
        for (i, &id) in ids.iter().enumerate() {
            if let Some(&ahead) = ids.get(i + PREFETCH_ROWS) {
                let r = ahead as usize - base;
                prefetch_row(table, r, dim);
                prefetch_row(acc, r, 1);
            }
            let r = id as usize - base;
            optim::rowwise_adagrad_row(
                spec,
                Some(&rows[i * dim..(i + 1) * dim]),
                &mut table[r * dim..(r + 1) * dim],
                &mut acc[r],
            );
        }
        return;
    }
    let mid = ids.len() / 2;
    let cut = ids[mid] as usize - base;
    let (t0, t1) = table.split_at_mut(cut * dim);
    let (a0, a1) = acc.split_at_mut(cut);
    let (ids0, ids1) = ids.split_at(mid);
    let (rows0, rows1) = rows.split_at(mid * dim);
    rayon::join(
        || adagrad_split(spec, dim, base, ids0, rows0, t0, a0),
        || adagrad_split(spec, dim, base + cut, ids1, rows1, t1, a1),
    );
}
