//! Masks made on the device rather than uploaded: counter-based dropout masks and the
//! top-k mask of gate logits. Host formulas shared by the host-memory backends; a
//! device backend implements the same arithmetic in a kernel, so masks are identical
//! across backends for the same (seed, step) and the same logits.

use crate::check;
use crate::error::Result;

/// The additive mask value of an excluded expert (softmax weight exactly 0 in f32).
pub const MASKED: f32 = -1e30;

/// SplitMix64's finaliser: a bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i` of the dropout mask of (`seed`, `step`) with drop probability `p`:
/// `0` when `u_i < p`, else `1 / (1 - p)`, with `u_i` uniform in [0, 1) from 53 bits of
/// `mix(base + i)`, `base = mix(seed ^ mix(step + φ))`. A function of (seed, step, i)
/// only: a resumed run sets the step and gets the uninterrupted run's masks.
#[inline]
pub fn dropout_keep(base: u64, i: usize, p: f64, keep_scale: f32) -> f32 {
    if uniform(base, i as u64) < p {
        0.0
    } else {
        keep_scale
    }
}

/// Number `i` of the counter-based stream starting at `base`: uniform in [0, 1) from the
/// top 53 bits of `mix(base + i)`.
#[inline]
pub fn uniform(base: u64, i: u64) -> f64 {
    (mix(base.wrapping_add(i)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The per-(seed, step) stream offset of [`dropout_keep`].
#[inline]
pub fn dropout_base(seed: u64, step: u64) -> u64 {
    mix(seed ^ mix(step.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// Writes elements `first .. first + n` of the dropout mask of (`seed`, `step`) into
/// the first `n` elements of `mask`.
pub fn dropout_mask<T: Copy>(
    n: usize,
    p: f32,
    seed: u64,
    step: u64,
    first: u64,
    mask: &mut [T],
    to: impl Fn(f32) -> T,
) -> Result<()> {
    check::vector("dropout_mask", "mask", mask.len(), n)?;
    let p = p as f64;
    let keep_scale = (1.0 / (1.0 - p)) as f32;
    let base = dropout_base(seed, step).wrapping_add(first);
    for (i, m) in mask[..n].iter_mut().enumerate() {
        *m = to(dropout_keep(base, i, p, keep_scale));
    }
    Ok(())
}

/// Gate dropout on an additive gate mask (`[rows, cols]`, `zero` = expert in play, anything
/// else = already excluded, e.g. by top-k): each in-play element `(r, j)` becomes `masked`
/// when `uniform(base, r·cols + j) < p`, `base` = [`dropout_base`]`(seed, step)` — the
/// stream [`dropout_mask`] draws from. A row whose every in-play element would be dropped
/// is left as it was (the guard: a gate never loses all its experts). Added to the gate
/// logits before the softmax, this zeroes the dropped weights and renormalises the rest
/// to sum 1 exactly (YouTube's gate dropout against polarisation).
#[allow(clippy::too_many_arguments)]
pub fn gate_dropout_mask<T: Copy + PartialEq>(
    rows: usize,
    cols: usize,
    p: f32,
    seed: u64,
    step: u64,
    first_row: u64,
    mask: &mut [T],
    zero: T,
    masked: T,
) -> Result<()> {
    check::vector("gate_dropout_mask", "mask", mask.len(), rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    // Row `r` is row `first_row + r` of the stream.
    let (p, base) = (p as f64, dropout_base(seed, step).wrapping_add(first_row.wrapping_mul(cols as u64)));
    for (r, m) in mask[..rows * cols].chunks_exact_mut(cols).enumerate() {
        let drop = |j: usize| uniform(base, (r * cols + j) as u64) < p;
        if !(0..cols).any(|j| m[j] == zero && !drop(j)) {
            continue;
        }
        for (j, v) in m.iter_mut().enumerate() {
            if *v == zero && drop(j) {
                *v = masked;
            }
        }
    }
    Ok(())
}

/// For each of `rows` rows of `cols` values: `0` at the `k` largest (ties to the lower
/// index), [`MASKED`] elsewhere.
pub fn top_k_mask<T: Copy + PartialOrd>(
    rows: usize,
    cols: usize,
    k: usize,
    x: &[T],
    mask: &mut [T],
    zero: T,
    masked: T,
) -> Result<()> {
    check::vector("top_k_mask", "x", x.len(), rows * cols)?;
    check::vector("top_k_mask", "mask", mask.len(), rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    // The mask itself marks what is taken (`zero`), so nothing is allocated.
    for (row, m) in x[..rows * cols].chunks_exact(cols).zip(mask[..rows * cols].chunks_exact_mut(cols)) {
        m.fill(masked);
        for _ in 0..k.min(cols) {
            let mut best: Option<usize> = None;
            for j in 0..cols {
                if m[j] == masked && best.is_none_or(|b| row[j] > row[b]) {
                    best = Some(j);
                }
            }
            if let Some(b) = best {
                m[b] = zero;
            }
        }
    }
    Ok(())
}

/// Feature dropout (the position tower's): row `r`'s slot `s` (a feature: one or more
/// columns) is dropped when `uniform(base, r·slots + s) < p`, `base` =
/// [`dropout_base`]`(seed, step)`; `mask[r, c]` is `zero` for a column of a dropped slot
/// and `one` otherwise. `slot_of[c]` is column `c`'s slot; a column in no slot
/// (`slot_of[c] >= slots`) is always `zero`. Not rescaled.
#[allow(clippy::too_many_arguments)]
pub fn feature_dropout_mask<T: Copy>(
    rows: usize,
    slot_of: &[u32],
    slots: usize,
    p: f32,
    seed: u64,
    step: u64,
    first_row: u64,
    mask: &mut [T],
    one: T,
    zero: T,
) -> Result<()> {
    let cols = slot_of.len();
    check::vector("feature_dropout_mask", "mask", mask.len(), rows * cols)?;
    // Row `r` is row `first_row + r` of the stream.
    let base = dropout_base(seed, step).wrapping_add(first_row.wrapping_mul(slots as u64));
    for r in 0..rows {
        for (c, &s) in slot_of.iter().enumerate() {
            let keep = (s as usize) < slots && uniform(base, (r * slots + s as usize) as u64) >= p as f64;
            mask[r * cols + c] = if keep { one } else { zero };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_the_largest_with_ties_to_the_lower_index() {
        let x = [0.5f32, 2.0, -1.0, 2.0, 3.0, 3.0, 3.0, 0.0];
        let mut mask = [1.0f32; 8];
        top_k_mask(2, 4, 2, &x, &mut mask, 0.0, MASKED).unwrap();
        assert_eq!(mask, [MASKED, 0.0, MASKED, 0.0, 0.0, 0.0, MASKED, MASKED]);
    }

    #[test]
    fn gate_dropout_drops_in_play_entries_and_never_a_whole_row() {
        let (rows, cols) = (20_000, 4);
        let mut m = vec![0f32; rows * cols];
        // Column 3 is already excluded (as top-k would): it stays excluded, never counts.
        for r in 0..rows {
            m[r * cols + 3] = MASKED;
        }
        gate_dropout_mask(rows, cols, 0.3, 11, 5, 0, &mut m, 0.0, MASKED).unwrap();
        let dropped = m.chunks(cols).map(|r| r[..3].iter().filter(|&&v| v == MASKED).count()).sum::<usize>();
        let rate = dropped as f64 / (rows * 3) as f64;
        // Rows where all 3 would go (p³ = 2.7%) are kept whole: rate = 0.3 − 0.027·3/3.
        assert!((rate - (0.3 - 0.027)).abs() < 0.01, "{rate}");
        assert!(m.chunks(cols).all(|r| r[3] == MASKED && r[..3].contains(&0.0)), "a row keeps one expert");
        assert!(m.iter().all(|&v| v == 0.0 || v == MASKED));
        let mut again = vec![0f32; rows * cols];
        for r in 0..rows {
            again[r * cols + 3] = MASKED;
        }
        gate_dropout_mask(rows, cols, 0.3, 11, 5, 0, &mut again, 0.0, MASKED).unwrap();
        assert_eq!(m, again, "a function of (seed, step, index)");
        let mut one = vec![0f32, MASKED];
        gate_dropout_mask(1, 2, 0.99, 1, 1, 0, &mut one, 0.0, MASKED).unwrap();
        assert_eq!(one, [0.0, MASKED], "the only expert in play is never dropped");
    }

    #[test]
    fn dropout_drops_about_p_and_scales_the_rest() {
        let mut m = vec![0f32; 100_000];
        dropout_mask(m.len(), 0.25, 7, 3, 0, &mut m, |v| v).unwrap();
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        let mut again = vec![0f32; 1000];
        dropout_mask(1000, 0.25, 7, 3, 0, &mut again, |v| v).unwrap();
        assert_eq!(&m[..1000], &again[..], "a function of (seed, step, i)");
        dropout_mask(1000, 0.25, 7, 4, 0, &mut again, |v| v).unwrap();
        assert_ne!(&m[..1000], &again[..], "another step, another mask");
    }

    #[test]
    fn a_mask_from_a_first_row_is_that_part_of_the_whole_mask() {
        // Data-parallel ranks draw rows `first .. first + n` of the global batch's mask.
        let (rows, width, first) = (10usize, 7usize, 4usize);
        let mut whole = vec![0f32; rows * width];
        dropout_mask(rows * width, 0.3, 9, 2, 0, &mut whole, |v| v).unwrap();
        let mut part = vec![0f32; (rows - first) * width];
        dropout_mask(part.len(), 0.3, 9, 2, (first * width) as u64, &mut part, |v| v).unwrap();
        assert_eq!(part, whole[first * width..]);

        let cols = 4;
        let mut whole = vec![0f32; rows * cols];
        gate_dropout_mask(rows, cols, 0.4, 9, 2, 0, &mut whole, 0.0, MASKED).unwrap();
        let mut part = vec![0f32; (rows - first) * cols];
        gate_dropout_mask(rows - first, cols, 0.4, 9, 2, first as u64, &mut part, 0.0, MASKED).unwrap();
        assert_eq!(part, whole[first * cols..]);
        assert!(whole.contains(&MASKED), "something is dropped");

        let slot_of = [0u32, 0, 1, 2, 2];
        let mut whole = vec![0f32; rows * slot_of.len()];
        feature_dropout_mask(rows, &slot_of, 3, 0.4, 9, 2, 0, &mut whole, 1.0, 0.0).unwrap();
        let mut part = vec![0f32; (rows - first) * slot_of.len()];
        feature_dropout_mask(rows - first, &slot_of, 3, 0.4, 9, 2, first as u64, &mut part, 1.0, 0.0).unwrap();
        assert_eq!(part, whole[first * slot_of.len()..]);
        assert!(whole.contains(&0.0) && whole.contains(&1.0));
    }
}
