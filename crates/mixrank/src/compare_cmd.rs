//! `mixrank compare RUN_A RUN_B`: two models on the same rows, per task and segment,
//! relative lift with a paired bootstrap 95% interval (resampling requests).

use anyhow::{bail, Context, Result};
use mixrank_data::ExperimentConfig;
use mixrank_metrics::{compare_task, BootstrapConfig};
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
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: &CompareArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| {
        let ops = crate::backend::ops();
        let open = |dir: &PathBuf, splits_from| {
            CheckpointScorer::open(dir, &ops, splits_from)
                .with_context(|| format!("loading the checkpoint in {}", dir.display()))
        };
        let mut a_model = open(&a.run_a, None)?;
        // B reads A's split definitions so both score exactly the same rows.
        let mut b_model = open(&a.run_b, Some(&a_model.config))?;
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
                let _ = writeln!(
                    o,
                    "{:<11} {:<13} {:<8} {:>9.5} {:>9.5} {:>7.3}% [{:>7.3}%, {:>7.3}%]  {}",
                    task.name,
                    seg,
                    format!("{:?}", l.metric).to_lowercase(),
                    l.a,
                    l.b,
                    100.0 * l.lift,
                    100.0 * l.ci_low,
                    100.0 * l.ci_high,
                    if l.significant { "*" } else { "" }
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "lift: relative improvement of B over A (positive = B better); * = |lift| >= 0.1% and the 95% paired-bootstrap interval (resampling requests) excludes 0"
    );
    o
}
