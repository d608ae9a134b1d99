//! Embedding lookups (single-valued and pooled multi-valued fields) and their compact
//! table gradients.

use super::par;
use crate::check;
use crate::error::Result;
use crate::host;
use crate::ops::{GatherSpec, Pooling, SparseGrad};
use rayon::prelude::*;

use super::CpuOps;

/// `out[b, col_offset ..][..dim] = table[ids[b]]`.
pub fn gather_rows(spec: &GatherSpec, ids: &[u32], table: &[f32], out: &mut [f32]) -> Result<()> {
    const OP: &str = "gather_rows";
    check::gather(OP, spec, table.len(), out.len())?;
    check::vector(OP, "ids", ids.len(), spec.batch)?;
    check::ids_in_range(OP, &ids[..spec.batch], spec.table_rows)?;
    let (dim, cols) = (spec.dim, spec.out_cols);
    par::rows_mut(out, spec.batch, cols, spec.batch * dim, |b0, chunk| match dim {
        // The common widths as fixed-size copies (inline moves, not a `memmove` call
        // per row: a batch of 2,048 over 26 tables is 53,000 rows).
        8 => gather_fixed::<8>(spec, &ids[b0..], table, chunk),
        16 => gather_fixed::<16>(spec, &ids[b0..], table, chunk),
        32 => gather_fixed::<32>(spec, &ids[b0..], table, chunk),
        64 => gather_fixed::<64>(spec, &ids[b0..], table, chunk),
        _ => {
            for (i, row) in chunk.chunks_exact_mut(cols).enumerate() {
                let id = ids[b0 + i] as usize;
                row[spec.col_offset..spec.col_offset + dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
            }
        }
    });
    Ok(())
}

/// [`gather_rows`]' row copies for `D`-wide rows (`D == spec.dim`).
fn gather_fixed<const D: usize>(spec: &GatherSpec, ids: &[u32], table: &[f32], chunk: &mut [f32]) {
    for (row, &id) in chunk.chunks_exact_mut(spec.out_cols).zip(ids) {
        let src: &[f32; D] = table[id as usize * D..][..D].try_into().expect("D-wide row");
        let dst: &mut [f32; D] = (&mut row[spec.col_offset..][..D]).try_into().expect("D-wide row");
        *dst = *src;
    }
}

fn bag_scale(pooling: Pooling, len: usize) -> f32 {
    match pooling {
        Pooling::Sum => 1.0,
        Pooling::Mean => 1.0 / len.max(1) as f32,
    }
}

/// `out[b, col_offset ..][..dim] = pool(table[ids[offsets[b] .. offsets[b+1]]])`.
pub fn gather_pooled(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: &[u32],
    ids: &[u32],
    table: &[f32],
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "gather_pooled";
    check::gather(OP, spec, table.len(), out.len())?;
    let nnz = check::offsets(OP, offsets, spec.batch, ids.len())?;
    check::ids_in_range(OP, &ids[..nnz], spec.table_rows)?;
    let (dim, cols) = (spec.dim, spec.out_cols);
    par::rows_mut(out, spec.batch, cols, nnz.max(spec.batch) * dim, |b0, chunk| {
        for (i, row) in chunk.chunks_exact_mut(cols).enumerate() {
            let b = b0 + i;
            let bag = &ids[offsets[b] as usize..offsets[b + 1] as usize];
            let dst = &mut row[spec.col_offset..spec.col_offset + dim];
            dst.fill(0.0);
            for &id in bag {
                let src = &table[id as usize * dim..][..dim];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
            let scale = bag_scale(pooling, bag.len());
            if scale != 1.0 {
                dst.iter_mut().for_each(|d| *d *= scale);
            }
        }
    });
    Ok(())
}

/// Which example (bag) position `p` of the ids belongs to.
fn bag_of(offsets: &[u32], p: usize) -> usize {
    // Last b with offsets[b] <= p; empty bags before it share its offset and are skipped.
    offsets.partition_point(|&o| o as usize <= p) - 1
}

thread_local! {
    /// `(id << 32) | position` sort keys of [`scatter`], reused across calls.
    static SORT_KEYS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Compact scatter-add: sort positions by (id, position), then each distinct id's row is
/// the in-order sum of its occurrences, computed independently (in parallel) per id.
/// `offsets` is `None` for single-valued fields (position = example).
///
/// The sort is of plain `u64` keys `(id << 32) | position` (distinct, so the unstable
/// sort is deterministic), and the pass that finds the distinct ids records where each
/// one's run starts (in `grad.scratch`), so a row's sum reads its run directly.
fn scatter(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: Option<&[u32]>,
    ids: &[u32],
    nnz: usize,
    dout: &[f32],
    grad: &mut SparseGrad<CpuOps>,
) {
    SORT_KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        keys.clear();
        keys.extend(ids[..nnz].iter().enumerate().map(|(p, &id)| (u64::from(id) << 32) | p as u64));
        keys.sort_unstable();
        scatter_sorted(spec, pooling, offsets, &keys, dout, grad);
    });
}

/// [`scatter`] after the sort: `keys` are the `nnz` sorted `(id << 32) | position` keys.
fn scatter_sorted(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: Option<&[u32]>,
    keys: &[u64],
    dout: &[f32],
    grad: &mut SparseGrad<CpuOps>,
) {
    let (dim, nnz) = (spec.dim, keys.len());
    host::reserve_sparse(grad, dim, nnz);
    let id_of = |k: u64| (k >> 32) as u32;
    let mut n_unique = 0;
    for (i, &k) in keys.iter().enumerate() {
        if i == 0 || id_of(k) != id_of(keys[i - 1]) {
            grad.ids[n_unique] = id_of(k);
            grad.scratch[n_unique] = i as u32;
            n_unique += 1;
        }
    }
    grad.len = n_unique;

    let starts = &grad.scratch[..n_unique];
    let rows = &mut grad.rows[..n_unique * dim];
    let row_grad = |u: usize, dst: &mut [f32]| {
        let end = starts.get(u + 1).map_or(nnz, |&e| e as usize);
        dst.fill(0.0);
        for &k in &keys[starts[u] as usize..end] {
            let p = k as u32 as usize;
            let (b, scale) = match offsets {
                None => (p, 1.0),
                Some(off) => {
                    let b = bag_of(&off[..=spec.batch], p);
                    (b, bag_scale(pooling, (off[b + 1] - off[b]) as usize))
                }
            };
            let src = &dout[b * spec.out_cols + spec.col_offset..][..dim];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += scale * s);
        }
    };
    if !par::worth_splitting(nnz * dim) || dim == 0 {
        rows.chunks_exact_mut(dim.max(1)).enumerate().for_each(|(u, dst)| row_grad(u, dst));
    } else {
        rows.par_chunks_exact_mut(dim).enumerate().for_each(|(u, dst)| row_grad(u, dst));
    }
}

pub fn scatter_rows_grad(spec: &GatherSpec, ids: &[u32], dout: &[f32], grad: &mut SparseGrad<CpuOps>) -> Result<()> {
    const OP: &str = "scatter_rows_grad";
    check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
    check::vector(OP, "ids", ids.len(), spec.batch)?;
    check::ids_in_range(OP, &ids[..spec.batch], spec.table_rows)?;
    scatter(spec, Pooling::Sum, None, ids, spec.batch, dout, grad);
    Ok(())
}

pub fn scatter_pooled_grad(
    spec: &GatherSpec,
    pooling: Pooling,
    offsets: &[u32],
    ids: &[u32],
    dout: &[f32],
    grad: &mut SparseGrad<CpuOps>,
) -> Result<()> {
    const OP: &str = "scatter_pooled_grad";
    check::gather(OP, spec, spec.table_rows * spec.dim, dout.len())?;
    let nnz = check::offsets(OP, offsets, spec.batch, ids.len())?;
    check::ids_in_range(OP, &ids[..nnz], spec.table_rows)?;
    // Only the batch's offsets: a reused, longer buffer holds stale ones after them.
    scatter(spec, pooling, Some(&offsets[..=spec.batch]), ids, nnz, dout, grad);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_of_skips_empty_bags() {
        let offsets = [0u32, 2, 2, 2, 5];
        let bags: Vec<usize> = (0..5).map(|p| bag_of(&offsets, p)).collect();
        assert_eq!(bags, [0, 0, 3, 3, 3]);
    }

    /// Prefix semantics: offsets and ids buffers longer than the batch needs (reused
    /// from a larger batch, stale values after the prefix) give the exact-length result.
    #[test]
    fn pooled_scatter_reads_only_the_batchs_offsets() {
        use crate::Backend;
        let ops = CpuOps::new();
        let spec = GatherSpec { batch: 2, dim: 2, table_rows: 4, out_cols: 2, col_offset: 0 };
        let dout = vec![1.0, 2.0, 3.0, 4.0];
        let run = |offsets: &[u32], ids: &[u32]| {
            let mut g = SparseGrad::new(&ops, 2, 8).unwrap();
            scatter_pooled_grad(&spec, Pooling::Sum, offsets, ids, &dout, &mut g).unwrap();
            (g.ids[..g.len].to_vec(), g.rows[..g.len * 2].to_vec())
        };
        let exact = run(&[0, 2, 3], &[1, 3, 1]);
        let stale = run(&[0, 2, 3, 1, 0, 9], &[1, 3, 1, 0, 2, 2]);
        assert_eq!(exact, stale);
        assert_eq!(exact.0, [1, 3]);
        assert_eq!(ops.ids_len(&exact.0), 2);
    }
}
