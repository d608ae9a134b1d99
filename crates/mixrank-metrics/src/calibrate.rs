//! Post-hoc calibration of binary predictions: Platt scaling and isotonic regression,
//! fitted on (prediction, label, weight) rows in f64, and the expected calibration error
//! that reports them. Plain slices; the checkpoint file and the per-surface bookkeeping
//! live in `mixrank-train` (`calibration.rs`).

use crate::binary::EPS;

/// Platt scaling: `q = σ(a·z + b)` with `z = logit(p)`, the model's logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

/// Why a calibrator could not be fitted on the given rows.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    /// No row with positive weight, or the weighted labels hold one class only (the
    /// maximum-likelihood fit does not exist: Platt's `a, b` diverge).
    OneClass { positive_weight: f64, negative_weight: f64 },
}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::OneClass { positive_weight, negative_weight } => write!(
                f,
                "the rows hold one class only (positive weight {positive_weight}, negative weight {negative_weight})"
            ),
        }
    }
}

/// `ln(p / (1 − p))` with `p` clamped to [EPS, 1 − EPS].
#[inline]
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

#[inline]
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Weighted class totals; an error when either is 0.
fn classes(labels: &[f32], weights: &[f64]) -> Result<(), FitError> {
    let (mut pos, mut neg) = (0.0, 0.0);
    for (&y, &w) in labels.iter().zip(weights) {
        pos += w * y as f64;
        neg += w * (1.0 - y as f64);
    }
    if pos > 0.0 && neg > 0.0 {
        Ok(())
    } else {
        Err(FitError::OneClass { positive_weight: pos, negative_weight: neg })
    }
}

impl Platt {
    /// The identity map (`a = 1, b = 0`).
    pub const IDENTITY: Platt = Platt { a: 1.0, b: 0.0 };

    /// Maximum-likelihood `a, b` by Newton's method (IRLS) on the weighted log-loss of
    /// `σ(a·logit(p) + b)` against the labels, each step halved until the loss does not
    /// increase (beyond the rounding of the loss's sum, 1e-12 relative: near the optimum
    /// the loss changes by less than that, and full Newton steps then converge on the
    /// gradient); stops when the step is below 1e-12 (in max norm) or after 100 steps.
    /// Labels in [0, 1] (fractional labels are weights of both classes).
    pub fn fit(probs: &[f32], labels: &[f32], weights: &[f64]) -> Result<Platt, FitError> {
        assert_eq!(probs.len(), labels.len(), "predictions and labels differ in length");
        assert_eq!(probs.len(), weights.len(), "predictions and weights differ in length");
        classes(labels, weights)?;
        let z: Vec<f64> = probs.iter().map(|&p| logit(p as f64)).collect();
        let loss = |a: f64, b: f64| -> f64 {
            let mut l = 0.0;
            for i in 0..z.len() {
                let s = a * z[i] + b;
                let y = labels[i] as f64;
                // −[y ln σ(s) + (1−y) ln(1−σ(s))] = softplus(s) − y·s, computed stably.
                let softplus = if s > 0.0 { s + (-s).exp().ln_1p() } else { s.exp().ln_1p() };
                l += weights[i] * (softplus - y * s);
            }
            l
        };
        let (mut a, mut b) = (1.0, 0.0);
        let mut current = loss(a, b);
        for _ in 0..100 {
            // Gradient g and Hessian H of the loss in (a, b).
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for i in 0..z.len() {
                let q = sigmoid(a * z[i] + b);
                let r = weights[i] * (q - labels[i] as f64);
                let v = weights[i] * q * (1.0 - q);
                ga += r * z[i];
                gb += r;
                haa += v * z[i] * z[i];
                hab += v * z[i];
                hbb += v;
            }
            let det = haa * hbb - hab * hab;
            if !(det.is_finite() && det > 0.0) {
                break;
            }
            let da = (hbb * ga - hab * gb) / det;
            let db = (haa * gb - hab * ga) / det;
            let mut t = 1.0;
            let mut accepted = false;
            for _ in 0..40 {
                let (na, nb) = (a - t * da, b - t * db);
                let l = loss(na, nb);
                if l <= current + 1e-12 * current.abs() {
                    (a, b, current) = (na, nb, l);
                    accepted = true;
                    break;
                }
                t *= 0.5;
            }
            if !accepted || (t * da).abs().max((t * db).abs()) < 1e-12 {
                break;
            }
        }
        Ok(Platt { a, b })
    }

    /// The calibrated probability of prediction `p`.
    pub fn apply(&self, p: f64) -> f64 {
        sigmoid(self.a * logit(p) + self.b)
    }
}

/// Isotonic regression of the labels on the predictions: a non-decreasing step function
/// fitted by pool-adjacent-violators, applied with linear interpolation between the
/// centres of its blocks (constant beyond the first and last).
#[derive(Debug, Clone, PartialEq)]
pub struct Isotonic {
    /// Each block's weighted mean prediction, strictly increasing.
    pub x: Vec<f64>,
    /// Each block's weighted label rate, non-decreasing.
    pub y: Vec<f64>,
}

impl Isotonic {
    /// Pool-adjacent-violators over the rows sorted by prediction (rows with the same
    /// prediction start in one block, so ties get one value); rows of weight 0 are left
    /// out.
    pub fn fit(probs: &[f32], labels: &[f32], weights: &[f64]) -> Result<Isotonic, FitError> {
        assert_eq!(probs.len(), labels.len(), "predictions and labels differ in length");
        assert_eq!(probs.len(), weights.len(), "predictions and weights differ in length");
        classes(labels, weights)?;
        let mut order: Vec<usize> = (0..probs.len()).filter(|&i| weights[i] > 0.0).collect();
        order.sort_by(|&i, &j| probs[i].total_cmp(&probs[j]));
        // Blocks as (Σw, Σw·p, Σw·y), merged while a block's rate is not above the last's.
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        let mut last_p: Option<f32> = None;
        for &i in &order {
            let (w, p, y) = (weights[i], probs[i] as f64, labels[i] as f64);
            match (last_p == Some(probs[i]), blocks.last_mut()) {
                (true, Some(b)) => {
                    b.0 += w;
                    b.1 += w * p;
                    b.2 += w * y;
                }
                _ => blocks.push((w, w * p, w * y)),
            }
            last_p = Some(probs[i]);
            while blocks.len() >= 2 {
                let (u, v) = (blocks[blocks.len() - 2], blocks[blocks.len() - 1]);
                // rate(u) ≥ rate(v) ⇔ u.2·v.0 ≥ v.2·u.0 (weights positive).
                if u.2 * v.0 >= v.2 * u.0 {
                    blocks.pop();
                    let b = blocks.last_mut().expect("two blocks");
                    *b = (u.0 + v.0, u.1 + v.1, u.2 + v.2);
                } else {
                    break;
                }
            }
        }
        Ok(Isotonic { x: blocks.iter().map(|b| b.1 / b.0).collect(), y: blocks.iter().map(|b| b.2 / b.0).collect() })
    }

    /// The calibrated probability of prediction `p`.
    pub fn apply(&self, p: f64) -> f64 {
        let (x, y) = (&self.x, &self.y);
        match x.len() {
            0 => p,
            _ if p <= x[0] => y[0],
            n if p >= x[n - 1] => y[n - 1],
            _ => {
                // First block centre above p; x[k − 1] ≤ p < x[k].
                let k = x.partition_point(|&c| c <= p);
                let t = (p - x[k - 1]) / (x[k] - x[k - 1]);
                y[k - 1] + t * (y[k] - y[k - 1])
            }
        }
    }
}

/// Expected calibration error over `bins` equal-width bins of the prediction:
/// `Σ_b (W_b / W) · |mean p_b − mean y_b|` (weighted means; a prediction of exactly 1
/// falls in the last bin). `None` without weight.
pub fn ece(probs: &[f32], labels: &[f32], weights: Option<&[f32]>, bins: usize) -> Option<f64> {
    assert_eq!(probs.len(), labels.len(), "predictions and labels differ in length");
    assert!(bins > 0, "at least one bin");
    let mut acc = vec![(0.0f64, 0.0f64, 0.0f64); bins];
    for i in 0..probs.len() {
        let w = weights.map_or(1.0, |w| w[i] as f64);
        let p = (probs[i] as f64).clamp(0.0, 1.0);
        let b = ((p * bins as f64) as usize).min(bins - 1);
        acc[b].0 += w;
        acc[b].1 += w * p;
        acc[b].2 += w * labels[i] as f64;
    }
    let total: f64 = acc.iter().map(|a| a.0).sum();
    (total > 0.0).then(|| acc.iter().map(|a| (a.1 - a.2).abs()).sum::<f64>() / total)
}

/// Bins of [`ece`] in reports.
pub const ECE_BINS: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pav_on_a_hand_computed_sequence() {
        // Labels by ascending prediction: 1 0 0 1 0 1 1 (unit weights).
        // PAV: [1] [0] → pool {1,0} = 0.5; then 0 < 0.5 → pool {1,0,0} = 1/3;
        // 1 > 1/3 new block; 0 → pool {1,0} = 0.5 > 1/3, stays; 1, 1 → new blocks.
        let p = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];
        let y = [1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let iso = Isotonic::fit(&p, &y, &[1.0; 7]).unwrap();
        let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&iso.y, &[1.0 / 3.0, 0.5, 1.0]), "{iso:?}");
        // Block centres: mean of 0.1..0.3 = 0.2, of 0.4, 0.5 = 0.45, of 0.6, 0.7 = 0.65
        // (of the f32 predictions, as the fit sees them).
        let f = |v: f32| v as f64;
        let centres = [(f(0.1) + f(0.2) + f(0.3)) / 3.0, (f(0.4) + f(0.5)) / 2.0, (f(0.6) + f(0.7)) / 2.0];
        assert!(close(&iso.x, &centres), "{iso:?}");
        // Interpolation: halfway between 0.2 and 0.45 → halfway between 1/3 and 1/2.
        let mid = (centres[0] + centres[1]) / 2.0;
        assert!((iso.apply(mid) - (1.0 / 3.0 + 0.5) / 2.0).abs() < 1e-12);
        assert!((iso.apply(0.05) - 1.0 / 3.0).abs() < 1e-12, "constant below the first centre");
        assert!((iso.apply(0.99) - 1.0).abs() < 1e-12, "constant above the last centre");
        assert!((iso.apply(centres[1]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pav_pools_ties_and_counts_weights() {
        // Two rows at 0.5 (labels 1, 0) are one block; a weight of 3 counts as three rows.
        let iso = Isotonic::fit(&[0.5, 0.5, 0.9], &[1.0, 0.0, 1.0], &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(iso.y, vec![0.5, 1.0]);
        let w = Isotonic::fit(&[0.2, 0.8], &[1.0, 0.0], &[3.0, 1.0]).unwrap();
        let r = Isotonic::fit(&[0.2, 0.2, 0.2, 0.8], &[1.0, 1.0, 1.0, 0.0], &[1.0; 4]).unwrap();
        assert_eq!(w, r);
        assert_eq!(w.y, vec![0.75], "a violator pools everything: 3 positives of 4");
        // Weight 0 rows are left out.
        let z = Isotonic::fit(&[0.2, 0.3, 0.8], &[1.0, 0.0, 0.0], &[1.0, 0.0, 1.0]).unwrap();
        assert_eq!(z.y, vec![0.5]);
    }

    #[test]
    fn platt_recovers_known_parameters_from_expected_labels() {
        // Each logit z appears once as a positive with weight σ(a z + b) and once as a
        // negative with weight 1 − σ(a z + b): the expected log-likelihood, maximised
        // exactly at the true (a, b) (the model is well specified). The only error left
        // is Newton's stopping rule (steps below 1e-12, quadratic convergence), so the
        // fit must match to ~1e-9 (allowing for the rounding of the f32 predictions'
        // logits, relative 6e-8 of |z| ≤ 4 in a sum of 2·81 terms).
        let (a, b) = (1.7, -0.8);
        let (mut p, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..81 {
            let z = -4.0 + 0.1 * i as f64;
            let q = sigmoid(a * z + b);
            for (label, weight) in [(1.0f32, q), (0.0, 1.0 - q)] {
                p.push(sigmoid(z) as f32);
                y.push(label);
                w.push(weight);
            }
        }
        // The fit sees logit(f32 p), not z: fit against those exactly.
        let zs: Vec<f64> = p.iter().map(|&x| logit(x as f64)).collect();
        let mut w2 = w.clone();
        for (k, pair) in w2.chunks_mut(2).enumerate() {
            let q = sigmoid(a * zs[2 * k] + b);
            pair[0] = q;
            pair[1] = 1.0 - q;
        }
        let fit = Platt::fit(&p, &y, &w2).unwrap();
        assert!((fit.a - a).abs() < 1e-9 && (fit.b - b).abs() < 1e-9, "{fit:?}");
        // With the weights of the unrounded z the fit is off only by the rounding of p.
        let fit = Platt::fit(&p, &y, &w).unwrap();
        assert!((fit.a - a).abs() < 1e-4 && (fit.b - b).abs() < 1e-4, "{fit:?}");
    }

    #[test]
    fn platt_on_sampled_labels_is_within_its_standard_error() {
        // Labels drawn from σ(a z + b) with a fixed seed: the MLE is within a few standard
        // errors of the truth; the standard errors are the square roots of the diagonal
        // of the inverse Fisher information Σ v_i [z_i² z_i; z_i 1], v = q (1 − q).
        use rand::{Rng, SeedableRng};
        let (a, b) = (0.6, 0.4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        let (mut p, mut y) = (Vec::new(), Vec::new());
        let (mut iaa, mut iab, mut ibb) = (0.0, 0.0, 0.0);
        for _ in 0..n {
            let z: f64 = rng.random_range(-3.0..3.0);
            let q = sigmoid(a * z + b);
            let zr = logit(sigmoid(z) as f32 as f64);
            let v = q * (1.0 - q);
            (iaa, iab, ibb) = (iaa + v * zr * zr, iab + v * zr, ibb + v);
            p.push(sigmoid(z) as f32);
            y.push(if rng.random::<f64>() < q { 1.0f32 } else { 0.0 });
        }
        let det = iaa * ibb - iab * iab;
        let (se_a, se_b) = ((ibb / det).sqrt(), (iaa / det).sqrt());
        let fit = Platt::fit(&p, &y, &vec![1.0; n]).unwrap();
        assert!((fit.a - a).abs() < 4.0 * se_a, "a {} vs {a} (se {se_a})", fit.a);
        assert!((fit.b - b).abs() < 4.0 * se_b, "b {} vs {b} (se {se_b})", fit.b);
    }

    #[test]
    fn one_class_is_refused() {
        let e = Platt::fit(&[0.2, 0.4], &[0.0, 0.0], &[1.0, 1.0]).unwrap_err();
        assert!(matches!(e, FitError::OneClass { positive_weight: 0.0, .. }), "{e:?}");
        assert!(Isotonic::fit(&[0.2], &[1.0], &[1.0]).is_err());
    }

    #[test]
    fn ece_hand_computed() {
        // Bin [0.1, 0.2): p 0.1, 0.15 (labels 0, 1): |0.25 − 1| = 0.75;
        // bin [0.9, 1]: p 0.9, 1.0 (labels 1, 1): |1.9 − 2| = 0.1. ECE = 0.85 / 4.
        let e = ece(&[0.1, 0.15, 0.9, 1.0], &[0.0, 1.0, 1.0, 1.0], None, 10).unwrap();
        // f32 inputs: 0.1, 0.15, 0.9 carry rounding of ~1e-8 each.
        assert!((e - 0.2125).abs() < 1e-7, "{e}");
        assert_eq!(ece(&[], &[], None, 10), None);
        // Perfectly calibrated bins give 0.
        assert!(ece(&[0.5, 0.5], &[1.0, 0.0], None, 10).unwrap().abs() < 1e-12);
    }
}
