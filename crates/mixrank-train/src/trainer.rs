//! The training loop. [`train`] claims the run directory ([`crate::run_dir`]), starts
//! the run ([`crate::start`]: fresh, `--resume` or `--init`) and drives [`Run`]: epochs
//! of batches from the pipeline, each one [`Run::step`] (forward, label losses
//! ([`crate::losses`]), distillation, backward, optimizer step), and the phases around
//! it — progress and log lines, [`Run::validate`] (with early stopping), periodic
//! checkpoints, and [`Run::finish`] (the final model, `metrics.json`). Training stops at
//! the first bound reached — `epochs`, `max_steps` or early stopping — and says which
//! ([`StopReason`]).
//!
//! Writes `RUN_DIR/train_log.jsonl` ([`crate::train_log`]), `RUN_DIR/metrics.json`,
//! periodic checkpoints to `RUN_DIR/checkpoints/step-<N>/` ([`crate::periodic`]) and the
//! final model to `RUN_DIR/checkpoint/` ([`crate::checkpoint`]).

use crate::checkpoint::{CheckpointInfo, Cursor};
use crate::early_stop::{EarlyStopState, EarlyStopping};
use crate::error::{layer, Result, TrainError};
use crate::evaluate::evaluate;
use crate::lineage::{Lineage, Stage};
use crate::losses::TaskLosses;
use crate::optimizers::Optimizers;
use crate::periodic::{Periodic, FINAL};
use crate::run_dir::Claim;
use crate::sharded_tables::ShardedTables;
use crate::start::Start;
use crate::trace::RowTrace;
use crate::train_log::{Log, TrainLine, ValidationLine};
use mixrank_data::config::model::{EmbeddingSharding, LrDecay, TrainPrecision};
use mixrank_data::config::{DistributedReading, ExperimentConfig, Split};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::stats::DenseStats;
use mixrank_data::{DenseMode, Encoder};
use mixrank_engine::{Backend, GemmOperands};
use mixrank_metrics::TaskReport;
use mixrank_model::Model;
use mixrank_nn::{Decay, LrSchedule};
use serde::Serialize;
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
    /// Replace a run already in `out_dir` (its files are deleted first); without it, and
    /// without `resume`, a directory holding a run is refused.
    pub overwrite: bool,
    /// Keep distillation on in the incremental stage (off by default there).
    pub allow_distill_in_incremental: bool,
    /// Debugging aid: record the rows of every step ([`crate::trace`]).
    pub trace_rows: Option<PathBuf>,
    /// Debugging aid for crash tests: sleep this long after every step.
    pub step_delay: Option<std::time::Duration>,
    /// Called with the step count right after each update, before any logging,
    /// validation or checkpoint of that step (tests observe one step's traffic with it).
    pub after_step: Option<fn(u64)>,
    /// Data-parallel training: this process's rank of the group
    /// ([`crate::data_parallel`]); `None` trains alone. Only rank 0 writes the run
    /// directory (log, checkpoints, metrics); every rank must run the same config.
    pub collective: Option<Arc<dyn mixrank_dist::Collective>>,
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
            overwrite: false,
            allow_distill_in_incremental: false,
            trace_rows: None,
            step_delay: None,
            after_step: None,
            collective: None,
        }
    }

    /// Whether this process writes the run directory: it trains alone, or is rank 0.
    pub fn is_lead(&self) -> bool {
        self.collective.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// Refuses a data-parallel job that cannot run as configured, naming why.
    fn check_distributed(&self, cfg: &ExperimentConfig) -> Result<()> {
        let Some(c) = &self.collective else { return Ok(()) };
        if cfg.data.distributed_reading == DistributedReading::Sharded && cfg.data.batch_size < c.size() {
            return Err(TrainError::Distributed(format!(
                "[data] distributed_reading = \"sharded\" needs batch_size ({}) of at least the {} ranks: each rank reads its own part of every batch",
                cfg.data.batch_size,
                c.size()
            )));
        }
        Ok(())
    }

    /// Whether the distillation loss applies: the config names teacher columns, and the
    /// stage is batch or the incremental stage was explicitly allowed to distill.
    pub fn distillation_enabled(&self, cfg: &ExperimentConfig) -> bool {
        crate::lineage::teacher_columns(cfg).is_some()
            && (self.stage == Stage::Batch || self.allow_distill_in_incremental)
    }
}

/// Why a run stopped training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// Every one of `[train] epochs` was trained.
    Epochs { epochs: usize },
    /// The step budget (`max_steps`) ran out first.
    MaxSteps { max_steps: u64 },
    /// Early stopping: `patience` validations in a row without improvement.
    EarlyStopping { best_step: u64 },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Epochs { epochs } => write!(f, "all {epochs} epoch(s) done"),
            StopReason::MaxSteps { max_steps } => write!(f, "max_steps = {max_steps} reached"),
            StopReason::EarlyStopping { best_step } => {
                write!(f, "early stopping (best validation at step {best_step})")
            }
        }
    }
}

/// What the run's closing metrics scored.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// The split (`validation`).
    pub split: String,
    /// The checkpoint whose predictions the reports are (`RUN_DIR/checkpoint`).
    pub checkpoint: PathBuf,
    /// Its step.
    pub step: u64,
    /// Whether it is the best validation's model (early stopping) rather than the last.
    pub best: bool,
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
    /// Of that, time spent training (validation and checkpoint writes excluded).
    pub train_seconds: f64,
    /// Examples this process trained on per second of training time.
    pub examples_per_second: f64,
    /// Which bound ended training.
    pub stop: StopReason,
    /// What `validation` scored (absent without a validation split).
    pub scored: Option<Scored>,
    /// Reports of the run's model on the validation split (empty without one).
    pub validation: Vec<TaskReport>,
    /// Predictions of the last validation, row by row in file order (for comparisons);
    /// uncalibrated.
    #[serde(skip)]
    pub predictions: Option<crate::evaluate::Predictions>,
    /// With `[calibration]`: the layer fitted on the validation split and stored in the
    /// checkpoint, and its before/after table on that split (in-sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<FittedCalibration>,
    /// Data-parallel training: the group and the replicas' common weights checksum at
    /// the end (absent in one process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
}

/// The replicas of a data-parallel run ([`crate::data_parallel`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Replicas {
    pub ranks: usize,
    pub transport: &'static str,
    /// [`crate::data_parallel::weights_checksum`] of the final weights, equal on every
    /// rank (checked), as 16 hex digits in `metrics.json`.
    #[serde(serialize_with = "hex")]
    pub checksum: u64,
    /// Mean bytes per step: of payload this rank contributed to the dense gradients'
    /// all-reduce, and of sparse gradients (and, with sharded tables, lookups) this rank
    /// sent to other ranks — an all-gather's payload counted once per other rank (rank
    /// 0's in `metrics.json`).
    pub dense_bytes_per_step: f64,
    pub sparse_bytes_per_step: f64,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// The calibration layer a run fitted.
#[derive(Debug, Clone, Serialize)]
pub struct FittedCalibration {
    pub file: crate::calibration::CalibrationFile,
    pub report: Vec<crate::calibration::CalibrationRow>,
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    crate::error::write_atomic(path, text.as_bytes())
}

/// Trains the model the config describes on the backend `ops` and validates it after
/// every epoch.
pub fn train<B: Backend + 'static>(cfg: Arc<ExperimentConfig>, opts: &TrainOptions, ops: &B) -> Result<TrainSummary> {
    let claim = match (opts.resume, opts.overwrite) {
        (true, true) => return Err(TrainError::RunDir("--resume and --overwrite exclude each other".into())),
        (true, false) => Claim::Resume,
        (false, true) => Claim::Overwrite,
        (false, false) => Claim::Fresh,
    };
    opts.check_distributed(&cfg)?;
    // `[train] precision` is the backend's arithmetic: it must be the one asked for.
    let want = match cfg.train.precision {
        TrainPrecision::F32 => GemmOperands::F32,
        TrainPrecision::Bf16 => GemmOperands::Bf16,
    };
    if ops.gemm_operands() != want {
        return Err(TrainError::Other(format!(
            "[train] precision asks for {want:?} matrix products but the backend computes {:?} \
             (mixrank train builds its backend from the config; a library caller must too)",
            ops.gemm_operands()
        )));
    }
    // Held until the run ends: a second writer of this directory fails at once. Only
    // rank 0 of a data-parallel job writes it.
    let lock = if opts.is_lead() { Some(crate::run_dir::claim(&opts.out_dir, claim)?) } else { None };
    if let (Some(pid), Some(p)) = (lock.as_ref().and_then(|l| l.took_over_from), opts.progress) {
        p(&format!("took over the lock of {} left by pid {pid}, which no longer runs", opts.out_dir.display()));
    }
    let threads = match cfg.train.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| TrainError::Other(e.to_string()))?;
    // Engine ops run inside the pool (they are ~10x slower called from outside it).
    pool.install(|| train_in_pool(cfg, opts, ops))
}

fn train_in_pool<B: Backend + 'static>(
    cfg: Arc<ExperimentConfig>,
    opts: &TrainOptions,
    ops: &B,
) -> Result<TrainSummary> {
    let mut run = Run::start(cfg, opts, ops)?;
    let stop = run.train()?;
    run.finish(stop)
}

/// Time spent training, as opposed to validating or writing checkpoints.
struct Clock {
    start: Instant,
    /// Training time of this process before the current stretch.
    train: f64,
    /// When the current training stretch began (`None` while validating or saving).
    since: Option<Instant>,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock { start: now, train: 0.0, since: Some(now) }
    }
    /// Seconds of training so far.
    fn train_seconds(&self) -> f64 {
        self.train + self.since.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }
    /// Stops counting training time (a validation or a checkpoint write begins).
    fn pause(&mut self) {
        if let Some(s) = self.since.take() {
            self.train += s.elapsed().as_secs_f64();
        }
    }
    fn resume(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }
}

/// Steps and per-task loss sums since the last log line.
struct Window {
    steps: u64,
    loss: Vec<f64>,
    distill: Vec<f64>,
    /// The model's own losses (`Model::aux_losses`) summed by name.
    aux: Vec<(String, f64)>,
}

impl Window {
    fn clear(&mut self) {
        self.steps = 0;
        self.loss.iter_mut().for_each(|l| *l = 0.0);
        self.distill.iter_mut().for_each(|l| *l = 0.0);
        self.aux.clear();
    }
}

/// The last validation and the best one (early stopping).
#[derive(Default)]
struct Validations {
    last_step: Option<u64>,
    reports: Vec<TaskReport>,
    preds: Option<crate::evaluate::Predictions>,
    best_reports: Option<Vec<TaskReport>>,
    best_preds: Option<crate::evaluate::Predictions>,
}

/// One training run: the model and optimizer state, the data cursor and the run's
/// bookkeeping. [`Run::train`] is the loop over epochs and batches; [`Run::step`] one
/// update; the phases around it are [`Run::validate`] (with early stopping),
/// [`Run::checkpoint_if_due`] and [`Run::finish`].
struct Run<'a, B: Backend> {
    /// Data-parallel: this process's steps and the gradient payload it exchanged in them.
    exchanged: (u64, crate::data_parallel::Exchanged),
    /// Data-parallel: whether rank 0's clock made a periodic checkpoint due at the last
    /// step (`checkpoint_every_minutes`), as every rank learnt it in the step's all-reduce.
    clock_due: bool,
    cfg: Arc<ExperimentConfig>,
    opts: &'a TrainOptions,
    ops: &'a B,
    enc: Arc<Encoder>,
    stats: DenseStats,
    model: Box<dyn Model<B>>,
    optim: Optimizers<B>,
    /// Data-parallel training with `[train] embedding_sharding = "rows"`: this rank's
    /// rows of the tables (the model holds working tables; `crate::sharded_tables`).
    sharded: Option<ShardedTables<B>>,
    step: u64,
    examples: u64,
    cursor: Cursor,
    lineage: Lineage,
    max_steps: Option<u64>,
    schedule: LrSchedule,
    log: Log,
    trace: Option<RowTrace>,
    periodic: Periodic,
    losses: TaskLosses<B>,
    distiller: Option<crate::distill::Distiller<B>>,
    window: Window,
    early: Option<EarlyStopping>,
    monitor: mixrank_data::config::model::Monitor,
    validations: Validations,
    clock: Clock,
    /// Throughput counts this process's examples and steps (a resumed run starts past zero).
    examples_at_start: u64,
    steps_at_start: u64,
    /// Steps of one whole epoch, once one has been seen (the progress total).
    epoch_steps: Option<u64>,
}

/// The checkpoint metadata of a [`Run`] now (borrowing only the fields it reads, so the
/// model can be borrowed mutably beside it).
macro_rules! info {
    ($run:ident) => {
        CheckpointInfo {
            config: &$run.cfg,
            dense_stats: &$run.stats,
            step: $run.step,
            examples: $run.examples,
            cursor: $run.cursor,
            lineage: $run.lineage.clone(),
            early_stopping: $run.early.as_ref().map(EarlyStopping::state),
        }
    };
}

/// The rows of one training step.
enum StepRows<'b> {
    /// A global batch (every rank read it); data-parallel, this rank trains on its slice.
    Global(&'b mixrank_data::Batch),
    /// Sharded reading: this rank's part of the global batch, read by itself, and the
    /// global batch's row count over all ranks.
    Local { batch: &'b mixrank_data::Batch, global_rows: u64 },
}

impl<'a, B: Backend + 'static> Run<'a, B> {
    fn start(cfg: Arc<ExperimentConfig>, opts: &'a TrainOptions, ops: &'a B) -> Result<Run<'a, B>> {
        // A config without a train split fails here, before the statistics pass.
        cfg.split("train")?;
        // From here on the config has its learned vocabularies built.
        let Start { cfg, stats, mut model, mut optim, step, examples, cursor, lineage, early_stopping, events } =
            crate::start::start(&cfg, opts, ops)?;
        // Sharded tables: every rank built (or loaded) the whole model; it keeps its rows.
        let sharded = match &opts.collective {
            Some(c) if cfg.train.embedding_sharding == EmbeddingSharding::Rows && model.embeddings().is_some() => {
                let names: Vec<String> = cfg.tables.iter().map(|t| t.name.clone()).collect();
                Some(ShardedTables::new(&**c, ops, &mut *model, &mut optim, &cfg.train, &names, cfg.data.batch_size)?)
            }
            _ => None,
        };
        let t = &cfg.train;
        let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(Arc::new(stats.clone())))?);
        // Dropout masks continue where the checkpoint left off (a no-op for a fresh run).
        model.set_dropout_step(step);
        // Data-parallel: losses over the whole global batch (the two-tower in-batch
        // softmax) reach the other ranks' rows.
        if let Some(c) = &opts.collective {
            model.set_batch_peers(Some(Arc::new(crate::data_parallel::Peers(c.clone()))));
        }
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
        let mut log =
            if opts.is_lead() { Log::open(opts.out_dir.join("train_log.jsonl"), opts.resume)? } else { Log::sink() };
        for e in &events {
            log.line(e)?;
        }
        // Data-parallel, rank 0 traces the global batches (each of whose rows exactly one
        // rank trains on).
        let trace = opts
            .trace_rows
            .as_deref()
            .filter(|_| opts.is_lead())
            .map(|p| RowTrace::open(p, opts.resume))
            .transpose()?;
        // `[distill]` applies in the batch stage; the incremental stage only with
        // --distill-in-incremental (the seed found it overfits there).
        let distiller = if opts.distillation_enabled(&cfg) { crate::distill::Distiller::new(&cfg, ops)? } else { None };
        // A resumed run continues the count of the run it resumes (the config, so the
        // patience, is the same: `start` refuses a changed one).
        let early = EarlyStopping::new(t.early_stopping_patience)
            .map(|fresh| match early_stopping {
                Some(s) => EarlyStopping::restore(EarlyStopState { patience: t.early_stopping_patience, ..s }),
                None => fresh,
            })
            .map(|e| e.with_plateau_factor(t.lr_plateau_factor));
        let n_tasks = cfg.tasks.len();
        Ok(Run {
            monitor: cfg.monitor(),
            periodic: Periodic::new(&opts.out_dir, t),
            losses: TaskLosses::new(&cfg, ops)?,
            window: Window { steps: 0, loss: vec![0.0; n_tasks], distill: vec![0.0; n_tasks], aux: Vec::new() },
            cfg,
            opts,
            ops,
            enc,
            stats,
            model,
            optim,
            sharded,
            step,
            examples,
            cursor,
            lineage,
            max_steps,
            schedule,
            log,
            trace,
            distiller,
            early,
            validations: Validations::default(),
            clock: Clock::new(),
            examples_at_start: examples,
            steps_at_start: step,
            epoch_steps: None,
            exchanged: (0, Default::default()),
            clock_due: false,
        })
    }

    /// Data-parallel training: checks every replica holds rank 0's weights (a collective:
    /// every rank calls it at the same steps). `None` in one process.
    fn check_replicas(&mut self) -> Result<Option<Replicas>> {
        let Some(c) = self.opts.collective.clone() else { return Ok(None) };
        let tables = self.sharded.is_none();
        let checksum = crate::data_parallel::check_replicas(&*c, self.ops, &mut *self.model, self.step, tables)?;
        self.log.line(&serde_json::json!({"event": "replicas", "step": self.step, "ranks": c.size(),
            "checksum": format!("{checksum:016x}")}))?;
        let (steps, x) = self.exchanged;
        let per_step = |b: u64| b as f64 / steps.max(1) as f64;
        Ok(Some(Replicas {
            ranks: c.size(),
            transport: c.transport(),
            checksum,
            dense_bytes_per_step: per_step(x.dense_bytes),
            sparse_bytes_per_step: per_step(x.sparse_bytes),
        }))
    }

    /// Writes the model, optimizer state and run state to a checkpoint directory
    /// (`best/` or the final `checkpoint/`).
    fn save(&mut self, dir: &Path) -> Result<()> {
        let info = info!(self);
        crate::checkpoint::save(dir, self.ops, &mut *self.model, &self.optim, &info).map(|_| ())
    }

    /// The loop: epochs from the data cursor on, batches of each, until a bound stops it.
    fn train(&mut self) -> Result<StopReason> {
        let epochs = self.cfg.train.epochs.max(1);
        for epoch in self.cursor.epoch as usize..epochs {
            // Out of steps, or resumed from a checkpoint written when early stopping had
            // already decided to stop.
            if let Some(stop) = self.stopped() {
                return self.stop(stop, epoch);
            }
            if let Some(stop) = self.epoch(epoch)? {
                return self.stop(stop, epoch);
            }
        }
        let last = (self.cursor.epoch as usize).saturating_sub(1);
        self.stop(self.stopped().unwrap_or(StopReason::Epochs { epochs }), last)
    }

    /// A bound already reached before training on: early stopping decided, or the step
    /// budget is spent.
    fn stopped(&self) -> Option<StopReason> {
        if let Some(e) = self.early.as_ref().filter(|e| e.stopped()) {
            return Some(StopReason::EarlyStopping { best_step: e.best_step().unwrap_or(0) });
        }
        self.max_steps.filter(|&m| self.step >= m).map(|max_steps| StopReason::MaxSteps { max_steps })
    }

    /// Validates the last step if that has not happened, and logs why training stopped.
    fn stop(&mut self, why: StopReason, epoch: usize) -> Result<StopReason> {
        if self.validations.last_step != Some(self.step) {
            // The last step is validated once (a resumed run with nothing left to train
            // too, so metrics.json keeps reports).
            self.validate(epoch)?;
        }
        self.log.line(&serde_json::json!({"event": "stop", "step": self.step, "epoch": epoch, "stop": why}))?;
        Ok(why)
    }

    /// One epoch (from the cursor's batch on a resumed run); `Some` when a bound stopped it.
    fn epoch(&mut self, epoch: usize) -> Result<Option<StopReason>> {
        let mut sopts = StreamOptions::from_config(&self.cfg, true);
        sopts.epoch = epoch as u64;
        // The data cursor: batches of this epoch already trained on (resume).
        sopts.skip_batches = if epoch as u64 == self.cursor.epoch { self.cursor.batch_in_epoch } else { 0 };
        let cfg = self.cfg.clone();
        // Sharded reading (data-parallel): this rank reads its units and forms its part
        // of every global batch.
        let sharded =
            self.opts.collective.clone().filter(|_| cfg.data.distributed_reading == DistributedReading::Sharded);
        let shards = sharded.as_ref().map(|c| c.size());
        if sopts.skip_batches > 0 && self.cursor.shards != shards {
            // Each rank's stream depends on the number of shards: batch k of N shards is
            // not batch k of M.
            let read = |s: Option<usize>| {
                s.map_or("whole (one process, or replicated reading)".to_string(), |n| format!("in {n} shards"))
            };
            return Err(TrainError::Resume(format!(
                "the checkpoint's data cursor is batch {} of epoch {} of the training split read {}, and this job reads it {}: \
                 resume with the same number of ranks, or from a checkpoint at an epoch boundary",
                sopts.skip_batches,
                epoch,
                read(self.cursor.shards),
                read(shards)
            )));
        }
        if let Some(c) = &sharded {
            sopts.shard = Some((c.rank(), c.size()));
            sopts.batch_size = crate::data_parallel::shard_range(sopts.batch_size, c.rank(), c.size()).len();
        }
        self.cursor = Cursor { epoch: epoch as u64, batch_in_epoch: sopts.skip_batches, shards };
        let mut skipping = (sopts.skip_batches > 0).then(|| (sopts.skip_batches, Instant::now()));
        let (epoch_train_s, epoch_examples) = (self.clock.train_seconds(), self.examples);
        let split = cfg.split("train")?;
        let mut stream = BatchStream::start(self.enc.clone(), split, sopts.clone())?;
        loop {
            let next = stream.next().transpose()?;
            let (b, rows) = match &sharded {
                None => match next {
                    Some(b) => (b, None),
                    None => break,
                },
                // Every rank steps while any rank has rows left (uneven shards: a rank
                // whose shard ran out takes part with no rows); the epoch ends when all
                // have run out.
                Some(c) => {
                    let mut global = [next.as_ref().map_or(0.0, |b| b.rows as f64)];
                    c.all_reduce_sum_f64(&mut global)?;
                    if global[0] == 0.0 {
                        break;
                    }
                    (next.unwrap_or_else(|| self.enc.empty_batch()), Some(global[0] as u64))
                }
            };
            if let Some((batches, t0)) = skipping.take() {
                self.log
                    .line(&serde_json::json!({"event": "data_cursor", "epoch": epoch, "skipped_batches": batches,
                    "seconds_to_first_batch": t0.elapsed().as_secs_f64()}))?;
            }
            let step_rows = match rows {
                None => StepRows::Global(&b),
                Some(global_rows) => StepRows::Local { batch: &b, global_rows },
            };
            self.step(step_rows, (split, &sopts))?;
            if let Some(f) = self.opts.after_step {
                f(self.step);
            }
            match (&mut self.trace, &sharded) {
                (Some(tr), None) => tr.record(self.step, epoch as u64, &b)?,
                // Sharded reading: the global batch's rows are every rank's; rank 0
                // gathers them (only when tracing, a debugging aid).
                (trace, Some(c)) if self.opts.trace_rows.is_some() => {
                    let rows = crate::trace::gather_rows(&**c, &b)?;
                    if let Some(tr) = trace {
                        tr.record_rows(self.step, epoch as u64, &rows)?;
                    }
                }
                _ => {}
            }
            if self.step.is_multiple_of(self.opts.log_every.max(1)) {
                self.log_progress(epoch)?;
            }
            // Validation before the periodic checkpoint, so that the checkpoint records
            // the early-stopping state with this step's validation counted: a run
            // resumed from it does not validate this step again.
            let every = self.cfg.train.eval_every_steps;
            let stop_early = every > 0 && self.step.is_multiple_of(every) && self.validate(epoch)?;
            self.checkpoint_if_due()?;
            if let Some(d) = self.opts.step_delay {
                std::thread::sleep(d);
            }
            if stop_early {
                self.log.line(&serde_json::json!({"event": "early_stop", "step": self.step, "epoch": epoch}))?;
            }
            if let Some(stop) = self.stopped() {
                return Ok(Some(stop));
            }
        }
        let skipped = sopts.skip_batches > 0;
        if self.cursor.batch_in_epoch > 0 && self.epoch_steps.is_none() && !skipped {
            self.epoch_steps = Some(self.cursor.batch_in_epoch);
        }
        let train_s = self.clock.train_seconds() - epoch_train_s;
        let n = self.examples - epoch_examples;
        self.log.line(&serde_json::json!({"event": "epoch", "epoch": epoch, "step": self.step,
            "examples": n, "train_s": train_s, "examples_per_s": n as f64 / train_s.max(1e-9),
            "resumed_mid_epoch": skipped}))?;
        self.cursor = Cursor { epoch: epoch as u64 + 1, batch_in_epoch: 0, shards };
        if self.cfg.train.eval_every_steps == 0 && self.validate(epoch)? {
            self.log.line(&serde_json::json!({"event": "early_stop", "step": self.step, "epoch": epoch}))?;
            return Ok(self.stopped());
        }
        Ok(None)
    }

    /// One update: forward, label losses, distillation, backward, optimizer step.
    /// Data-parallel training ([`crate::data_parallel`]): this rank's rows of the global
    /// batch `global`, the losses normalised by the global weight sums, and the
    /// gradients summed over the ranks between backward and the optimizer step.
    fn step(&mut self, rows: StepRows<'_>, stream: (&Split, &StreamOptions)) -> Result<()> {
        let ops = self.ops;
        // Many short ops follow: the pool's workers poll for them instead of sleeping.
        let _awake = ops.keep_awake();
        let dist = self.opts.collective.clone();
        // Replicated reading: a checkpoint teacher's stream yields global batches too.
        let shard_teacher = matches!(rows, StepRows::Global(_));
        let local;
        // Data-parallel: the loss ops' denominators, the global batch's weight sums.
        let mut weight_sums = None;
        let (b, global_rows) = match (rows, &dist) {
            (StepRows::Global(global), Some(c)) => {
                local = crate::data_parallel::shard(global, &**c);
                // Dropout masks are drawn for the global batch's rows: the ranks' masks
                // together are one process's.
                self.model
                    .set_dropout_rows(crate::data_parallel::shard_range(global.rows, c.rank(), c.size()).start as u64);
                // Computed from the global batch as one process does: the same bits.
                weight_sums = Some(crate::data_parallel::task_weight_sums(global));
                (&local, global.rows as u64)
            }
            (StepRows::Global(global), None) => (global, global.rows as u64),
            (StepRows::Local { batch, global_rows }, c) => {
                // Sharded reading: the rank's part of the global batch starts where its
                // share of `batch_size` does (disjoint from the other ranks' rows).
                if let Some(c) = c {
                    let bs = self.cfg.data.batch_size;
                    self.model.set_dropout_rows(crate::data_parallel::shard_range(bs, c.rank(), c.size()).start as u64);
                }
                (batch, global_rows)
            }
        };
        if let Some(c) = &dist {
            self.losses.weight_sums = Some(match weight_sums {
                Some(w) => w,
                None => crate::data_parallel::all_reduced_weight_sums(b, &**c)?,
            });
        }
        // Sharded tables: the rows this rank's batch looks up, fetched from their owners
        // into the working tables; the batch's ids become rows of those.
        let remapped;
        let b = match (&mut self.sharded, &dist) {
            (Some(s), Some(c)) => {
                let (r, sent) = s.lookup(&**c, ops, b, &mut *self.model)?;
                self.exchanged.1.sparse_bytes += sent;
                remapped = r;
                &remapped
            }
            _ => b,
        };
        if b.rows > 0 {
            self.model.forward(ops, b)?;
            self.losses.compute(&self.cfg, ops, &*self.model, b, self.step)?;
        } else {
            // A rank with no rows of this (short) batch: zero gradients, same exchanges.
            self.losses.refresh_weighting(ops, &*self.model)?;
        }
        // Distillation: added into the same per-task logit gradients. With ranks it is
        // collective (the ranking losses gather the global batch), so a rank without
        // rows takes part too.
        if let Some(d) = &mut self.distiller {
            let ranks = dist.as_ref().map(|c| crate::distill::ranks::Ranks { group: &**c, shard_teacher });
            let dl = d.apply(ops, b, stream, &*self.model, &mut self.losses, self.step, ranks)?;
            self.window.distill.iter_mut().zip(dl).for_each(|(w, l)| *w += l);
        }
        mixrank_nn::zero_grads(ops, &mut *self.model).map_err(layer("zeroing gradients"))?;
        // Data-parallel: the head's gradients summed over the ranks while the rest of
        // backward runs.
        let mut lead = None;
        if b.rows > 0 {
            let refs: Vec<&B::Buf> = self.losses.grads.iter().collect();
            match &dist {
                Some(c) if self.cfg.train.overlap_all_reduce => {
                    lead = crate::data_parallel::backward_overlapped(c, ops, &mut *self.model, b, &refs)?
                }
                _ => self.model.backward(ops, b, &refs)?,
            }
        } else {
            crate::data_parallel::clear_sparse(&mut *self.model);
            // The model's own exchanges (the in-batch softmax's gather), with no rows.
            self.model.backward_without_rows(ops)?;
        }
        // The model's own losses of this step (a global batch's loss is every rank's,
        // rows or not).
        for (name, l) in self.model.aux_losses() {
            let l = crate::error::finite_loss(l as f64, self.step, || name.to_string())?;
            match self.window.aux.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += l,
                None => self.window.aux.push((name.to_string(), l)),
            }
        }
        if let Some(c) = &dist {
            let replicated = self.sharded.is_none();
            let x = crate::data_parallel::reduce_gradients(&**c, self.ops, &mut *self.model, replicated, lead)?;
            if let Some(s) = &mut self.sharded {
                self.exchanged.1.sparse_bytes += s.exchange_grads(&**c, ops, &mut *self.model)?;
            }
            self.exchanged.0 += 1;
            self.exchanged.1.dense_bytes += x.dense_bytes;
            self.exchanged.1.sparse_bytes += x.sparse_bytes;
            // The global batch's loss per task (logs, learned task weights), and whether
            // a checkpoint is due by rank 0's clock (`checkpoint_every_minutes`: the ranks'
            // clocks differ, and a checkpoint is collective), in the same all-reduce.
            let mut sums = self.losses.step_loss.clone();
            sums.push(if c.rank() == 0 && self.periodic.due_by_clock() { 1.0 } else { 0.0 });
            c.all_reduce_sum_f32(&mut sums)?;
            self.clock_due = sums.pop() == Some(1.0);
            self.losses.step_loss.copy_from_slice(&sums);
        }
        for (w, l) in self.window.loss.iter_mut().zip(&self.losses.step_loss) {
            *w += *l as f64;
        }
        self.losses.write_weighting_grads(ops, &mut *self.model)?;
        let (lr, sparse_lr) = self.rates(self.step);
        match &mut self.sharded {
            Some(s) => {
                self.optim.step_dense(ops, &mut *self.model, lr)?;
                self.optim.step_sparse(ops, s.shard_mut(), sparse_lr)?;
            }
            None => self.optim.step(ops, &mut *self.model, lr, sparse_lr)?,
        }
        self.step += 1;
        self.examples += global_rows;
        self.cursor.batch_in_epoch += 1;
        self.window.steps += 1;
        Ok(())
    }

    /// The dense and sparse learning rates of update `step` (0-based; reduce on plateau
    /// scales both, by 1 without it).
    fn rates(&self, step: u64) -> (f32, f32) {
        let scale = self.early.as_ref().map_or(1.0, EarlyStopping::lr_scale);
        (self.schedule.lr(step) * scale as f32, (self.cfg.train.sparse_lr * scale) as f32)
    }

    /// The step count the run will end at, when it is known: the step budget and
    /// epochs × the epoch length (once one epoch has been seen), whichever is smaller;
    /// `(total, exact)` — with only the step budget known it is an upper bound.
    fn total_steps(&self) -> Option<(u64, bool)> {
        let by_epochs = self.epoch_steps.map(|e| e * self.cfg.train.epochs.max(1) as u64);
        match (self.max_steps, by_epochs) {
            (Some(m), Some(e)) => Some((m.min(e), true)),
            (None, Some(e)) => Some((e, true)),
            (Some(m), None) => Some((m, false)),
            (None, None) => None,
        }
    }

    fn log_progress(&mut self, epoch: usize) -> Result<()> {
        let cfg = self.cfg.clone();
        let w = &self.window;
        let steps = w.steps.max(1) as f64;
        let task_loss: Vec<(&str, f64)> =
            cfg.tasks.iter().zip(&w.loss).map(|(t, l)| (t.name.as_str(), l / steps)).collect();
        let train_s = self.clock.train_seconds();
        // The rates of the update just taken.
        let (lr, sparse_lr) = self.rates(self.step.saturating_sub(1));
        let line = TrainLine {
            event: "train",
            step: self.step,
            epoch,
            examples: self.examples,
            elapsed_s: self.clock.start.elapsed().as_secs_f64(),
            train_s,
            examples_per_s: (self.examples - self.examples_at_start) as f64 / train_s.max(1e-9),
            lr,
            sparse_lr: self.model.embeddings().is_some().then_some(sparse_lr),
            loss: task_loss.iter().zip(&cfg.tasks).map(|((_, l), t)| l * t.weight).sum(),
            task_loss,
            distill_loss: cfg
                .distill
                .iter()
                .flat_map(|d| &d.tasks)
                .map(|d| (cfg.tasks[d.task].name.as_str(), w.distill[d.task] / steps))
                .collect(),
            aux_loss: w.aux.iter().map(|(n, l)| (n.as_str(), l / steps)).collect(),
        };
        self.log.line(&line)?;
        if let Some(p) = self.opts.progress.filter(|_| self.opts.is_lead()) {
            let per: Vec<String> = line.task_loss.iter().map(|(n, l)| format!("{n} {l:.4}")).collect();
            p(&format!(
                "{} epoch {}/{} step {}: {:.0} ex/s, loss {:.4} ({})",
                crate::progress::bar(self.step, self.total_steps(), (self.step - self.steps_at_start, train_s)),
                epoch + 1,
                cfg.train.epochs.max(1),
                self.step,
                line.examples_per_s,
                line.loss,
                per.join(", ")
            ));
        }
        self.window.clear();
        Ok(())
    }

    /// Scores the validation split (when the config has one), logs it and applies early
    /// stopping: an improvement saves `best/`; `true` when training should stop.
    /// Data-parallel: a collective; the ranks score it together and rank 0 decides.
    fn validate(&mut self, epoch: usize) -> Result<bool> {
        self.clock.pause();
        let r = self.validate_paused(epoch);
        self.clock.resume();
        r
    }

    fn validate_paused(&mut self, epoch: usize) -> Result<bool> {
        let cfg = self.cfg.clone();
        self.validations.last_step = Some(self.step);
        let Ok(split) = cfg.split("validation") else { return Ok(false) };
        let (ops, enc) = (self.ops, self.enc.clone());
        // Data-parallel: each rank scores its rows of every batch (looked up from their
        // owners with sharded tables); rank 0 gets them all, in one process's order.
        let scored = match self.opts.collective.clone() {
            None => Some(evaluate(&mut *self.model, ops, enc, split)?),
            Some(c) => {
                crate::score_ranks::evaluate_across(&mut *self.model, ops, enc, split, &*c, self.sharded.as_mut())?
            }
        };
        self.model.set_training(true);
        let mut improved = false;
        if let Some(p) = scored {
            self.validations.reports = p.reports(&cfg);
            self.validations.preds = Some(p);
            let v = &self.validations;
            self.log.line(&ValidationLine { event: "validation", step: self.step, epoch, reports: &v.reports })?;
            if let Some(es) = &mut self.early {
                let verdict = es.observe(EarlyStopping::monitored(&self.monitor, &v.reports), self.step);
                self.log.line(&serde_json::json!({"event": "early_stopping", "step": self.step,
                    "monitor": self.monitor.label, "verdict": verdict}))?;
                improved = verdict.improved;
            }
        }
        let Some(es) = self.early.as_mut() else { return Ok(false) };
        // Data-parallel: rank 0's early-stopping state (the decision, the best step,
        // reduce-on-plateau's learning-rate scale) becomes every rank's, so the ranks
        // stop at the same step and keep stepping with the same rates.
        if let Some(c) = self.opts.collective.clone() {
            let mut state =
                serde_json::to_vec(&(es.state(), improved)).map_err(|e| TrainError::Other(e.to_string()))?;
            c.broadcast_bytes(&mut state, 0)?;
            let (state, lead_improved) = serde_json::from_slice(&state)
                .map_err(|e| TrainError::Distributed(format!("rank 0's early-stopping state: {e}")))?;
            *es = es.clone().with_state(state);
            improved = lead_improved;
        }
        let stop = es.stopped();
        if improved {
            // Sharded tables: `best/` is the one-process format, written by rank 0 with
            // every shard gathered to it.
            self.whole_tables()?;
            if self.opts.is_lead() {
                let dir = self.opts.out_dir.join(crate::early_stop::BEST);
                self.save(&dir)?;
                self.validations.best_reports = Some(self.validations.reports.clone());
                self.validations.best_preds = self.validations.preds.clone();
            }
            self.working_tables();
        }
        Ok(stop)
    }

    /// Sharded tables (a collective; nothing otherwise): every rank's shard onto rank 0,
    /// whose model holds the whole tables until [`Run::working_tables`].
    fn whole_tables(&mut self) -> Result<()> {
        if let (Some(s), Some(c)) = (&mut self.sharded, &self.opts.collective) {
            s.gather_to_lead(&**c, self.ops, &mut *self.model, &mut self.optim)?;
        }
        Ok(())
    }

    /// Sharded tables: rank 0 goes back to its working tables after [`Run::whole_tables`].
    fn working_tables(&mut self) {
        if let Some(s) = &mut self.sharded {
            s.release(&mut *self.model, &mut self.optim);
        }
    }

    fn checkpoint_if_due(&mut self) -> Result<()> {
        let due = match &self.opts.collective {
            None => self.periodic.due(self.step),
            // Rank 0's clock, sent with the step's losses: the same answer on every rank.
            Some(_) => self.periodic.due_by_steps(self.step) || self.clock_due,
        };
        if !due {
            return Ok(());
        }
        self.check_replicas()?;
        self.clock.pause();
        let r = self.checkpoint();
        self.clock.resume();
        r
    }

    /// The periodic checkpoint: rank 0 writes it, or with sharded tables every rank
    /// writes its rows into it (`checkpoint::save_sharded`).
    fn checkpoint(&mut self) -> Result<()> {
        let info = info!(self);
        match (&self.sharded, &self.opts.collective) {
            (Some(s), Some(c)) => {
                let dir = self.periodic.dir(self.step);
                let shard = s.tensors(self.ops, &self.optim)?;
                crate::checkpoint::save_sharded(&dir, &**c, self.ops, &mut *self.model, &self.optim, shard, &info)?;
                if self.opts.is_lead() {
                    self.periodic.saved(self.step)?;
                }
                Ok(())
            }
            _ if self.opts.is_lead() => self.periodic.save(self.ops, &mut *self.model, &self.optim, &info).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Fits `[calibration]` on the validation predictions of the run's model (those of
    /// the last validation when it scored that model, else scored now) and adds it to the
    /// checkpoint in `final_dir`.
    fn calibrate(
        &mut self,
        sec: &mixrank_data::config::calibration::CalibrationSection,
        final_dir: &Path,
        is_best: bool,
    ) -> Result<FittedCalibration> {
        use crate::calibration::{report, Calibration};
        let scored_final = is_best || self.validations.last_step == Some(self.step);
        let fresh;
        let raw = match &self.validations.preds {
            Some(p) if scored_final => p,
            _ => {
                let split = self.cfg.split("validation")?;
                fresh = evaluate(&mut *self.model, self.ops, self.enc.clone(), split)?;
                &fresh
            }
        };
        let cal = Calibration::fit(&self.cfg, sec, raw, "validation")?;
        let mut calibrated = raw.clone();
        cal.apply_all(&raw.segments, &mut calibrated.preds);
        let rows = report(&self.cfg, &calibrated, &raw.preds);
        crate::checkpoint::attach_calibration(final_dir, &cal)?;
        self.log.line(&serde_json::json!({"event": "calibration", "file": &cal.file, "report": &rows}))?;
        Ok(FittedCalibration { file: cal.file, report: rows })
    }

    /// The run's model: the best validation's checkpoint under early stopping, else the
    /// last step's, written to `RUN_DIR/checkpoint/`; `metrics.json`; the summary.
    fn finish(mut self, stop: StopReason) -> Result<TrainSummary> {
        self.clock.pause();
        // Sharded tables: rank 0 writes (and scores) the whole tables from here on.
        self.whole_tables()?;
        let replicas = self.check_replicas()?;
        if !self.opts.is_lead() {
            let train_seconds = self.clock.train_seconds();
            return Ok(TrainSummary {
                steps: self.step,
                examples: self.examples,
                seconds: self.clock.start.elapsed().as_secs_f64(),
                train_seconds,
                examples_per_second: (self.examples - self.examples_at_start) as f64 / train_seconds.max(1e-9),
                stop,
                scored: None,
                validation: Vec::new(),
                predictions: None,
                calibration: None,
                replicas,
            });
        }
        let final_dir = self.opts.out_dir.join(FINAL);
        let best_dir = self.opts.out_dir.join(crate::early_stop::BEST);
        let best = match self.early.as_ref().and_then(EarlyStopping::best_step) {
            None => None,
            Some(b) if self.validations.best_reports.is_some() => Some((b, best_dir.clone())),
            // The best validation came before this process resumed: its checkpoint is on
            // disk (`best/`, or `checkpoint/` when an earlier process of the run finished),
            // and is scored again for the run's reports.
            Some(b) => match find_best(&self.cfg, b, [&best_dir, &final_dir]) {
                Ok(v) => {
                    v.fill_model(self.ops, &mut *self.model)?;
                    let p = evaluate(&mut *self.model, self.ops, self.enc.clone(), self.cfg.split("validation")?)?;
                    self.validations.best_reports = Some(p.reports(&self.cfg));
                    self.validations.best_preds = Some(p);
                    Some((b, v.dir))
                }
                Err(reason) => {
                    let line = format!(
                        "warning: the best validation's checkpoint (step {b}) is not on disk ({reason}); \
                         the run's model is the last one"
                    );
                    self.log.line(&serde_json::json!({"event": "best_model_missing", "step": b, "reason": reason}))?;
                    if let Some(p) = self.opts.progress {
                        p(&line);
                    }
                    None
                }
            },
        };
        let is_best = best.is_some();
        let model_step = match best {
            Some((best_step, dir)) => {
                if dir != final_dir {
                    crate::checkpoint::replace_dir(&dir, &final_dir)?;
                }
                self.log.line(&serde_json::json!({"event": "best_model", "step": best_step}))?;
                self.validations.reports = self.validations.best_reports.take().unwrap_or_default();
                self.validations.preds = self.validations.best_preds.take();
                best_step
            }
            None => {
                self.save(&final_dir)?;
                self.step
            }
        };
        let calibration = match self.cfg.calibration.clone() {
            Some(sec) => Some(self.calibrate(&sec, &final_dir, is_best)?),
            None => None,
        };
        let seconds = self.clock.start.elapsed().as_secs_f64();
        let train_seconds = self.clock.train_seconds();
        let scored = self.validations.preds.is_some().then(|| Scored {
            split: "validation".into(),
            checkpoint: final_dir.clone(),
            step: model_step,
            best: is_best,
        });
        let summary = TrainSummary {
            steps: self.step,
            examples: self.examples,
            seconds,
            train_seconds,
            examples_per_second: (self.examples - self.examples_at_start) as f64 / train_seconds.max(1e-9),
            stop,
            scored,
            validation: std::mem::take(&mut self.validations.reports),
            predictions: self.validations.preds.take(),
            calibration,
            replicas,
        };
        write_atomic(
            &self.opts.out_dir.join("metrics.json"),
            &serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Other(e.to_string()))?,
        )?;
        Ok(summary)
    }
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
