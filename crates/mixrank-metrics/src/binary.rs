//! Metrics of a binary task: AUC, logloss, normalised entropy, calibration, gAUC.

use crate::auc::{auc, gauc};
use serde::{Deserialize, Serialize};

/// Probabilities are clamped to [EPS, 1 − EPS] inside logloss so a confident miss costs
/// ln(1/EPS) ≈ 16.1 nats instead of infinity.
pub const EPS: f64 = 1e-7;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Rows.
    pub rows: u64,
    /// Sum of weights.
    pub weight: f64,
    /// Weighted positive rate.
    pub label_rate: f64,
    pub mean_prediction: f64,
    pub auc: Option<f64>,
    /// Weighted mean binary cross-entropy (nats).
    pub logloss: f64,
    /// Normalised entropy: logloss divided by the entropy of the label rate (He et al.,
    /// 2014). Below 1 means better than predicting the base rate. `None` when the
    /// label rate is 0 or 1.
    pub ne: Option<f64>,
    /// Mean prediction / label rate (1 is perfectly calibrated on average).
    pub calibration: Option<f64>,
    /// Group AUC when groups were given.
    pub gauc: Option<f64>,
    pub gauc_groups: Option<usize>,
}

/// Weighted binary cross-entropy of one prediction.
#[inline]
pub fn bce(p: f64, y: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// All binary metrics over the rows (labels in {0, 1}).
pub fn binary_metrics(probs: &[f32], labels: &[f32], weights: Option<&[f32]>, groups: Option<&[u64]>) -> BinaryMetrics {
    assert_eq!(probs.len(), labels.len(), "predictions and labels differ in length");
    let w = |i: usize| weights.map_or(1.0, |w| w[i] as f64);
    let (mut sw, mut sy, mut sp, mut sl) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..probs.len() {
        let (p, y, wi) = (probs[i] as f64, labels[i] as f64, w(i));
        sw += wi;
        sy += wi * y;
        sp += wi * p;
        sl += wi * bce(p, y);
    }
    let rate = if sw > 0.0 { sy / sw } else { 0.0 };
    let logloss = if sw > 0.0 { sl / sw } else { 0.0 };
    let base = if rate > 0.0 && rate < 1.0 { Some(bce(rate, rate)) } else { None };
    let g = groups.map(|g| gauc(probs, labels, weights, g));
    BinaryMetrics {
        rows: probs.len() as u64,
        weight: sw,
        label_rate: rate,
        mean_prediction: if sw > 0.0 { sp / sw } else { 0.0 },
        auc: auc(probs, labels, weights),
        logloss,
        ne: base.map(|b| logloss / b),
        calibration: (sy > 0.0).then(|| sp / sy),
        gauc: g.and_then(|g| g.gauc),
        gauc_groups: g.map(|g| g.groups_used),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_logloss_ne_calibration() {
        let p = [0.8f32, 0.4, 0.3, 0.9];
        let y = [1.0f32, 0.0, 1.0, 1.0];
        let m = binary_metrics(&p, &y, None, None);
        let ll = -((0.8f64).ln() + (0.6f64).ln() + (0.3f64).ln() + (0.9f64).ln()) / 4.0;
        assert!((m.logloss - ll).abs() < 1e-6, "{} vs {ll}", m.logloss);
        let h = -(0.75f64 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!((m.ne.unwrap() - ll / h).abs() < 1e-6);
        assert!((m.calibration.unwrap() - 2.4 / 3.0).abs() < 1e-6);
        assert_eq!(m.auc, Some(2.0 / 3.0));
        assert_eq!(m.label_rate, 0.75);
    }

    #[test]
    fn weights_count_like_repeated_rows() {
        let m1 = binary_metrics(&[0.2, 0.7, 0.6], &[0., 1., 0.], Some(&[2.0, 1.0, 1.0]), None);
        let m2 = binary_metrics(&[0.2, 0.2, 0.7, 0.6], &[0., 0., 1., 0.], None, None);
        assert!((m1.logloss - m2.logloss).abs() < 1e-12);
        assert_eq!(m1.auc, m2.auc);
        assert_eq!(m1.calibration, m2.calibration);
    }

    #[test]
    fn single_class_segment_has_no_auc_or_ne() {
        let m = binary_metrics(&[0.2, 0.3], &[0., 0.], None, Some(&[1, 1]));
        assert_eq!(m.auc, None);
        assert_eq!(m.ne, None);
        assert_eq!(m.calibration, None);
        assert_eq!(m.gauc, None);
        assert_eq!(m.gauc_groups, Some(0));
        assert!(m.logloss > 0.0);
    }

    #[test]
    fn predicting_the_base_rate_has_ne_one() {
        let y = [1.0f32, 0.0, 0.0, 0.0];
        let m = binary_metrics(&[0.25; 4], &y, None, None);
        assert!((m.ne.unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(m.auc, Some(0.5));
    }
}
