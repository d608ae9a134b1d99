//! Scores a split with a model and computes per-task, per-segment metrics.

use crate::error::{engine, Result};
use mixrank_data::config::{ExperimentConfig, TaskKind};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::Encoder;
use mixrank_engine::{Backend, CpuOps};
use mixrank_metrics::{task_report, TaskReport, TaskRows, TaskType};
use mixrank_model::RankingModel;
use std::sync::Arc;

/// The metrics family of a config task.
pub fn task_type(kind: TaskKind) -> TaskType {
    match kind {
        TaskKind::Binary => TaskType::Binary,
        TaskKind::Regression => TaskType::Regression,
    }
}

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
    /// Mean gate weight `[gate][segment][expert]` (empty without gates).
    pub gate_means: Vec<Vec<Vec<f64>>>,
    /// Expert kinds, in expert order.
    pub expert_kinds: Vec<String>,
}

impl Predictions {
    /// Task `t`'s rows for the metrics crate (segments and request groups only when the
    /// config names those columns).
    pub fn task_rows(&self, cfg: &ExperimentConfig, t: usize) -> TaskRows<'_> {
        TaskRows {
            preds: &self.preds[t],
            labels: &self.labels[t],
            mask: Some(&self.masks[t]),
            weights: Some(&self.weights),
            segments: cfg.columns.segment.as_ref().map(|_| self.segments.as_slice()),
            groups: cfg.columns.request_id.as_ref().map(|_| self.requests.as_slice()),
        }
    }

    /// Per-task reports, overall and per segment (gAUC grouped by request id).
    pub fn reports(&self, cfg: &ExperimentConfig) -> Vec<TaskReport> {
        let names = cfg.segment_names();
        cfg.tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                let rows = self.task_rows(cfg, t);
                task_report(&task.name, task_type(task.kind), &rows, &names)
            })
            .collect()
    }
}

/// Rows per batch when scoring a checkpoint.
const EVAL_BATCH: usize = 4096;

/// A verified checkpoint ready to score splits of its stored config.
pub struct CheckpointScorer {
    pub config: Arc<ExperimentConfig>,
    pub loaded: crate::checkpoint::Loaded,
    enc: Arc<Encoder>,
}

impl CheckpointScorer {
    /// Loads `run_dir/checkpoint`. With `splits_from`, that config's split definitions
    /// replace the stored ones (so two models score exactly the same rows).
    pub fn open(run_dir: &std::path::Path, ops: &CpuOps, splits_from: Option<&ExperimentConfig>) -> Result<Self> {
        let loaded = crate::checkpoint::load(&run_dir.join("checkpoint"), ops, EVAL_BATCH)?;
        let mut cfg = (*loaded.config).clone();
        cfg.data.batch_size = EVAL_BATCH;
        if let Some(s) = splits_from {
            cfg.data.splits = s.data.splits.clone();
        }
        let config = Arc::new(cfg);
        let stats = Arc::new(loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(config.clone(), mixrank_data::DenseMode::Fitted(stats))?);
        Ok(CheckpointScorer { config, loaded, enc })
    }

    /// Scores every row of the named split.
    pub fn score(&mut self, ops: &CpuOps, split: &str) -> Result<Predictions> {
        evaluate(&mut self.loaded.model, ops, self.enc.clone(), self.config.split(split)?)
    }
}

/// Appends the last forward's predictions of its first `rows` rows to `out[task]`:
/// `sigmoid(logit)` for binary tasks, the raw output (label-transform space) for
/// regression tasks. `host` is scratch of at least `rows` floats. Shared by
/// [`evaluate`] and the serving session, so both report exactly the same numbers.
pub fn read_predictions(
    model: &RankingModel<CpuOps>,
    ops: &CpuOps,
    tasks: &[mixrank_data::config::TaskSpec],
    rows: usize,
    host: &mut Vec<f32>,
    out: &mut [Vec<f32>],
) -> Result<()> {
    if host.len() < rows {
        host.resize(rows, 0.0);
    }
    for (t, task) in tasks.iter().enumerate() {
        ops.read(model.logits(t), &mut host[..rows]).map_err(engine("reading logits"))?;
        let o = &mut out[t];
        match task.kind {
            TaskKind::Binary => o.extend(host[..rows].iter().map(|&z| 1.0 / (1.0 + (-z).exp()))),
            TaskKind::Regression => o.extend_from_slice(&host[..rows]),
        }
    }
    Ok(())
}

/// Scores every row of `split` (file order, no shuffling) in evaluation mode (dropout
/// off); the model is left in evaluation mode.
pub fn evaluate(
    model: &mut RankingModel<CpuOps>,
    ops: &CpuOps,
    enc: Arc<Encoder>,
    split: &mixrank_data::config::Split,
) -> Result<Predictions> {
    model.set_training(false);
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
    let n_seg = cfg.columns.segment.as_ref().map_or(1, |s| s.values.len());
    let (n_gates, n_exp) = (model.head.n_gates(), model.head.n_experts());
    let mut gate_sums = vec![vec![vec![0f64; n_exp]; n_seg]; n_gates];
    let mut seg_rows = vec![0u64; n_seg];
    for b in BatchStream::start(enc, split, opts)? {
        let b = b?;
        model.forward(ops, &b)?;
        for (g, sums) in gate_sums.iter_mut().enumerate() {
            let w = model.head.gate_weights(g).expect("gate exists");
            for r in 0..b.rows {
                let seg = &mut sums[b.segment[r] as usize];
                for (e, acc) in seg.iter_mut().enumerate() {
                    *acc += w[r * n_exp + e] as f64;
                }
            }
        }
        for &s in &b.segment {
            seg_rows[s as usize] += 1;
        }
        read_predictions(model, ops, &cfg.tasks, b.rows, &mut host, &mut p.preds)?;
        for t in 0..n_tasks {
            p.labels[t].extend_from_slice(b.label(t));
            p.masks[t].extend_from_slice(b.mask(t));
        }
        p.weights.extend_from_slice(&b.weights);
        p.segments.extend_from_slice(&b.segment);
        p.requests.extend_from_slice(&b.request_id);
    }
    p.gate_means = gate_sums
        .into_iter()
        .map(|per_seg| {
            per_seg
                .into_iter()
                .zip(&seg_rows)
                .map(|(v, &n)| v.into_iter().map(|x| x / n.max(1) as f64).collect())
                .collect()
        })
        .collect();
    p.expert_kinds = model.head.expert_kinds();
    Ok(p)
}

impl Predictions {
    /// One name per gate: the task it serves (MMoE), or `gate i` (OMoE's single gate).
    pub fn gate_names(&self, cfg: &ExperimentConfig) -> Vec<String> {
        let n = self.gate_means.len();
        (0..n).map(|g| if n == cfg.tasks.len() { cfg.tasks[g].name.clone() } else { format!("gate {g}") }).collect()
    }

    /// One name per expert, `index:kind`.
    pub fn expert_names(&self) -> Vec<String> {
        self.expert_kinds.iter().enumerate().map(|(i, k)| format!("{i}:{k}")).collect()
    }

    /// The gate-utilisation table: per gate (task) and segment, the mean weight of each
    /// expert; a gate whose overall mean on one expert exceeds 0.9 is flagged as
    /// collapsed.
    pub fn render_gates(&self, cfg: &ExperimentConfig) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        if self.gate_means.is_empty() {
            return o;
        }
        let names = cfg.segment_names();
        let gate_names = self.gate_names(cfg);
        let head = self.expert_names();
        let _ = writeln!(
            o,
            "mean gate weight per expert  {:<13} {}",
            "segment",
            head.iter().map(|h| format!("{h:>11}")).collect::<String>()
        );
        let rows_per_seg: Vec<f64> =
            (0..names.len()).map(|s| self.segments.iter().filter(|&&x| x as usize == s).count() as f64).collect();
        let total: f64 = rows_per_seg.iter().sum();
        for (g, per_seg) in self.gate_means.iter().enumerate() {
            let gate = &gate_names[g];
            let mut overall = vec![0f64; self.expert_kinds.len()];
            for (s, means) in per_seg.iter().enumerate() {
                for (e, m) in means.iter().enumerate() {
                    overall[e] += m * rows_per_seg[s] / total.max(1.0);
                }
                let cells: String = means.iter().map(|m| format!("{m:>11.3}")).collect();
                let _ = writeln!(o, "  {gate:<27} {:<13} {cells}", names[s]);
            }
            if let Some((e, m)) = overall.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                if *m > 0.9 {
                    let _ = writeln!(
                        o,
                        "  warning: gate `{gate}` has collapsed onto expert {e} ({}) — mean weight {m:.3}",
                        self.expert_kinds[e]
                    );
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapsed_gates_are_flagged() {
        let cfg = ExperimentConfig::parse(
            "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n[[features.dense]]\nname = \"a\"\n\
             [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n[[tasks]]\nname = \"save\"\nkind = \"binary\"\nlabel = \"z\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let p = Predictions {
            segments: vec![0; 10],
            gate_means: vec![vec![vec![0.95, 0.05]], vec![vec![0.5, 0.5]]],
            expert_kinds: vec!["dcnv2".into(), "mlp".into()],
            ..Default::default()
        };
        let text = p.render_gates(&cfg);
        assert!(text.contains("gate `click` has collapsed onto expert 0 (dcnv2)"), "{text}");
        assert!(!text.contains("gate `save` has collapsed"), "{text}");
        assert!(Predictions::default().render_gates(&cfg).is_empty());
    }
}
