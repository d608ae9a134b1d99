//! The report page: header facts, training and validation curves, the metrics table per
//! task and surface, gate-weight heatmaps (task × expert, one per surface) and
//! reliability diagrams — one HTML file with inline CSS and SVG.

use crate::calibration::CalibrationBin;
use crate::log::RunLog;
use crate::svg::{escape, heatmap, line_chart, Chart, Series};
use mixrank_metrics::{TaskMetrics, TaskReport};
use std::fmt::Write as _;

/// Mean gate weights of a scored split.
#[derive(Debug, Clone)]
pub struct GateTable {
    /// One name per gate (the task it serves; PLE: `L<level> <task>` / `L<level> shared`).
    pub gates: Vec<String>,
    /// One name per expert (`index:kind`).
    pub experts: Vec<String>,
    pub segments: Vec<String>,
    /// `[gate][segment][expert]`.
    pub means: Vec<Vec<Vec<f64>>>,
    /// `[gate][segment]`: mean gate entropy `-Σ w ln w` (nats).
    pub entropy: Vec<Vec<f64>>,
}

/// Reliability curves of one binary task.
#[derive(Debug, Clone)]
pub struct TaskCalibration {
    pub task: String,
    pub overall: Vec<CalibrationBin>,
    /// `(segment, bins)`.
    pub segments: Vec<(String, Vec<CalibrationBin>)>,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct ReportInput {
    pub title: String,
    /// Facts shown at the top: architecture, steps, data, checkpoint.
    pub facts: Vec<(String, String)>,
    pub log: RunLog,
    /// The split the metrics, gates and calibration were computed on.
    pub split: String,
    pub reports: Vec<TaskReport>,
    /// One table per set of gates that mix the same experts (MMoE: one; PLE: one per
    /// gate); empty without gates.
    pub gates: Vec<GateTable>,
    pub calibration: Vec<TaskCalibration>,
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}\
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}\
table{border-collapse:collapse;margin:6px 0 14px}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}\
th{background:#f6f6f6}td:first-child,th:first-child,td.l{text-align:left}.facts td{text-align:left}\
.grid{display:flex;flex-wrap:wrap;gap:12px}.chart{width:600px;max-width:100%;height:auto}.heat{max-width:100%;height:auto}\
.ct{font-size:13px;font-weight:600}.tk{font-size:11px;fill:#444}.al{font-size:12px;fill:#333}.lg{font-size:12px}.cv{font-size:11px}\
.warn{color:#a40000;font-weight:600}.muted{color:#777}";

/// Renders the whole page.
pub fn render(r: &ReportInput) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{CSS}</style></head><body><h1>{t}</h1>",
        t = escape(&r.title)
    );
    o.push_str("<table class=\"facts\">");
    for (k, v) in &r.facts {
        let _ = write!(o, "<tr><td><b>{}</b></td><td>{}</td></tr>", escape(k), escape(v));
    }
    o.push_str("</table>");
    curves(&mut o, &r.log);
    metrics_table(&mut o, &r.split, &r.reports);
    if !r.gates.is_empty() {
        o.push_str("<h2>Expert utilisation (mean gate weight)</h2><div class=\"grid\">");
        for g in &r.gates {
            gates(&mut o, g);
        }
        o.push_str("</div>");
        for g in &r.gates {
            entropy_table(&mut o, g);
            collapse_warnings(&mut o, g);
        }
    }
    calibration(&mut o, &r.split, &r.calibration);
    o.push_str("</body></html>\n");
    o
}

fn curves(o: &mut String, log: &RunLog) {
    o.push_str("<h2>Training</h2>");
    if log.train.is_empty() && log.validation.is_empty() {
        o.push_str("<p class=\"muted\">The training log has no records.</p>");
        return;
    }
    o.push_str("<div class=\"grid\">");
    if !log.train.is_empty() {
        // Binary (BCE) and regression (MSE) losses live on different scales: one chart each.
        let regression: Vec<&str> = log
            .validation
            .first()
            .map(|v| v.reports.iter().filter(|t| rmse_of(&t.overall).is_some()).map(|t| t.task.as_str()).collect())
            .unwrap_or_default();
        let tasks: Vec<&str> = log.train[0].task_loss.iter().map(|(n, _)| n.as_str()).collect();
        for (kind, want_regression) in [("binary tasks", false), ("regression tasks", true)] {
            let series: Vec<Series> = tasks
                .iter()
                .enumerate()
                .filter(|(_, name)| regression.contains(name) == want_regression)
                .map(|(i, name)| Series {
                    name: name.to_string(),
                    points: log
                        .train
                        .iter()
                        .filter_map(|p| p.task_loss.get(i).map(|(_, l)| (p.step as f64, *l)))
                        .collect(),
                    markers: false,
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            let chart = Chart {
                title: format!("training loss, {kind} (mean over each log window)"),
                x_label: "step".into(),
                y_label: "loss".into(),
                ..Chart::default()
            };
            o.push_str(&line_chart(&chart, &series));
        }
        let tput = Series {
            name: "examples/s".into(),
            points: log.train.iter().map(|p| (p.step as f64, p.examples_per_s)).collect(),
            markers: false,
        };
        let chart = Chart {
            title: "throughput (cumulative mean)".into(),
            x_label: "step".into(),
            y_label: "examples / s".into(),
            ..Chart::default()
        };
        o.push_str(&line_chart(&chart, &[tput]));
    }
    // Validation: AUC for binary tasks, RMSE for regression tasks, overall.
    for (label, pick) in [("AUC", auc_of as fn(&TaskMetrics) -> Option<f64>), ("RMSE", rmse_of)] {
        let names: Vec<&str> = log
            .validation
            .first()
            .map(|v| v.reports.iter().filter(|t| pick(&t.overall).is_some()).map(|t| t.task.as_str()).collect())
            .unwrap_or_default();
        if names.is_empty() {
            continue;
        }
        let series: Vec<Series> = names
            .iter()
            .map(|name| Series {
                name: name.to_string(),
                points: log
                    .validation
                    .iter()
                    .filter_map(|v| {
                        let t = v.reports.iter().find(|t| t.task == *name)?;
                        Some((v.step as f64, pick(&t.overall)?))
                    })
                    .collect(),
                markers: true,
            })
            .collect();
        let chart = Chart {
            title: format!("validation {label} per task"),
            x_label: "step".into(),
            y_label: label.into(),
            ..Chart::default()
        };
        o.push_str(&line_chart(&chart, &series));
    }
    o.push_str("</div>");
}

fn auc_of(m: &TaskMetrics) -> Option<f64> {
    match m {
        TaskMetrics::Binary(b) => b.auc,
        TaskMetrics::Regression(_) => None,
    }
}

fn rmse_of(m: &TaskMetrics) -> Option<f64> {
    match m {
        TaskMetrics::Regression(r) => Some(r.rmse),
        TaskMetrics::Binary(_) => None,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn metrics_row(o: &mut String, task: &str, segment: &str, m: &TaskMetrics) {
    let _ = write!(o, "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td>", escape(task), escape(segment));
    let _ = match m {
        TaskMetrics::Binary(b) => write!(
            o,
            "<td>{}</td><td>{}</td><td>{}</td><td>{:.5}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>–</td><td>–</td></tr>",
            b.rows,
            opt(b.auc, 5),
            opt(b.gauc, 5),
            b.logloss,
            opt(b.ne, 5),
            opt(b.calibration, 4),
            b.label_rate
        ),
        TaskMetrics::Regression(r) => write!(
            o,
            "<td>{}</td><td>–</td><td>–</td><td>–</td><td>–</td><td>–</td><td>{:.4}</td><td>{:.5}</td><td>{:.5}</td></tr>",
            r.rows, r.mean_label, r.rmse, r.mae
        ),
    };
}

fn metrics_table(o: &mut String, split: &str, reports: &[TaskReport]) {
    let _ = write!(o, "<h2>Metrics on split <code>{}</code></h2>", escape(split));
    o.push_str(
        "<table><tr><th>task</th><th>segment</th><th>rows</th><th>AUC</th><th>gAUC</th><th>logloss</th><th>NE</th>\
         <th>calibration</th><th>label mean</th><th>RMSE</th><th>MAE</th></tr>",
    );
    for t in reports {
        metrics_row(o, &t.task, "all", &t.overall);
        for (s, m) in &t.segments {
            metrics_row(o, "", s, m);
        }
    }
    o.push_str("</table><p class=\"muted\">calibration = mean prediction / label rate (1 is calibrated); NE = logloss / entropy of the label rate; gAUC is grouped by request.</p>");
}

fn gates(o: &mut String, g: &GateTable) {
    match g.gates.as_slice() {
        // One gate (PLE: each mixes its own experts): one heatmap, a row per segment.
        [one] => o.push_str(&heatmap(&format!("gate {one}: segment × expert"), &g.segments, &g.experts, &g.means[0])),
        // Gates over the same experts (MMoE): a heatmap per segment, a row per gate.
        _ => {
            for (s, seg) in g.segments.iter().enumerate() {
                let values: Vec<Vec<f64>> = g.means.iter().map(|per_seg| per_seg[s].clone()).collect();
                o.push_str(&heatmap(&format!("segment {seg}: gate × expert"), &g.gates, &g.experts, &values));
            }
        }
    }
}

/// Per gate and segment, the mean gate entropy and its ratio to `ln n_experts` (1:
/// uniform weights, 0: one expert per row).
fn entropy_table(o: &mut String, g: &GateTable) {
    if g.entropy.is_empty() {
        return;
    }
    let ln_e = (g.experts.len() as f64).ln();
    o.push_str("<table><tr><th>gate</th><th>segment</th><th>entropy (nats)</th><th>entropy / ln E</th></tr>");
    for (gi, per_seg) in g.entropy.iter().enumerate() {
        for (s, h) in per_seg.iter().enumerate() {
            let ratio = if ln_e > 0.0 { h / ln_e } else { 0.0 };
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{h:.3}</td><td>{ratio:.3}</td></tr>",
                escape(&g.gates[gi]),
                escape(&g.segments[s])
            );
        }
    }
    o.push_str("</table>");
}

/// Names every gate that put more than 0.9 of its weight on one expert in a segment.
fn collapse_warnings(o: &mut String, g: &GateTable) {
    for (gi, per_seg) in g.means.iter().enumerate() {
        for (s, means) in per_seg.iter().enumerate() {
            if let Some((e, m)) = means.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                if *m > 0.9 {
                    let _ = write!(
                        o,
                        "<p class=\"warn\">gate {} has collapsed onto expert {} in segment {} (mean weight {m:.3})</p>",
                        escape(&g.gates[gi]),
                        escape(&g.experts[e]),
                        escape(&g.segments[s])
                    );
                }
            }
        }
    }
}

fn calibration(o: &mut String, split: &str, tasks: &[TaskCalibration]) {
    if tasks.is_empty() {
        return;
    }
    let _ = write!(o, "<h2>Calibration on split <code>{}</code></h2><div class=\"grid\">", escape(split));
    for t in tasks {
        let as_points = |bins: &[CalibrationBin]| bins.iter().map(|b| (b.mean_prediction, b.label_rate)).collect();
        let mut series = vec![Series { name: "all".into(), points: as_points(&t.overall), markers: true }];
        series.extend(t.segments.iter().map(|(s, b)| Series { name: s.clone(), points: as_points(b), markers: true }));
        let top = series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|&(x, y)| [x, y]))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let top = (top * 1.05).clamp(1e-3, 1.0);
        let chart = Chart {
            title: format!("{}: observed rate vs mean prediction", t.task),
            x_label: "mean predicted probability (equal-weight bins)".into(),
            y_label: "observed rate".into(),
            range: Some((0.0, top, 0.0, top)),
            diagonal: true,
        };
        o.push_str(&line_chart(&chart, &series));
    }
    o.push_str("</div>");
}
