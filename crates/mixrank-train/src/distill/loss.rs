//! Distillation losses: value and gradient with respect to the student's logits, over
//! plain slices — the host references of the backend ops training runs
//! (`pointwise.rs`: the engine's `bce_with_logits` and `mse`; `ranking.rs`: its
//! `pairwise_ranknet` and `listwise_softmax`), which the tests hold those to.
//!
//! Every function reads [`Rows`] — student logits `s`, teacher logits `t` and a
//! per-row weight `w` (sample weight × label mask; 0 leaves the row out) — returns the
//! loss (a weighted mean, so its size does not depend on the batch) and **adds**
//! `scale · ∂L/∂sᵢ` into `grad`. Losses with a temperature `T` are multiplied by `T²`
//! (Hinton et al., 2015) so the gradient's size stays comparable across temperatures.
//! Generic over f32 (training) and f64 (finite-difference checks).

use super::pairs::Groups;
use mixrank_engine::Float;

/// What a distillation loss reads, all `[rows]`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, T> {
    /// Student logits (values for regression tasks).
    pub student: &'a [T],
    /// Teacher logits (values for regression tasks).
    pub teacher: &'a [T],
    /// Row weights: sample weight × label mask; rows with weight 0 are left out.
    pub weight: &'a [T],
}

fn sigmoid<T: Float>(z: T) -> T {
    mixrank_engine::activation::sigmoid(z)
}

/// `softplus(z) = ln(1 + eᶻ)`, stable for any `|z|`.
fn softplus<T: Float>(z: T) -> T {
    z.max(T::ZERO) + (-z.abs()).exp().ln_1p()
}

/// Soft-label BCE with temperature `T`:
///
/// `L = T² · Σᵢ wᵢ·[softplus(sᵢ/T) − qᵢ·sᵢ/T] / Σᵢ wᵢ`, with `qᵢ = σ(tᵢ/T)`
///
/// (the BCE of σ(sᵢ/T) against the soft label qᵢ, up to the teacher's entropy, which
/// does not depend on s), so `∂L/∂sᵢ = T·wᵢ·(σ(sᵢ/T) − qᵢ) / Σ w`. The minimum is at
/// `sᵢ = tᵢ` for every `T`.
pub fn pointwise_bce<T: Float>(r: &Rows<'_, T>, temperature: f64, scale: f64, grad: &mut [T]) -> f64 {
    let tt = T::from_f64(temperature);
    weighted_rows(r, scale, grad, |s, t| {
        let (zs, q) = (s / tt, sigmoid(t / tt));
        let l = softplus(zs) - q * zs;
        (tt * tt * l, tt * (sigmoid(zs) - q))
    })
}

/// Logit MSE: `L = Σᵢ wᵢ·(sᵢ − tᵢ)² / Σᵢ wᵢ`, so `∂L/∂sᵢ = 2·wᵢ·(sᵢ − tᵢ) / Σ w`.
pub fn logit_mse<T: Float>(r: &Rows<'_, T>, scale: f64, grad: &mut [T]) -> f64 {
    weighted_rows(r, scale, grad, |s, t| {
        let d = s - t;
        (d * d, T::from_f64(2.0) * d)
    })
}

/// Weighted mean of a per-row term `(ℓ, ∂ℓ/∂s)` over rows with `w > 0`.
fn weighted_rows<T: Float>(r: &Rows<'_, T>, scale: f64, grad: &mut [T], term: impl Fn(T, T) -> (T, T)) -> f64 {
    let n = r.student.len();
    assert!(r.teacher.len() == n && r.weight.len() == n && grad.len() >= n, "distillation rows differ in length");
    let wsum: f64 = r.weight.iter().filter(|w| **w > T::ZERO).map(|w| w.to_f64()).sum();
    if wsum == 0.0 {
        return 0.0;
    }
    let g_scale = T::from_f64(scale / wsum);
    let mut loss = 0.0;
    for (((g, &w), &s), &t) in grad[..n].iter_mut().zip(r.weight).zip(r.student).zip(r.teacher) {
        if w > T::ZERO {
            let (l, d) = term(s, t);
            loss += w.to_f64() * l.to_f64();
            *g += g_scale * w * d;
        }
    }
    loss / wsum
}

/// RankNet toward the teacher's preferences, over ordered pairs `(i, j)`:
///
/// `L = T² · Σ₍ᵢ,ⱼ₎ wᵢⱼ·[softplus(dᵢⱼ/T) − Pᵢⱼ·dᵢⱼ/T] / Σ wᵢⱼ`, with `dᵢⱼ = sᵢ − sⱼ`,
/// `Pᵢⱼ = σ((tᵢ − tⱼ)/T)` and `wᵢⱼ = (wᵢ + wⱼ)/2`
///
/// (the BCE of the student's preference σ(dᵢⱼ/T) against the teacher's, up to a
/// constant). With `gᵢⱼ = T·wᵢⱼ·(σ(dᵢⱼ/T) − Pᵢⱼ) / Σ w`: `∂L/∂sᵢ += gᵢⱼ`,
/// `∂L/∂sⱼ −= gᵢⱼ`. Only differences are trained: adding a constant to every student
/// logit changes nothing (the label loss keeps the calibration). Pairs come from
/// [`super::pairs`].
pub fn pairwise<T: Float>(r: &Rows<'_, T>, pairs: &[(u32, u32)], temperature: f64, scale: f64, grad: &mut [T]) -> f64 {
    let tt = T::from_f64(temperature);
    let half = T::from_f64(0.5);
    let wsum: f64 = pairs.iter().map(|&(i, j)| (half * (r.weight[i as usize] + r.weight[j as usize])).to_f64()).sum();
    if wsum == 0.0 {
        return 0.0;
    }
    let g_scale = T::from_f64(scale / wsum);
    let mut loss = 0.0;
    for &(i, j) in pairs {
        let (i, j) = (i as usize, j as usize);
        let w = half * (r.weight[i] + r.weight[j]);
        let d = (r.student[i] - r.student[j]) / tt;
        let p = sigmoid((r.teacher[i] - r.teacher[j]) / tt);
        loss += (w * tt * tt * (softplus(d) - p * d)).to_f64();
        let g = g_scale * w * tt * (sigmoid(d) - p);
        grad[i] += g;
        grad[j] -= g;
    }
    loss / wsum
}

/// Softmax cross-entropy within each group (request), teacher distribution against
/// the student's:
///
/// `L = T² · Σ_g W_g·[−Σ_{i∈g} q_i·ln p_i] / Σ_g W_g`, with `q = softmax(t_g/T)`,
/// `p = softmax(s_g/T)` and `W_g` the mean row weight of the group,
///
/// so `∂L/∂sᵢ = T·W_g·(pᵢ − qᵢ) / Σ W`. Groups of one row carry no information (p = q
/// = 1) and are left out of the mean.
pub fn listwise<T: Float>(r: &Rows<'_, T>, groups: &Groups, temperature: f64, scale: f64, grad: &mut [T]) -> f64 {
    let tt = T::from_f64(temperature);
    let members: Vec<&[u32]> = groups.iter().filter(|g| g.len() > 1).collect();
    let group_w = |g: &[u32]| {
        let s: f64 = g.iter().map(|&i| r.weight[i as usize].to_f64()).sum();
        s / g.len() as f64
    };
    let wsum: f64 = members.iter().map(|g| group_w(g)).sum();
    if wsum == 0.0 {
        return 0.0;
    }
    let mut loss = 0.0;
    let (mut p, mut q) = (Vec::new(), Vec::new());
    for g in members {
        let wg = group_w(g);
        let log_softmax = |x: &dyn Fn(usize) -> T, out: &mut Vec<T>| {
            out.clear();
            let m = g.iter().map(|&i| x(i as usize)).fold(x(g[0] as usize), |a, b| a.max(b));
            let z: T = g.iter().fold(T::ZERO, |acc, &i| acc + (x(i as usize) - m).exp());
            let lz = m + z.ln();
            out.extend(g.iter().map(|&i| x(i as usize) - lz));
        };
        log_softmax(&|i| r.student[i] / tt, &mut p);
        log_softmax(&|i| r.teacher[i] / tt, &mut q);
        let g_scale = T::from_f64(scale * wg / wsum) * tt;
        let mut ce = 0.0;
        for (k, &i) in g.iter().enumerate() {
            let (lp, qk) = (p[k], q[k].exp());
            ce -= (qk * lp).to_f64();
            grad[i as usize] += g_scale * (lp.exp() - qk);
        }
        loss += wg * temperature * temperature * ce;
    }
    loss / wsum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(z: f64) -> f64 {
        1.0 / (1.0 + (-z).exp())
    }

    /// Central finite differences of `f` at `s`, against the analytic gradient.
    fn check_grad(s: &[f64], f: &dyn Fn(&[f64], &mut [f64]) -> f64) {
        let mut g = vec![0.0; s.len()];
        f(s, &mut g);
        let h = 1e-6;
        for i in 0..s.len() {
            let (mut up, mut dn) = (s.to_vec(), s.to_vec());
            up[i] += h;
            dn[i] -= h;
            let mut scratch = vec![0.0; s.len()];
            let num = (f(&up, &mut scratch) - f(&dn, &mut scratch)) / (2.0 * h);
            assert!((num - g[i]).abs() < 1e-7, "row {i}: analytic {} vs numeric {num}", g[i]);
        }
    }

    #[test]
    fn pointwise_bce_hand_checked() {
        // Two rows, T = 2: s = [1, -2], t = [0, 2], w = [1, 3].
        let (s, t, w) = ([1.0, -2.0], [0.0, 2.0], [1.0, 3.0]);
        let mut g = [0.0; 2];
        let l = pointwise_bce(&Rows { student: &s, teacher: &t, weight: &w }, 2.0, 1.0, &mut g);
        // Row 0: q = σ(0) = 0.5, z = 0.5: softplus(0.5) − 0.25; row 1: q = σ(1), z = −1.
        let l0 = (1.0 + 0.5f64.exp()).ln() - 0.25;
        let l1 = (1.0 + (-1.0f64).exp()).ln() + sig(1.0);
        let want = 4.0 * (l0 + 3.0 * l1) / 4.0;
        assert!((l - want).abs() < 1e-12, "{l} vs {want}");
        assert!((g[0] - 2.0 * (sig(0.5) - 0.5) / 4.0).abs() < 1e-12);
        assert!((g[1] - 2.0 * 3.0 * (sig(-1.0) - sig(1.0)) / 4.0).abs() < 1e-12);
        // At s = t the gradient vanishes, at any temperature.
        let mut g = [0.0; 2];
        pointwise_bce(&Rows { student: &t, teacher: &t, weight: &w }, 3.0, 1.0, &mut g);
        assert!(g.iter().all(|x| x.abs() < 1e-15), "{g:?}");
    }

    #[test]
    fn logit_mse_hand_checked_and_masked_rows_ignored() {
        let (s, t, w) = ([1.0, 5.0, 0.5], [3.0, -100.0, 0.0], [1.0, 0.0, 1.0]);
        let mut g = [10.0, 10.0, 10.0];
        let l = logit_mse(&Rows { student: &s, teacher: &t, weight: &w }, 0.5, &mut g);
        // (4 + 0.25)/2; gradients 0.5·2·(−2)/2 and 0.5·2·0.5/2 added to 10; row 1 untouched.
        assert!((l - 2.125).abs() < 1e-12);
        assert_eq!(g, [10.0 - 1.0, 10.0, 10.0 + 0.25]);
    }

    #[test]
    fn pairwise_hand_checked() {
        // One pair (0, 1), T = 1: d = 1 − 3 = −2, P = σ(2 − 0) = σ(2).
        let (s, t, w) = ([1.0, 3.0], [2.0, 0.0], [1.0, 1.0]);
        let mut g = [0.0; 2];
        let l = pairwise(&Rows { student: &s, teacher: &t, weight: &w }, &[(0, 1)], 1.0, 1.0, &mut g);
        let want = (1.0 + (-2.0f64).exp()).ln() + 2.0 * sig(2.0);
        assert!((l - want).abs() < 1e-12, "{l} vs {want}");
        assert!((g[0] - (sig(-2.0) - sig(2.0))).abs() < 1e-12);
        assert!((g[0] + g[1]).abs() < 1e-15, "pair gradients cancel");
        // Shifting every student logit changes nothing.
        let mut g2 = [0.0; 2];
        let l2 = pairwise(&Rows { student: &[11.0, 13.0], teacher: &t, weight: &w }, &[(0, 1)], 1.0, 1.0, &mut g2);
        assert!((l - l2).abs() < 1e-12 && (g[0] - g2[0]).abs() < 1e-12);
    }

    #[test]
    fn listwise_hand_checked() {
        // One group of two: p = softmax([0, ln 3]) = [1/4, 3/4], q = softmax([ln 3, 0]) = [3/4, 1/4].
        let (s, t, w) = ([0.0, 3f64.ln()], [3f64.ln(), 0.0], [1.0, 1.0]);
        let groups = Groups::from_members(vec![vec![0, 1]]);
        let mut g = [0.0; 2];
        let l = listwise(&Rows { student: &s, teacher: &t, weight: &w }, &groups, 1.0, 1.0, &mut g);
        let want = -(0.75 * 0.25f64.ln() + 0.25 * 0.75f64.ln());
        assert!((l - want).abs() < 1e-12, "{l} vs {want}");
        assert!((g[0] - (0.25 - 0.75)).abs() < 1e-12 && (g[1] - 0.5).abs() < 1e-12, "{g:?}");
        // A singleton group contributes nothing.
        let groups = Groups::from_members(vec![vec![0]]);
        let mut g = [0.0; 2];
        assert_eq!(listwise(&Rows { student: &s, teacher: &t, weight: &w }, &groups, 1.0, 1.0, &mut g), 0.0);
        assert_eq!(g, [0.0, 0.0]);
    }

    fn case() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = vec![0.3, -1.2, 2.0, 0.7, -0.4, 1.5];
        let t = vec![1.1, -0.5, 0.2, 0.9, -2.0, 0.0];
        let w = vec![1.0, 0.5, 2.0, 0.0, 1.5, 1.0];
        (s, t, w)
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (s, t, w) = case();
        for temp in [0.5, 1.0, 3.0] {
            check_grad(&s, &|x, g| pointwise_bce(&Rows { student: x, teacher: &t, weight: &w }, temp, 0.7, g) * 0.7);
            let pairs = [(0u32, 1u32), (2, 0), (4, 5), (1, 4), (5, 2), (3, 0)];
            check_grad(&s, &|x, g| pairwise(&Rows { student: x, teacher: &t, weight: &w }, &pairs, temp, 1.3, g) * 1.3);
            let groups = Groups::from_members(vec![vec![0, 1, 2], vec![3], vec![4, 5]]);
            check_grad(&s, &|x, g| {
                listwise(&Rows { student: x, teacher: &t, weight: &w }, &groups, temp, 0.9, g) * 0.9
            });
        }
        check_grad(&s, &|x, g| logit_mse(&Rows { student: x, teacher: &t, weight: &w }, 2.0, g) * 2.0);
    }

    #[test]
    fn f32_matches_f64() {
        let (s, t, w) = case();
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (s32, t32, w32) = (f(&s), f(&t), f(&w));
        let pairs = [(0u32, 1u32), (2, 0), (4, 5)];
        let (mut g64, mut g32) = (vec![0.0; 6], vec![0f32; 6]);
        let l64 = pairwise(&Rows { student: &s, teacher: &t, weight: &w }, &pairs, 2.0, 1.0, &mut g64);
        let l32 = pairwise(&Rows { student: &s32, teacher: &t32, weight: &w32 }, &pairs, 2.0, 1.0, &mut g32);
        assert!((l64 - l32).abs() < 1e-5);
        for (a, b) in g64.iter().zip(&g32) {
            assert!((a - *b as f64).abs() < 1e-6);
        }
    }
}
