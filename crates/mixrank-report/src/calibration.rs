//! Reliability curves: predictions sorted and cut into bins of equal labelled weight;
//! per bin, the weighted mean prediction against the weighted label rate. A calibrated
//! model's bins lie on the diagonal.

/// One bin of a reliability curve.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationBin {
    /// Weighted mean predicted probability of the bin's rows.
    pub mean_prediction: f64,
    /// Weighted mean label of the bin's rows.
    pub label_rate: f64,
    /// Total weight (row count without weights).
    pub weight: f64,
}

/// Cuts the labelled rows (mask ≠ 0; all rows without a mask) into at most `n_bins`
/// bins of (nearly) equal weight by predicted probability. Rows with equal predictions
/// never straddle two bins, so a model with few distinct scores gets fewer bins.
pub fn calibration_bins(
    preds: &[f32],
    labels: &[f32],
    mask: Option<&[f32]>,
    weights: Option<&[f32]>,
    n_bins: usize,
) -> Vec<CalibrationBin> {
    let mut idx: Vec<usize> = (0..preds.len()).filter(|&i| mask.is_none_or(|m| m[i] != 0.0)).collect();
    idx.sort_by(|&a, &b| preds[a].total_cmp(&preds[b]));
    let w = |i: usize| weights.map_or(1.0, |w| w[i] as f64);
    let total: f64 = idx.iter().map(|&i| w(i)).sum();
    let mut bins = Vec::new();
    if idx.is_empty() || n_bins == 0 || total <= 0.0 {
        return bins;
    }
    let target = total / n_bins as f64;
    let (mut sw, mut sp, mut sy) = (0.0, 0.0, 0.0);
    for (k, &i) in idx.iter().enumerate() {
        let wi = w(i);
        sw += wi;
        sp += wi * preds[i] as f64;
        sy += wi * labels[i] as f64;
        let last = k + 1 == idx.len();
        let tie_next = !last && preds[idx[k + 1]] == preds[i];
        if last || (sw >= target && !tie_next) {
            if sw > 0.0 {
                bins.push(CalibrationBin { mean_prediction: sp / sw, label_rate: sy / sw, weight: sw });
            }
            (sw, sp, sy) = (0.0, 0.0, 0.0);
        }
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_count_bins_by_hand() {
        let p = [0.1, 0.2, 0.3, 0.4, 0.6, 0.9];
        let y = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        let b = calibration_bins(&p, &y, None, None, 3);
        assert_eq!(b.len(), 3);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(b[0].mean_prediction, 0.15) && close(b[0].label_rate, 0.0) && b[0].weight == 2.0);
        assert!(close(b[1].mean_prediction, 0.35) && close(b[1].label_rate, 0.5));
        assert!(close(b[2].mean_prediction, 0.75) && close(b[2].label_rate, 1.0));
    }

    #[test]
    fn masks_weights_and_ties() {
        let p = [0.5, 0.5, 0.5, 0.5, 0.9];
        let y = [1.0, 0.0, 0.0, 1.0, 1.0];
        let m = [1.0, 1.0, 1.0, 1.0, 0.0];
        let w = [3.0, 1.0, 1.0, 1.0, 1.0];
        // Four labelled rows with one score: one bin, whatever n_bins says.
        let b = calibration_bins(&p, &y, Some(&m), Some(&w), 4);
        assert_eq!(b.len(), 1);
        assert!((b[0].label_rate - 4.0 / 6.0).abs() < 1e-12 && b[0].weight == 6.0);
        assert!(calibration_bins(&[], &[], None, None, 10).is_empty());
    }
}
