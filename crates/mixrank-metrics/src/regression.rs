//! Metrics of a regression task.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub rows: u64,
    pub weight: f64,
    pub rmse: f64,
    pub mae: f64,
    pub mean_label: f64,
    pub mean_prediction: f64,
}

/// Weighted RMSE and MAE.
pub fn regression_metrics(preds: &[f32], labels: &[f32], weights: Option<&[f32]>) -> RegressionMetrics {
    assert_eq!(preds.len(), labels.len(), "predictions and labels differ in length");
    let (mut sw, mut se, mut sa, mut sy, mut sp) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..preds.len() {
        let w = weights.map_or(1.0, |w| w[i] as f64);
        let (p, y) = (preds[i] as f64, labels[i] as f64);
        sw += w;
        se += w * (p - y) * (p - y);
        sa += w * (p - y).abs();
        sy += w * y;
        sp += w * p;
    }
    let d = if sw > 0.0 { sw } else { 1.0 };
    RegressionMetrics {
        rows: preds.len() as u64,
        weight: sw,
        rmse: (se / d).sqrt(),
        mae: sa / d,
        mean_label: sy / d,
        mean_prediction: sp / d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let m = regression_metrics(&[1.0, 2.0, 4.0], &[1.0, 3.0, 2.0], None);
        assert!((m.rmse - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.mae - 1.0).abs() < 1e-12);
        let w = regression_metrics(&[1.0, 2.0, 4.0], &[1.0, 3.0, 2.0], Some(&[0.0, 1.0, 3.0]));
        assert!((w.rmse - (13.0f64 / 4.0).sqrt()).abs() < 1e-12);
        assert!((w.mae - 7.0 / 4.0).abs() < 1e-12);
    }
}
