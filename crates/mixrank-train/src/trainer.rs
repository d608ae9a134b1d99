//! The training loop: batches from the pipeline, forward, per-task losses (BCE for
//! binary tasks, MSE for regression; label masks and sample weights applied; task
//! weights scale the gradients), backward, Adam for dense parameters and a sparse
//! optimizer for the embedding rows a batch touched; validation after every epoch.
//!
//! Writes `RUN_DIR/train_log.jsonl` (one JSON object per line: `{"event": "train", …}`
//! every `log_every` steps, `{"event": "validation", …}` after each epoch) and
//! `RUN_DIR/metrics.json` (the last validation's reports), each through a temporary
//! file and a rename, and the final model to `RUN_DIR/checkpoint/` ([`crate::checkpoint`]).

use crate::error::{engine, layer, Result, TrainError};
use crate::evaluate::evaluate;
use mixrank_data::config::model::{DenseOptimizer, LrDecay, SparseOptimizer};
use mixrank_data::config::{ExperimentConfig, TaskKind};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::stats::{fit_dense_stats, DenseStats};
use mixrank_data::{DenseMode, Encoder};
use mixrank_engine::{Backend, CpuOps, GradWrite, LossInput};
use mixrank_metrics::TaskReport;
use mixrank_model::RankingModel;
use mixrank_nn::{
    Adam, AdamConfig, Decay, LazyAdam, LazyAdamConfig, LrSchedule, RowWiseAdagrad, RowWiseAdagradConfig, WeightDecay,
};
use rand::SeedableRng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// How to run one training job.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub out_dir: PathBuf,
    /// Overrides `[train].max_steps`.
    pub max_steps: Option<u64>,
    /// Train-log interval in steps.
    pub log_every: u64,
    /// Rows used to fit dense standardisation statistics.
    pub stats_rows: u64,
    /// Called with a one-line progress message every `log_every` steps.
    pub progress: Option<fn(&str)>,
}

impl TrainOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        TrainOptions { out_dir: out_dir.into(), max_steps: None, log_every: 50, stats_rows: 1_000_000, progress: None }
    }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: u64,
    pub examples: u64,
    pub seconds: f64,
    pub examples_per_second: f64,
    /// Reports of the last validation (empty without a validation split).
    pub validation: Vec<TaskReport>,
    /// Predictions of the last validation, row by row in file order (for comparisons).
    #[serde(skip)]
    pub predictions: Option<crate::evaluate::Predictions>,
}

enum Sparse {
    Adagrad(RowWiseAdagrad),
    Lazy(LazyAdam),
}

#[derive(Serialize)]
struct TrainLine<'a> {
    event: &'static str,
    step: u64,
    epoch: usize,
    examples: u64,
    elapsed_s: f64,
    examples_per_s: f64,
    lr: f32,
    loss: f64,
    task_loss: Vec<(&'a str, f64)>,
    /// Mean distillation loss per distilled task (absent without `[distill]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    distill_loss: Vec<(&'a str, f64)>,
}

#[derive(Serialize)]
struct ValidationLine<'a> {
    event: &'static str,
    step: u64,
    epoch: usize,
    reports: &'a [TaskReport],
}

/// Appends JSON lines to the train log.
struct Log {
    path: PathBuf,
    file: std::fs::File,
}

impl Log {
    fn create(path: PathBuf) -> Result<Log> {
        let file = std::fs::File::create(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
        Ok(Log { path, file })
    }

    fn line(&mut self, v: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string(v).map_err(|e| TrainError::Other(e.to_string()))?;
        writeln!(self.file, "{text}").map_err(|source| TrainError::Io { path: self.path.clone(), source })
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::error::write_atomic(path, text.as_bytes())
}

/// Trains the model the config describes and validates it after every epoch.
pub fn train(cfg: Arc<ExperimentConfig>, opts: &TrainOptions) -> Result<TrainSummary> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| TrainError::Io { path: opts.out_dir.clone(), source })?;
    let threads = match cfg.train.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| TrainError::Other(e.to_string()))?;
    // Engine ops run inside the pool (they are ~10x slower called from outside it).
    pool.install(|| train_in_pool(cfg, opts))
}

fn train_in_pool(cfg: Arc<ExperimentConfig>, opts: &TrainOptions) -> Result<TrainSummary> {
    let t = &cfg.train;
    let train_split = cfg.split("train")?;
    let stats = if cfg.dense.iter().any(|d| d.standardize) {
        fit_dense_stats(cfg.clone(), train_split, Some(opts.stats_rows))?
    } else {
        DenseStats { mean: vec![0.0; cfg.dense.len()], std: vec![1.0; cfg.dense.len()], rows: 0 }
    };
    write_atomic(
        &opts.out_dir.join("dense_stats.json"),
        &serde_json::to_string_pretty(&stats).map_err(|e| TrainError::Other(e.to_string()))?,
    )?;
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(stats.clone())))?);
    let ops = CpuOps::new();
    let bs = cfg.data.batch_size;
    let mut rng = rand::rngs::StdRng::seed_from_u64(t.seed);
    let mut model = RankingModel::new(&cfg, &ops, bs, &mut rng)?;
    let weight_decay = match (t.optimizer, t.weight_decay) {
        (_, 0.0) => WeightDecay::None,
        (DenseOptimizer::Adam, w) => WeightDecay::L2(w as f32),
        (DenseOptimizer::Adamw, w) => WeightDecay::Decoupled(w as f32),
    };
    let adam_cfg = AdamConfig { weight_decay, clip_norm: t.grad_clip.map(|c| c as f32), ..AdamConfig::default() };
    let mut adam = Adam::new(adam_cfg, &mut model);
    let emb = model.emb.as_ref();
    let mut sparse = emb.map(|e| match t.sparse_optimizer {
        SparseOptimizer::RowwiseAdagrad => {
            Sparse::Adagrad(RowWiseAdagrad::new(RowWiseAdagradConfig::new(t.sparse_lr as f32), e))
        }
        SparseOptimizer::LazyAdam => Sparse::Lazy(LazyAdam::new(LazyAdamConfig::new(t.sparse_lr as f32), e)),
    });
    let max_steps = opts.max_steps.or(t.max_steps);
    let schedule = LrSchedule {
        peak: t.lr as f32,
        warmup_steps: t.warmup_steps,
        total_steps: max_steps.unwrap_or(0).max(t.warmup_steps),
        decay: match (t.decay, max_steps) {
            (LrDecay::None, _) | (_, None) => Decay::Constant,
            (LrDecay::Linear, Some(_)) => Decay::Linear,
            (LrDecay::Cosine, Some(_)) => Decay::Cosine,
        },
        min_ratio: if t.decay == LrDecay::None { 1.0 } else { 0.0 },
    };
    schedule.validate().map_err(layer("learning-rate schedule"))?;

    let n_tasks = cfg.tasks.len();
    let mut log = Log::create(opts.out_dir.join("train_log.jsonl"))?;
    let (mut labels, mut masks, mut weights) = (vec![Vec::new(); n_tasks], vec![Vec::new(); n_tasks], Vec::new());
    let mut grads: Vec<Vec<f32>> = vec![vec![0.0; bs]; n_tasks];
    let mut step = 0u64;
    let mut examples = 0u64;
    let start = Instant::now();
    // Steps and per-task loss sums since the last log line.
    let (mut window_steps, mut window_loss) = (0u64, vec![0f64; n_tasks]);
    let mut distiller = crate::distill::Distiller::new(&cfg, &ops)?;
    let mut window_distill = vec![0f64; n_tasks];
    let mut last_reports = Vec::new();
    let mut last_preds = None;
    // The epoch in which the step budget ran out, if it did.
    let mut stopped_in = None;
    'epochs: for epoch in 0..t.epochs.max(1) {
        let mut sopts = StreamOptions::from_config(&cfg, true);
        sopts.epoch = epoch as u64;
        for b in BatchStream::start(enc.clone(), train_split, sopts.clone())? {
            let b = b?;
            let n = b.rows;
            model.forward(&ops, &b)?;
            for ti in 0..n_tasks {
                labels[ti].clear();
                labels[ti].extend_from_slice(b.label(ti));
                masks[ti].clear();
                masks[ti].extend_from_slice(b.mask(ti));
            }
            weights.clear();
            weights.extend_from_slice(&b.weights);
            for (ti, task) in cfg.tasks.iter().enumerate() {
                let input = LossInput {
                    pred: model.logits(ti),
                    target: &labels[ti],
                    weight: Some(&weights),
                    mask: Some(&masks[ti]),
                };
                let write = GradWrite { scale: task.weight as f32, accumulate: false };
                let loss = match task.kind {
                    TaskKind::Binary => ops.bce_with_logits(n, input, &mut grads[ti], write),
                    TaskKind::Regression => ops.mse(n, input, &mut grads[ti], write),
                }
                .map_err(engine("loss"))?;
                if !loss.is_finite() {
                    return Err(TrainError::Diverged { step, task: task.name.clone(), loss });
                }
                window_loss[ti] += loss as f64;
            }
            // Distillation: added into the same per-task logit gradients.
            if let Some(d) = &mut distiller {
                let dl = d.apply(&ops, &b, (train_split, &sopts), &model, &mut grads, step)?;
                window_distill.iter_mut().zip(dl).for_each(|(w, l)| *w += l);
            }
            mixrank_nn::zero_grads(&ops, &mut model).map_err(layer("zeroing gradients"))?;
            let refs: Vec<&Vec<f32>> = grads.iter().collect();
            model.backward(&ops, &b, &refs)?;
            let lr = schedule.lr(step);
            adam.step(&mut model, lr).map_err(layer("Adam step"))?;
            if let (Some(s), Some(e)) = (&mut sparse, model.emb.as_mut()) {
                match s {
                    Sparse::Adagrad(o) => o.step(e),
                    Sparse::Lazy(o) => o.step(e),
                }
                .map_err(layer("sparse optimizer step"))?;
            }
            step += 1;
            examples += n as u64;
            window_steps += 1;
            if step.is_multiple_of(opts.log_every.max(1)) {
                let elapsed = start.elapsed().as_secs_f64();
                let task_loss: Vec<(&str, f64)> = cfg
                    .tasks
                    .iter()
                    .zip(&window_loss)
                    .map(|(t, l)| (t.name.as_str(), l / window_steps as f64))
                    .collect();
                let line = TrainLine {
                    event: "train",
                    step,
                    epoch,
                    examples,
                    elapsed_s: elapsed,
                    examples_per_s: examples as f64 / elapsed,
                    lr,
                    loss: task_loss.iter().zip(&cfg.tasks).map(|((_, l), t)| l * t.weight).sum(),
                    task_loss,
                    distill_loss: cfg
                        .distill
                        .iter()
                        .flat_map(|d| &d.tasks)
                        .map(|d| (cfg.tasks[d.task].name.as_str(), window_distill[d.task] / window_steps as f64))
                        .collect(),
                };
                log.line(&line)?;
                if let Some(p) = opts.progress {
                    let per: Vec<String> = line.task_loss.iter().map(|(n, l)| format!("{n} {l:.4}")).collect();
                    p(&format!(
                        "epoch {epoch} step {step}: {:.0} ex/s, loss {:.4} ({})",
                        line.examples_per_s,
                        line.loss,
                        per.join(", ")
                    ));
                }
                window_steps = 0;
                window_loss.iter_mut().for_each(|l| *l = 0.0);
                window_distill.iter_mut().for_each(|l| *l = 0.0);
            }
            if max_steps.is_some_and(|m| step >= m) {
                stopped_in = Some(epoch);
                break 'epochs;
            }
        }
        validate(&mut model, &ops, &enc, &mut log, (step, epoch), &mut last_reports, &mut last_preds)?;
    }
    if let Some(epoch) = stopped_in {
        validate(&mut model, &ops, &enc, &mut log, (step, epoch), &mut last_reports, &mut last_preds)?;
    }
    let info = crate::checkpoint::CheckpointInfo {
        config: &cfg,
        dense_stats: &stats,
        step,
        examples,
        lineage: crate::checkpoint::Lineage { parent: None, stage: "batch".into() },
    };
    crate::checkpoint::save(&opts.out_dir.join("checkpoint"), &mut model, &info)?;
    let seconds = start.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: step,
        examples,
        seconds,
        examples_per_second: examples as f64 / seconds.max(1e-9),
        validation: last_reports,
        predictions: last_preds,
    };
    write_atomic(
        &opts.out_dir.join("metrics.json"),
        &serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?,
    )?;
    Ok(summary)
}

/// Scores the validation split (when the config has one) and logs the reports.
fn validate(
    model: &mut RankingModel<CpuOps>,
    ops: &CpuOps,
    enc: &Arc<Encoder>,
    log: &mut Log,
    (step, epoch): (u64, usize),
    reports: &mut Vec<TaskReport>,
    preds: &mut Option<crate::evaluate::Predictions>,
) -> Result<()> {
    let cfg = enc.config();
    if let Ok(v) = cfg.split("validation") {
        let p = evaluate(model, ops, enc.clone(), v)?;
        *reports = p.reports(cfg);
        *preds = Some(p);
        log.line(&ValidationLine { event: "validation", step, epoch, reports })?;
    }
    Ok(())
}
