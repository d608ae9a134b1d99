//! Scoring many cached items against one user: the gathered dot products of the
//! two-tower model's score, and the top-k selection of a request's answers.
//!
//! Task `t`'s logit of item `i` is `⟨u_t, v_t[row(i)]⟩ + b_t` (under a cosine score
//! `⟨û_t, v̂_t[row(i)]⟩ · (1/τ) + b_t`: the table then holds the unit-length item
//! embeddings and `û_t` is the normalised user embedding, so only the product by `1/τ`
//! is added, rounded to f32 before the bias as the model's `scale` op does): one matrix–vector
//! product per task over the table's rows the request names, read in place (no copy
//! of the gathered rows). Each dot product is summed in index order with a separate
//! multiply and add, exactly as the engine's `block_dot` (`mixrank_engine::block::dot_row`)
//! sums it in the model's own forward, so a cached score is `mixrank predict`'s bit for
//! bit when `u_t` and `v_t` are (see docs/serving.md). Speed comes from running eight
//! items' sums side by side (independent accumulators, the same order within each) and
//! from splitting the items over the cores.

use crate::item_table::ItemTable;
use rayon::prelude::*;

/// Items per parallel chunk: below this, one thread.
const PAR_CHUNK: usize = 4096;
/// Items whose sums run side by side.
const LANES: usize = 8;

/// How a dot product becomes a logit: times `scale` (`1/τ` of a cosine score), then plus
/// `bias`, each rounded to f32 as the model's forward rounds them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Finish {
    pub scale: Option<f32>,
    pub bias: Option<f32>,
}

/// `out[i] = Σ_k v[rows[i]][t][k] · u[k]` (times the scale, plus the bias) for task `t`
/// of `table`, each sum in `k` order (as `block_dot`).
pub fn gathered_dot(table: &ItemTable, t: usize, rows: &[u32], u: &[f32], fin: Finish, out: &mut [f32]) {
    assert_eq!(rows.len(), out.len(), "one output per row");
    let run = |rows: &[u32], out: &mut [f32]| dot_chunk(table, t, rows, u, fin, out);
    if rows.len() <= PAR_CHUNK {
        run(rows, out);
    } else {
        rows.par_chunks(PAR_CHUNK).zip(out.par_chunks_mut(PAR_CHUNK)).for_each(|(r, o)| run(r, o));
    }
}

fn dot_chunk(table: &ItemTable, t: usize, rows: &[u32], u: &[f32], fin: Finish, out: &mut [f32]) {
    let d = u.len();
    let mut r = rows.chunks_exact(LANES);
    let mut o = out.chunks_exact_mut(LANES);
    for (rs, os) in (&mut r).zip(&mut o) {
        let v: [&[f32]; LANES] = std::array::from_fn(|l| &table.embedding(rs[l], t)[..d]);
        let mut acc = [0f32; LANES];
        for (k, &uk) in u.iter().enumerate() {
            for l in 0..LANES {
                acc[l] += v[l][k] * uk;
            }
        }
        for l in 0..LANES {
            os[l] = finish(acc[l], fin);
        }
    }
    for (&row, o) in r.remainder().iter().zip(o.into_remainder()) {
        let v = table.embedding(row, t);
        let mut acc = 0f32;
        for (&a, &b) in v.iter().zip(u) {
            acc += a * b;
        }
        *o = finish(acc, fin);
    }
}

#[inline]
fn finish(acc: f32, fin: Finish) -> f32 {
    let z = match fin.scale {
        Some(s) => acc * s,
        None => acc,
    };
    match fin.bias {
        Some(b) => z + b,
        None => z,
    }
}

/// The indices of the best `k` of `values` (highest first; ties keep the lower index
/// first), in O(n + k log k).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..values.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_unstable_by(cmp);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        let v = [0.1, 0.9, 0.5, 0.9, -1.0, 0.7];
        assert_eq!(top_k(&v, 3), vec![1, 3, 5]);
        assert_eq!(top_k(&v, 10), vec![1, 3, 5, 2, 0, 4]);
        assert_eq!(top_k(&v, 0), Vec::<usize>::new());
    }
}
