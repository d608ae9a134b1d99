//! `mixrank compare RUN_A RUN_B`: two models on the same rows, per task and segment,
//! relative lift with a paired bootstrap 95% interval (resampling requests).

use anyhow::{bail, Context, Result};
use mixrank_data::ExperimentConfig;
use mixrank_metrics::{compare_task, BootstrapConfig, Lift, Metric};
use mixrank_train::eval_section::{describe_auction, section_comparison, SectionComparison};
use mixrank_train::{task_type, CheckpointScorer, Predictions};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Baseline run directory (A).
    pub run_a: PathBuf,
    /// Candidate run directory (B).
    pub run_b: PathBuf,
    /// Split to score (from A's stored config; B must read the same rows).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Score A's rows as if shown at this position (`mixrank eval --at-position`).
    #[arg(long)]
    pub a_at_position: Option<u32>,
    /// Score B's rows as if shown at this position.
    #[arg(long)]
    pub b_at_position: Option<u32>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: &CompareArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| {
        let ops = crate::backend::ops();
        let open = |dir: &PathBuf, splits_from, position: Option<u32>| {
            let s = CheckpointScorer::open(dir, &ops, splits_from)
                .with_context(|| format!("loading the checkpoint in {}", dir.display()))?;
            match position {
                Some(n) => s.at_position(n).with_context(|| format!("scoring {} at position {n}", dir.display())),
                None => Ok(s),
            }
        };
        let mut a_model = open(&a.run_a, None, a.a_at_position)?;
        // B reads A's split definitions so both score exactly the same rows.
        let mut b_model = open(&a.run_b, Some(&a_model.config), a.b_at_position)?;
        let pa = a_model.score(&ops, &a.split)?;
        let pb = b_model.score(&ops, &a.split)?;
        let (cfg_a, cfg_b) = (&a_model.config, &b_model.config);
        if cfg_a.tasks.iter().map(|t| &t.name).ne(cfg_b.tasks.iter().map(|t| &t.name)) {
            bail!("the two runs have different tasks");
        }
        if pa.requests != pb.requests {
            bail!("the two runs scored different rows (request ids differ)");
        }
        let boot = BootstrapConfig { resamples: a.resamples, ..Default::default() };
        crate::say!("B = {} against A = {} on split `{}`", a.run_b.display(), a.run_a.display(), a.split);
        crate::emit(&render_comparison(cfg_a, &pa, &pb, &boot));
        // A's config says what `[eval]` measures; A's rows carry the bids and truths.
        if let Some(section) = section_comparison(cfg_a, &pa, &pb, &boot).context("the [eval] metrics")? {
            crate::emit(&render_section_comparison(cfg_a, &section));
        }
        Ok(())
    })
}

/// The comparison table: per task, overall and per segment, each metric's A and B
/// values, the relative lift of B and its 95% paired-bootstrap interval.
pub fn render_comparison(cfg: &ExperimentConfig, a: &Predictions, b: &Predictions, boot: &BootstrapConfig) -> String {
    let names = cfg.segment_names();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<11} {:<13} {:<8} {:>9} {:>9} {:>8} {:>19}  sig",
        "task", "segment", "metric", "A", "B", "lift", "95% CI"
    );
    for (t, task) in cfg.tasks.iter().enumerate() {
        let rows = a.task_rows(cfg, t);
        let c = compare_task(&task.name, task_type(task.kind), &rows, &b.preds[t], &names, boot);
        let all =
            std::iter::once(("all".to_string(), &c.overall)).chain(c.segments.iter().map(|(k, v)| (k.clone(), v)));
        for (seg, lifts) in all {
            for l in lifts {
                lift_row(&mut o, &task.name, &seg, l.metric.name(), l);
            }
        }
    }
    let _ = writeln!(
        o,
        "lift: relative improvement of B over A (positive = B better); * = |lift| >= 0.1% and the 95% paired-bootstrap interval (resampling requests) excludes 0"
    );
    o
}

/// One row of a comparison table: task, segment, metric, A, B, lift, 95% interval, `*`.
fn lift_row(o: &mut String, task: &str, seg: &str, metric: &str, l: &Lift) {
    let _ = writeln!(
        o,
        "{:<11} {:<13} {:<8} {:>9.5} {:>9.5} {:>7.3}% [{:>7.3}%, {:>7.3}%]  {}",
        task,
        seg,
        metric,
        l.a,
        l.b,
        100.0 * l.lift,
        100.0 * l.ci_low,
        100.0 * l.ci_high,
        if l.significant { "*" } else { "" }
    );
}

/// The `[eval]` comparisons: per task with a truth column, the expected AUC and NDCG@K
/// against the true probabilities; then the auction replay's metrics, with B's
/// predictions in A's auctions. Same columns and lift convention as
/// [`render_comparison`].
pub fn render_section_comparison(cfg: &ExperimentConfig, c: &SectionComparison) -> String {
    let mut o = String::new();
    if !c.truth.is_empty() {
        let _ = writeln!(o, "against the true probabilities ([eval] truth; docs/metrics.md):");
        let _ = writeln!(
            o,
            "{:<11} {:<13} {:<8} {:>9} {:>9} {:>8} {:>19}  sig",
            "task", "segment", "metric", "A", "B", "lift", "95% CI"
        );
        for t in &c.truth {
            let all =
                std::iter::once(("all".to_string(), &t.overall)).chain(t.segments.iter().map(|(k, v)| (k.clone(), v)));
            for (seg, lifts) in all {
                for l in lifts {
                    let name = match l.metric {
                        Metric::Ndcg => format!("ndcg@{}", t.k),
                        m => m.name().to_string(),
                    };
                    lift_row(&mut o, &t.task, &seg, &name, l);
                }
            }
        }
    }
    if let Some(a) = &c.auction {
        // Lift columns two characters wider than the task table's: revenue and clicks
        // can move by more than the AUC ever does.
        let _ = writeln!(o, "{} (docs/auction.md):", describe_auction(cfg).unwrap_or_default());
        let _ = writeln!(
            o,
            "{:<13} {:<9} {:>11} {:>11} {:>10} {:>23}  sig",
            "segment", "metric", "A", "B", "lift", "95% CI"
        );
        let all =
            std::iter::once(("all".to_string(), &a.overall)).chain(a.segments.iter().map(|(k, v)| (k.clone(), v)));
        for (seg, lifts) in all {
            for l in lifts {
                let _ = writeln!(
                    o,
                    "{:<13} {:<9} {:>11.5} {:>11.5} {:>9.3}% [{:>9.3}%, {:>9.3}%]  {}",
                    seg,
                    l.metric.name(),
                    l.a,
                    l.b,
                    100.0 * l.lift,
                    100.0 * l.ci_low,
                    100.0 * l.ci_high,
                    if l.significant { "*" } else { "" }
                );
            }
        }
        let _ = writeln!(
            o,
            "auction lift: positive = B better: (B - A)/A for ctr, clicks and ecpm; (A - B)/A for cpc (cheaper clicks); (|A| - |B|)/max(|A|, |B|) for calib_err"
        );
    }
    o
}
