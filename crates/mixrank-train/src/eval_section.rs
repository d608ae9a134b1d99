//! What a config's `[eval]` section adds to evaluation: per task with a truth column,
//! the expected AUC and per-request NDCG@K against the true probabilities; with
//! `auction`, the replay of every request as a second-price auction on bid × pCTR.
//! The inputs (bids, truths) come through the pipeline as carried columns
//! ([`Predictions::column`]); the metrics are `mixrank_metrics`'s.

use crate::error::{Result, TrainError};
use crate::evaluate::Predictions;
use mixrank_data::config::eval::{AuctionConfig, EvalConfig};
use mixrank_data::ExperimentConfig;
use mixrank_metrics::auction::{AuctionError, AuctionInput};
use mixrank_metrics::{
    auction_report, compare_auction, compare_truth, truth_report, AuctionComparison, AuctionReport, AuctionRows,
    AuctionRules, BootstrapConfig, TaskRows, TruthComparison, TruthReport,
};

/// The `[eval]` metrics of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct SectionReport {
    /// One per task with a truth column, in task order.
    pub truth: Vec<TruthReport>,
    pub auction: Option<AuctionReport>,
}

/// The `[eval]` metrics of model B against model A.
#[derive(Debug, Clone, PartialEq)]
pub struct SectionComparison {
    pub truth: Vec<TruthComparison>,
    pub auction: Option<AuctionComparison>,
}

fn other(message: String) -> TrainError {
    TrainError::Other(message)
}

/// Task `t`'s rows with its true probabilities as labels, checked: every unmasked row
/// holds a probability.
fn truth_rows<'a>(cfg: &ExperimentConfig, p: &'a Predictions, t: usize, column: &str) -> Result<TaskRows<'a>> {
    let task = &cfg.tasks[t].name;
    let truth = p
        .column(cfg, column)
        .ok_or_else(|| other(format!("eval.truth.{task}: column `{column}` is not carried by the pipeline")))?;
    let mask = &p.masks[t];
    if let Some(r) = (0..truth.len()).find(|&r| mask[r] != 0.0 && !(0.0..=1.0).contains(&truth[r])) {
        return Err(other(format!(
            "column `{column}` (eval.truth.{task}), row {r} of the scored split: expected a probability in [0, 1], found {}{}",
            truth[r],
            if truth[r].is_nan() { " (a missing value?)" } else { "" }
        )));
    }
    Ok(TaskRows { labels: truth, ..p.task_rows(cfg, t) })
}

/// The auction's rows: the click task's predictions of `p`, and `truth`'s bids, CTRs,
/// requests and segments (the same as `p`'s except in `compare`, where A's carry the
/// columns and B's predictions replace A's).
fn auction_rows<'a>(
    cfg: &ExperimentConfig,
    a: &AuctionConfig,
    e: &EvalConfig,
    truth: &'a Predictions,
) -> Result<AuctionRows<'a>> {
    let bids = truth
        .column(cfg, &a.bid)
        .ok_or_else(|| other(format!("eval.auction.bid: column `{}` is not carried by the pipeline", a.bid)))?;
    let ctr = match &e.truth[a.click_task] {
        Some(c) => truth
            .column(cfg, c)
            .ok_or_else(|| other(format!("eval.truth: column `{c}` is not carried by the pipeline")))?,
        None => &truth.labels[a.click_task],
    };
    Ok(AuctionRows {
        pctr: &truth.preds[a.click_task],
        bids,
        ctr,
        requests: &truth.requests,
        segments: cfg.columns.segment.as_ref().map(|_| truth.segments.as_slice()),
    })
}

/// An auction error in the config's terms: which column, which key.
fn auction_error(cfg: &ExperimentConfig, a: &AuctionConfig, e: &EvalConfig, err: AuctionError) -> TrainError {
    let click = &cfg.tasks[a.click_task];
    let what = match &err {
        AuctionError::BadValue { input: AuctionInput::Bid, .. } => format!("column `{}` (eval.auction.bid)", a.bid),
        AuctionError::BadValue { input: AuctionInput::Ctr, .. } => match &e.truth[a.click_task] {
            Some(c) => format!("column `{c}` (eval.truth.{})", click.name),
            None => format!("column `{}` (the label of task `{}`)", click.label, click.name),
        },
        AuctionError::BadValue { input: AuctionInput::Pctr, .. } => {
            format!("the prediction of task `{}` (eval.auction.click_task)", click.name)
        }
        AuctionError::MixedSegments { .. } => {
            let seg = cfg.columns.segment.as_ref().map_or("segment", |s| s.column.as_str());
            format!("column `{seg}` (columns.segment; a request is one auction on one surface)")
        }
    };
    let missing = matches!(err, AuctionError::BadValue { value, .. } if value.is_nan());
    other(format!(
        "auction replay: {what}, row {} of the scored split: {}{}",
        err.row(),
        err.reason(),
        if missing { " (a missing value?)" } else { "" }
    ))
}

fn rules(a: &AuctionConfig) -> AuctionRules {
    AuctionRules { slots: a.slots, reserve: a.reserve }
}

/// The `[eval]` metrics of `p`; `None` without an `[eval]` section.
pub fn section_report(cfg: &ExperimentConfig, p: &Predictions) -> Result<Option<SectionReport>> {
    let Some(e) = &cfg.eval else { return Ok(None) };
    let names = cfg.segment_names();
    let mut truth = Vec::new();
    for (t, column) in e.truth.iter().enumerate() {
        if let Some(c) = column {
            let rows = truth_rows(cfg, p, t, c)?;
            truth.push(truth_report(&cfg.tasks[t].name, &rows, e.ndcg_k, &names));
        }
    }
    let auction = match &e.auction {
        Some(a) => Some(
            auction_report(&auction_rows(cfg, a, e, p)?, &rules(a), &names)
                .map_err(|err| auction_error(cfg, a, e, err))?,
        ),
        None => None,
    };
    Ok(Some(SectionReport { truth, auction }))
}

/// B against A on the `[eval]` metrics of A's config, with paired bootstrap intervals
/// (resampling requests); `None` without an `[eval]` section. `a` supplies the bids and
/// truths; `b` only its predictions (both scored the same rows).
pub fn section_comparison(
    cfg: &ExperimentConfig,
    a: &Predictions,
    b: &Predictions,
    boot: &BootstrapConfig,
) -> Result<Option<SectionComparison>> {
    let Some(e) = &cfg.eval else { return Ok(None) };
    let names = cfg.segment_names();
    let mut truth = Vec::new();
    for (t, column) in e.truth.iter().enumerate() {
        if let Some(c) = column {
            let rows = truth_rows(cfg, a, t, c)?;
            truth.push(compare_truth(&cfg.tasks[t].name, &rows, &b.preds[t], e.ndcg_k, &names, boot));
        }
    }
    let auction = match &e.auction {
        Some(x) => Some(
            compare_auction(&auction_rows(cfg, x, e, a)?, &b.preds[x.click_task], &rules(x), &names, boot)
                .map_err(|err| auction_error(cfg, x, e, err))?,
        ),
        None => None,
    };
    Ok(Some(SectionComparison { truth, auction }))
}

/// One line saying how the auction was run, for table headers.
pub fn describe_auction(cfg: &ExperimentConfig) -> Option<String> {
    let e = cfg.eval.as_ref()?;
    let a = e.auction.as_ref()?;
    let click = &cfg.tasks[a.click_task];
    let ctr = match &e.truth[a.click_task] {
        Some(c) => format!("true CTR from `{c}`"),
        None => format!("CTR = observed `{}` label", click.label),
    };
    Some(format!(
        "auction per request: rank by `{}` × pCTR of `{}`, {} slot{}, reserve {}, generalized second price; {ctr}",
        a.bid,
        click.name,
        a.slots,
        if a.slots == 1 { "" } else { "s" },
        a.reserve
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[data]\nformat = \"parquet\"\n[data.splits.test]\npaths = [\"x\"]\n\
        [[features.dense]]\nname = \"a\"\n\
        [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n\
        [columns]\nrequest_id = \"req\"\nsegment = { column = \"surface\", values = [\"feed\", \"search\"] }\nkeep = [\"extra\"]\n";

    fn config(eval: &str) -> ExperimentConfig {
        ExperimentConfig::parse(&format!("{CONFIG}{eval}"), std::path::Path::new("t.toml")).unwrap()
    }

    /// Two requests of two candidates; columns carried: extra, p_true, bid.
    fn predictions(cfg: &ExperimentConfig) -> Predictions {
        assert_eq!(cfg.columns.keep, vec!["extra", "p_true", "bid"], "[eval]'s columns are appended to columns.keep");
        Predictions {
            preds: vec![vec![0.25, 0.5, 0.125, 0.0625]],
            labels: vec![vec![1.0, 0.0, 0.0, 1.0]],
            masks: vec![vec![1.0; 4]],
            weights: vec![1.0; 4],
            segments: vec![0, 0, 1, 1],
            requests: vec![10, 10, 20, 20],
            kept: vec![vec![9.0; 4], vec![0.5, 0.25, 0.25, 0.5], vec![2.0, 1.0, 1.0, 4.0]],
            gates: Vec::new(),
            uncalibrated: None,
        }
    }

    #[test]
    fn auction_and_truth_metrics_from_carried_columns() {
        let cfg = config(
            "[eval]\ntruth = { click = \"p_true\" }\nndcg_k = 1\nauction = { bid = \"bid\", click_task = \"click\" }\n",
        );
        let p = predictions(&cfg);
        assert_eq!(p.column(&cfg, "bid"), Some(&[2.0f32, 1.0, 1.0, 4.0][..]));
        let r = section_report(&cfg, &p).unwrap().unwrap();
        // Request 10: scores 2·.25 = .5, 1·.5 = .5 (tie: row 0 wins), pays .5/.25 = 2,
        // true CTR .5. Request 20: scores .125, .25 → row 3 pays .125/.0625 = 2, CTR .5.
        let m = &r.auction.as_ref().unwrap().overall;
        assert_eq!((m.winners, m.clicks, m.revenue, m.cpc, m.ecpm), (2, 1.0, 2.0, Some(2.0), Some(1000.0)));
        // Winners' pCTR .25 and .0625 against true CTR .5 each.
        assert_eq!(m.calibration_error, Some(0.15625 - 0.5));
        assert_eq!(r.auction.as_ref().unwrap().segments.len(), 2);
        // Truth: request 10 ranks row 1 (truth .25) over row 0 (.5): NDCG@1 = .5;
        // request 20 ranks row 2 (.25) over row 3 (.5): .5.
        assert_eq!(r.truth.len(), 1);
        assert_eq!(r.truth[0].overall.ndcg, Some(0.5));
        assert_eq!(r.truth[0].overall.ndcg_requests, 2);
        // Without truth, the auction's CTR is the observed label: winners rows 0 (1) and 3 (1).
        let keep = CONFIG.replace("keep = [\"extra\"]", "keep = [\"extra\", \"p_true\"]");
        let eval = "[eval]\nauction = { bid = \"bid\", click_task = \"click\" }\n";
        let cfg = ExperimentConfig::parse(&format!("{keep}{eval}"), std::path::Path::new("t.toml")).unwrap();
        let m = section_report(&cfg, &predictions(&cfg)).unwrap().unwrap().auction.unwrap().overall;
        assert_eq!((m.clicks, m.ctr), (2.0, Some(1.0)));
        assert!(describe_auction(&cfg).unwrap().contains("CTR = observed `y` label"));
    }

    #[test]
    fn bad_values_name_the_column_and_key() {
        let cfg =
            config("[eval]\ntruth = { click = \"p_true\" }\nauction = { bid = \"bid\", click_task = \"click\" }\n");
        let mut p = predictions(&cfg);
        p.kept[2][3] = f32::NAN;
        let e = section_report(&cfg, &p).unwrap_err().to_string();
        assert!(e.contains("column `bid` (eval.auction.bid)") && e.contains("row 3") && e.contains("missing"), "{e}");
        let mut p = predictions(&cfg);
        p.kept[1][1] = 1.5;
        let e = section_report(&cfg, &p).unwrap_err().to_string();
        assert!(e.contains("column `p_true` (eval.truth.click), row 1") && e.contains("found 1.5"), "{e}");
        let mut p = predictions(&cfg);
        p.segments[1] = 1;
        let e = section_report(&cfg, &p).unwrap_err().to_string();
        assert!(e.contains("column `surface`") && e.contains("more than one segment"), "{e}");
    }
}
