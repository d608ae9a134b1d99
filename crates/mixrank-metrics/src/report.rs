//! Per-task reports, overall and per segment (surface), and per-task, per-segment
//! comparisons of two models. Rows whose label mask is 0 are left out.

use crate::binary::{binary_metrics, BinaryMetrics};
use crate::bootstrap::{paired_bootstrap, BootstrapConfig, Lift, Metric, Paired};
use crate::regression::{regression_metrics, RegressionMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which family of metrics a task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Binary,
    Regression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TaskMetrics {
    Binary(BinaryMetrics),
    Regression(RegressionMetrics),
}

/// One task's metrics overall and per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: String,
    pub overall: TaskMetrics,
    /// Segment name → metrics; segments without labelled rows are absent.
    pub segments: BTreeMap<String, TaskMetrics>,
}

/// The rows of one task. Predictions are probabilities (binary) or values (regression).
pub struct TaskRows<'a> {
    pub preds: &'a [f32],
    pub labels: &'a [f32],
    pub mask: Option<&'a [f32]>,
    pub weights: Option<&'a [f32]>,
    /// Segment id per row, indexing `segment_names`.
    pub segments: Option<&'a [u32]>,
    /// Request or user id per row (gAUC, grouped bootstrap).
    pub groups: Option<&'a [u64]>,
}

impl TaskRows<'_> {
    /// Indices of labelled rows, overall and per segment.
    pub(crate) fn partition(&self, n_segments: usize) -> (Vec<usize>, Vec<Vec<usize>>) {
        let mut all = Vec::new();
        let mut per = vec![Vec::new(); n_segments];
        for i in 0..self.labels.len() {
            if self.mask.is_some_and(|m| m[i] == 0.0) {
                continue;
            }
            all.push(i);
            if let Some(s) = self.segments {
                per[s[i] as usize].push(i);
            }
        }
        (all, per)
    }
}

pub(crate) fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i]).collect()
}

fn metrics_on(kind: TaskType, r: &TaskRows<'_>, idx: &[usize]) -> TaskMetrics {
    let p = pick(r.preds, idx);
    let y = pick(r.labels, idx);
    let w = r.weights.map(|w| pick(w, idx));
    match kind {
        TaskType::Binary => {
            let g = r.groups.map(|g| pick(g, idx));
            TaskMetrics::Binary(binary_metrics(&p, &y, w.as_deref(), g.as_deref()))
        }
        TaskType::Regression => TaskMetrics::Regression(regression_metrics(&p, &y, w.as_deref())),
    }
}

/// Metrics of one task overall and per segment.
pub fn task_report(task: &str, kind: TaskType, rows: &TaskRows<'_>, segment_names: &[String]) -> TaskReport {
    let (all, per) = rows.partition(segment_names.len());
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (name, idx) in segment_names.iter().zip(&per) {
            if !idx.is_empty() {
                segments.insert(name.clone(), metrics_on(kind, rows, idx));
            }
        }
    }
    TaskReport { task: task.to_string(), overall: metrics_on(kind, rows, &all), segments }
}

/// Model B against model A on one task: the primary metric (AUC for binary tasks,
/// RMSE for regression) and, for binary tasks, logloss; overall and per segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskComparison {
    pub task: String,
    pub overall: Vec<Lift>,
    pub segments: BTreeMap<String, Vec<Lift>>,
}

/// Compares two models' predictions (`rows.preds` is model A) with `preds_b`.
pub fn compare_task(
    task: &str,
    kind: TaskType,
    rows: &TaskRows<'_>,
    preds_b: &[f32],
    segment_names: &[String],
    cfg: &BootstrapConfig,
) -> TaskComparison {
    let (all, per) = rows.partition(segment_names.len());
    let metrics: &[Metric] = match kind {
        TaskType::Binary => &[Metric::Auc, Metric::Logloss],
        TaskType::Regression => &[Metric::Rmse],
    };
    let lifts = |idx: &[usize]| -> Vec<Lift> {
        let a = pick(rows.preds, idx);
        let b = pick(preds_b, idx);
        let y = pick(rows.labels, idx);
        let w = rows.weights.map(|w| pick(w, idx));
        let g = rows.groups.map(|g| pick(g, idx));
        let d = Paired { a: &a, b: &b, labels: &y, weights: w.as_deref(), groups: g.as_deref() };
        metrics.iter().filter_map(|&m| paired_bootstrap(m, &d, cfg)).collect()
    };
    let mut segments = BTreeMap::new();
    if rows.segments.is_some() {
        for (name, idx) in segment_names.iter().zip(&per) {
            if !idx.is_empty() {
                segments.insert(name.clone(), lifts(idx));
            }
        }
    }
    TaskComparison { task: task.to_string(), overall: lifts(&all), segments }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_segments_partition_rows() {
        let preds = [0.9, 0.1, 0.8, 0.3, 0.6, 0.2];
        let labels = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let mask = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let seg = [0, 0, 1, 1, 1, 1];
        let names = vec!["home".to_string(), "search".to_string()];
        let r = TaskRows {
            preds: &preds,
            labels: &labels,
            mask: Some(&mask),
            weights: None,
            segments: Some(&seg),
            groups: None,
        };
        let rep = task_report("click", TaskType::Binary, &r, &names);
        let TaskMetrics::Binary(all) = &rep.overall else { panic!("binary") };
        assert_eq!(all.rows, 5, "the masked row is left out");
        let TaskMetrics::Binary(search) = &rep.segments["search"] else { panic!("binary") };
        assert_eq!(search.rows, 3);
        // search rows (masked one removed): (0.8,1), (0.3,0), (0.2,1): pairs 1 + 0 → 0.5.
        assert_eq!(search.auc, Some(0.5));
        let TaskMetrics::Binary(home) = &rep.segments["home"] else { panic!("binary") };
        assert_eq!(home.auc, Some(1.0));
    }

    #[test]
    fn regression_report_and_empty_segment() {
        let r = TaskRows {
            preds: &[1.0, 2.0],
            labels: &[1.0, 4.0],
            mask: None,
            weights: None,
            segments: Some(&[0, 0]),
            groups: None,
        };
        let rep = task_report("dwell", TaskType::Regression, &r, &["a".into(), "b".into()]);
        assert!(rep.segments.contains_key("a") && !rep.segments.contains_key("b"));
        let TaskMetrics::Regression(m) = rep.overall else { panic!("regression") };
        assert!((m.rmse - 2.0f64.sqrt()).abs() < 1e-12);
    }
}
