//! Which rows the pairwise and listwise losses compare.
//!
//! - Request groups: the rows of a batch that share a request id. The training
//!   pipeline shuffles rows within its shuffle window, so a request's rows are usually
//!   spread over several batches; a group is the part of the request that this batch
//!   holds. To keep requests together, set `data.shuffle_buffer = 0` and
//!   `data.chunk_rows = data.batch_size`, with units (Parquet row groups, text files)
//!   whose row counts are multiples of the batch size: each batch is then a run of
//!   consecutive rows (units are still shuffled, and rows within each batch). With
//!   larger chunks the rows of a chunk are shuffled across its batches; with a unit that
//!   does not end on a batch boundary, its last rows are carried, shuffled, into the
//!   following batches.
//! - Pairs within requests: each row is paired with up to `k` other rows of its group
//!   (all of them when the group is small, else `k` drawn without replacement).
//! - Pairs within the batch: each row is paired with `k` rows drawn uniformly from the
//!   other eligible rows — for data without request ids.
//!
//! Both pair builders emit at most `rows × k` ordered pairs: the cost is O(batch × k).
//! Only eligible rows (weight > 0) take part.

use rand::Rng;
use std::collections::HashMap;

/// Rows grouped by request, stored as concatenated member lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Groups {
    rows: Vec<u32>,
    /// `groups + 1` offsets into `rows`.
    offsets: Vec<u32>,
}

impl Groups {
    /// Groups the eligible rows by request id, groups in order of first appearance and
    /// rows in batch order.
    pub fn by_request(request_id: &[u64], eligible: impl Fn(usize) -> bool) -> Groups {
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut members: Vec<Vec<u32>> = Vec::new();
        for (i, r) in request_id.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let g = *index.entry(*r).or_insert_with(|| {
                members.push(Vec::new());
                members.len() - 1
            });
            members[g].push(i as u32);
        }
        Groups::from_members(members)
    }

    /// Groups from explicit member lists.
    pub fn from_members(members: Vec<Vec<u32>>) -> Groups {
        let mut g = Groups { rows: Vec::new(), offsets: vec![0] };
        for m in members {
            g.rows.extend_from_slice(&m);
            g.offsets.push(g.rows.len() as u32);
        }
        g
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Member rows of group `g`.
    pub fn group(&self, g: usize) -> &[u32] {
        &self.rows[self.offsets[g] as usize..self.offsets[g + 1] as usize]
    }

    /// The `len() + 1` offsets of the groups into [`Groups::members`] (CSR form).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Every group's member rows, concatenated in group order.
    pub fn members(&self) -> &[u32] {
        &self.rows
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u32]> {
        (0..self.len()).map(|g| self.group(g))
    }
}

/// Ordered pairs `(i, j)`, `i ≠ j`, within each group: every row with up to `k`
/// partners of its group (all when the group has at most `k + 1` rows, else `k` drawn
/// without replacement).
pub fn request_pairs(groups: &Groups, k: usize, rng: &mut impl Rng, out: &mut Vec<(u32, u32)>) {
    out.clear();
    let mut others: Vec<u32> = Vec::new();
    for g in groups.iter() {
        if g.len() < 2 {
            continue;
        }
        for &i in g {
            others.clear();
            others.extend(g.iter().copied().filter(|&j| j != i));
            if others.len() > k {
                // Partial Fisher–Yates: the first k entries become a uniform sample.
                for a in 0..k {
                    let b = rng.random_range(a..others.len());
                    others.swap(a, b);
                }
                others.truncate(k);
            }
            out.extend(others.iter().map(|&j| (i, j)));
        }
    }
}

/// Ordered pairs `(i, j)`: every eligible row `i` with `k` partners drawn uniformly
/// (with replacement) from the other eligible rows; none when fewer than two rows are
/// eligible.
pub fn batch_pairs(eligible: &[u32], k: usize, rng: &mut impl Rng, out: &mut Vec<(u32, u32)>) {
    out.clear();
    let n = eligible.len();
    if n < 2 {
        return;
    }
    for (a, &i) in eligible.iter().enumerate() {
        for _ in 0..k {
            // Uniform over the n − 1 other positions.
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            out.push((i, eligible[b]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn groups_follow_request_ids_and_skip_ineligible_rows() {
        let ids = [7u64, 3, 7, 9, 3, 7];
        let g = Groups::by_request(&ids, |i| i != 5);
        assert_eq!(g.len(), 3);
        assert_eq!(g.group(0), &[0, 2]);
        assert_eq!(g.group(1), &[1, 4]);
        assert_eq!(g.group(2), &[3]);
    }

    #[test]
    fn request_pairs_stay_in_their_group_and_respect_k() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Group 0: rows 0..6 (6 rows); group 1: rows 6, 7; group 2: row 8 alone.
        let g = Groups::from_members(vec![(0..6).collect(), vec![6, 7], vec![8]]);
        let mut pairs = Vec::new();
        request_pairs(&g, 3, &mut rng, &mut pairs);
        // Six rows with 3 partners each, two rows with their single partner.
        assert_eq!(pairs.len(), 6 * 3 + 2);
        for &(i, j) in &pairs {
            assert_ne!(i, j);
            assert_eq!(i < 6, j < 6, "pair ({i}, {j}) crosses groups");
            assert!(i != 8 && j != 8);
        }
        for i in 0..6u32 {
            let mut partners: Vec<u32> = pairs.iter().filter(|p| p.0 == i).map(|p| p.1).collect();
            partners.sort_unstable();
            partners.dedup();
            assert_eq!(partners.len(), 3, "row {i} has duplicate partners");
        }
        assert!(pairs.contains(&(6, 7)) && pairs.contains(&(7, 6)));
    }

    #[test]
    fn batch_pairs_are_uniform_over_other_rows() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let eligible = [0u32, 2, 3, 5];
        let mut pairs = Vec::new();
        batch_pairs(&eligible, 3000, &mut rng, &mut pairs);
        assert_eq!(pairs.len(), 4 * 3000);
        let mut counts = HashMap::new();
        for &(i, j) in &pairs {
            assert_ne!(i, j);
            assert!(eligible.contains(&i) && eligible.contains(&j));
            *counts.entry((i, j)).or_insert(0usize) += 1;
        }
        // 12 ordered pairs, each expected 1000 times (binomial sd ≈ 27).
        assert_eq!(counts.len(), 12);
        assert!(counts.values().all(|&c| (850..1150).contains(&c)), "{counts:?}");
        batch_pairs(&[4], 3, &mut rng, &mut pairs);
        assert!(pairs.is_empty());
    }
}
