//! Scores a split with a model and computes per-task, per-segment metrics.

use crate::error::{engine, Result};
use mixrank_data::config::{ExperimentConfig, TaskKind};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::{Batch, Encoder};
use mixrank_engine::Backend;
use mixrank_metrics::{task_report, TaskReport, TaskRows, TaskType};
use mixrank_model::Model;
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
    /// `[column][row]`: the carried numeric columns (`columns.keep`, then those `[eval]`
    /// reads: bids, true probabilities), in the config's `columns.keep` order; NaN where
    /// a cell is missing. [`Predictions::column`] finds one by name.
    pub kept: Vec<Vec<f32>>,
    /// Mean weights of every gate (empty without gates).
    pub gates: Vec<GateMeans>,
    /// `[task][row]`: the model's predictions before the checkpoint's calibration layer,
    /// when one was applied to `preds` ([`CheckpointScorer::score`]).
    pub uncalibrated: Option<Vec<Vec<f32>>>,
}

/// One gate's mean weight per segment and expert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateMeans {
    /// The task it serves (MMoE), `all tasks` (OMoE), `L<level> <task>` or
    /// `L<level> shared` (PLE); in a two-tower model prefixed by its tower (`user `,
    /// `item `).
    pub name: String,
    /// The experts it mixes, in weight order: `index:kind` (MMoE, OMoE) or
    /// `<task>.<index>:kind` / `shared.<index>:kind` (PLE).
    pub experts: Vec<String>,
    /// `[segment][expert]`.
    pub means: Vec<Vec<f64>>,
    /// `[segment]`: the mean over rows of the gate's entropy `-Σ_e w_e ln w_e` (nats; 0
    /// when a row puts all its weight on one expert, `ln n_experts` when uniform).
    pub entropy: Vec<f64>,
    /// Rows per segment the means average over.
    pub rows: Vec<u64>,
}

impl GateMeans {
    fn named(info: &mixrank_model::GateInfo, cfg: &ExperimentConfig, segments: usize) -> Self {
        use mixrank_model::{ExpertOwner, GateRole};
        let task = |t: usize| cfg.tasks[t].name.clone();
        let name = match info.role {
            GateRole::Task(t) => task(t),
            GateRole::AllTasks => "all tasks".into(),
            GateRole::PleTask { level, task: t } => format!("L{level} {}", task(t)),
            GateRole::PleShared { level } => format!("L{level} shared"),
        };
        // A two-tower model's gates are in its towers: `user click`, `item all tasks`.
        let name = match info.tower {
            Some(tower) => format!("{} {name}", tower.as_str()),
            None => name,
        };
        let experts = info
            .experts
            .iter()
            .map(|e| match e.owner {
                ExpertOwner::Head => format!("{}:{}", e.index, e.kind),
                ExpertOwner::PleTask(t) => format!("{}.{}:{}", task(t), e.index, e.kind),
                ExpertOwner::PleShared => format!("shared.{}:{}", e.index, e.kind),
            })
            .collect::<Vec<_>>();
        let means = vec![vec![0.0; experts.len()]; segments];
        GateMeans { name, experts, means, entropy: vec![0.0; segments], rows: vec![0; segments] }
    }

    /// `entropy / ln(n_experts)`: 1 for uniform weights, 0 for a gate that picks one
    /// expert per row (0 for a gate over one expert).
    pub fn entropy_ratio(entropy: f64, n_experts: usize) -> f64 {
        if n_experts > 1 {
            entropy / (n_experts as f64).ln()
        } else {
            0.0
        }
    }

    /// The mean entropy over all rows (segments weighted by their rows).
    pub fn overall_entropy(&self) -> f64 {
        let n: u64 = self.rows.iter().sum();
        self.entropy.iter().zip(&self.rows).map(|(e, &r)| e * r as f64).sum::<f64>() / n.max(1) as f64
    }

    /// The gate as JSON: experts, then per segment the mean weights, the entropy and its
    /// ratio to `ln(n_experts)`, and the overall entropy.
    pub fn to_json(&self, segment_names: &[String]) -> serde_json::Value {
        let n = self.experts.len();
        let segments: serde_json::Map<String, serde_json::Value> = segment_names
            .iter()
            .enumerate()
            .map(|(s, name)| {
                let v = serde_json::json!({
                    "rows": self.rows[s],
                    "mean_weights": self.means[s],
                    "entropy": self.entropy[s],
                    "entropy_ratio": Self::entropy_ratio(self.entropy[s], n),
                });
                (name.clone(), v)
            })
            .collect();
        let overall = self.overall_entropy();
        serde_json::json!({
            "gate": self.name,
            "experts": self.experts,
            "entropy": overall,
            "entropy_ratio": Self::entropy_ratio(overall, n),
            "segments": segments,
        })
    }
}

/// `-Σ w ln w` of one row of gate weights (`0 ln 0 = 0`).
pub fn gate_entropy(w: &[f32]) -> f64 {
    w.iter().filter(|&&x| x > 0.0).map(|&x| -(x as f64) * (x as f64).ln()).sum()
}

impl Predictions {
    /// No rows yet, for `tasks` tasks and `kept` carried columns (no gates).
    pub fn empty(tasks: usize, kept: usize) -> Self {
        Predictions {
            preds: vec![Vec::new(); tasks],
            labels: vec![Vec::new(); tasks],
            masks: vec![Vec::new(); tasks],
            kept: vec![Vec::new(); kept],
            ..Default::default()
        }
    }

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

    /// The values of carried column `name` (`columns.keep` or a column of `[eval]`),
    /// one per row; `None` when the config does not carry it.
    pub fn column(&self, cfg: &ExperimentConfig, name: &str) -> Option<&[f32]> {
        cfg.kept_index(name).and_then(|k| self.kept.get(k)).map(Vec::as_slice)
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
pub struct CheckpointScorer<B: Backend> {
    pub config: Arc<ExperimentConfig>,
    pub loaded: crate::checkpoint::Loaded<B>,
    enc: Arc<Encoder>,
}

impl<B: Backend + 'static> CheckpointScorer<B> {
    /// Loads `run_dir/checkpoint`. With `splits_from`, that config's split definitions
    /// replace the stored ones (so two models score exactly the same rows).
    pub fn open(run_dir: &std::path::Path, ops: &B, splits_from: Option<&ExperimentConfig>) -> Result<Self> {
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

    /// The encoder the scorer reads its splits with (the checkpoint's statistics).
    pub fn encoder(&self) -> Arc<Encoder> {
        self.enc.clone()
    }

    /// Scores every row as if it had been shown at `position` ([`Encoder::at_position`]):
    /// how a model that reads position as a plain feature is scored "at position N".
    pub fn at_position(mut self, position: u32) -> Result<Self> {
        let stats = Arc::new(self.loaded.manifest.dense_stats.clone());
        let enc = Encoder::new(self.config.clone(), mixrank_data::DenseMode::Fitted(stats))?.at_position(position)?;
        self.enc = Arc::new(enc);
        Ok(self)
    }

    /// Scores every row of the named split, through the checkpoint's calibration layer
    /// when it has one (the model's own predictions then in `uncalibrated`).
    pub fn score(&mut self, ops: &B, split: &str) -> Result<Predictions> {
        let mut p = evaluate(&mut *self.loaded.model, ops, self.enc.clone(), self.config.split(split)?)?;
        if let Some(cal) = &self.loaded.calibration {
            let raw = p.preds.clone();
            cal.apply_all(&p.segments, &mut p.preds);
            p.uncalibrated = Some(raw);
        }
        Ok(p)
    }
}

/// Appends the last forward's predictions of its first `rows` rows to `out[task]`:
/// `sigmoid(logit)` for binary tasks, the raw output (label-transform space) for
/// regression tasks. `host` is scratch of at least `rows` floats. Shared by
/// [`evaluate`] and the serving session, so both report exactly the same numbers.
pub fn read_predictions<B: Backend>(
    model: &dyn Model<B>,
    ops: &B,
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
        o.extend(host[..rows].iter().map(|&z| prediction_of(task.kind, z)));
    }
    Ok(())
}

/// A task's prediction from its logit: the probability `1 / (1 + e^-z)` of a binary
/// task, the logit itself for a regression task. [`read_predictions`] and the server's
/// cached-item path both go through it.
#[inline]
pub fn prediction_of(kind: TaskKind, z: f32) -> f32 {
    match kind {
        TaskKind::Binary => 1.0 / (1.0 + (-z).exp()),
        TaskKind::Regression => z,
    }
}

/// Scores every row of `split` (file order, no shuffling) in evaluation mode (dropout
/// off); the model is left in evaluation mode.
pub fn evaluate<B: Backend>(
    model: &mut dyn Model<B>,
    ops: &B,
    enc: Arc<Encoder>,
    split: &mixrank_data::config::Split,
) -> Result<Predictions> {
    model.set_training(false);
    let cfg = enc.shared_config();
    let opts = StreamOptions::from_config(&cfg, false);
    let mut scored = Collector::new(&*model, cfg);
    for b in BatchStream::start(enc, split, opts)? {
        let b = b?;
        let _awake = ops.keep_awake();
        model.forward(ops, &b)?;
        scored.add(&*model, ops, &b)?;
    }
    Ok(scored.finish())
}

/// Predictions collected batch by batch, each after its forward: [`evaluate`]'s, and a
/// rank's share when the ranks score a split together ([`crate::score_ranks`]). The
/// gates' means are kept as sums until [`Collector::finish`].
pub(crate) struct Collector {
    pub p: Predictions,
    seg_rows: Vec<u64>,
    cfg: Arc<ExperimentConfig>,
    host: Vec<f32>,
    w: Vec<f32>,
}

impl Collector {
    pub fn new<B: Backend>(model: &dyn Model<B>, cfg: Arc<ExperimentConfig>) -> Self {
        let n_seg = cfg.columns.segment.as_ref().map_or(1, |s| s.values.len());
        let p = Predictions {
            gates: model.gates().iter().map(|g| GateMeans::named(g, &cfg, n_seg)).collect(),
            ..Predictions::empty(cfg.tasks.len(), cfg.columns.keep.len())
        };
        Collector { p, seg_rows: vec![0; n_seg], cfg, host: Vec::new(), w: Vec::new() }
    }

    /// Adds the rows of `b`, which the model's last forward scored.
    pub fn add<B: Backend>(&mut self, model: &dyn Model<B>, ops: &B, b: &Batch) -> Result<()> {
        let p = &mut self.p;
        for (g, gate) in p.gates.iter_mut().enumerate() {
            let n_exp = gate.experts.len();
            self.w.resize(b.rows * n_exp, 0.0);
            ops.read(model.gate_weights(g).expect("gate exists"), &mut self.w)
                .map_err(engine("reading gate weights"))?;
            for r in 0..b.rows {
                let s = b.segment[r] as usize;
                let row = &self.w[r * n_exp..(r + 1) * n_exp];
                for (acc, &x) in gate.means[s].iter_mut().zip(row) {
                    *acc += x as f64;
                }
                gate.entropy[s] += gate_entropy(row);
            }
        }
        for &s in &b.segment {
            self.seg_rows[s as usize] += 1;
        }
        read_predictions(model, ops, &self.cfg.tasks, b.rows, &mut self.host, &mut p.preds)?;
        for t in 0..self.cfg.tasks.len() {
            p.labels[t].extend_from_slice(b.label(t));
            p.masks[t].extend_from_slice(b.mask(t));
        }
        p.weights.extend_from_slice(&b.weights);
        p.segments.extend_from_slice(&b.segment);
        p.requests.extend_from_slice(&b.request_id);
        for (k, col) in p.kept.iter_mut().enumerate() {
            col.extend_from_slice(b.kept(k));
        }
        Ok(())
    }

    /// The gates' sums (per gate: each segment's expert weights, then each segment's
    /// entropy) and the rows per segment, in one array.
    pub fn sums(&self) -> Vec<f64> {
        let mut out = Vec::new();
        for g in &self.p.gates {
            g.means.iter().for_each(|m| out.extend_from_slice(m));
            out.extend_from_slice(&g.entropy);
        }
        out.extend(self.seg_rows.iter().map(|&n| n as f64));
        out
    }

    /// Replaces the sums with `v` (laid out as [`Collector::sums`]).
    pub fn set_sums(&mut self, v: &[f64]) {
        let mut it = v.iter().copied();
        for g in &mut self.p.gates {
            g.means.iter_mut().flatten().chain(g.entropy.iter_mut()).for_each(|x| *x = it.next().expect("a sum"));
        }
        self.seg_rows.iter_mut().for_each(|n| *n = it.next().expect("a row count") as u64);
    }

    /// The predictions, with each gate's sums divided by its segment's rows.
    pub fn finish(mut self) -> Predictions {
        for gate in &mut self.p.gates {
            for (per_seg, &n) in gate.means.iter_mut().zip(&self.seg_rows) {
                per_seg.iter_mut().for_each(|x| *x /= n.max(1) as f64);
            }
            for (e, &n) in gate.entropy.iter_mut().zip(&self.seg_rows) {
                *e /= n.max(1) as f64;
            }
            gate.rows = self.seg_rows.clone();
        }
        self.p
    }
}

impl Predictions {
    /// The gates in tables: consecutive gates that mix the same experts share one
    /// (MMoE's task gates: one table; PLE: one per gate, as each mixes its own set).
    pub fn gate_groups(&self) -> Vec<&[GateMeans]> {
        let mut out: Vec<&[GateMeans]> = Vec::new();
        let mut start = 0;
        for i in 1..=self.gates.len() {
            if i == self.gates.len() || self.gates[i].experts != self.gates[start].experts {
                out.push(&self.gates[start..i]);
                start = i;
            }
        }
        out
    }

    /// The gate-utilisation tables: per gate and segment, the mean weight of each
    /// expert and the mean gate entropy (nats, and its ratio to `ln n_experts`); a gate
    /// whose overall mean on one expert exceeds 0.9 is flagged as collapsed.
    pub fn render_gates(&self, cfg: &ExperimentConfig) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let names = cfg.segment_names();
        let rows_per_seg: Vec<f64> =
            (0..names.len()).map(|s| self.segments.iter().filter(|&&x| x as usize == s).count() as f64).collect();
        let total: f64 = rows_per_seg.iter().sum();
        for group in self.gate_groups() {
            let experts = &group[0].experts;
            // Columns as wide as the widest expert name (PLE's are `task.j:kind`), at least 11.
            let w = experts.iter().map(|h| h.chars().count() + 1).max().unwrap_or(0).max(11);
            let _ = writeln!(
                o,
                "mean gate weight per expert  {:<13} {} {:>8} {:>6}",
                "segment",
                experts.iter().map(|h| format!("{h:>w$}")).collect::<String>(),
                "entropy",
                "/ln E"
            );
            for gate in group {
                let mut overall = vec![0f64; experts.len()];
                for (s, means) in gate.means.iter().enumerate() {
                    for (e, m) in means.iter().enumerate() {
                        overall[e] += m * rows_per_seg[s] / total.max(1.0);
                    }
                    let cells: String = means.iter().map(|m| format!("{m:>w$.3}")).collect();
                    let (h, ratio) = (gate.entropy[s], GateMeans::entropy_ratio(gate.entropy[s], experts.len()));
                    let _ = writeln!(o, "  {:<27} {:<13} {cells} {h:>8.3} {ratio:>6.3}", gate.name, names[s]);
                }
                if let Some((e, m)) = overall.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                    if *m > 0.9 {
                        let _ = writeln!(
                            o,
                            "  warning: gate `{}` has collapsed onto expert {} — mean weight {m:.3}",
                            gate.name, experts[e]
                        );
                    }
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
        let experts = vec!["0:dcnv2".to_string(), "1:mlp".into()];
        let gate = |name: &str, means: Vec<f64>| GateMeans {
            name: name.into(),
            experts: experts.clone(),
            means: vec![means],
            entropy: vec![0.2],
            rows: vec![10],
        };
        let p = Predictions {
            segments: vec![0; 10],
            gates: vec![gate("click", vec![0.95, 0.05]), gate("save", vec![0.5, 0.5])],
            ..Default::default()
        };
        let text = p.render_gates(&cfg);
        assert_eq!(text.matches("mean gate weight per expert").count(), 1, "one table for gates over the same experts");
        assert!(text.contains("gate `click` has collapsed onto expert 0:dcnv2"), "{text}");
        assert!(!text.contains("gate `save` has collapsed"), "{text}");
        assert!(Predictions::default().render_gates(&cfg).is_empty());
        assert!(text.contains("entropy") && text.contains("0.200  0.289"), "{text}");
    }

    #[test]
    fn gate_entropy_by_hand() {
        // Uniform over 4: ln 4; one-hot: 0; (0.5, 0.25, 0.25): 1.5 ln 2.
        assert!((gate_entropy(&[0.25; 4]) - 4f64.ln()).abs() < 1e-6);
        assert_eq!(gate_entropy(&[0.0, 1.0, 0.0]), 0.0);
        assert!((gate_entropy(&[0.5, 0.25, 0.25]) - 1.5 * 2f64.ln()).abs() < 1e-6);
        assert!((GateMeans::entropy_ratio(4f64.ln(), 4) - 1.0).abs() < 1e-12);
        assert_eq!(GateMeans::entropy_ratio(0.3, 1), 0.0);
        let g = GateMeans {
            name: "click".into(),
            experts: vec!["0:mlp".into(), "1:mlp".into()],
            means: vec![vec![0.5, 0.5], vec![0.9, 0.1]],
            entropy: vec![0.6, 0.2],
            rows: vec![1, 3],
        };
        assert!((g.overall_entropy() - 0.3).abs() < 1e-12, "rows-weighted");
        let j = g.to_json(&["a".into(), "b".into()]);
        assert_eq!(j["segments"]["b"]["rows"], 3);
        assert!((j["segments"]["a"]["entropy_ratio"].as_f64().unwrap() - 0.6 / 2f64.ln()).abs() < 1e-12);
    }
}
