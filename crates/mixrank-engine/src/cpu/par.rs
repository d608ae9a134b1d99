//! When and how the CPU backend splits work across rayon threads.
//!
//! Chunks are fixed-size pieces of rows, so every element is computed by the same
//! sequential code whatever the thread count: CPU results do not depend on it.

use rayon::prelude::*;

/// Below this many elements of work an op runs on the calling thread: spawning costs
/// more than it saves (rayon's fork/join is a few microseconds).
pub const PAR_MIN_WORK: usize = 1 << 15;

/// Whether `work` elements are worth splitting across rayon's current pool.
pub fn worth_splitting(work: usize) -> bool {
    work >= PAR_MIN_WORK && rayon::current_num_threads() > 1
}

/// Target elements per parallel chunk.
const CHUNK_WORK: usize = 1 << 13;

/// Rows per chunk when `rows` rows take `work` elements of work in all: about
/// [`CHUNK_WORK`] per chunk. The work, not the row width, sets it: an embedding lookup
/// writes 16 columns of 429-wide rows, and chunks of 19 rows (429 per row) made each
/// lookup ~100 rayon tasks of a few hundred nanoseconds.
fn rows_per_chunk(rows: usize, work: usize) -> usize {
    let per_row = (work / rows.max(1)).max(1);
    (CHUNK_WORK / per_row).max(1)
}

/// Calls `f(first_row, chunk)` over row-chunks of the `[rows, cols]` prefix of `out`, in
/// parallel when `work` (elements processed) is large enough; `f` must compute each row
/// on its own (chunk boundaries depend on `work`).
pub fn rows_mut<F>(out: &mut [f32], rows: usize, cols: usize, work: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    if rows == 0 || cols == 0 {
        return;
    }
    let per = rows_per_chunk(rows, work);
    let out = &mut out[..rows * cols];
    if !worth_splitting(work) {
        out.chunks_mut(per * cols).enumerate().for_each(|(i, chunk)| f(i * per, chunk));
    } else {
        out.par_chunks_mut(per * cols).enumerate().for_each(|(i, chunk)| f(i * per, chunk));
    }
}

/// Like [`rows_mut`] with two outputs of the same shape, chunked identically.
pub fn rows_mut2<F>(a: &mut [f32], b: &mut [f32], rows: usize, cols: usize, work: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
{
    if rows == 0 || cols == 0 {
        return;
    }
    let per = rows_per_chunk(rows, work);
    let (a, b) = (&mut a[..rows * cols], &mut b[..rows * cols]);
    if !worth_splitting(work) {
        a.chunks_mut(per * cols).zip(b.chunks_mut(per * cols)).enumerate().for_each(|(i, (ca, cb))| f(i * per, ca, cb));
    } else {
        a.par_chunks_mut(per * cols)
            .zip(b.par_chunks_mut(per * cols))
            .enumerate()
            .for_each(|(i, (ca, cb))| f(i * per, ca, cb));
    }
}

/// Calls `f(first_col, band)` over bands of `out` (a per-column result such as a bias
/// gradient of a `[rows, cols]` matrix), in parallel when the matrix is large. Each
/// column is still reduced over rows in order, so results match the sequential sum.
pub fn col_bands<F>(out: &mut [f32], rows: usize, cols: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let out = &mut out[..cols];
    let threads = rayon::current_num_threads();
    if !worth_splitting(rows * cols) || cols < 32 {
        f(0, out);
        return;
    }
    // Bands of whole 16-float vectors, about one per thread.
    let band = cols.div_ceil(threads).div_ceil(16) * 16;
    out.par_chunks_mut(band).enumerate().for_each(|(i, chunk)| f(i * band, chunk));
}
