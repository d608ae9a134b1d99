//! Experiment tables: per-model metrics per task and surface, and paired-bootstrap
//! lifts between models, as markdown and as JSON values.

use crate::evaluate::{task_type, Predictions};
use mixrank_data::config::TaskKind;
use mixrank_data::ExperimentConfig;
use mixrank_metrics::{compare_task, task_report, BootstrapConfig, TaskComparison, TaskMetrics};
use serde_json::{json, Value};
use std::fmt::Write as _;

/// A model's predictions on the evaluation rows, with the name the tables use.
pub struct Scored {
    pub name: String,
    pub preds: Predictions,
}

fn cell(m: &TaskMetrics) -> (Option<f64>, f64) {
    match m {
        TaskMetrics::Binary(b) => (b.auc, b.logloss),
        TaskMetrics::Regression(r) => (None, r.rmse),
    }
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

/// One markdown table per task: a row per model; AUC and logloss (RMSE for regression)
/// overall and per surface. Also returns the same numbers as JSON.
pub fn metrics_tables(cfg: &ExperimentConfig, models: &[Scored]) -> (String, Value) {
    let names = cfg.segment_names();
    let mut md = String::new();
    let mut js = Vec::new();
    for (t, task) in cfg.tasks.iter().enumerate() {
        let binary = task.kind == TaskKind::Binary;
        let segs: Vec<String> = std::iter::once("all".to_string()).chain(names.iter().cloned()).collect();
        let _ = writeln!(md, "\n**{}** ({})\n", task.name, if binary { "AUC / logloss" } else { "RMSE" });
        let head: Vec<String> = segs.iter().map(|s| format!(" {s} ")).collect();
        let _ = writeln!(md, "| model |{}|", head.join("|"));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(segs.len()));
        for m in models {
            let rep = task_report(&task.name, task_type(task.kind), &m.preds.task_rows(cfg, t), &names);
            let mut cells = Vec::new();
            let mut per = serde_json::Map::new();
            for s in &segs {
                let metrics = if s == "all" { Some(&rep.overall) } else { rep.segments.get(s) };
                let Some(metrics) = metrics else {
                    cells.push(" – ".to_string());
                    continue;
                };
                let (auc, loss) = cell(metrics);
                cells.push(if binary { format!(" {} / {loss:.4} ", fmt_opt(auc)) } else { format!(" {loss:.4} ") });
                per.insert(
                    s.clone(),
                    if binary { json!({ "auc": auc, "logloss": loss }) } else { json!({ "rmse": loss }) },
                );
            }
            let _ = writeln!(md, "| {} |{}|", m.name, cells.join("|"));
            js.push(json!({ "task": task.name, "model": m.name, "segments": per }));
        }
    }
    (md, Value::Array(js))
}

/// Lifts of B over A per task and surface with paired-bootstrap 95% intervals
/// (resampling whole requests), as a markdown table and JSON.
pub fn lift_table(
    cfg: &ExperimentConfig,
    a: &Scored,
    b: &Scored,
    boot: &BootstrapConfig,
) -> (String, Value, Vec<TaskComparison>) {
    let names = cfg.segment_names();
    let mut md = String::new();
    let _ = writeln!(md, "\n**{}** against **{}**\n", b.name, a.name);
    let _ = writeln!(md, "| task | surface | metric | A | B | lift | 95% CI | sig |");
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---|:---:|");
    let mut all = Vec::new();
    let mut js = Vec::new();
    for (t, task) in cfg.tasks.iter().enumerate() {
        let c =
            compare_task(&task.name, task_type(task.kind), &a.preds.task_rows(cfg, t), &b.preds.preds[t], &names, boot);
        let rows =
            std::iter::once(("all".to_string(), &c.overall)).chain(c.segments.iter().map(|(k, v)| (k.clone(), v)));
        for (seg, lifts) in rows {
            for l in lifts {
                let metric = format!("{:?}", l.metric).to_lowercase();
                let _ = writeln!(
                    md,
                    "| {} | {seg} | {metric} | {:.5} | {:.5} | {:+.3}% | [{:+.3}%, {:+.3}%] | {} |",
                    task.name,
                    l.a,
                    l.b,
                    100.0 * l.lift,
                    100.0 * l.ci_low,
                    100.0 * l.ci_high,
                    if l.significant { "*" } else { "" }
                );
                js.push(json!({
                    "task": task.name, "surface": seg, "metric": metric, "a": l.a, "b": l.b,
                    "lift": l.lift, "ci_low": l.ci_low, "ci_high": l.ci_high, "significant": l.significant,
                }));
            }
        }
        all.push(c);
    }
    let _ = writeln!(
        md,
        "\nlift: relative improvement of B over A (positive = B better; logloss and RMSE lifts are reductions); \
         * = |lift| ≥ {:.1}% and the 95% paired-bootstrap interval ({} resamples of whole requests) excludes 0.",
        100.0 * boot.min_lift,
        boot.resamples
    );
    (md, json!({ "a": a.name, "b": b.name, "lifts": js }), all)
}

/// Counts of significant wins and losses of B over A (overall rows only).
pub fn tally(comparisons: &[TaskComparison]) -> (usize, usize, usize) {
    let overall = comparisons.iter().flat_map(|c| &c.overall);
    let (mut win, mut loss, mut n) = (0, 0, 0);
    for l in overall {
        n += 1;
        if l.significant && l.lift > 0.0 {
            win += 1;
        } else if l.significant {
            loss += 1;
        }
    }
    (win, loss, n)
}
