//! Metrics against known true probabilities (a simulator's ground truth): the AUC a
//! model would get, in expectation, against labels drawn from the true probabilities,
//! computed exactly; and per-request NDCG@K of the model's ordering with the true
//! probability as gain. Neither depends on which labels happened to be drawn, nor on
//! the position bias of the logged labels.

use crate::bootstrap::{paired_bootstrap_units, units_of, BootstrapConfig, Lift, Metric};
use crate::report::{pick, TaskRows};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Expected AUC against labels `y_i ~ Bernoulli(truth_i)` drawn independently:
///
/// `Σ_{i≠j} w_i w_j t_i (1 − t_j) K(s_i, s_j) / Σ_{i≠j} w_i w_j t_i (1 − t_j)`,
///
/// `K = 1` when `s_i > s_j`, ½ on a tie, 0 otherwise: the pair (i, j) is (positive,
/// negative) with probability `t_i (1 − t_j)`. This is the ratio of expectations (the
/// expected count of correctly ordered pairs over the expected count of pairs), not the
/// expectation of the ratio; with 0/1 truths it is the ordinary AUC. `None` when the
/// denominator vanishes (fewer than two rows, or every truth 0, or every truth 1).
///
/// O(n log n): sorts by score once, then [`expected_auc_sorted`].
pub fn expected_auc(scores: &[f32], truth: &[f32], weights: Option<&[f32]>) -> Option<f64> {
    assert_eq!(scores.len(), truth.len(), "scores and truths differ in length");
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    expected_auc_sorted(&order, scores, truth, |i| weights.map_or(1.0, |w| w[i] as f64))
}

/// [`expected_auc`] over rows already sorted by ascending score (`order`), with a
/// weight per row (the bootstrap sorts once and reweights).
///
/// With `P = Σ w t`, `N = Σ w (1 − t)` and `S = Σ w² t (1 − t)` (the `i = j` terms):
/// the denominator is `P·N − S`. Sweeping tie groups `G` from the lowest score, with
/// `N_below` the `w (1 − t)` of all lower groups, the numerator is
/// `Σ_G [P_G · N_below + ½ (P_G · N_G − S_G)]`: every pair across groups is ordered,
/// every pair inside a group (itself excluded) is a tie.
pub fn expected_auc_sorted(order: &[u32], scores: &[f32], truth: &[f32], weight: impl Fn(usize) -> f64) -> Option<f64> {
    let (mut n_below, mut p_all, mut n_all, mut s_all, mut num) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i] as usize];
        let (mut pg, mut ng, mut sg) = (0.0, 0.0, 0.0);
        let mut j = i;
        while j < order.len() && scores[order[j] as usize] == s {
            let r = order[j] as usize;
            let (w, t) = (weight(r), truth[r] as f64);
            pg += w * t;
            ng += w * (1.0 - t);
            sg += w * w * t * (1.0 - t);
            j += 1;
        }
        num += pg * n_below + 0.5 * (pg * ng - sg);
        n_below += ng;
        p_all += pg;
        n_all += ng;
        s_all += sg;
        i = j;
    }
    let den = p_all * n_all - s_all;
    // `P·N` and `S` are equal in exact arithmetic when no pair exists (one row): a
    // rounding residue is not a pair.
    (den > 1e-12 * p_all * n_all && den > 0.0).then(|| num / den)
}

/// Discount of 0-based rank `r` under cutoff `k`: `1/log2(r + 2)` for `r < k`, else 0.
fn discount(r: usize, k: usize) -> f64 {
    if r < k {
        1.0 / ((r + 2) as f64).log2()
    } else {
        0.0
    }
}

/// NDCG@k of one request: DCG of the rows ordered by descending `scores`, with gain
/// `gains[i]` (a true probability) and discount `1/log2(rank + 1)` for ranks 1..=k, over
/// the DCG of the ideal order (by descending gain). Rows tied on score share their
/// ranks' mean discount, i.e. the expectation over a random order of the tie
/// (McSherry and Najork, 2008), so the result does not depend on row order. `None` when
/// the ideal DCG is 0 (every gain 0) or `k` is 0.
pub fn ndcg_at(scores: &[f32], gains: &[f32], k: usize) -> Option<f64> {
    assert_eq!(scores.len(), gains.len(), "scores and gains differ in length");
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut dcg = 0.0;
    let mut i = 0;
    while i < order.len() && i < k {
        let mut j = i;
        let mut g = 0.0;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            g += gains[order[j]] as f64;
            j += 1;
        }
        let mean_discount = (i..j).map(|r| discount(r, k)).sum::<f64>() / (j - i) as f64;
        dcg += g * mean_discount;
        i = j;
    }
    let mut ideal: Vec<f64> = gains.iter().map(|&g| g as f64).collect();
    ideal.sort_unstable_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(k).enumerate().map(|(r, g)| g * discount(r, k)).sum();
    (idcg > 0.0).then(|| dcg / idcg)
}

/// NDCG@k of every group (request), in ascending group-id order: `(group, NDCG)`,
/// `None` for a group whose gains are all 0.
pub fn ndcg_per_group(scores: &[f32], gains: &[f32], groups: &[u64], k: usize) -> Vec<(u64, Option<f64>)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by_key(|&i| groups[i]);
    let mut out = Vec::new();
    let (mut s, mut g) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < order.len() {
        let id = groups[order[i]];
        s.clear();
        g.clear();
        while i < order.len() && groups[order[i]] == id {
            s.push(scores[order[i]]);
            g.push(gains[order[i]]);
            i += 1;
        }
        out.push((id, ndcg_at(&s, &g, k)));
    }
    out
}

/// Mean NDCG@k over groups, and how many groups had a defined NDCG (the others, whose
/// gains are all 0, are skipped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNdcg {
    pub ndcg: Option<f64>,
    pub groups_used: usize,
    pub groups_skipped: usize,
}

pub fn group_ndcg(scores: &[f32], gains: &[f32], groups: &[u64], k: usize) -> GroupNdcg {
    let per = ndcg_per_group(scores, gains, groups, k);
    let used: Vec<f64> = per.iter().filter_map(|(_, n)| *n).collect();
    GroupNdcg {
        ndcg: (!used.is_empty()).then(|| used.iter().sum::<f64>() / used.len() as f64),
        groups_used: used.len(),
        groups_skipped: per.len() - used.len(),
    }
}

/// One task's metrics against its true probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthMetrics {
    pub rows: u64,
    /// Weighted mean true probability.
    pub mean_truth: f64,
    /// Weighted mean prediction.
    pub mean_prediction: f64,
    /// [`expected_auc`] (weighted).
    pub expected_auc: Option<f64>,
    /// Mean per-request NDCG@k ([`group_ndcg`]); `None` without request ids.
    pub ndcg: Option<f64>,
    /// Requests in that mean.
    pub ndcg_requests: usize,
}

/// One task's [`TruthMetrics`] overall and per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthReport {
    pub task: String,
    /// The NDCG cutoff.
    pub k: usize,
    pub overall: TruthMetrics,
    /// Segments without rows are absent.
    pub segments: BTreeMap<String, TruthMetrics>,
}

fn truth_metrics(r: &TaskRows<'_>, idx: &[usize], k: usize) -> TruthMetrics {
    let p = pick(r.preds, idx);
    let t = pick(r.labels, idx);
    let w = r.weights.map(|w| pick(w, idx));
    let wi = |i: usize| w.as_ref().map_or(1.0, |w| w[i] as f64);
    let sw: f64 = (0..idx.len()).map(wi).sum();
    let mean = |v: &[f32]| if sw > 0.0 { (0..v.len()).map(|i| wi(i) * v[i] as f64).sum::<f64>() / sw } else { 0.0 };
    let g = r.groups.map(|g| group_ndcg(&p, &t, &pick(g, idx), k));
    TruthMetrics {
        rows: idx.len() as u64,
        mean_truth: mean(&t),
        mean_prediction: mean(&p),
        expected_auc: expected_auc(&p, &t, w.as_deref()),
        ndcg: g.and_then(|g| g.ndcg),
        ndcg_requests: g.map_or(0, |g| g.groups_used),
    }
}

/// Metrics of one task against its true probabilities, overall and per segment. `rows`
/// holds the true probabilities in `labels`; rows whose mask is 0 are left out, as in
/// [`crate::task_report`]; `groups` are the request ids NDCG groups by.
pub fn truth_report(task: &str, rows: &TaskRows<'_>, k: usize, segment_names: &[String]) -> TruthReport {
    let (all, per) = rows.partition(segment_names.len());
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (name, idx) in segment_names.iter().zip(&per) {
            if !idx.is_empty() {
                segments.insert(name.clone(), truth_metrics(rows, idx, k));
            }
        }
    }
    TruthReport { task: task.to_string(), k, overall: truth_metrics(rows, &all, k), segments }
}

/// Model B against model A on the metrics against the truth: expected AUC and (with
/// request ids) NDCG@k, overall and per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthComparison {
    pub task: String,
    pub k: usize,
    pub overall: Vec<Lift>,
    pub segments: BTreeMap<String, Vec<Lift>>,
}

/// Paired bootstrap lifts of the expected AUC (resampling requests when `rows.groups`
/// is given, rows otherwise) and of the mean per-request NDCG@k (resampling requests).
pub fn compare_truth(
    task: &str,
    rows: &TaskRows<'_>,
    preds_b: &[f32],
    k: usize,
    segment_names: &[String],
    cfg: &BootstrapConfig,
) -> TruthComparison {
    let lifts = |idx: &[usize]| -> Vec<Lift> {
        let a = pick(rows.preds, idx);
        let b = pick(preds_b, idx);
        let t = pick(rows.labels, idx);
        let w = rows.weights.map(|w| pick(w, idx));
        let g = rows.groups.map(|g| pick(g, idx));
        let base_w = |i: usize| w.as_ref().map_or(1.0, |w| w[i] as f64);
        let (unit, n_units) = match &g {
            Some(g) => units_of(g),
            None => ((0..idx.len() as u32).collect(), idx.len()),
        };
        let sort = |p: &[f32]| {
            let mut o: Vec<u32> = (0..p.len() as u32).collect();
            o.sort_unstable_by(|&x, &y| p[x as usize].total_cmp(&p[y as usize]));
            o
        };
        let (oa, ob) = (sort(&a), sort(&b));
        let mut out: Vec<Lift> = paired_bootstrap_units(Metric::ExpectedAuc, n_units, cfg, |kw| {
            let w = |i: usize| base_w(i) * kw[unit[i] as usize];
            Some((expected_auc_sorted(&oa, &a, &t, w)?, expected_auc_sorted(&ob, &b, &t, w)?))
        })
        .into_iter()
        .collect();
        if let Some(g) = &g {
            // Requests with a defined NDCG (the same for A and B: it depends on the gains).
            let pairs: Vec<(f64, f64)> = ndcg_per_group(&a, &t, g, k)
                .into_iter()
                .zip(ndcg_per_group(&b, &t, g, k))
                .filter_map(|((_, x), (_, y))| Some((x?, y?)))
                .collect();
            out.extend(paired_bootstrap_units(Metric::Ndcg, pairs.len(), cfg, |kw| {
                let n: f64 = kw.iter().sum();
                let sa: f64 = pairs.iter().zip(kw).map(|((x, _), k)| k * x).sum();
                let sb: f64 = pairs.iter().zip(kw).map(|((_, y), k)| k * y).sum();
                (n > 0.0).then(|| (sa / n, sb / n))
            }));
        }
        out
    };
    let (all, per) = rows.partition(segment_names.len());
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (name, idx) in segment_names.iter().zip(&per) {
            if !idx.is_empty() {
                segments.insert(name.clone(), lifts(idx));
            }
        }
    }
    TruthComparison { task: task.to_string(), k, overall: lifts(&all), segments }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auc::auc;
    use rand::{Rng, SeedableRng};

    /// The definition, over all ordered pairs i ≠ j.
    fn brute_force(scores: &[f32], truth: &[f32], w: &[f32]) -> Option<f64> {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if i == j {
                    continue;
                }
                let pw = w[i] as f64 * w[j] as f64 * truth[i] as f64 * (1.0 - truth[j] as f64);
                den += pw;
                num += pw
                    * match scores[i].total_cmp(&scores[j]) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
            }
        }
        (den > 0.0).then(|| num / den)
    }

    #[test]
    fn expected_auc_hand_computed() {
        // Scores 0.1, 0.5, 0.9 with truths 0.5, 0.25, 0.75 (exact in binary):
        // pair weights t_i(1 − t_j) and whether s_i > s_j:
        //   (1,0) .25·.5 = .125  yes   (2,0) .75·.5 = .375  yes   (2,1) .75·.75 = .5625 yes
        //   (0,1) .5·.75 = .375  no    (0,2) .5·.25 = .125  no    (1,2) .25·.25 = .0625 no
        // → (.125 + .375 + .5625) / (1.0625 + .5625) = 1.0625 / 1.625 = 17/26.
        let s = [0.1f32, 0.5, 0.9];
        let t = [0.5f32, 0.25, 0.75];
        assert_eq!(expected_auc(&s, &t, None), Some(17.0 / 26.0));
        // Rows 1 and 2 tied: their two pairs count ½ → (.125 + .375 + ½(.5625 + .0625)) / 1.625 = ½.
        assert_eq!(expected_auc(&[0.1, 0.5, 0.5], &t, None), Some(0.8125 / 1.625));
        // Weight 2 on row 0: pairs with row 0 count twice →
        // (2·.125 + 2·.375 + .5625) / (2·(.125 + .375 + .375 + .125) + .5625 + .0625) = 1.5625 / 2.625.
        assert_eq!(expected_auc(&s, &t, Some(&[2.0, 1.0, 1.0])), Some(1.5625 / 2.625));
        // One row, or every truth 1: no (positive, negative) pair.
        assert_eq!(expected_auc(&[0.3], &[0.4], None), None);
        assert_eq!(expected_auc(&[0.3, 0.2], &[1.0, 1.0], None), None);
        // A single row of truth ½ repeated as two tied rows: every pair is a tie.
        assert_eq!(expected_auc(&[0.3, 0.3], &[0.5, 0.5], None), Some(0.5));
    }

    #[test]
    fn expected_auc_with_zero_one_truths_is_the_auc() {
        let s = [0.1f32, 0.4, 0.4, 0.9, 0.2];
        let y = [0.0f32, 0.0, 1.0, 1.0, 1.0];
        let w = [1.0f32, 3.0, 1.0, 1.0, 2.0];
        assert_eq!(expected_auc(&s, &y, Some(&w)), auc(&s, &y, Some(&w)));
    }

    #[test]
    fn expected_auc_matches_brute_force_on_random_cases() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for case in 0..200 {
            let n = rng.random_range(1..40);
            // Few distinct scores, so ties are common.
            let s: Vec<f32> = (0..n).map(|_| rng.random_range(0..8) as f32 / 8.0).collect();
            let t: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..5) {
                    0 => 0.0,
                    1 => 1.0,
                    _ => rng.random::<f32>(),
                })
                .collect();
            let w: Vec<f32> = (0..n).map(|_| rng.random_range(0..4) as f32).collect();
            let got = expected_auc(&s, &t, Some(&w));
            let want = brute_force(&s, &t, &w);
            match (got, want) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "case {case}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "case {case}"),
            }
        }
    }

    #[test]
    fn ndcg_hand_computed() {
        // Gains 0.5, 0.25, 0.75 ordered by the model as rows 0, 1, 2 (scores descending):
        // DCG@2 = .5/1 + .25/log2(3); ideal order 2, 0: .75 + .5/log2(3).
        let l3 = 3f64.log2();
        let got = ndcg_at(&[0.9, 0.5, 0.1], &[0.5, 0.25, 0.75], 2).unwrap();
        assert!((got - (0.5 + 0.25 / l3) / (0.75 + 0.5 / l3)).abs() < 1e-15, "{got}");
        // The ideal order scores 1; k beyond the rows changes nothing.
        assert_eq!(ndcg_at(&[0.1, 0.9, 0.5], &[0.1, 0.7, 0.2], 10), Some(1.0));
        // Rows 0 and 1 tied at the top of @1: each gets half the first discount:
        // DCG = (.5 + .25)/2, IDCG = .75.
        assert_eq!(ndcg_at(&[0.9, 0.9, 0.1], &[0.5, 0.25, 0.75], 1), Some(0.375 / 0.75));
        // All-zero gains: undefined.
        assert_eq!(ndcg_at(&[0.9, 0.1], &[0.0, 0.0], 3), None);
    }

    #[test]
    fn ndcg_groups_average_defined_requests() {
        let s = [0.9f32, 0.1, 0.2, 0.8, 0.5, 0.6];
        let g = [0.2f32, 0.6, 0.0, 0.0, 0.3, 0.1];
        let ids = [7u64, 7, 3, 3, 5, 5];
        let per = ndcg_per_group(&s, &g, &ids, 1);
        // Request 3: all gains 0; request 5: the model's top (0.6) has gain .1 of .3;
        // request 7: the model's top (0.9) has gain .2 of .6.
        assert_eq!(
            per,
            vec![(3, None), (5, Some(0.1f32 as f64 / 0.3f32 as f64)), (7, Some(0.2f32 as f64 / 0.6f32 as f64))]
        );
        let m = group_ndcg(&s, &g, &ids, 1);
        assert_eq!((m.groups_used, m.groups_skipped), (2, 1));
        assert!((m.ndcg.unwrap() - (1.0 / 3.0)).abs() < 1e-7);
    }

    #[test]
    fn reports_and_comparisons_per_segment() {
        // Two requests of two rows on two segments, one row masked out.
        let truth = [0.5f32, 0.25, 0.75, 0.0, 0.5];
        let preds = [0.9f32, 0.2, 0.6, 0.1, 0.3];
        let mask = [1.0f32, 1.0, 1.0, 1.0, 0.0];
        let seg = [0u32, 0, 1, 1, 1];
        let req = [1u64, 1, 2, 2, 2];
        let rows = TaskRows {
            preds: &preds,
            labels: &truth,
            mask: Some(&mask),
            weights: None,
            segments: Some(&seg),
            groups: Some(&req),
        };
        let names = ["a".to_string(), "b".to_string()];
        let r = truth_report("click", &rows, 1, &names);
        assert_eq!(r.overall.rows, 4);
        assert_eq!(r.overall.mean_truth, 1.5 / 4.0);
        assert_eq!(r.overall.expected_auc, expected_auc(&preds[..4], &truth[..4], None));
        // Both requests put the higher truth first: NDCG@1 = 1 each.
        assert_eq!((r.overall.ndcg, r.overall.ndcg_requests), (Some(1.0), 2));
        // Segment b (row 4 masked): truths .75, 0 → every pair ordered right.
        assert_eq!(r.segments["b"].expected_auc, Some(1.0));
        let c =
            compare_truth("click", &rows, &preds, 1, &names, &BootstrapConfig { resamples: 20, ..Default::default() });
        assert_eq!(c.overall.iter().map(|l| l.metric).collect::<Vec<_>>(), vec![Metric::ExpectedAuc, Metric::Ndcg]);
        assert!(c.overall.iter().all(|l| l.lift == 0.0 && l.a == l.b));
        // B reverses request 1: its NDCG@1 drops to .25/.5 and the mean to ¾.
        let b = [0.2f32, 0.9, 0.6, 0.1, 0.3];
        let c = compare_truth("click", &rows, &b, 1, &names, &BootstrapConfig { resamples: 20, ..Default::default() });
        let ndcg = c.overall[1];
        assert_eq!((ndcg.a, ndcg.b, ndcg.lift), (1.0, 0.75, -0.25));
    }
}
