//! Offline auction replay: each request's candidates compete in a generalized
//! second-price (GSP) auction ranked by bid × predicted CTR, and the winners' outcomes
//! are measured against the true (or observed) CTR. docs/auction.md states the rules.
//!
//! Per request, candidate `i` has bid `b_i` (per click), predicted CTR `p_i` and rank
//! score `r_i = b_i · p_i`. Eligible: `b_i ≥ reserve` and `r_i > 0`. Eligible
//! candidates are ranked by descending `r_i` (ties: earlier row first); the top `slots`
//! win. The winner of slot `s` pays per click `max(reserve, r_{s+1} / p_s)`, where
//! `r_{s+1}` is the score of the next eligible candidate (0 when there is none): the
//! least it could have bid and kept its slot. The price never exceeds its bid.

use crate::bootstrap::{paired_bootstrap_units, BootstrapConfig, Lift, Metric};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Auction rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuctionRules {
    /// Slots per request (≥ 1).
    pub slots: usize,
    /// Reserve price per click (≥ 0).
    pub reserve: f64,
}

/// The rows of a split, one auction per request.
#[derive(Debug, Clone, Copy)]
pub struct AuctionRows<'a> {
    /// Predicted CTR (ranks and prices).
    pub pctr: &'a [f32],
    /// Bid per click.
    pub bids: &'a [f32],
    /// CTR a winner gets: the true probability, or the observed 0/1 click.
    pub ctr: &'a [f32],
    /// Request id per row.
    pub requests: &'a [u64],
    /// Segment (surface) per row, indexing the segment names; `None` = one segment.
    pub segments: Option<&'a [u32]>,
}

/// Which input of [`AuctionRows`] holds a bad value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuctionInput {
    Pctr,
    Bid,
    Ctr,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuctionError {
    /// A value outside its range: pCTR and CTR in [0, 1], bids finite and ≥ 0.
    BadValue { input: AuctionInput, row: usize, value: f32 },
    /// The rows of one request carry different segments (a request is one auction on
    /// one surface).
    MixedSegments { request: u64, row: usize },
}

impl AuctionError {
    /// The row at fault.
    pub fn row(&self) -> usize {
        match self {
            AuctionError::BadValue { row, .. } | AuctionError::MixedSegments { row, .. } => *row,
        }
    }

    /// What is wrong with it.
    pub fn reason(&self) -> String {
        match self {
            AuctionError::BadValue { input, value, .. } => {
                let expected = match input {
                    AuctionInput::Bid => "a finite bid >= 0",
                    AuctionInput::Pctr | AuctionInput::Ctr => "a probability in [0, 1]",
                };
                format!("expected {expected}, found {value}")
            }
            AuctionError::MixedSegments { request, .. } => {
                format!("request {request:#x} has rows in more than one segment")
            }
        }
    }
}

impl std::fmt::Display for AuctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {}: {}", self.row(), self.reason())
    }
}

impl std::error::Error for AuctionError {}

/// One slot's winner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Winner {
    /// Index into the rows.
    pub row: usize,
    /// 0-based slot.
    pub slot: usize,
    /// Price per click.
    pub price: f64,
}

/// Runs one request's auction over `candidates` (row indices, in row order).
pub fn run_auction(rows: &AuctionRows<'_>, candidates: &[usize], rules: &AuctionRules) -> Vec<Winner> {
    let score = |i: usize| rows.bids[i] as f64 * rows.pctr[i] as f64;
    let mut eligible: Vec<usize> =
        candidates.iter().copied().filter(|&i| rows.bids[i] as f64 >= rules.reserve && score(i) > 0.0).collect();
    // Stable: ties keep row order.
    eligible.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    (0..rules.slots.min(eligible.len()))
        .map(|s| {
            let row = eligible[s];
            let next = eligible.get(s + 1).map_or(0.0, |&j| score(j));
            Winner { row, slot: s, price: (next / rows.pctr[row] as f64).max(rules.reserve) }
        })
        .collect()
}

/// One request's outcome: sums over its winners.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestOutcome {
    pub request: u64,
    pub segment: u32,
    pub winners: u32,
    /// Σ CTR (expected clicks).
    pub clicks: f64,
    /// Σ price · CTR (expected revenue).
    pub revenue: f64,
    /// Σ pCTR.
    pub pctr: f64,
}

/// Replays every request (in ascending request-id order). Checks every value first.
pub fn replay(rows: &AuctionRows<'_>, rules: &AuctionRules) -> Result<Vec<RequestOutcome>, AuctionError> {
    let n = rows.requests.len();
    assert!(rows.pctr.len() == n && rows.bids.len() == n && rows.ctr.len() == n, "auction inputs differ in length");
    for i in 0..n {
        let prob = |v: f32| (0.0..=1.0).contains(&v);
        let bad = if !prob(rows.pctr[i]) {
            Some((AuctionInput::Pctr, rows.pctr[i]))
        } else if !(rows.bids[i].is_finite() && rows.bids[i] >= 0.0) {
            Some((AuctionInput::Bid, rows.bids[i]))
        } else if !prob(rows.ctr[i]) {
            Some((AuctionInput::Ctr, rows.ctr[i]))
        } else {
            None
        };
        if let Some((input, value)) = bad {
            return Err(AuctionError::BadValue { input, row: i, value });
        }
    }
    let seg = |i: usize| rows.segments.map_or(0, |s| s[i]);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| rows.requests[i]);
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let request = rows.requests[order[i]];
        let mut j = i;
        while j < n && rows.requests[order[j]] == request {
            if seg(order[j]) != seg(order[i]) {
                return Err(AuctionError::MixedSegments { request, row: order[j] });
            }
            j += 1;
        }
        // Row order inside the request: `order` is a stable sort of 0..n.
        let cands = &order[i..j];
        let mut o = RequestOutcome { request, segment: seg(order[i]), ..Default::default() };
        for w in run_auction(rows, cands, rules) {
            let ctr = rows.ctr[w.row] as f64;
            o.winners += 1;
            o.clicks += ctr;
            o.revenue += w.price * ctr;
            o.pctr += rows.pctr[w.row] as f64;
        }
        out.push(o);
        i = j;
    }
    Ok(out)
}

/// Auction metrics over a set of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionMetrics {
    pub requests: u64,
    /// Slots filled.
    pub winners: u64,
    /// Mean CTR of the winners (expected clicks / winners).
    pub ctr: Option<f64>,
    /// Expected clicks: Σ over winners of their CTR.
    pub clicks: f64,
    /// Expected revenue: Σ over winners of price × CTR.
    pub revenue: f64,
    /// Revenue / expected clicks.
    pub cpc: Option<f64>,
    /// Revenue per 1000 requests.
    pub ecpm: Option<f64>,
    /// Mean pCTR of the winners.
    pub mean_pctr: Option<f64>,
    /// Mean pCTR − mean CTR of the winners (positive = over-predicted).
    pub calibration_error: Option<f64>,
}

/// Sums of requests with weights (1 each for the data itself; Poisson counts in the
/// bootstrap).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    requests: f64,
    winners: f64,
    clicks: f64,
    revenue: f64,
    pctr: f64,
}

impl Sums {
    fn of<'a>(outcomes: impl Iterator<Item = (&'a RequestOutcome, f64)>) -> Sums {
        let mut s = Sums::default();
        for (o, k) in outcomes {
            s.requests += k;
            s.winners += k * o.winners as f64;
            s.clicks += k * o.clicks;
            s.revenue += k * o.revenue;
            s.pctr += k * o.pctr;
        }
        s
    }

    fn value(&self, m: Metric) -> Option<f64> {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        match m {
            Metric::Ctr => ratio(self.clicks, self.winners),
            Metric::Clicks => Some(self.clicks),
            Metric::Cpc => ratio(self.revenue, self.clicks),
            Metric::Ecpm => ratio(1000.0 * self.revenue, self.requests),
            Metric::CalibrationError => Some(ratio(self.pctr, self.winners)? - ratio(self.clicks, self.winners)?),
            other => panic!("{other:?} is not an auction metric"),
        }
    }

    fn metrics(&self) -> AuctionMetrics {
        AuctionMetrics {
            requests: self.requests as u64,
            winners: self.winners as u64,
            ctr: self.value(Metric::Ctr),
            clicks: self.clicks,
            revenue: self.revenue,
            cpc: self.value(Metric::Cpc),
            ecpm: self.value(Metric::Ecpm),
            mean_pctr: (self.winners > 0.0).then(|| self.pctr / self.winners),
            calibration_error: self.value(Metric::CalibrationError),
        }
    }
}

/// The metrics of `outcomes`.
pub fn auction_metrics(outcomes: &[RequestOutcome]) -> AuctionMetrics {
    Sums::of(outcomes.iter().map(|o| (o, 1.0))).metrics()
}

/// Auction metrics overall and per segment (segments without requests are absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionReport {
    pub overall: AuctionMetrics,
    pub segments: BTreeMap<String, AuctionMetrics>,
}

/// Replays the auctions and reports overall and, when `rows.segments` is given, per
/// segment.
pub fn auction_report(
    rows: &AuctionRows<'_>,
    rules: &AuctionRules,
    segment_names: &[String],
) -> Result<AuctionReport, AuctionError> {
    let outcomes = replay(rows, rules)?;
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (s, name) in segment_names.iter().enumerate() {
            let part: Vec<RequestOutcome> = outcomes.iter().filter(|o| o.segment as usize == s).copied().collect();
            if !part.is_empty() {
                segments.insert(name.clone(), auction_metrics(&part));
            }
        }
    }
    Ok(AuctionReport { overall: auction_metrics(&outcomes), segments })
}

/// The auction metrics [`compare_auction`] reports, in table order.
pub const AUCTION_METRICS: [Metric; 5] =
    [Metric::Ctr, Metric::Clicks, Metric::Cpc, Metric::Ecpm, Metric::CalibrationError];

/// Model B against model A in the auction, overall and per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionComparison {
    pub overall: Vec<Lift>,
    pub segments: BTreeMap<String, Vec<Lift>>,
}

/// Replays the auctions with A's predictions (`rows.pctr`) and with B's (`pctr_b`) on
/// the same bids and CTRs, and compares [`AUCTION_METRICS`] with the paired bootstrap,
/// resampling requests.
pub fn compare_auction(
    rows: &AuctionRows<'_>,
    pctr_b: &[f32],
    rules: &AuctionRules,
    segment_names: &[String],
    cfg: &BootstrapConfig,
) -> Result<AuctionComparison, AuctionError> {
    let a = replay(rows, rules)?;
    let b = replay(&AuctionRows { pctr: pctr_b, ..*rows }, rules)?;
    // Both replays list the same requests in the same (request-id) order.
    debug_assert!(a.iter().zip(&b).all(|(x, y)| x.request == y.request));
    let lifts = |a: &[RequestOutcome], b: &[RequestOutcome]| -> Vec<Lift> {
        AUCTION_METRICS
            .iter()
            .filter_map(|&m| {
                paired_bootstrap_units(m, a.len(), cfg, |k| {
                    let sa = Sums::of(a.iter().zip(k.iter().copied()));
                    let sb = Sums::of(b.iter().zip(k.iter().copied()));
                    Some((sa.value(m)?, sb.value(m)?))
                })
            })
            .collect()
    };
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (s, name) in segment_names.iter().enumerate() {
            let pick = |v: &[RequestOutcome]| -> Vec<RequestOutcome> {
                v.iter().filter(|o| o.segment as usize == s).copied().collect()
            };
            let (pa, pb) = (pick(&a), pick(&b));
            if !pa.is_empty() {
                segments.insert(name.clone(), lifts(&pa, &pb));
            }
        }
    }
    Ok(AuctionComparison { overall: lifts(&a, &b), segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two requests on two surfaces (every value exact in binary, so sums are exact):
    /// request 1 (segment 0): rows 0..4, bids 2, 1, 4, 3 and pCTRs 1/8, 3/8, 1/16, 1/8
    ///   → scores 1/4, 3/8, 1/4, 3/8;
    /// request 2 (segment 1): rows 4..6, bids 1, 5 and pCTRs 1/4, 1/32 → scores 1/4, 5/32.
    /// True CTRs: 1/4, 1/4, 1/8, 1/16 | 1/8, 1/16.
    type Data = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u64>, Vec<u32>);

    fn rows() -> Data {
        (
            vec![0.125, 0.375, 0.0625, 0.125, 0.25, 0.03125],
            vec![2.0, 1.0, 4.0, 3.0, 1.0, 5.0],
            vec![0.25, 0.25, 0.125, 0.0625, 0.125, 0.0625],
            vec![1, 1, 1, 1, 2, 2],
            vec![0, 0, 0, 0, 1, 1],
        )
    }

    fn view(d: &Data) -> AuctionRows<'_> {
        AuctionRows { pctr: &d.0, bids: &d.1, ctr: &d.2, requests: &d.3, segments: Some(&d.4) }
    }

    #[test]
    fn hand_computed_two_slot_auction() {
        let d = rows();
        let r = view(&d);
        let rules = AuctionRules { slots: 2, reserve: 0.0 };
        // Request 1 ranks rows 1 (3/8), 3 (3/8, tied: the later row), 0 (1/4), 2 (1/4).
        // Slot 0: row 1 pays the next score 3/8 over its pCTR 3/8 = 1 (its whole bid:
        // a tie); slot 1: row 3 pays 1/4 / 1/8 = 2.
        let w = run_auction(&r, &[0, 1, 2, 3], &rules);
        assert_eq!(w, vec![Winner { row: 1, slot: 0, price: 1.0 }, Winner { row: 3, slot: 1, price: 2.0 }]);
        // Request 2: row 4 (1/4) pays 5/32 / 1/4 = 5/8; row 5, last, pays the reserve 0.
        let w = run_auction(&r, &[4, 5], &rules);
        assert_eq!(w, vec![Winner { row: 4, slot: 0, price: 0.625 }, Winner { row: 5, slot: 1, price: 0.0 }]);

        let rep = auction_report(&r, &rules, &["home".into(), "search".into()]).unwrap();
        // Winners' CTRs 1/4, 1/16 | 1/8, 1/16: clicks 1/2; revenue
        // 1·1/4 + 2·1/16 + 5/8·1/8 + 0 = 29/64; pCTRs 3/8, 1/8, 1/4, 1/32: mean 25/128.
        let m = &rep.overall;
        assert_eq!((m.requests, m.winners, m.clicks, m.revenue), (2, 4, 0.5, 29.0 / 64.0));
        assert_eq!(m.ctr, Some(0.125));
        assert_eq!(m.cpc, Some(29.0 / 32.0));
        assert_eq!(m.ecpm, Some(1000.0 * 29.0 / 128.0));
        assert_eq!(m.mean_pctr, Some(25.0 / 128.0));
        assert_eq!(m.calibration_error, Some(25.0 / 128.0 - 0.125));
        // home: clicks 5/16, revenue 3/8; search: clicks 3/16 over 2 winners, revenue 5/64.
        let home = &rep.segments["home"];
        assert_eq!((home.requests, home.winners, home.ecpm, home.cpc), (1, 2, Some(375.0), Some(1.2)));
        let search = &rep.segments["search"];
        assert_eq!((search.ctr, search.cpc), (Some(3.0 / 32.0), Some(5.0 / 64.0 / (3.0 / 16.0))));
    }

    #[test]
    fn one_slot_with_a_reserve() {
        let d = rows();
        let r = view(&d);
        // Reserve 1.5: rows 1 and 4 (bid 1) cannot bid it. Request 1 ranks rows 3 (3/8),
        // 0 and 2 (1/4): row 3 pays max(1.5, 1/4 / 1/8 = 2) = 2. Request 2: row 5 alone
        // pays the reserve.
        let rules = AuctionRules { slots: 1, reserve: 1.5 };
        assert_eq!(run_auction(&r, &[0, 1, 2, 3], &rules), vec![Winner { row: 3, slot: 0, price: 2.0 }]);
        assert_eq!(run_auction(&r, &[4, 5], &rules), vec![Winner { row: 5, slot: 0, price: 1.5 }]);
        let m = auction_report(&AuctionRows { segments: None, ..r }, &rules, &[]).unwrap();
        assert!(m.segments.is_empty());
        // Clicks 1/16 + 1/16; revenue 2/16 + 1.5/16 = 7/32; eCPM 1000 · 7/32 / 2.
        let m = m.overall;
        assert_eq!((m.winners, m.clicks, m.revenue, m.ecpm), (2, 0.125, 7.0 / 32.0, Some(109.375)));
        // A reserve above every bid: no winners, no CTR or CPC, eCPM 0.
        let m = auction_report(&r, &AuctionRules { slots: 1, reserve: 10.0 }, &[]).unwrap().overall;
        assert_eq!((m.requests, m.winners, m.ctr, m.cpc, m.ecpm), (2, 0, None, None, Some(0.0)));
    }

    #[test]
    fn bad_values_and_mixed_segments_are_refused() {
        let rules = AuctionRules { slots: 1, reserve: 0.0 };
        let mut d = rows();
        d.1[2] = f32::NAN;
        let e = replay(&view(&d), &rules).unwrap_err();
        assert!(matches!(e, AuctionError::BadValue { input: AuctionInput::Bid, row: 2, .. }), "{e:?}");
        let mut d = rows();
        d.2[5] = 1.5;
        let e = replay(&view(&d), &rules).unwrap_err();
        assert_eq!(e.to_string(), "row 5: expected a probability in [0, 1], found 1.5");
        let mut d = rows();
        d.4[3] = 1;
        let e = replay(&view(&d), &rules).unwrap_err();
        assert_eq!(e, AuctionError::MixedSegments { request: 1, row: 3 });
    }

    #[test]
    fn comparisons_report_both_replays() {
        let d = rows();
        let r = view(&d);
        let rules = AuctionRules { slots: 1, reserve: 0.0 };
        let cfg = BootstrapConfig { resamples: 50, ..Default::default() };
        let names = ["home".to_string(), "search".to_string()];
        let c = compare_auction(&r, &d.0, &rules, &names, &cfg).unwrap();
        assert_eq!(c.overall.iter().map(|l| l.metric).collect::<Vec<_>>(), AUCTION_METRICS);
        assert!(c.overall.iter().all(|l| (l.lift, l.ci_low, l.ci_high, l.significant) == (0.0, 0.0, 0.0, false)));
        assert_eq!(c.segments.keys().collect::<Vec<_>>(), vec!["home", "search"]);
        // B predicts the true CTR. A: request 1 → row 1 at 3/8 / 3/8 = 1 (CTR 1/4),
        // request 2 → row 4 at 5/8 (CTR 1/8): clicks 3/8, revenue 1/4 + 5/64 = 21/64.
        // B: scores 1/2, 1/4, 1/2, 3/16 → row 0 at 1/2 / 1/4 = 2 (CTR 1/4); scores 1/8,
        // 5/16 → row 5 at 1/8 / 1/16 = 2 (CTR 1/16): clicks 5/16, revenue 5/8.
        let c = compare_auction(&r, &d.2, &rules, &names, &cfg).unwrap();
        let get = |m: Metric| *c.overall.iter().find(|l| l.metric == m).unwrap();
        let clicks = get(Metric::Clicks);
        assert_eq!((clicks.a, clicks.b, clicks.lift), (0.375, 0.3125, (0.3125 - 0.375) / 0.375));
        let ecpm = get(Metric::Ecpm);
        assert_eq!((ecpm.a, ecpm.b), (1000.0 * 21.0 / 128.0, 312.5));
        // CPC: lower is better, so B's higher price per click is a negative lift.
        let cpc = get(Metric::Cpc);
        assert_eq!((cpc.a, cpc.b), (21.0 / 64.0 / 0.375, 2.0));
        assert!(cpc.lift < 0.0);
    }
}
