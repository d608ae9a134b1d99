//! Weighted, masked BCE-with-logits, MSE and Huber, and the ranking losses of
//! distillation (pairwise RankNet, listwise softmax cross-entropy): value and gradient in
//! one pass.
//!
//! Shared by every host backend: over a batch of a few thousand logits these are
//! microseconds, so there is nothing to parallelise. Sums are accumulated in `f64` so the
//! loss of a large batch does not drift with summation order.

use crate::activation::sigmoid;
use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::ops::{GradWrite, GroupSpec, LossInput, PairSpec};

/// `(ℓ, ∂ℓ/∂z)` of BCE on logit `z` and label `y`, stable for any `|z|`.
#[inline]
pub fn bce_term<T: Float>(z: T, y: T) -> (T, T) {
    let loss = z.max(T::ZERO) - z * y + (-z.abs()).exp().ln_1p();
    (loss, sigmoid(z) - y)
}

/// `(ℓ, ∂ℓ/∂p)` of squared error on prediction `p` and target `t`.
#[inline]
pub fn mse_term<T: Float>(p: T, t: T) -> (T, T) {
    let d = p - t;
    (d * d, T::from_f64(2.0) * d)
}

/// `(ℓ, ∂ℓ/∂p)` of the Huber loss with threshold `delta` on prediction `p` and target
/// `t`: `½d²` for `|d| ≤ δ`, `δ(|d| - ½δ)` beyond (PyTorch's `HuberLoss`); the gradient is
/// `d` clamped to `[-δ, δ]`.
#[inline]
pub fn huber_term<T: Float>(p: T, t: T, delta: T) -> (T, T) {
    let d = p - t;
    let half = T::from_f64(0.5);
    if d.abs() <= delta {
        (half * d * d, d)
    } else {
        (delta * (d.abs() - half * delta), if d > T::ZERO { delta } else { T::ZERO - delta })
    }
}

/// Huber loss over the first `n` examples; see [`crate::Backend::huber`].
pub fn huber<T: Float>(
    n: usize,
    delta: f32,
    input: LossInput<'_, [T]>,
    grad: &mut [T],
    write: GradWrite,
) -> Result<f64> {
    if !(delta.is_finite() && delta > 0.0) {
        return Err(crate::EngineError::InvalidArgument { op: "huber", reason: "delta must be a finite number > 0" });
    }
    let d = T::from_f64(delta as f64);
    weighted_mean("huber", n, input, grad, write, |p, t| huber_term(p, t, d))
}

/// BCE-with-logits over the first `n` examples; see [`crate::Backend::bce_with_logits`].
pub fn bce_with_logits<T: Float>(n: usize, input: LossInput<'_, [T]>, grad: &mut [T], write: GradWrite) -> Result<f64> {
    weighted_mean("bce_with_logits", n, input, grad, write, bce_term)
}

/// MSE over the first `n` examples; see [`crate::Backend::mse`].
pub fn mse<T: Float>(n: usize, input: LossInput<'_, [T]>, grad: &mut [T], write: GradWrite) -> Result<f64> {
    weighted_mean("mse", n, input, grad, write, mse_term)
}

/// In-batch softmax cross-entropy with the diagonal as the target; see
/// [`crate::Backend::softmax_xent_diag`]. Row `i` of `s` (`[n, n]`) scores query `i`
/// against every row's item; `w[i]` is row `i`'s weight (0: not a positive, left out).
/// `L = Σᵢ wᵢ·(log Σⱼ e^{sᵢⱼ} − sᵢᵢ) / Σᵢ wᵢ`, and `grad[i, j] (+)= scale · wᵢ/W ·
/// (softmax(sᵢ)ⱼ − δᵢⱼ)`. The softmax subtracts the row's maximum (stable for any
/// logits); the loss is summed in `f64`.
pub fn softmax_xent_diag<T: Float>(n: usize, s: &[T], w: &[T], grad: &mut [T], write: GradWrite) -> Result<f64> {
    const OP: &str = "softmax_xent_diag";
    check::vector(OP, "scores", s.len(), n * n)?;
    check::vector(OP, "weight", w.len(), n)?;
    check::vector(OP, "grad", grad.len(), n * n)?;
    let weight_sum: f64 = w[..n].iter().map(|x| x.to_f64()).sum();
    let grad = &mut grad[..n * n];
    if weight_sum == 0.0 {
        if !write.accumulate {
            grad.fill(T::ZERO);
        }
        return Ok(0.0);
    }
    let mut loss = 0.0f64;
    for i in 0..n {
        let (row, g) = (&s[i * n..(i + 1) * n], &mut grad[i * n..(i + 1) * n]);
        if w[i] == T::ZERO {
            if !write.accumulate {
                g.fill(T::ZERO);
            }
            continue;
        }
        let max = row.iter().fold(row[0], |m, &x| m.max(x));
        let sum: T = row.iter().fold(T::ZERO, |acc, &x| acc + (x - max).exp());
        let lse = max.to_f64() + sum.to_f64().ln();
        loss += w[i].to_f64() * (lse - row[i].to_f64());
        let g_scale = T::from_f64(write.scale as f64 * w[i].to_f64() / weight_sum);
        for (j, (gj, &x)) in g.iter_mut().zip(row).enumerate() {
            let p = (x - max).exp() / sum;
            let d = g_scale * if i == j { p - T::ONE } else { p };
            if write.accumulate {
                *gj += d;
            } else {
                *gj = d;
            }
        }
    }
    Ok(loss / weight_sum)
}

/// `softplus(z) = ln(1 + eᶻ)`, stable for any `|z|`.
#[inline]
pub fn softplus<T: Float>(z: T) -> T {
    z.max(T::ZERO) + (-z.abs()).exp().ln_1p()
}

/// Checks that a loss's inputs (and the optional weight and mask) and its gradient hold
/// `n` examples.
fn check_input<T>(op: &'static str, n: usize, input: &LossInput<'_, [T]>, grad: &[T]) -> Result<()> {
    check::vector(op, "pred", input.pred.len(), n)?;
    check::vector(op, "target", input.target.len(), n)?;
    if let Some(w) = input.weight {
        check::vector(op, "weight", w.len(), n)?;
    }
    if let Some(m) = input.mask {
        check::vector(op, "mask", m.len(), n)?;
    }
    check::vector(op, "grad", grad.len(), n)
}

/// Checks what the ranking losses share: the inputs and `grad` hold `n` examples, the
/// temperature is a finite number > 0.
fn check_ranking<T>(
    op: &'static str,
    n: usize,
    temperature: f32,
    input: &LossInput<'_, [T]>,
    grad: &[T],
) -> Result<()> {
    check_input(op, n, input, grad)?;
    if input.weight_sum.is_some() {
        return Err(crate::EngineError::InvalidArgument { op, reason: "a given weight sum is for pointwise losses" });
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(crate::EngineError::InvalidArgument { op, reason: "temperature must be a finite number > 0" });
    }
    Ok(())
}

/// Pairwise RankNet over `spec.pairs` ordered pairs; see [`crate::Backend::pairwise_ranknet`].
///
/// `L = T² · Σ₍ᵢ,ⱼ₎ wᵢⱼ·[softplus(dᵢⱼ) − Pᵢⱼ·dᵢⱼ] / Σ wᵢⱼ`, with `dᵢⱼ = (sᵢ − sⱼ)/T`,
/// `Pᵢⱼ = σ((tᵢ − tⱼ)/T)` and `wᵢⱼ = (wᵢ + wⱼ)/2` (the BCE of the student's preference
/// σ(dᵢⱼ) against the teacher's, up to a constant). With
/// `gᵢⱼ = scale·T·wᵢⱼ·(σ(dᵢⱼ) − Pᵢⱼ) / Σ w`: `grad[i] += gᵢⱼ`, `grad[j] −= gᵢⱼ`, pairs in
/// order. Only differences are trained: adding a constant to every `s` changes nothing.
/// A pair counts iff both its rows do (mask ≠ 0). Per pair the terms are evaluated in
/// `T`, the loss and the weight sum accumulated in f64.
pub fn pairwise_ranknet<T: Float>(
    spec: &PairSpec,
    pairs: &[u32],
    input: LossInput<'_, [T]>,
    grad: &mut [T],
    write: GradWrite,
) -> Result<f64> {
    const OP: &str = "pairwise_ranknet";
    let n = spec.rows;
    check_ranking(OP, n, spec.temperature, &input, grad)?;
    check::holds(OP, "pairs", pairs.len(), &[spec.pairs, 2], 2 * spec.pairs)?;
    let pairs = &pairs[..2 * spec.pairs];
    check::ids_in_range(OP, pairs, n)?;

    let counts = |i: usize| input.mask.is_none_or(|m| m[i] != T::ZERO);
    let weight = |i: usize| input.weight.map_or(T::ONE, |w| w[i]);
    let (s, t) = (input.pred, input.target);
    let tt = T::from_f64(spec.temperature as f64);
    let half = T::from_f64(0.5);
    let counted =
        || pairs.chunks_exact(2).map(|p| (p[0] as usize, p[1] as usize)).filter(|&(i, j)| counts(i) && counts(j));
    let wsum: f64 = counted().map(|(i, j)| (half * (weight(i) + weight(j))).to_f64()).sum();
    let grad = &mut grad[..n];
    if !write.accumulate {
        grad.fill(T::ZERO);
    }
    if wsum == 0.0 {
        return Ok(0.0);
    }
    let g_scale = T::from_f64(write.scale as f64 / wsum);
    let mut loss = 0.0;
    for (i, j) in counted() {
        let w = half * (weight(i) + weight(j));
        let d = (s[i] - s[j]) / tt;
        let p = sigmoid((t[i] - t[j]) / tt);
        loss += (w * tt * tt * (softplus(d) - p * d)).to_f64();
        let g = g_scale * w * tt * (sigmoid(d) - p);
        grad[i] += g;
        grad[j] -= g;
    }
    Ok(loss / wsum)
}

/// `lz = m + ln Σₖ e^{xₖ − m}` over `x(k)` for the members `k` of `rows`, `m` their
/// maximum (folded from the first): `xᵢ − lz` is `ln softmax(x)ᵢ`.
fn log_sum_exp<T: Float>(rows: impl Iterator<Item = usize> + Clone, x: impl Fn(usize) -> T) -> T {
    let mut it = rows.clone();
    let first = it.next().expect("a group of at least two rows");
    let m = it.fold(x(first), |a, k| a.max(x(k)));
    let z = rows.fold(T::ZERO, |acc, k| acc + (x(k) - m).exp());
    m + z.ln()
}

/// Listwise softmax cross-entropy within groups; see [`crate::Backend::listwise_softmax`].
///
/// `L = T² · Σ_g W_g·[−Σ_{i∈g} qᵢ·ln pᵢ] / Σ_g W_g`, with `q = softmax(t_g/T)`,
/// `p = softmax(s_g/T)` and `W_g` the mean weight of the group's counted rows, so
/// `∂L/∂sᵢ = T·W_g·(pᵢ − qᵢ) / Σ W`. A group is its members with mask ≠ 0; groups of
/// fewer than two (which carry no information: p = q = 1) are left out of the mean. Per
/// row the terms are evaluated in `T`, `W_g`, the weight sum and the loss in f64.
pub fn listwise_softmax<T: Float>(
    spec: &GroupSpec,
    offsets: &[u32],
    members: &[u32],
    input: LossInput<'_, [T]>,
    grad: &mut [T],
    write: GradWrite,
) -> Result<f64> {
    const OP: &str = "listwise_softmax";
    let n = spec.rows;
    check_ranking(OP, n, spec.temperature, &input, grad)?;
    let used = check::offsets(OP, offsets, spec.groups, members.len())?;
    let members = &members[..used];
    check::ids_in_range(OP, members, n)?;

    let counts = |i: usize| input.mask.is_none_or(|m| m[i] != T::ZERO);
    let weight = |i: usize| input.weight.map_or(T::ONE, |w| w[i]);
    let (s, t) = (input.pred, input.target);
    let tt = T::from_f64(spec.temperature as f64);
    let temp = spec.temperature as f64;
    let group = |g: usize| {
        members[offsets[g] as usize..offsets[g + 1] as usize].iter().map(|&i| i as usize).filter(move |&i| counts(i))
    };
    // The mean weight of group g's counted rows, or None for a group of fewer than two.
    let group_w = |g: usize| {
        let len = group(g).count();
        (len > 1).then(|| group(g).map(|i| weight(i).to_f64()).sum::<f64>() / len as f64)
    };
    let wsum: f64 = (0..spec.groups).filter_map(group_w).sum();
    let grad = &mut grad[..n];
    if !write.accumulate {
        grad.fill(T::ZERO);
    }
    if wsum == 0.0 {
        return Ok(0.0);
    }
    let mut loss = 0.0;
    for g in 0..spec.groups {
        let Some(wg) = group_w(g) else { continue };
        let xs = |i: usize| s[i] / tt;
        let xt = |i: usize| t[i] / tt;
        let (lz_s, lz_t) = (log_sum_exp(group(g), xs), log_sum_exp(group(g), xt));
        let g_scale = T::from_f64(write.scale as f64 * wg / wsum) * tt;
        let mut ce = 0.0;
        for i in group(g) {
            let (lp, q) = (xs(i) - lz_s, (xt(i) - lz_t).exp());
            ce -= (q * lp).to_f64();
            grad[i] += g_scale * (lp.exp() - q);
        }
        loss += wg * temp * temp * ce;
    }
    Ok(loss / wsum)
}

fn weighted_mean<T: Float>(
    op: &'static str,
    n: usize,
    input: LossInput<'_, [T]>,
    grad: &mut [T],
    write: GradWrite,
    term: impl Fn(T, T) -> (T, T),
) -> Result<f64> {
    check_input(op, n, &input, grad)?;

    let counts = |i: usize| input.mask.is_none_or(|m| m[i] != T::ZERO);
    let weight = |i: usize| input.weight.map_or(T::ONE, |w| w[i]);
    let weight_sum: f64 = match input.weight_sum {
        Some(w) if !w.is_finite() => {
            return Err(crate::EngineError::InvalidArgument { op, reason: "the given weight sum must be finite" })
        }
        Some(w) => w,
        None => (0..n).filter(|&i| counts(i)).map(|i| weight(i).to_f64()).sum(),
    };
    let grad = &mut grad[..n];
    if weight_sum == 0.0 {
        if !write.accumulate {
            grad.fill(T::ZERO);
        }
        return Ok(0.0);
    }
    // Gradient of the weighted mean: scale · wᵢ · ∂ℓᵢ / W.
    let g_scale = T::from_f64(write.scale as f64 / weight_sum);
    let mut loss = 0.0f64;
    for (i, g) in grad.iter_mut().enumerate() {
        let gi = if counts(i) {
            let (l, d) = term(input.pred[i], input.target[i]);
            let w = weight(i);
            loss += w.to_f64() * l.to_f64();
            g_scale * w * d
        } else {
            T::ZERO
        };
        if write.accumulate {
            *g += gi;
        } else {
            *g = gi;
        }
    }
    Ok(loss / weight_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(
        pred: &'a [f64],
        target: &'a [f64],
        weight: Option<&'a [f64]>,
        mask: Option<&'a [f64]>,
    ) -> LossInput<'a, [f64]> {
        LossInput { pred, target, weight, mask, weight_sum: None }
    }

    #[test]
    fn bce_matches_naive_formula_and_is_stable() {
        for &(z, y) in &[(0.3f64, 1.0), (-2.0, 0.0), (4.0, 0.25), (-0.7, 0.6)] {
            let p = 1.0 / (1.0 + (-z).exp());
            let naive = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            let (l, d) = bce_term(z, y);
            assert!((l - naive).abs() < 1e-12, "{z} {y}");
            assert!((d - (p - y)).abs() < 1e-12);
        }
        // Naive formula gives inf here; the stable one gives |z|.
        let (l, d) = bce_term(-200.0f32, 1.0);
        assert_eq!(l, 200.0);
        assert_eq!(d, -1.0);
        let (l, _) = bce_term(200.0f32, 1.0);
        assert_eq!(l, 0.0);
    }

    #[test]
    fn huber_by_hand_and_against_finite_differences() {
        // δ = 1: d = 0.5 is quadratic (0.125, 0.5); d = -3 is linear (2.5, -1).
        assert_eq!(huber_term(1.5f64, 1.0, 1.0), (0.125, 0.5));
        assert_eq!(huber_term(-1.0f64, 2.0, 1.0), (2.5, -1.0));
        // Weighted, masked mean: rows 0 and 2 count with weights 1 and 3.
        let (p, t) = ([1.5f64, 9.0, -1.0], [1.0, f64::NAN, 2.0]);
        let mut g = [0.0; 3];
        let l =
            huber(3, 1.0, input(&p, &t, Some(&[1.0, 5.0, 3.0]), Some(&[1.0, 0.0, 1.0])), &mut g, GradWrite::default())
                .unwrap();
        assert!((l - (0.125 + 3.0 * 2.5) / 4.0).abs() < 1e-15, "{l}");
        assert_eq!(g, [0.5 / 4.0, 0.0, -3.0 / 4.0]);
        for &(p, t) in &[(0.2f64, -0.3), (2.0, 0.1), (-1.7, 0.4)] {
            let h = 1e-6;
            let fd = (huber_term(p + h, t, 0.8).0 - huber_term(p - h, t, 0.8).0) / (2.0 * h);
            assert!((fd - huber_term(p, t, 0.8).1).abs() < 1e-8, "{p} {t}");
        }
        assert!(huber(1, 0.0, input(&[0.0], &[0.0], None, None), &mut [0.0], GradWrite::default()).is_err());
    }

    #[test]
    fn mask_skips_nan_labels_and_weights_define_the_mean() {
        let pred = [0.5, -1.0, 2.0];
        let target = [1.0, f64::NAN, 0.0];
        let weight = [2.0, 5.0, 1.0];
        let mask = [1.0, 0.0, 1.0];
        let mut grad = [9.0; 3];
        let loss =
            bce_with_logits(3, input(&pred, &target, Some(&weight), Some(&mask)), &mut grad, GradWrite::default())
                .unwrap();
        let (l0, d0) = bce_term(0.5, 1.0);
        let (l2, d2) = bce_term(2.0, 0.0);
        assert!((loss - (2.0 * l0 + l2) / 3.0).abs() < 1e-12);
        assert!((grad[0] - 2.0 * d0 / 3.0).abs() < 1e-12);
        assert_eq!(grad[1], 0.0);
        assert!((grad[2] - d2 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_given_weight_sum_makes_each_part_of_a_batch_compute_the_whole_batchs_rows() {
        let pred = [0.3f32, -1.2, 2.5, 0.7, -0.1];
        let target = [1.0f32, 0.0, 0.0, 1.0, 1.0];
        let weight = [0.7f32, 1.3, 2.1, 0.9, 1.1];
        let mask = [1.0f32, 1.0, 0.0, 1.0, 1.0];
        let write = GradWrite { scale: 0.37, accumulate: false };
        let inp = |r: std::ops::Range<usize>, weight_sum| LossInput {
            pred: &pred[r.clone()],
            target: &target[r.clone()],
            weight: Some(&weight[r.clone()]),
            mask: Some(&mask[r]),
            weight_sum,
        };
        let mut whole = [0f32; 5];
        let l = bce_with_logits(5, inp(0..5, None), &mut whole, write).unwrap();
        // The op's own sum, given: the same bits.
        let w: f64 = (0..5).filter(|&i| mask[i] != 0.0).map(|i| weight[i] as f64).sum();
        let mut again = [0f32; 5];
        assert_eq!(bce_with_logits(5, inp(0..5, Some(w)), &mut again, write).unwrap(), l);
        assert_eq!(again.map(f32::to_bits), whole.map(f32::to_bits));
        // Two parts given the whole's sum: the whole's rows bit for bit, the losses adding
        // up to the whole's.
        let (mut a, mut b) = ([0f32; 2], [0f32; 3]);
        let la = bce_with_logits(2, inp(0..2, Some(w)), &mut a, write).unwrap();
        let lb = bce_with_logits(3, inp(2..5, Some(w)), &mut b, write).unwrap();
        let parts: Vec<u32> = a.iter().chain(&b).map(|x| x.to_bits()).collect();
        assert_eq!(parts, whole.map(f32::to_bits));
        assert!((la + lb - l).abs() < 1e-6, "{la} + {lb} vs {l}");
        // A given 0 gives 0; a non-finite one is refused, and so is any for a ranking loss.
        let mut g = [9f32; 2];
        assert_eq!(mse(2, inp(0..2, Some(0.0)), &mut g, write).unwrap(), 0.0);
        assert_eq!(g, [0.0; 2]);
        assert!(mse(2, inp(0..2, Some(f64::NAN)), &mut g, write).is_err());
        let spec = PairSpec { rows: 2, pairs: 1, temperature: 1.0 };
        assert!(pairwise_ranknet(&spec, &[0, 1], inp(0..2, Some(1.0)), &mut g, write).is_err());
    }

    #[test]
    fn zero_weight_sum_gives_zero_and_accumulate_adds_scaled() {
        let pred = [1.0, 2.0];
        let target = [0.0, 3.0];
        let mut grad = [7.0, 7.0];
        let loss = mse(2, input(&pred, &target, None, Some(&[0.0, 0.0])), &mut grad, GradWrite::default()).unwrap();
        assert_eq!((loss, grad), (0.0, [0.0, 0.0]));

        let mut grad = [1.0, 1.0];
        let write = GradWrite { scale: 0.5, accumulate: true };
        let loss = mse(2, input(&pred, &target, None, None), &mut grad, write).unwrap();
        assert_eq!(loss, (1.0 + 1.0) / 2.0);
        // 1 + 0.5 · 2(p - t) / 2
        assert_eq!(grad, [1.5, 0.5]);
    }
}
