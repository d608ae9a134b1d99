//! `mixrank compare RUN_A RUN_B`: two models on the same rows, per task and segment,
//! relative lift with a paired bootstrap 95% interval (resampling requests).

use anyhow::{bail, Context, Result};
use mixrank_data::config::TaskKind;
use mixrank_data::{DenseMode, Encoder, ExperimentConfig};
use mixrank_engine::CpuOps;
use mixrank_metrics::{compare_task, BootstrapConfig, TaskRows, TaskType};
use mixrank_train::Predictions;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

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
        let ops = CpuOps::new();
        let score = |dir: &PathBuf,
                     split_cfg: Option<&ExperimentConfig>|
         -> Result<(Arc<ExperimentConfig>, Predictions)> {
            let mut l = mixrank_train::checkpoint::load(&dir.join("checkpoint"), &ops, 4096)
                .with_context(|| format!("loading the checkpoint in {}", dir.display()))?;
            let mut cfg = (*l.config).clone();
            cfg.data.batch_size = 4096;
            // B reads A's split definition so both score exactly the same rows.
            if let Some(s) = split_cfg {
                cfg.data.splits = s.data.splits.clone();
            }
            let cfg = Arc::new(cfg);
            let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(l.manifest.dense_stats.clone())))?);
            let p = mixrank_train::evaluate(&mut l.model, &ops, enc, cfg.split(&a.split)?)?;
            Ok((cfg, p))
        };
        let (cfg_a, pa) = score(&a.run_a, None)?;
        let (cfg_b, pb) = score(&a.run_b, Some(&cfg_a))?;
        if cfg_a.tasks.iter().map(|t| &t.name).ne(cfg_b.tasks.iter().map(|t| &t.name)) {
            bail!("the two runs have different tasks");
        }
        if pa.requests != pb.requests {
            bail!("the two runs scored different rows (request ids differ)");
        }
        let boot = BootstrapConfig { resamples: a.resamples, ..Default::default() };
        crate::say!("B = {} against A = {} on split `{}`", a.run_b.display(), a.run_a.display(), a.split);
        crate::emit(&render_comparison(&cfg_a, &pa, &pb, &boot));
        Ok(())
    })
}

/// The comparison table: per task, overall and per segment, each metric's A and B
/// values, the relative lift of B and its 95% paired-bootstrap interval.
pub fn render_comparison(cfg: &ExperimentConfig, a: &Predictions, b: &Predictions, boot: &BootstrapConfig) -> String {
    let names = cfg.columns.segment.as_ref().map(|s| s.values.clone()).unwrap_or_else(|| vec!["all".into()]);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<11} {:<13} {:<8} {:>9} {:>9} {:>8} {:>19}  sig",
        "task", "segment", "metric", "A", "B", "lift", "95% CI"
    );
    for (t, task) in cfg.tasks.iter().enumerate() {
        let kind = match task.kind {
            TaskKind::Binary => TaskType::Binary,
            TaskKind::Regression => TaskType::Regression,
        };
        let rows = TaskRows {
            preds: &a.preds[t],
            labels: &a.labels[t],
            mask: Some(&a.masks[t]),
            weights: Some(&a.weights),
            segments: cfg.columns.segment.as_ref().map(|_| a.segments.as_slice()),
            groups: cfg.columns.request_id.as_ref().map(|_| a.requests.as_slice()),
        };
        let c = compare_task(&task.name, kind, &rows, &b.preds[t], &names, boot);
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
