//! `mixrank eval RUN_DIR`: scores a split with a trained checkpoint.

use anyhow::{Context, Result};
use clap::ValueEnum;
use mixrank_metrics::{AuctionReport, TaskMetrics, TaskReport, TruthReport};
use mixrank_train::eval_section::{describe_auction, section_report};
use mixrank_train::CheckpointScorer;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// f32 weights and activations.
    F32,
    /// bf16 weights and activations with f32 accumulation (AMX / AVX512-BF16 when the
    /// CPU has them); also scores f32 and reports each task's metric deltas.
    Bf16,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Run directory written by `mixrank train` (its checkpoint/ is loaded and verified).
    pub run_dir: PathBuf,
    /// Split of the stored config to score.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Also write the reports as JSON (per task: overall and per segment; `gates`: each
    /// gate's mean weights and entropy per segment; with `[eval]`, `truth` and `auction`
    /// of the f32 model too).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Score every row as if shown at this position (the `[columns] position` column's
    /// value replaced before encoding): how a model that reads position as a plain
    /// feature is scored "at position N". Labels and truths are unchanged.
    #[arg(long)]
    pub at_position: Option<u32>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to score: `cpu` or `cuda[:N]` (f32 only on CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    pool.install(|| run_in_pool(a))
}

fn run_in_pool(a: &EvalArgs) -> Result<()> {
    use crate::backend::Device;
    match (a.device, a.precision) {
        (Device::Cpu, Precision::F32) => eval_on(a, &crate::backend::ops(), None),
        (Device::Cpu, Precision::Bf16) => {
            let k = mixrank_engine::bf16::Bf16Kernel::select()?;
            let ops = crate::backend::ops();
            eval_on(a, &ops, Some((&ops.with_bf16_kernel(k), k)))
        }
        (Device::Cuda(n), Precision::F32) => eval_on(a, &crate::backend::cuda(n)?, None),
        (Device::Cuda(_), Precision::Bf16) => {
            anyhow::bail!("--precision bf16 runs on the CPU only: bf16 on CUDA is not built yet")
        }
    }
}

/// Scores on the backend `ops`; with `bf16`, also with the model's GEMM weights packed
/// by that backend (its kernel named), and reports the deltas.
fn eval_on<B: mixrank_engine::Backend + 'static>(
    a: &EvalArgs,
    ops: &B,
    bf16: Option<(&B, mixrank_engine::bf16::Bf16Kernel)>,
) -> Result<()> {
    let mut scorer = CheckpointScorer::open(&a.run_dir, ops, None)
        .with_context(|| format!("loading the checkpoint in {}", a.run_dir.display()))?;
    if let Some(n) = a.at_position {
        scorer = scorer.at_position(n).context("--at-position")?;
    }
    let cfg = scorer.config.clone();
    let f32_preds = scorer.score(ops, &a.split)?;
    let f32_reports = f32_preds.reports(&cfg);
    let step = scorer.loaded.manifest.step;
    let mut out = serde_json::json!({ "split": a.split, "step": step, "f32": f32_reports });
    let calibrated = if scorer.loaded.calibration.is_some() { " (calibrated)" } else { "" };
    crate::say!("checkpoint step {step} — split `{}`, f32{calibrated}:", a.split);
    crate::emit(&crate::train_cmd::render_reports(&f32_reports));
    if let (Some(cal), Some(raw)) = (&scorer.loaded.calibration, &f32_preds.uncalibrated) {
        let rows = mixrank_train::calibration::report(&cfg, &f32_preds, raw);
        crate::emit(&mixrank_train::calibration::render_report(&cal.file, &rows));
        out["calibration"] = serde_json::to_value(&rows)?;
    }
    crate::emit(&f32_preds.render_gates(&cfg));
    if !f32_preds.gates.is_empty() {
        let names = cfg.segment_names();
        out["gates"] = f32_preds.gates.iter().map(|g| g.to_json(&names)).collect();
    }
    if let Some(section) = section_report(&cfg, &f32_preds).context("the [eval] metrics")? {
        if !section.truth.is_empty() {
            crate::emit(&render_truth(&section.truth));
            out["truth"] = serde_json::to_value(&section.truth)?;
        }
        if let Some(a) = &section.auction {
            crate::say!("{}:", describe_auction(&cfg).unwrap_or_default());
            crate::emit(&render_auction(a));
            out["auction"] = serde_json::to_value(a)?;
        }
    }
    if let Some((packing, kernel)) = bf16 {
        let n = scorer.loaded.model.use_bf16(packing)?;
        let bf16_reports = scorer.score(ops, &a.split)?.reports(&cfg);
        crate::say!("bf16 ({} kernel, {n} GEMMs; {}):", kernel.name(), kernel.describe());
        crate::emit(&crate::train_cmd::render_reports(&bf16_reports));
        crate::emit(&render_deltas(&f32_reports, &bf16_reports));
        out["bf16"] = serde_json::to_value(&bf16_reports)?;
    }
    if let Some(p) = &a.json {
        crate::stats_cmd::write_atomic(p, &serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// Per task with a truth column, overall and per segment: the expected AUC against
/// labels drawn from the true probabilities, the mean per-request NDCG@K with the true
/// probability as gain (and the requests it averages), mean prediction and mean truth.
pub fn render_truth(reports: &[TruthReport]) -> String {
    let mut o = String::new();
    let Some(first) = reports.first() else { return o };
    let tw = crate::train_cmd::task_width(reports.iter().map(|r| r.task.as_str()));
    let sw = reports.iter().flat_map(|r| r.segments.keys()).map(|s| s.chars().count()).max().unwrap_or(0).max(14);
    let ndcg = format!("NDCG@{}", first.k);
    let _ = writeln!(o, "against the true probabilities ([eval] truth; docs/metrics.md):");
    let _ = writeln!(
        o,
        "{:<tw$} {:<sw$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "task", "segment", "rows", "exp AUC", ndcg, "requests", "mean p", "mean true"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.5}"));
    for r in reports {
        let rows =
            std::iter::once(("all".to_string(), &r.overall)).chain(r.segments.iter().map(|(k, v)| (k.clone(), v)));
        for (seg, m) in rows {
            let _ = writeln!(
                o,
                "{:<tw$} {:<sw$} {:>9} {:>9} {:>9} {:>9} {:>9.5} {:>10.5}",
                r.task,
                seg,
                m.rows,
                opt(m.expected_auc),
                opt(m.ndcg),
                m.ndcg_requests,
                m.mean_prediction,
                m.mean_truth
            );
        }
    }
    o
}

/// The auction replay overall and per segment: requests, filled slots, the winners'
/// CTR, expected clicks, cost per click, revenue per 1000 requests, and the winners'
/// mean pCTR minus their mean CTR.
pub fn render_auction(r: &AuctionReport) -> String {
    let mut o = String::new();
    let sw = r.segments.keys().map(|s| s.chars().count()).max().unwrap_or(0).max(14);
    let _ = writeln!(
        o,
        "{:<sw$} {:>9} {:>9} {:>9} {:>11} {:>9} {:>11} {:>10}",
        "segment", "requests", "winners", "CTR", "clicks", "CPC", "eCPM", "calib err"
    );
    let opt = |v: Option<f64>, signed: bool| match v {
        Some(x) if signed => format!("{x:+.5}"),
        Some(x) => format!("{x:.5}"),
        None => "-".to_string(),
    };
    let rows = std::iter::once(("all".to_string(), &r.overall)).chain(r.segments.iter().map(|(k, v)| (k.clone(), v)));
    for (seg, m) in rows {
        let _ = writeln!(
            o,
            "{:<sw$} {:>9} {:>9} {:>9} {:>11.5} {:>9} {:>11} {:>10}",
            seg,
            m.requests,
            m.winners,
            opt(m.ctr, false),
            m.clicks,
            opt(m.cpc, false),
            opt(m.ecpm, false),
            opt(m.calibration_error, true)
        );
    }
    o
}

/// Per task (overall): bf16 metric minus f32 metric.
fn render_deltas(f: &[TaskReport], b: &[TaskReport]) -> String {
    let mut o = String::from("bf16 - f32 (overall):\n");
    let tw = crate::train_cmd::task_width(f.iter().map(|r| r.task.as_str()));
    for (x, y) in f.iter().zip(b) {
        let _ = match (&x.overall, &y.overall) {
            (TaskMetrics::Binary(p), TaskMetrics::Binary(q)) => writeln!(
                o,
                "  {:<tw$} ΔAUC {:+.6}  Δlogloss {:+.6}",
                x.task,
                q.auc.unwrap_or(f64::NAN) - p.auc.unwrap_or(f64::NAN),
                q.logloss - p.logloss
            ),
            (TaskMetrics::Regression(p), TaskMetrics::Regression(q)) => {
                writeln!(o, "  {:<tw$} ΔRMSE {:+.6}", x.task, q.rmse - p.rmse)
            }
            _ => Ok(()),
        };
    }
    o
}
