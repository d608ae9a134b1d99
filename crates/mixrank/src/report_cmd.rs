//! `mixrank report RUN_DIR`: scores a split with the run's verified checkpoint and
//! writes a self-contained HTML page (training curves, metrics per task and surface,
//! gate heatmaps, calibration) next to the run.

use anyhow::{Context, Result};
use mixrank_data::config::TaskKind;
use mixrank_report::{calibration_bins, parse_train_log, GateTable, ReportInput, TaskCalibration};
use mixrank_train::evaluate::Predictions;
use mixrank_train::CheckpointScorer;
use std::path::{Path, PathBuf};

/// Bins of each reliability curve.
const CALIBRATION_BINS: usize = 12;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run directory written by `mixrank train`.
    pub run_dir: PathBuf,
    /// Split of the stored config that metrics, gates and calibration are computed on.
    #[arg(long, default_value = "validation")]
    pub split: String,
    /// Where to write the page (default RUN_DIR/report.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
    let out = a.out.clone().unwrap_or_else(|| a.run_dir.join("report.html"));
    let html = pool.install(|| build(&a.run_dir, &a.split))?;
    crate::stats_cmd::write_atomic(&out, &html).with_context(|| format!("writing {}", out.display()))?;
    crate::say!("report: {}", out.display());
    Ok(())
}

/// The report page of `run_dir`, scored on `split`.
pub fn build(run_dir: &Path, split: &str) -> Result<String> {
    let log_path = run_dir.join("train_log.jsonl");
    let log_text = std::fs::read_to_string(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let log = parse_train_log(&log_text, &log_path.display().to_string())?;
    let ops = crate::backend::ops();
    let mut scorer = CheckpointScorer::open(run_dir, &ops, None)
        .with_context(|| format!("loading the checkpoint in {}", run_dir.display()))?;
    let cfg = scorer.config.clone();
    let preds = scorer.score(&ops, split).with_context(|| format!("scoring split `{split}`"))?;
    let m = &scorer.loaded.manifest;
    let mut facts = vec![
        ("run".to_string(), run_dir.display().to_string()),
        ("config".to_string(), m.config_path.display().to_string()),
        ("model".to_string(), describe_model(&cfg)),
        ("trained".to_string(), format!("{} steps, {} examples (stage {})", m.step, m.examples, m.lineage.stage)),
        ("scored".to_string(), format!("split `{split}`, {} rows", preds.weights.len())),
        (
            "checkpoint".to_string(),
            format!("format {}, weights xxh3 {}, written by {}", m.format_version, m.weights_xxh3(), m.created_by),
        ),
    ];
    if !m.lineage.days.is_empty() {
        facts.push(("days trained on".into(), m.lineage.days.join(", ")));
    }
    if let Some(t) = &m.lineage.teacher {
        facts.push(("teacher".into(), t.clone()));
    }
    if let Some(p) = &m.lineage.parent {
        facts.push(("parent".into(), p.clone()));
    }
    let input = ReportInput {
        title: format!("mixrank report — {}", run_dir.file_name().map_or("run".into(), |n| n.to_string_lossy())),
        facts,
        log,
        split: split.to_string(),
        reports: preds.reports(&cfg),
        gates: gate_tables(&preds, &cfg),
        calibration: calibration(&preds, &cfg),
    };
    Ok(mixrank_report::render(&input))
}

fn describe_model(cfg: &mixrank_data::ExperimentConfig) -> String {
    match &cfg.model {
        None => "default (config has no [model] section)".into(),
        Some(m) => {
            let experts: Vec<String> = m.experts.iter().map(|e| format!("{}×{:?}", e.count(), e.kind())).collect();
            format!("{:?}, experts {}, expert_dim {}", m.architecture, experts.join(" + "), m.expert_dim)
        }
    }
}

fn gate_tables(p: &Predictions, cfg: &mixrank_data::ExperimentConfig) -> Vec<GateTable> {
    p.gate_groups()
        .into_iter()
        .map(|group| GateTable {
            gates: group.iter().map(|g| g.name.clone()).collect(),
            experts: group[0].experts.clone(),
            segments: cfg.segment_names(),
            means: group.iter().map(|g| g.means.clone()).collect(),
            entropy: group.iter().map(|g| g.entropy.clone()).collect(),
        })
        .collect()
}

fn calibration(p: &Predictions, cfg: &mixrank_data::ExperimentConfig) -> Vec<TaskCalibration> {
    let names = cfg.segment_names();
    let has_segments = cfg.columns.segment.is_some();
    cfg.tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == TaskKind::Binary)
        .map(|(t, task)| {
            let bins = |keep: &dyn Fn(usize) -> bool| {
                let mask: Vec<f32> =
                    p.masks[t].iter().enumerate().map(|(i, &m)| if keep(i) { m } else { 0.0 }).collect();
                calibration_bins(&p.preds[t], &p.labels[t], Some(&mask), Some(&p.weights), CALIBRATION_BINS)
            };
            let segments = if has_segments {
                (0..names.len())
                    .map(|s| (names[s].clone(), bins(&|i| p.segments[i] as usize == s)))
                    .filter(|(_, b)| !b.is_empty())
                    .collect()
            } else {
                Vec::new()
            };
            TaskCalibration { task: task.name.clone(), overall: bins(&|_| true), segments }
        })
        .collect()
}
