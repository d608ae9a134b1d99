//! The two bf16 operand layouts of the inference GEMM: activations (row-major, even row
//! stride) and pre-packed weights (column panels with K-pairs interleaved).

use super::{Bf16Kernel, K_ALIGN, NR};
use crate::check;
use crate::cpu::worth_splitting;
use crate::error::Result;
use half::bf16;
use rayon::prelude::*;

/// bf16 activations `[rows, cols]`, row-major with row stride `ld = cols` rounded up to a
/// multiple of [`K_ALIGN`] = 32. The kernels read K in pairs (AVX512) or 32-value tile
/// rows (AMX), so the padding columns are kept at zero (they meet the zero padding of the
/// packed weights).
#[derive(Debug, Clone, PartialEq)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    ld: usize,
    data: Aligned,
}

impl Bf16Matrix {
    /// Zeros with room for `rows` rows; allocate once per layer at the largest batch.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        let ld = cols.next_multiple_of(K_ALIGN);
        Bf16Matrix { rows, cols, ld, data: Aligned::zeros(rows * ld) }
    }

    /// Converts a dense f32 `[rows, cols]` matrix (round to nearest even).
    pub fn from_f32(rows: usize, cols: usize, src: &[f32]) -> Result<Self> {
        let mut m = Self::zeros(rows, cols);
        m.copy_from_f32(Bf16Kernel::detect(), rows, src)?;
        Ok(m)
    }

    /// Overwrites the first `rows` rows from a dense f32 `[rows, cols]` matrix, rounding
    /// to nearest even (no allocation; rows in parallel when large). `kernel` picks the
    /// conversion instructions.
    pub fn copy_from_f32(&mut self, kernel: Bf16Kernel, rows: usize, src: &[f32]) -> Result<()> {
        const OP: &str = "Bf16Matrix::copy_from_f32";
        check::holds(OP, "self", self.rows, &[rows, self.cols], rows)?;
        check::holds(OP, "src", src.len(), &[rows, self.cols], rows * self.cols)?;
        if self.cols == 0 {
            return Ok(());
        }
        let (cols, ld) = (self.cols, self.ld);
        // Convert bands of rows (~8K values each): one rayon task per row costs more than
        // the conversion itself.
        let per = (8192 / cols).max(1);
        let convert_band = |(d, s): (&mut [bf16], &[f32])| {
            for (d, s) in d.chunks_mut(ld).zip(s.chunks(cols)) {
                kernel.convert(s, &mut d[..cols]);
            }
        };
        let (dst, src) = (&mut self.data.as_mut_slice()[..rows * ld], &src[..rows * cols]);
        if !worth_splitting(rows * cols) {
            convert_band((dst, src));
        } else {
            dst.par_chunks_mut(per * ld).zip(src.par_chunks(per * cols)).for_each(convert_band);
        }
        Ok(())
    }

    /// Overwrites the first `rows` rows with the row-wise outer products of `x`
    /// (`[rows, bx]`) and `y` (`[rows, cols / bx]`): row `r` holds `x[r, i] · y[r, j]` at
    /// column `i·by + j`, each f32 product rounded to nearest even — the same values as
    /// forming the products in f32 and calling [`Bf16Matrix::copy_from_f32`], without the
    /// f32 matrix.
    pub fn copy_outer_from_f32(
        &mut self,
        kernel: Bf16Kernel,
        rows: usize,
        bx: usize,
        x: &[f32],
        y: &[f32],
    ) -> Result<()> {
        const OP: &str = "Bf16Matrix::copy_outer_from_f32";
        if bx == 0 || !self.cols.is_multiple_of(bx) {
            return Err(crate::EngineError::ShapeMismatch {
                op: OP,
                lhs: "x",
                lhs_shape: vec![rows, bx],
                rhs: "self",
                rhs_shape: vec![self.rows, self.cols],
            });
        }
        let (cols, ld, by) = (self.cols, self.ld, self.cols / bx);
        check::holds(OP, "self", self.rows, &[rows, cols], rows)?;
        check::holds(OP, "x", x.len(), &[rows, bx], rows * bx)?;
        check::holds(OP, "y", y.len(), &[rows, by], rows * by)?;
        if rows == 0 {
            return Ok(());
        }
        let per = (8192 / cols).max(1);
        let band = |(r0, d): (usize, &mut [bf16])| {
            let mut tmp = vec![0f32; by];
            for (k, d) in d.chunks_mut(ld).enumerate() {
                let r = r0 + k;
                let (xr, yr) = (&x[r * bx..(r + 1) * bx], &y[r * by..(r + 1) * by]);
                for (i, &xi) in xr.iter().enumerate() {
                    tmp.iter_mut().zip(yr).for_each(|(t, &yj)| *t = xi * yj);
                    kernel.convert(&tmp, &mut d[i * by..(i + 1) * by]);
                }
            }
        };
        let dst = &mut self.data.as_mut_slice()[..rows * ld];
        if !worth_splitting(rows * cols) {
            band((0, dst));
        } else {
            dst.par_chunks_mut(per * ld).enumerate().map(|(c, d)| (c * per, d)).for_each(band);
        }
        Ok(())
    }

    /// Back to f32 (exact), `[rows, cols]` dense.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.rows)
            .flat_map(|r| self.data.as_slice()[r * self.ld..][..self.cols].iter().map(|v| v.to_f32()))
            .collect()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row stride in elements (a multiple of [`K_ALIGN`]).
    pub fn ld(&self) -> usize {
        self.ld
    }

    /// The `[rows, ld]` values; starts on a 64-byte boundary.
    pub fn data(&self) -> &[bf16] {
        self.data.as_slice()
    }
}

/// Weights `W: [k, n]` (a Linear's `[in, out]`) in bf16, packed once at load time for the
/// kernel: column panels of [`NR`] = 32 columns; inside a panel, for each pair of rows
/// `(2p, 2p+1)`, the 32 pairs `(W[2p, j], W[2p+1, j])` lie side by side — the operand
/// layout of `vdpbf16ps`, which multiplies and sums adjacent bf16 pairs into one f32
/// lane (and the "VNNI" B-tile layout of AMX). `k` is padded to a multiple of
/// [`K_ALIGN`] and `n` to a multiple of 32 with zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedBf16 {
    k: usize,
    n: usize,
    /// Number of K-pairs, `ceil(k / 2)`.
    kp: usize,
    /// K-pairs stored per panel: `kp` rounded up to `K_ALIGN / 2`.
    kp_pad: usize,
    data: Aligned,
}

impl PackedBf16 {
    /// Packs a dense row-major f32 `[k, n]` weight matrix (round to nearest even).
    pub fn pack(k: usize, n: usize, w: &[f32]) -> Result<Self> {
        check::holds("PackedBf16::pack", "w", w.len(), &[k, n], k * n)?;
        let kp = k.div_ceil(2);
        let kp_pad = k.next_multiple_of(K_ALIGN) / 2;
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeros(panels * kp_pad * 2 * NR);
        let values = data.as_mut_slice();
        for panel in 0..panels {
            for p in 0..kp {
                let base = (panel * kp_pad + p) * 2 * NR;
                for jj in 0..NR {
                    let j = panel * NR + jj;
                    if j >= n {
                        continue;
                    }
                    for (h, row) in [2 * p, 2 * p + 1].into_iter().enumerate() {
                        if row < k {
                            values[base + 2 * jj + h] = bf16::from_f32(w[row * n + j]);
                        }
                    }
                }
            }
        }
        Ok(PackedBf16 { k, n, kp, kp_pad, data })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of K-pairs.
    pub fn kp(&self) -> usize {
        self.kp
    }

    /// K-pairs stored per panel (a multiple of `K_ALIGN / 2`; zeros past `kp`).
    pub fn kp_pad(&self) -> usize {
        self.kp_pad
    }

    /// Panel `i` (`kp_pad · 2 · NR` values).
    pub fn panel(&self, i: usize) -> &[bf16] {
        &self.data.as_slice()[i * self.kp_pad * 2 * NR..][..self.kp_pad * 2 * NR]
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The weights widened back to a dense row-major f32 `[k, n]` in `out[..k·n]` (each
    /// value exactly its bf16). Rows go in pairs, as they are stored: each stored pair
    /// `(W[2p, j], W[2p+1, j])` is one 32-bit word whose low half widens to row `2p` and
    /// high half to row `2p+1` (a shift and a mask, which vectorise). Pairs of rows are
    /// split over threads once the matrix is large.
    pub fn unpack_f32(&self, out: &mut [f32]) -> Result<()> {
        let (k, n) = (self.k, self.n);
        check::holds("PackedBf16::unpack_f32", "out", out.len(), &[k, n], k * n)?;
        let out = &mut out[..k * n];
        let pair_rows = |p: usize, rows: &mut [f32]| {
            // `2n` values, or `n` for the last row of an odd `k` (`hi` empty).
            let (lo, hi) = rows.split_at_mut(n);
            for panel in 0..self.panels() {
                let src = &self.panel(panel)[p * 2 * NR..][..2 * NR];
                let j0 = panel * NR;
                let cols = NR.min(n - j0);
                for jj in 0..cols {
                    let word = (src[2 * jj].to_bits() as u32) | ((src[2 * jj + 1].to_bits() as u32) << 16);
                    lo[j0 + jj] = f32::from_bits(word << 16);
                    if !hi.is_empty() {
                        hi[j0 + jj] = f32::from_bits(word & 0xffff_0000);
                    }
                }
            }
        };
        if worth_splitting(k * n) {
            out.par_chunks_mut(2 * n).enumerate().for_each(|(p, rows)| pair_rows(p, rows));
        } else {
            out.chunks_mut(2 * n).enumerate().for_each(|(p, rows)| pair_rows(p, rows));
        }
        Ok(())
    }
}

/// A zero-initialised bf16 buffer whose first value sits on a 64-byte boundary, so each
/// 32-value activation row and each 64-value weight row is whole cache lines: an AMX tile
/// row that straddles two lines loads at about half speed (measured 560-930 GFLOP/s on
/// one core for the same GEMM depending on malloc's alignment).
#[derive(Debug)]
struct Aligned {
    raw: Vec<bf16>,
    start: usize,
    len: usize,
}

impl Aligned {
    const ALIGN_VALUES: usize = 64 / std::mem::size_of::<bf16>();

    fn zeros(len: usize) -> Self {
        let raw = vec![bf16::ZERO; len + Self::ALIGN_VALUES - 1];
        // `align_offset` may give up (usize::MAX); unaligned is slower, not wrong.
        let start = raw.as_ptr().align_offset(64);
        let start = if start < Self::ALIGN_VALUES { start } else { 0 };
        Aligned { raw, start, len }
    }

    fn as_slice(&self) -> &[bf16] {
        &self.raw[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [bf16] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl Clone for Aligned {
    /// A fresh allocation, aligned anew (copying `raw` would keep a stale `start`).
    fn clone(&self) -> Self {
        let mut copy = Aligned::zeros(self.len);
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl PartialEq for Aligned {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_interleaves_k_pairs_and_zero_pads() {
        // W [3, 2] = [[1, 2], [3, 4], [5, 6]]
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let p = PackedBf16::pack(3, 2, &w).unwrap();
        assert_eq!((p.kp(), p.kp_pad(), p.panels()), (2, 16, 1));
        assert_eq!(p.panel(0).len(), 16 * 2 * NR);
        let v: Vec<f32> = p.panel(0).iter().map(|x| x.to_f32()).collect();
        // Pair 0: (W00, W10), (W01, W11), then zero columns.
        assert_eq!(&v[..4], &[1.0, 3.0, 2.0, 4.0]);
        assert!(v[4..2 * NR].iter().all(|&x| x == 0.0));
        assert!(v[2 * NR + 4..].iter().all(|&x| x == 0.0));
        // Pair 1: (W20, 0), (W21, 0).
        assert_eq!(&v[2 * NR..2 * NR + 4], &[5.0, 0.0, 6.0, 0.0]);
    }

    #[test]
    fn activations_round_to_nearest_even_and_pad_with_zero() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even → 1.
        let src = [1.0 + 1.0 / 256.0, 3.0, -2.5];
        let m = Bf16Matrix::from_f32(1, 3, &src).unwrap();
        assert_eq!(m.ld(), 32);
        assert_eq!(m.to_f32(), vec![1.0, 3.0, -2.5]);
        assert_eq!(m.data()[3], bf16::ZERO);
        assert_eq!(m.data().as_ptr() as usize % 64, 0);
        assert_eq!(m.clone().data().as_ptr() as usize % 64, 0);
        let m = Bf16Matrix::from_f32(1, 1, &[1.0 + 3.0 / 256.0]).unwrap();
        assert_eq!(m.to_f32(), vec![1.0 + 1.0 / 64.0]); // 1+3/256 ties up to 1+4/256
    }

    #[test]
    fn outer_products_round_like_the_f32_matrix_would() {
        // Small (one band) and large (split over threads) row counts, odd widths, values
        // whose products need rounding; every kernel.
        let kernels = [Some(Bf16Kernel::detect()), Some(Bf16Kernel::portable()), Bf16Kernel::avx512bf16().ok()];
        for (rows, bx, by) in [(3, 3, 5), (700, 16, 24)] {
            let val =
                |n: usize, s: f32| (0..n).map(|i| ((i as f32 * s).sin() * 3.0) + 1.0 / 300.0).collect::<Vec<f32>>();
            let (x, y) = (val(rows * bx, 0.77), val(rows * by, 1.31));
            let z: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let (x, y) = (&x, &y);
                    (0..bx).flat_map(move |i| (0..by).map(move |j| x[r * bx + i] * y[r * by + j]))
                })
                .collect();
            for kernel in kernels.into_iter().flatten() {
                let mut want = Bf16Matrix::zeros(rows, bx * by);
                want.copy_from_f32(kernel, rows, &z).unwrap();
                let mut got = Bf16Matrix::zeros(rows, bx * by);
                got.copy_outer_from_f32(kernel, rows, bx, &x, &y).unwrap();
                assert_eq!(got, want, "{} rows {rows}", kernel.name());
            }
        }
        let mut m = Bf16Matrix::zeros(2, 6);
        assert!(
            m.copy_outer_from_f32(Bf16Kernel::portable(), 2, 4, &[0.0; 8], &[0.0; 4]).is_err(),
            "4 does not divide 6"
        );
        assert!(m.copy_outer_from_f32(Bf16Kernel::portable(), 2, 3, &[0.0; 5], &[0.0; 4]).is_err(), "x too short");
    }
}
