//! ROC AUC with ties and weights, and group AUC (gAUC).

/// Weighted ROC AUC: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when either class has zero weight.
///
/// O(n log n): sorts by score once, then sweeps tie groups.
pub fn auc(scores: &[f32], labels: &[f32], weights: Option<&[f32]>) -> Option<f64> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    auc_sorted(&order, scores, labels, |i| weights.map_or(1.0, |w| w[i] as f64))
}

/// AUC over rows already sorted by ascending score (`order`), with a weight per row.
/// Used by the bootstrap, which sorts once and resamples weights many times.
pub fn auc_sorted(order: &[u32], scores: &[f32], labels: &[f32], weight: impl Fn(usize) -> f64) -> Option<f64> {
    // Sweep from the lowest score: each positive beats all negatives seen in earlier
    // tie groups and half of the negatives in its own group.
    let (mut neg_below, mut pos_total, mut neg_total, mut area) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i] as usize];
        let (mut p, mut n) = (0.0, 0.0);
        let mut j = i;
        while j < order.len() && scores[order[j] as usize] == s {
            let r = order[j] as usize;
            let w = weight(r);
            if labels[r] > 0.5 {
                p += w;
            } else {
                n += w;
            }
            j += 1;
        }
        area += p * (neg_below + 0.5 * n);
        neg_below += n;
        pos_total += p;
        neg_total += n;
        i = j;
    }
    (pos_total > 0.0 && neg_total > 0.0).then(|| area / (pos_total * neg_total))
}

/// Group AUC: the AUC within each group (request or user), averaged with the group's
/// total weight as its weight. Groups with a single class are skipped and counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupAuc {
    pub gauc: Option<f64>,
    /// Groups that had both classes and entered the average.
    pub groups_used: usize,
    pub groups_skipped: usize,
}

pub fn gauc(scores: &[f32], labels: &[f32], weights: Option<&[f32]>, groups: &[u64]) -> GroupAuc {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    // Group by id, and by score inside a group.
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        groups[a].cmp(&groups[b]).then(scores[a].total_cmp(&scores[b]))
    });
    let w = |i: usize| weights.map_or(1.0, |w| w[i] as f64);
    let (mut num, mut den, mut used, mut skipped) = (0.0, 0.0, 0, 0);
    let mut i = 0;
    while i < order.len() {
        let g = groups[order[i] as usize];
        let mut j = i;
        while j < order.len() && groups[order[j] as usize] == g {
            j += 1;
        }
        let part = &order[i..j];
        match auc_sorted(part, scores, labels, w) {
            Some(a) => {
                let gw: f64 = part.iter().map(|&r| w(r as usize)).sum();
                num += gw * a;
                den += gw;
                used += 1;
            }
            None => skipped += 1,
        }
        i = j;
    }
    GroupAuc { gauc: (den > 0.0).then(|| num / den), groups_used: used, groups_skipped: skipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over all (positive, negative) pairs.
    fn pairwise(scores: &[f32], labels: &[f32], w: &[f32]) -> Option<f64> {
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] == 1.0 && labels[j] == 0.0 {
                    let ww = (w[i] * w[j]) as f64;
                    den += ww;
                    num += ww
                        * if scores[i] > scores[j] {
                            1.0
                        } else if scores[i] == scores[j] {
                            0.5
                        } else {
                            0.0
                        };
                }
            }
        }
        (den > 0.0).then(|| num / den)
    }

    #[test]
    fn hand_computed_cases() {
        // Perfect, inverted, all tied.
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0., 0., 1., 1.], None), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0., 0., 1., 1.], None), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &[0., 1., 0., 1.], None), Some(0.5));
        // One tie across classes: pairs (p=.4 vs n=.1) 1, (p=.4 vs n=.4) .5,
        // (p=.9 vs both) 2 → 3.5 / 4.
        assert_eq!(auc(&[0.1, 0.4, 0.4, 0.9], &[0., 0., 1., 1.], None), Some(0.875));
        // Weight 3 on the tied negative: (1·1 + 1·3·.5 + 1·1 + 1·3) / (2·4) = 6.5/8.
        assert_eq!(auc(&[0.1, 0.4, 0.4, 0.9], &[0., 0., 1., 1.], Some(&[1., 3., 1., 1.])), Some(0.8125));
        // Single class: undefined.
        assert_eq!(auc(&[0.1, 0.2], &[1., 1.], None), None);
        // Zero weight on the only negative: undefined.
        assert_eq!(auc(&[0.1, 0.2], &[0., 1.], Some(&[0., 1.])), None);
    }

    #[test]
    fn gauc_skips_single_class_groups() {
        let s = [0.1, 0.9, 0.3, 0.2, 0.5, 0.6];
        let y = [0., 1., 1., 0., 1., 1.];
        let g = [1, 1, 2, 2, 3, 3];
        let r = gauc(&s, &y, None, &g);
        // Group 1: AUC 1 (weight 2), group 2: AUC 1 (weight 2), group 3: single class.
        assert_eq!(r, GroupAuc { gauc: Some(1.0), groups_used: 2, groups_skipped: 1 });
        let s2 = [0.1, 0.9, 0.1, 0.2, 0.5, 0.6];
        let r = gauc(&s2, &y, Some(&[1., 1., 3., 3., 1., 1.]), &g);
        // Group 1: 1.0 (w 2), group 2: 0.0 (w 6) → 2/8.
        assert_eq!(r.gauc, Some(0.25));
    }

    proptest::proptest! {
        #[test]
        fn matches_brute_force(rows in proptest::collection::vec((0u8..6, proptest::bool::ANY, 0u8..4), 1..60)) {
            let scores: Vec<f32> = rows.iter().map(|r| r.0 as f32 / 5.0).collect();
            let labels: Vec<f32> = rows.iter().map(|r| r.1 as u8 as f32).collect();
            let w: Vec<f32> = rows.iter().map(|r| r.2 as f32).collect();
            let got = auc(&scores, &labels, Some(&w));
            let want = pairwise(&scores, &labels, &w);
            match (got, want) {
                (Some(a), Some(b)) => proptest::prop_assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
                (a, b) => proptest::prop_assert_eq!(a, b),
            }
        }
    }
}
