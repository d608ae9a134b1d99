//! The training loop: batches from the pipeline, forward, per-task losses (BCE for
//! binary tasks, MSE for regression; label masks and sample weights applied; task
//! weights scale the gradients), backward, Adam for dense parameters and a sparse
//! optimizer for the embedding rows a batch touched; validation after every epoch.
//!
//! Writes `RUN_DIR/train_log.jsonl` (one JSON object per line: `{"event": "train", …}`
//! every `log_every` steps, `{"event": "validation", …}` after each epoch) and
//! `RUN_DIR/metrics.json` (the last validation's reports), each through a temporary
//! file and a rename, periodic checkpoints to `RUN_DIR/checkpoints/step-<N>/`
//! ([`crate::periodic`]) and the final model to `RUN_DIR/checkpoint/` ([`crate::checkpoint`]).
//! How a run starts (fresh, `--resume`, `--init`) is [`crate::start`]'s business.

use crate::checkpoint::{CheckpointInfo, Cursor};
use crate::early_stop::{EarlyStopState, EarlyStopping};
use crate::error::{engine, layer, Result, TrainError};
use crate::evaluate::evaluate;
use crate::lineage::Stage;
use crate::periodic::{Periodic, FINAL};
use crate::start::Start;
use crate::trace::RowTrace;
use mixrank_data::config::model::LrDecay;
use mixrank_data::config::{ExperimentConfig, RegressionLoss, TaskKind};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::{DenseMode, Encoder};
use mixrank_engine::{Backend, CpuOps, GradWrite, LossInput};
use mixrank_metrics::TaskReport;
use mixrank_model::RankingModel;
use mixrank_nn::{Decay, LrSchedule};
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
    /// Called with a one-line progress message every `log_every` steps, and with
    /// notices (refused checkpoints, resume point, warm-start changes, stage notes).
    pub progress: Option<fn(&str)>,
    /// Training stage, recorded in the lineage; `Incremental` needs `init`.
    pub stage: Stage,
    /// Parent checkpoint (or run directory) to warm-start from ([`crate::warm_start`]).
    pub init: Option<PathBuf>,
    /// Continue from the newest checkpoint of `out_dir` that verifies, at its exact
    /// data cursor; the train log is appended.
    pub resume: bool,
    /// Keep distillation on in the incremental stage (off by default there).
    pub allow_distill_in_incremental: bool,
    /// Debugging aid: record the rows of every step ([`crate::trace`]).
    pub trace_rows: Option<PathBuf>,
    /// Debugging aid for crash tests: sleep this long after every step.
    pub step_delay: Option<std::time::Duration>,
}

impl TrainOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        TrainOptions {
            out_dir: out_dir.into(),
            max_steps: None,
            log_every: 50,
            stats_rows: 1_000_000,
            progress: None,
            stage: Stage::Batch,
            init: None,
            resume: false,
            allow_distill_in_incremental: false,
            trace_rows: None,
            step_delay: None,
        }
    }

    /// Whether the distillation loss applies: the config names teacher columns, and the
    /// stage is batch or the incremental stage was explicitly allowed to distill.
    pub fn distillation_enabled(&self, cfg: &ExperimentConfig) -> bool {
        crate::lineage::teacher_columns(cfg).is_some()
            && (self.stage == Stage::Batch || self.allow_distill_in_incremental)
    }
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Updates in total (a resumed run includes those before its checkpoint).
    pub steps: u64,
    /// Training examples in total (likewise).
    pub examples: u64,
    /// Wall time of this process's run.
    pub seconds: f64,
    /// Examples this process trained on per second.
    pub examples_per_second: f64,
    /// Reports of the last validation (empty without a validation split).
    pub validation: Vec<TaskReport>,
    /// Predictions of the last validation, row by row in file order (for comparisons).
    #[serde(skip)]
    pub predictions: Option<crate::evaluate::Predictions>,
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
    /// The embedding optimizer's learning rate (absent for a model without tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    sparse_lr: Option<f32>,
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
    /// A new log, or the existing one continued (a resumed run); a line cut short by a
    /// kill is terminated first.
    fn open(path: PathBuf, append: bool) -> Result<Log> {
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .map_err(io)?;
        if append {
            let text = std::fs::read(&path).map_err(io)?;
            if text.last().is_some_and(|&b| b != b'\n') {
                file.write_all(b"\n").map_err(io)?;
            }
        }
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
    let ops = CpuOps::new();
    let bs = cfg.data.batch_size;
    let Start { stats, mut model, mut optim, mut step, mut examples, mut cursor, lineage, early_stopping, events } =
        crate::start::start(&cfg, opts, &ops)?;
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(stats.clone())))?);
    // Dropout masks continue where the checkpoint left off (a no-op for a fresh run).
    model.set_dropout_step(step);
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
    let mut log = Log::open(opts.out_dir.join("train_log.jsonl"), opts.resume)?;
    for e in &events {
        log.line(e)?;
    }
    let mut trace = opts.trace_rows.as_deref().map(|p| RowTrace::open(p, opts.resume)).transpose()?;
    let mut periodic = Periodic::new(&opts.out_dir, t);
    let info = |step, examples, cursor, early_stopping: Option<EarlyStopState>| CheckpointInfo {
        config: &cfg,
        dense_stats: &stats,
        step,
        examples,
        cursor,
        lineage: lineage.clone(),
        early_stopping,
    };
    let (mut labels, mut masks, mut weights) = (vec![Vec::new(); n_tasks], vec![Vec::new(); n_tasks], Vec::new());
    let mut grads: Vec<Vec<f32>> = vec![vec![0.0; bs]; n_tasks];
    let mut weighting = crate::weighting::TaskWeighting::new(n_tasks);
    let task_weights: Vec<f64> = cfg.tasks.iter().map(|t| t.weight).collect();
    let mut step_loss = vec![0f32; n_tasks];
    let start = Instant::now();
    // Throughput counts this process's examples (a resumed run starts past zero).
    let examples_at_start = examples;
    let steps_at_start = step;
    // Steps of one whole epoch, once one has been seen (for the progress ETA).
    let mut epoch_steps: Option<u64> = None;
    // Steps and per-task loss sums since the last log line.
    let (mut window_steps, mut window_loss) = (0u64, vec![0f64; n_tasks]);
    // `[distill]` applies in the batch stage; the incremental stage only with
    // --distill-in-incremental (the seed found it overfits there).
    let mut distiller =
        if opts.distillation_enabled(&cfg) { crate::distill::Distiller::new(&cfg, &ops)? } else { None };
    let mut window_distill = vec![0f64; n_tasks];
    let mut last_reports = Vec::new();
    let mut last_preds = None;
    // The epoch in which the step budget ran out, if it did.
    let mut stopped_in = None;
    // A resumed run continues the count of the run it resumes (the config, so the
    // patience, is the same: `start` refuses a changed one).
    let mut early = EarlyStopping::new(t.early_stopping_patience)
        .map(|fresh| match early_stopping {
            Some(s) => EarlyStopping::restore(EarlyStopState { patience: t.early_stopping_patience, ..s }),
            None => fresh,
        })
        .map(|e| e.with_plateau_factor(t.lr_plateau_factor));
    let early_state = |e: &Option<EarlyStopping>| e.as_ref().map(EarlyStopping::state);
    let best_dir = opts.out_dir.join(crate::early_stop::BEST);
    let (mut best_reports, mut best_preds) = (None, None);
    let mut last_validated = None;
    let eval_every = t.eval_every_steps;
    // Validates at (step, epoch) and applies early stopping; evaluates to `true` when
    // training should stop.
    macro_rules! validate_now {
        ($epoch:expr) => {{
            validate(&mut model, &ops, &enc, &mut log, (step, $epoch), &mut last_reports, &mut last_preds)?;
            last_validated = Some(step);
            match &mut early {
                Some(es) if last_preds.is_some() => {
                    let v = es.observe(EarlyStopping::monitored(&last_reports), step);
                    log.line(&serde_json::json!({"event": "early_stopping", "step": step, "verdict": v}))?;
                    if v.improved {
                        let info = info(step, examples, cursor, Some(es.state()));
                        crate::checkpoint::save(&best_dir, &mut model, &optim, &info)?;
                        best_reports = Some(last_reports.clone());
                        best_preds = last_preds.clone();
                    }
                    v.stop
                }
                _ => false,
            }
        }};
    }
    'epochs: for epoch in cursor.epoch as usize..t.epochs.max(1) {
        // Out of steps, or resumed from a checkpoint written when early stopping had
        // already decided to stop.
        if max_steps.is_some_and(|m| step >= m) || early.as_ref().is_some_and(EarlyStopping::stopped) {
            stopped_in = Some(epoch);
            break 'epochs;
        }
        let mut sopts = StreamOptions::from_config(&cfg, true);
        sopts.epoch = epoch as u64;
        // The data cursor: batches of this epoch already trained on (resume).
        sopts.skip_batches = if epoch as u64 == cursor.epoch { cursor.batch_in_epoch } else { 0 };
        cursor = Cursor { epoch: epoch as u64, batch_in_epoch: sopts.skip_batches };
        let mut skipping = (sopts.skip_batches > 0).then(|| (sopts.skip_batches, Instant::now()));
        let sopts_skipped = sopts.skip_batches;
        for b in BatchStream::start(enc.clone(), train_split, sopts.clone())? {
            let b = b?;
            if let Some((batches, t0)) = skipping.take() {
                log.line(&serde_json::json!({"event": "data_cursor", "epoch": epoch, "skipped_batches": batches,
                    "seconds_to_first_batch": t0.elapsed().as_secs_f64()}))?;
            }
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
            weighting.refresh(&ops, &model)?;
            for (ti, task) in cfg.tasks.iter().enumerate() {
                let input = LossInput {
                    pred: model.logits(ti),
                    target: &labels[ti],
                    weight: Some(&weights),
                    mask: Some(&masks[ti]),
                };
                let write = GradWrite { scale: task.weight as f32 * weighting.factor(ti), accumulate: false };
                let loss = match (task.kind, task.regression_loss) {
                    (TaskKind::Binary, _) => ops.bce_with_logits(n, input, &mut grads[ti], write),
                    (TaskKind::Regression, RegressionLoss::Mse) => ops.mse(n, input, &mut grads[ti], write),
                    (TaskKind::Regression, RegressionLoss::Huber { delta }) => {
                        ops.huber(n, delta as f32, input, &mut grads[ti], write)
                    }
                }
                .map_err(engine("loss"))?;
                if !loss.is_finite() {
                    return Err(TrainError::Diverged { step, task: task.name.clone(), loss });
                }
                window_loss[ti] += loss as f64;
                step_loss[ti] = loss;
            }
            // Distillation: added into the same per-task logit gradients.
            if let Some(d) = &mut distiller {
                let dl = d.apply(&ops, &b, (train_split, &sopts), &model, &mut grads, step)?;
                window_distill.iter_mut().zip(dl).for_each(|(w, l)| *w += l);
            }
            mixrank_nn::zero_grads(&ops, &mut model).map_err(layer("zeroing gradients"))?;
            let refs: Vec<&Vec<f32>> = grads.iter().collect();
            model.backward(&ops, &b, &refs)?;
            weighting.write_grads(&ops, &mut model, &task_weights, &step_loss)?;
            // Reduce on plateau scales both optimizers' rates (1 without it).
            let scale = early.as_ref().map_or(1.0, EarlyStopping::lr_scale);
            let lr = schedule.lr(step) * scale as f32;
            let sparse_lr = (t.sparse_lr * scale) as f32;
            optim.step(&mut model, lr, sparse_lr)?;
            step += 1;
            examples += n as u64;
            cursor.batch_in_epoch += 1;
            window_steps += 1;
            if let Some(tr) = &mut trace {
                tr.record(step, epoch as u64, &b)?;
            }
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
                    examples_per_s: (examples - examples_at_start) as f64 / elapsed,
                    lr,
                    sparse_lr: model.emb.is_some().then_some(sparse_lr),
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
                    // Total steps: the step budget, else epochs × the first epoch's length.
                    let total = max_steps.or(epoch_steps.map(|e| e * t.epochs.max(1) as u64));
                    p(&format!(
                        "{} epoch {}/{} step {step}: {:.0} ex/s, loss {:.4} ({})",
                        crate::progress::bar(step, total, (step - steps_at_start, elapsed)),
                        epoch + 1,
                        t.epochs.max(1),
                        line.examples_per_s,
                        line.loss,
                        per.join(", ")
                    ));
                }
                window_steps = 0;
                window_loss.iter_mut().for_each(|l| *l = 0.0);
                window_distill.iter_mut().for_each(|l| *l = 0.0);
            }
            // Validation before the periodic checkpoint, so that the checkpoint records
            // the early-stopping state with this step's validation counted: a run
            // resumed from it does not validate this step again.
            let stop_early = eval_every > 0 && step.is_multiple_of(eval_every) && validate_now!(epoch);
            if periodic.due(step) {
                periodic.save(&mut model, &optim, &info(step, examples, cursor, early_state(&early)))?;
            }
            if let Some(d) = opts.step_delay {
                std::thread::sleep(d);
            }
            if stop_early {
                log.line(&serde_json::json!({"event": "early_stop", "step": step, "epoch": epoch}))?;
            }
            if stop_early || max_steps.is_some_and(|m| step >= m) {
                stopped_in = Some(epoch);
                break 'epochs;
            }
        }
        if cursor.batch_in_epoch > 0 && epoch_steps.is_none() && sopts_skipped == 0 {
            epoch_steps = Some(cursor.batch_in_epoch);
        }
        cursor = Cursor { epoch: epoch as u64 + 1, batch_in_epoch: 0 };
        if eval_every == 0 && validate_now!(epoch) {
            log.line(&serde_json::json!({"event": "early_stop", "step": step, "epoch": epoch}))?;
            stopped_in = Some(epoch);
            break 'epochs;
        }
    }
    // The last step is validated once (a resumed run with nothing left to train too, so
    // metrics.json keeps reports).
    let last_epoch = stopped_in.unwrap_or_else(|| (cursor.epoch as usize).saturating_sub(1));
    if last_validated != Some(step) {
        validate_now!(last_epoch);
        debug_assert_eq!(last_validated, Some(step));
    }
    let final_dir = opts.out_dir.join(FINAL);
    // Early stopping: the best validation's checkpoint is the run's model.
    let best = match early.as_ref().and_then(EarlyStopping::best_step) {
        None => None,
        Some(b) if best_reports.is_some() => Some((b, best_dir.clone())),
        // The best validation came before this process resumed: its checkpoint is on
        // disk (`best/`, or `checkpoint/` when an earlier process of the run finished),
        // and is scored again for the run's reports.
        Some(b) => match find_best(&cfg, b, [&best_dir, &final_dir]) {
            Ok(v) => {
                v.fill_model(&mut model)?;
                let p = evaluate(&mut model, &ops, enc.clone(), cfg.split("validation")?)?;
                best_reports = Some(p.reports(&cfg));
                best_preds = Some(p);
                Some((b, v.dir))
            }
            Err(reason) => {
                let line = format!(
                    "warning: the best validation's checkpoint (step {b}) is not on disk ({reason}); \
                     the run's model is the last one"
                );
                log.line(&serde_json::json!({"event": "best_model_missing", "step": b, "reason": reason}))?;
                if let Some(p) = opts.progress {
                    p(&line);
                }
                None
            }
        },
    };
    match best {
        Some((best_step, dir)) => {
            if dir != final_dir {
                crate::checkpoint::replace_dir(&dir, &final_dir)?;
            }
            log.line(&serde_json::json!({"event": "best_model", "step": best_step}))?;
            last_reports = best_reports.take().unwrap_or_default();
            last_preds = best_preds.take();
        }
        None => {
            let info = info(step, examples, cursor, early_state(&early));
            crate::checkpoint::save(&final_dir, &mut model, &optim, &info)?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: step,
        examples,
        seconds,
        examples_per_second: (examples - examples_at_start) as f64 / seconds.max(1e-9),
        validation: last_reports,
        predictions: last_preds,
    };
    write_atomic(
        &opts.out_dir.join("metrics.json"),
        &serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?,
    )?;
    Ok(summary)
}

/// The first of `dirs` holding a verified checkpoint of this config at `step` (the best
/// validation's), or why none does.
fn find_best<'a>(
    cfg: &ExperimentConfig,
    step: u64,
    dirs: impl IntoIterator<Item = &'a PathBuf>,
) -> std::result::Result<crate::checkpoint::Verified, String> {
    let here = toml::to_string(&cfg.wire).map_err(|e| format!("config to TOML: {e}"))?;
    let mut why = Vec::new();
    for dir in dirs {
        match crate::checkpoint::read_verified(dir) {
            Ok(v) if v.manifest.config_toml != here => why.push(format!("{} has another config", dir.display())),
            Ok(v) if v.manifest.step == step => return Ok(v),
            Ok(v) => why.push(format!("{} holds step {}", dir.display(), v.manifest.step)),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(why.join("; "))
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
        model.set_training(true);
        *reports = p.reports(cfg);
        *preds = Some(p);
        log.line(&ValidationLine { event: "validation", step, epoch, reports })?;
    }
    Ok(())
}
