//! Scores a split with a model and computes per-task, per-segment metrics.

use crate::error::{engine, Result};
use mixrank_data::config::{ExperimentConfig, TaskKind};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::Encoder;
use mixrank_engine::{Backend, CpuOps};
use mixrank_metrics::{task_report, TaskReport, TaskRows, TaskType};
use mixrank_model::RankingModel;
use std::sync::Arc;

/// Predictions of every task over a split, with what the metrics need.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    /// `[task][row]`: probabilities (binary) or values (regression).
    pub preds: Vec<Vec<f32>>,
    pub labels: Vec<Vec<f32>>,
    pub masks: Vec<Vec<f32>>,
    pub weights: Vec<f32>,
    pub segments: Vec<u32>,
    pub requests: Vec<u64>,
}

impl Predictions {
    /// Per-task reports, overall and per segment (gAUC grouped by request id).
    pub fn reports(&self, cfg: &ExperimentConfig) -> Vec<TaskReport> {
        let names: Vec<String> = match &cfg.columns.segment {
            Some(s) => s.values.clone(),
            None => vec!["all".into()],
        };
        cfg.tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                let kind = match task.kind {
                    TaskKind::Binary => TaskType::Binary,
                    TaskKind::Regression => TaskType::Regression,
                };
                let rows = TaskRows {
                    preds: &self.preds[t],
                    labels: &self.labels[t],
                    mask: Some(&self.masks[t]),
                    weights: Some(&self.weights),
                    segments: cfg.columns.segment.as_ref().map(|_| self.segments.as_slice()),
                    groups: cfg.columns.request_id.as_ref().map(|_| self.requests.as_slice()),
                };
                task_report(&task.name, kind, &rows, &names)
            })
            .collect()
    }
}

/// Scores every row of `split` (file order, no shuffling).
pub fn evaluate(
    model: &mut RankingModel<CpuOps>,
    ops: &CpuOps,
    enc: Arc<Encoder>,
    split: &mixrank_data::config::Split,
) -> Result<Predictions> {
    let cfg = enc.config().clone();
    let n_tasks = cfg.tasks.len();
    let opts = StreamOptions::from_config(&cfg, false);
    let mut p = Predictions {
        preds: vec![Vec::new(); n_tasks],
        labels: vec![Vec::new(); n_tasks],
        masks: vec![Vec::new(); n_tasks],
        ..Default::default()
    };
    let mut host = vec![0f32; cfg.data.batch_size];
    for b in BatchStream::start(enc, split, opts)? {
        let b = b?;
        model.forward(ops, &b)?;
        for (t, task) in cfg.tasks.iter().enumerate() {
            ops.read(model.logits(t), &mut host[..b.rows]).map_err(engine("reading logits"))?;
            let out = &mut p.preds[t];
            match task.kind {
                TaskKind::Binary => out.extend(host[..b.rows].iter().map(|&z| 1.0 / (1.0 + (-z).exp()))),
                TaskKind::Regression => out.extend_from_slice(&host[..b.rows]),
            }
            p.labels[t].extend_from_slice(b.label(t));
            p.masks[t].extend_from_slice(b.mask(t));
        }
        p.weights.extend_from_slice(&b.weights);
        p.segments.extend_from_slice(&b.segment);
        p.requests.extend_from_slice(&b.request_id);
    }
    Ok(p)
}
