//! Paired bootstrap comparison of two models scored on the same rows.
//!
//! Both models are evaluated on the same resamples, so row-to-row noise cancels and
//! the interval reflects the difference only. Resampling uses Poisson(1) weights per
//! unit (the Poisson bootstrap), where a unit is a group (request or user; rows of a
//! request are correlated, so they are resampled together) or a row. Each resample has
//! its own RNG stream derived from (seed, index): results do not depend on threads.

use crate::auc::auc_sorted;
use crate::binary::bce;
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The metric being compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Higher is better.
    Auc,
    /// Lower is better.
    Logloss,
    /// Lower is better.
    Rmse,
    /// AUC against labels drawn from the true probabilities, in expectation
    /// ([`crate::truth::expected_auc`]). Higher is better.
    ExpectedAuc,
    /// Mean per-request NDCG@K with the true probability as gain. Higher is better.
    Ndcg,
    /// Auction winners' CTR. Higher is better.
    Ctr,
    /// Auction winners' expected clicks. Higher is better.
    Clicks,
    /// Auction cost per click. Lower is better (advertisers pay less per click).
    Cpc,
    /// Auction revenue per 1000 requests. Higher is better.
    Ecpm,
    /// Auction winners' mean pCTR minus their mean true CTR. Nearer zero is better.
    CalibrationError,
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// A signed error: smaller magnitude is better.
    NearZero,
}

impl Metric {
    pub fn better(self) -> Better {
        match self {
            Metric::Auc | Metric::ExpectedAuc | Metric::Ndcg | Metric::Ctr | Metric::Clicks | Metric::Ecpm => {
                Better::Higher
            }
            Metric::Logloss | Metric::Rmse | Metric::Cpc => Better::Lower,
            Metric::CalibrationError => Better::NearZero,
        }
    }

    pub fn higher_is_better(self) -> bool {
        self.better() == Better::Higher
    }

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Auc => "auc",
            Metric::Logloss => "logloss",
            Metric::Rmse => "rmse",
            Metric::ExpectedAuc => "exp_auc",
            Metric::Ndcg => "ndcg",
            Metric::Ctr => "ctr",
            Metric::Clicks => "clicks",
            Metric::Cpc => "cpc",
            Metric::Ecpm => "ecpm",
            Metric::CalibrationError => "calib_err",
        }
    }

    /// Relative improvement of `b` over `a`, positive when `b` is better:
    /// `(b − a)/|a|` (higher is better), `(a − b)/|a|` (lower is better),
    /// `(|a| − |b|)/max(|a|, |b|)` (nearer zero is better: the share of the larger error
    /// that the other removes, in [−1, 1]; relative to `|a|` alone it would explode when
    /// A's error happens to be near 0).
    pub fn relative_lift(self, a: f64, b: f64) -> f64 {
        match self.better() {
            Better::Higher => (b - a) / a.abs(),
            Better::Lower => (a - b) / a.abs(),
            Better::NearZero => (a.abs() - b.abs()) / a.abs().max(b.abs()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BootstrapConfig {
    pub resamples: usize,
    pub seed: u64,
    /// Two-sided level: 0.05 gives a 95% interval.
    pub alpha: f64,
    /// Smallest relative lift called significant (the seed's 0.1% = 0.001).
    pub min_lift: f64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig { resamples: 1000, seed: 17, alpha: 0.05, min_lift: 0.001 }
    }
}

/// Model B against model A.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lift {
    pub metric: Metric,
    pub a: f64,
    pub b: f64,
    /// Relative improvement of B over A, positive when B is better
    /// ([`Metric::relative_lift`]).
    pub lift: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// |lift| ≥ min_lift and the interval excludes zero.
    pub significant: bool,
    pub resamples: usize,
}

/// Rows to compare: predictions of both models (probabilities for binary metrics),
/// labels, optional weights and groups.
pub struct Paired<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub labels: &'a [f32],
    pub weights: Option<&'a [f32]>,
    pub groups: Option<&'a [u64]>,
}

/// Compares B with A on a row-level metric (AUC, logloss, RMSE). `None` when the
/// metric is undefined on the full data (e.g. AUC on a single class).
pub fn paired_bootstrap(metric: Metric, d: &Paired<'_>, cfg: &BootstrapConfig) -> Option<Lift> {
    let n = d.labels.len();
    assert!(d.a.len() == n && d.b.len() == n, "paired predictions differ in length");
    let base_w = |i: usize| d.weights.map_or(1.0, |w| w[i] as f64);
    // Unit index per row.
    let (unit, n_units) = match d.groups {
        Some(g) => units_of(g),
        None => ((0..n as u32).collect(), n),
    };
    let sort = |p: &[f32]| {
        let mut o: Vec<u32> = (0..n as u32).collect();
        o.sort_unstable_by(|&x, &y| p[x as usize].total_cmp(&p[y as usize]));
        o
    };
    let (oa, ob) = match metric {
        Metric::Auc => (sort(d.a), sort(d.b)),
        Metric::Logloss | Metric::Rmse => (Vec::new(), Vec::new()),
        other => panic!("paired_bootstrap: {other:?} is not a row-level metric of predictions and labels"),
    };
    paired_bootstrap_units(metric, n_units, cfg, |k| {
        let w = |i: usize| base_w(i) * k[unit[i] as usize];
        match metric {
            Metric::Auc => Some((auc_sorted(&oa, d.a, d.labels, w)?, auc_sorted(&ob, d.b, d.labels, w)?)),
            _ => {
                let (mut sa, mut sb, mut sw) = (0.0, 0.0, 0.0);
                for i in 0..n {
                    let wi = w(i);
                    if wi == 0.0 {
                        continue;
                    }
                    let y = d.labels[i] as f64;
                    let (pa, pb) = (d.a[i] as f64, d.b[i] as f64);
                    if metric == Metric::Logloss {
                        sa += wi * bce(pa, y);
                        sb += wi * bce(pb, y);
                    } else {
                        sa += wi * (pa - y) * (pa - y);
                        sb += wi * (pb - y) * (pb - y);
                    }
                    sw += wi;
                }
                if sw == 0.0 {
                    return None;
                }
                let (ma, mb) = (sa / sw, sb / sw);
                Some(if metric == Metric::Rmse { (ma.sqrt(), mb.sqrt()) } else { (ma, mb) })
            }
        }
    })
}

/// Dense unit indices of group ids, in order of first appearance: (unit per row, units).
pub fn units_of(groups: &[u64]) -> (Vec<u32>, usize) {
    let mut ids = HashMap::new();
    let u: Vec<u32> = groups
        .iter()
        .map(|x| {
            let k = ids.len() as u32;
            *ids.entry(*x).or_insert(k)
        })
        .collect();
    (u, ids.len())
}

/// The paired bootstrap of any statistic of `n_units` resampling units (requests, or
/// rows): `eval(k)` computes the metric of A and of B with unit `u` counted `k[u]`
/// times (all ones for the full data; `None` where the metric is undefined). Every
/// resample draws one Poisson(1) count per unit from its own RNG stream, derived from
/// (seed, resample index), and the same counts serve both models.
pub fn paired_bootstrap_units<F>(metric: Metric, n_units: usize, cfg: &BootstrapConfig, eval: F) -> Option<Lift>
where
    F: Fn(&[f64]) -> Option<(f64, f64)> + Sync,
{
    let (a, b) = eval(&vec![1.0; n_units])?;
    let lift = metric.relative_lift(a, b);
    if !lift.is_finite() {
        return None;
    }
    let poisson = Poisson::new(1.0).expect("valid");
    let mut lifts: Vec<f64> = (0..cfg.resamples)
        .into_par_iter()
        .filter_map(|r| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let k: Vec<f64> = (0..n_units).map(|_| poisson.sample(&mut rng)).collect();
            eval(&k).map(|(a, b)| metric.relative_lift(a, b)).filter(|l| l.is_finite())
        })
        .collect();
    lifts.sort_by(f64::total_cmp);
    if lifts.is_empty() {
        return None;
    }
    let q = |p: f64| lifts[((p * (lifts.len() - 1) as f64).round() as usize).min(lifts.len() - 1)];
    let (lo, hi) = (q(cfg.alpha / 2.0), q(1.0 - cfg.alpha / 2.0));
    Some(Lift {
        metric,
        a,
        b,
        lift,
        ci_low: lo,
        ci_high: hi,
        significant: lift.abs() >= cfg.min_lift && (lo > 0.0 || hi < 0.0),
        resamples: lifts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn data(n: usize, noise_b: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u64>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut a, mut b, mut y, mut g) = (vec![], vec![], vec![], vec![]);
        for i in 0..n {
            let z: f64 = rng.random::<f64>() * 4.0 - 2.0;
            let p = 1.0 / (1.0 + (-z).exp());
            y.push((rng.random::<f64>() < p) as u8 as f32);
            let na: f64 = (rng.random::<f64>() - 0.5) * 3.0;
            let nb: f64 = (rng.random::<f64>() - 0.5) * noise_b;
            a.push((1.0 / (1.0 + (-(z + na)).exp())) as f32);
            b.push((1.0 / (1.0 + (-(z + nb)).exp())) as f32);
            g.push((i / 10) as u64);
        }
        (a, b, y, g)
    }

    #[test]
    fn better_model_is_significant_and_identical_models_are_not() {
        let (a, b, y, g) = data(20_000, 0.5);
        let cfg = BootstrapConfig { resamples: 200, ..Default::default() };
        for m in [Metric::Auc, Metric::Logloss] {
            let d = Paired { a: &a, b: &b, labels: &y, weights: None, groups: Some(&g) };
            let l = paired_bootstrap(m, &d, &cfg).unwrap();
            assert!(l.lift > 0.0 && l.ci_low > 0.0 && l.significant, "{l:?}");
            assert!(l.ci_low <= l.lift && l.lift <= l.ci_high, "{l:?}");
            let same = Paired { a: &a, b: &a, labels: &y, weights: None, groups: None };
            let l = paired_bootstrap(m, &same, &cfg).unwrap();
            assert_eq!((l.lift, l.ci_low, l.ci_high, l.significant), (0.0, 0.0, 0.0, false));
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (a, b, y, _) = data(3000, 2.0);
        let d = Paired { a: &a, b: &b, labels: &y, weights: None, groups: None };
        let cfg = BootstrapConfig { resamples: 100, ..Default::default() };
        assert_eq!(paired_bootstrap(Metric::Auc, &d, &cfg), paired_bootstrap(Metric::Auc, &d, &cfg));
    }

    #[test]
    fn reversed_models_reverse_the_sign() {
        let (a, b, y, _) = data(5000, 0.5);
        let cfg = BootstrapConfig { resamples: 100, ..Default::default() };
        let ab =
            paired_bootstrap(Metric::Rmse, &Paired { a: &a, b: &b, labels: &y, weights: None, groups: None }, &cfg)
                .unwrap();
        let ba =
            paired_bootstrap(Metric::Rmse, &Paired { a: &b, b: &a, labels: &y, weights: None, groups: None }, &cfg)
                .unwrap();
        assert!(ab.lift > 0.0 && ba.lift < 0.0);
        assert_eq!(ab.a, ba.b);
    }

    #[test]
    fn lifts_follow_each_metric_direction() {
        assert_eq!(Metric::Auc.relative_lift(0.5, 0.625), 0.25);
        assert_eq!(Metric::Cpc.relative_lift(2.0, 1.5), 0.25);
        assert_eq!(Metric::Ecpm.relative_lift(200.0, 150.0), -0.25);
        // Calibration error: relative to the larger magnitude, sign ignored.
        assert_eq!(Metric::CalibrationError.relative_lift(-0.5, 0.125), 0.75);
        assert_eq!(Metric::CalibrationError.relative_lift(0.0625, -0.5), -0.875);
        assert_eq!(Metric::CalibrationError.relative_lift(0.0, 0.2), -1.0);
        assert!(Metric::CalibrationError.relative_lift(0.0, 0.0).is_nan());
    }
}
