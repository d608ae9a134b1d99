//! The data-retention experiment (`mixrank experiment retention`): does distilling from
//! a production model recover what a new model loses when old data is deleted?
//!
//! ```text
//! day:      0 ........................ T-S ...... T-1 | T ...... T+E-1 | T+3
//! teacher:  [======== long window: days 0..T ==========]                         shared-bottom DCNv2
//! students:                          [= recent: T-S..T =]                         MMoE: (a) labels,
//!                                                                                 (b) + pointwise KD,
//!                                                                                 (c) + pairwise KD
//! evaluation (batch part):                              [== days T..T+E ==]
//! incremental (from (c)):                               day T → T+1 → T+2, then evaluated on day T+3,
//!                                                       distillation off vs on
//! ```
//!
//! Simulated engagement data (with drift: popularity random walks, new ads, shifting
//! base rates). The teacher plays the production model trained before the old days were
//! deleted. All models are scored on the same following days; tables give AUC and
//! logloss (RMSE for dwell) per task and surface, and paired-bootstrap lifts.
//!
//! The incremental part needs warm starting from a checkpoint, which lives with the
//! training stages (`--stage incremental --init`); it runs through a [`WarmStart`]
//! hook and is reported as not run without one.

use super::tables::{lift_table, metrics_tables, tally, Scored};
use crate::error::{Result, TrainError};
use crate::evaluate::CheckpointScorer;
use crate::trainer::{train, TrainOptions, TrainSummary};
use mixrank_data::config::distill::{
    DistillLossKind, DistillSection, DistillTaskSection, PairSampling, TeacherSourceKind,
};
use mixrank_data::config::wire::{ConfigFile, DayRange, SplitSection};
use mixrank_data::config::TaskKind;
use mixrank_data::simulate::engagement::add_days;
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::ExperimentConfig;
use mixrank_engine::Backend;
use mixrank_metrics::BootstrapConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The production model: one DCNv2 bottom shared by all tasks.
pub const TEACHER_MODEL: &str = include_str!("../../../../configs/models/shared_bottom_dcnv2.toml");
/// The new model: heterogeneous MMoE.
pub const STUDENT_MODEL: &str = include_str!("../../../../configs/models/mmoe_heterogeneous.toml");

/// Candidates per simulated request.
const CANDIDATES: usize = 10;

/// Sizes and settings of one run of the experiment.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    pub seed: u64,
    pub requests_per_day: usize,
    /// Simulator world size (users, initial ads, new ads per day).
    pub users: usize,
    pub initial_ads: usize,
    pub new_ads_per_day: usize,
    /// The teacher's long window: days `0..teacher_days`.
    pub teacher_days: usize,
    /// The students' recent window: the last `student_days` of the teacher's window.
    pub student_days: usize,
    /// Days after the windows on which the batch part is evaluated.
    pub eval_days: usize,
    /// Days of incremental training from (c) (each then evaluated on the day after).
    pub incremental_days: usize,
    pub batch_size: usize,
    /// Parquet row-group size: a multiple of `batch_size` dividing a day's rows, so
    /// batches of the request-pair student hold whole requests.
    pub row_group_rows: usize,
    pub teacher_epochs: usize,
    pub student_epochs: usize,
    /// Distillation weight λ of both the pointwise and the pairwise student.
    pub distill_weight: f64,
    pub temperature: f64,
    /// Pairwise: partners per row, sampled in the batch.
    pub pairs_per_row: usize,
    pub resamples: usize,
    /// Compute threads (0 = one per core).
    pub threads: usize,
}

impl RetentionPlan {
    /// The documented run (docs/DISTILLATION.md).
    pub fn full() -> Self {
        RetentionPlan {
            seed: 11,
            requests_per_day: 8_000,
            users: 20_000,
            initial_ads: 5_000,
            new_ads_per_day: 500,
            teacher_days: 10,
            student_days: 2,
            eval_days: 2,
            incremental_days: 3,
            batch_size: 1000,
            row_group_rows: 20_000,
            teacher_epochs: 1,
            student_epochs: 2,
            distill_weight: 1.0,
            temperature: 1.0,
            pairs_per_row: 4,
            resamples: 300,
            threads: 0,
        }
    }

    /// A tiny run that exercises every step in seconds (tests, `--quick`).
    pub fn quick() -> Self {
        RetentionPlan {
            requests_per_day: 150,
            users: 1_000,
            initial_ads: 300,
            new_ads_per_day: 30,
            teacher_days: 4,
            student_days: 1,
            eval_days: 1,
            batch_size: 250,
            row_group_rows: 1_500,
            student_epochs: 1,
            resamples: 20,
            ..Self::full()
        }
    }

    fn total_days(&self) -> usize {
        self.teacher_days + self.eval_days.max(self.incremental_days + 1)
    }

    fn validate(&self) -> Result<()> {
        if self.student_days == 0 || self.student_days > self.teacher_days {
            return Err(TrainError::Other(format!(
                "the students' window ({} days) must be 1..={} (the teacher's window)",
                self.student_days, self.teacher_days
            )));
        }
        let day_rows = self.requests_per_day * CANDIDATES;
        if !self.row_group_rows.is_multiple_of(self.batch_size) || !day_rows.is_multiple_of(self.row_group_rows) {
            return Err(TrainError::Other(format!(
                "row groups of {} rows must hold whole batches ({}) and divide a day's {day_rows} rows",
                self.row_group_rows, self.batch_size
            )));
        }
        if self.eval_days == 0 {
            return Err(TrainError::Other("eval_days must be at least 1".into()));
        }
        Ok(())
    }
}

/// Warm start for the incremental part: train `cfg` starting from the checkpoint in the
/// run directory `parent` as an incremental stage (model weights and optimizer state).
/// Implemented over the trainer's stages (`--stage incremental --init CHECKPOINT`).
pub trait WarmStart: Sync {
    fn train_incremental(&self, cfg: Arc<ExperimentConfig>, parent: &Path, opts: &TrainOptions)
        -> Result<TrainSummary>;
}

/// The trainer's own warm start: `--stage incremental --init PARENT`, loading the
/// parent's weights and optimizer state. A config with a `[distill]` section keeps
/// distillation on (as `--distill-in-incremental` would); one without trains on labels.
pub struct StageWarmStart<B>(pub B);

impl<B: Backend + 'static> WarmStart for StageWarmStart<B> {
    fn train_incremental(
        &self,
        cfg: Arc<ExperimentConfig>,
        parent: &Path,
        opts: &TrainOptions,
    ) -> Result<TrainSummary> {
        let mut o = opts.clone();
        o.stage = crate::Stage::Incremental;
        o.init = Some(parent.to_path_buf());
        o.allow_distill_in_incremental = cfg.distill.is_some();
        crate::train(cfg, &o, &self.0)
    }
}

/// What the experiment wrote.
pub struct RetentionReport {
    /// `report.md`: the plan, timings and every table.
    pub markdown: String,
    pub json: Value,
    pub seconds: f64,
}

/// Simulates the data, trains the teacher and the three students, evaluates them on the
/// following days and (with `warm`) runs the incremental part. Writes everything under
/// `out` (`data/`, `configs/`, `runs/`, `report.md`, `report.json`).
pub fn run_retention<B: Backend + 'static>(
    plan: &RetentionPlan,
    out: &Path,
    warm: Option<&dyn WarmStart>,
    progress: Option<fn(&str)>,
    ops: &B,
) -> Result<RetentionReport> {
    plan.validate()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.threads)
        .build()
        .map_err(|e| TrainError::Other(e.to_string()))?;
    pool.install(|| Experiment::new(plan, out, progress, ops).and_then(|mut e| e.run(warm)))
}

struct Experiment<'a, B> {
    plan: &'a RetentionPlan,
    ops: &'a B,
    out: PathBuf,
    days: Vec<String>,
    base: ConfigFile,
    data_glob: String,
    progress: Option<fn(&str)>,
    start: Instant,
    timings: Vec<(String, f64)>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

impl<'a, B: Backend + 'static> Experiment<'a, B> {
    fn new(plan: &'a RetentionPlan, out: &Path, progress: Option<fn(&str)>, ops: &'a B) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(io(out))?;
        let out = out.canonicalize().map_err(io(out))?;
        let start = Instant::now();
        let data = out.join("data");
        let p = EngagementParams {
            seed: plan.seed,
            days: plan.total_days(),
            requests_per_day: plan.requests_per_day,
            users: plan.users,
            initial_ads: plan.initial_ads,
            new_ads_per_day: plan.new_ads_per_day,
            candidates: CANDIDATES,
            row_group_rows: plan.row_group_rows,
            ..Default::default()
        };
        if let Some(f) = progress {
            f(&format!("simulating {} days x {} requests into {}", p.days, p.requests_per_day, data.display()));
        }
        let sim = simulate_engagement(&p, &data)?;
        let base = ExperimentConfig::load(&sim.config)?.wire;
        let days = (0..p.days).map(|d| add_days(&p.start_day, d)).collect::<mixrank_data::Result<Vec<_>>>()?;
        let data_glob = data.join("day=*").join("*.parquet").to_string_lossy().into_owned();
        let mut e = Experiment { plan, ops, out, days, base, data_glob, progress, start, timings: Vec::new() };
        e.lap("simulate");
        Ok(e)
    }

    fn say(&self, line: &str) {
        if let Some(f) = self.progress {
            f(line);
        }
    }

    fn lap(&mut self, what: &str) {
        let t = self.start.elapsed().as_secs_f64() - self.timings.iter().map(|x| x.1).sum::<f64>();
        self.timings.push((what.to_string(), t));
    }

    fn split(&self, from: usize, to: usize) -> SplitSection {
        SplitSection {
            paths: vec![self.data_glob.clone()],
            days: Some(DayRange { from: self.days[from].clone(), to: self.days[to].clone() }),
            rows: None,
        }
    }

    /// Writes `configs/NAME.toml`: the simulated data's config with the given model,
    /// training days `train`, evaluation days `eval` and distillation, and loads it.
    fn config(
        &self,
        name: &str,
        model: &str,
        epochs: usize,
        train: (usize, usize),
        eval: (usize, usize),
        distill: Option<DistillSection>,
    ) -> Result<Arc<ExperimentConfig>> {
        #[derive(serde::Deserialize)]
        struct ModelFile {
            model: mixrank_data::config::model::ModelSection,
            train: mixrank_data::config::model::TrainSection,
        }
        let m: ModelFile = toml::from_str(model).map_err(|e| TrainError::Other(format!("model file: {e}")))?;
        let mut w = self.base.clone();
        w.model = Some(m.model);
        w.train = m.train;
        w.train.epochs = epochs;
        w.train.seed = self.plan.seed;
        w.data.batch_size = self.plan.batch_size;
        w.data.splits = BTreeMap::from([
            ("train".to_string(), self.split(train.0, train.1)),
            ("eval".to_string(), self.split(eval.0, eval.1)),
        ]);
        w.distill = distill;
        self.write_config(name, &w)
    }

    fn write_config(&self, name: &str, w: &ConfigFile) -> Result<Arc<ExperimentConfig>> {
        let dir = self.out.join("configs");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{name}.toml"));
        let text = toml::to_string(w).map_err(|e| TrainError::Other(format!("config to TOML: {e}")))?;
        crate::error::write_atomic(&path, text.as_bytes())?;
        Ok(Arc::new(ExperimentConfig::load(&path)?))
    }

    fn distill(
        &self,
        loss: DistillLossKind,
        sampling: PairSampling,
        cfg_tasks: &[(String, TaskKind)],
    ) -> DistillSection {
        let tasks = cfg_tasks
            .iter()
            .map(|(name, kind)| {
                let loss = match (loss, kind) {
                    // Soft-label BCE needs a probability; dwell is a regression.
                    (DistillLossKind::PointwiseBce, TaskKind::Regression) => DistillLossKind::LogitMse,
                    (l, _) => l,
                };
                let pairwise = loss == DistillLossKind::Pairwise;
                DistillTaskSection {
                    task: name.clone(),
                    loss,
                    weight: self.plan.distill_weight,
                    temperature: self.plan.temperature,
                    pairs: pairwise.then_some(sampling),
                    pairs_per_row: pairwise.then_some(self.plan.pairs_per_row),
                    teacher_task: None,
                }
            })
            .collect();
        DistillSection {
            source: TeacherSourceKind::Checkpoint,
            checkpoint: Some(self.run_dir("teacher").to_string_lossy().into_owned()),
            teacher_precision: None,
            tasks,
        }
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.out.join("runs").join(name)
    }

    fn train(&mut self, name: &str, cfg: Arc<ExperimentConfig>) -> Result<TrainSummary> {
        self.say(&format!("training {name}"));
        let mut opts = TrainOptions::new(self.run_dir(name));
        // The experiment owns its output directory: a rerun replaces its runs.
        opts.overwrite = true;
        opts.log_every = 100;
        opts.progress = self.progress;
        let s = train(cfg, &opts, self.ops)?;
        self.say(&format!("  {name}: {} steps, {:.1} s ({:.0} examples/s)", s.steps, s.seconds, s.examples_per_second));
        self.lap(&format!("train {name}"));
        Ok(s)
    }

    fn score(&self, name: &str, run: &str, eval_cfg: &ExperimentConfig) -> Result<Scored> {
        let ops = self.ops;
        let mut s = CheckpointScorer::open(&self.run_dir(run), ops, Some(eval_cfg))?;
        Ok(Scored { name: name.to_string(), preds: s.score(ops, "eval")? })
    }

    fn run(&mut self, warm: Option<&dyn WarmStart>) -> Result<RetentionReport> {
        let p = self.plan;
        let t = p.teacher_days;
        let recent = (t - p.student_days, t - 1);
        let eval = (t, t + p.eval_days - 1);
        let teacher_cfg = self.config("teacher", TEACHER_MODEL, p.teacher_epochs, (0, t - 1), eval, None)?;
        let tasks: Vec<(String, TaskKind)> = teacher_cfg.tasks.iter().map(|x| (x.name.clone(), x.kind)).collect();
        let teacher = self.train("teacher", teacher_cfg.clone())?;
        let (batch, request) = (PairSampling::Batch, PairSampling::Request);
        let variants = [
            ("a_labels", "(a) labels only", None, batch),
            ("b_pointwise", "(b) + pointwise distillation", Some(DistillLossKind::PointwiseBce), batch),
            ("c_pairwise", "(c) + pairwise distillation", Some(DistillLossKind::Pairwise), batch),
            // Pairs within requests need a request's rows in one batch: this run shuffles
            // units and rows within each batch only (batches of consecutive requests).
            ("c_request_pairs", "(c') + pairwise, pairs within requests", Some(DistillLossKind::Pairwise), request),
        ];
        let mut summaries = vec![("teacher".to_string(), teacher)];
        for (run, _, loss, sampling) in &variants {
            let d = loss.map(|l| self.distill(l, *sampling, &tasks));
            let mut cfg = self.config(run, STUDENT_MODEL, p.student_epochs, recent, eval, d)?;
            if *sampling == PairSampling::Request {
                let mut w = cfg.wire.clone();
                w.data.shuffle_buffer = 0;
                w.data.chunk_rows = w.data.batch_size;
                cfg = self.write_config(run, &w)?;
            }
            let s = self.train(run, cfg)?;
            summaries.push((run.to_string(), s));
        }
        self.say("scoring the following days");
        let mut scored = vec![self.score("production teacher (long window)", "teacher", &teacher_cfg)?];
        for (run, label, _, _) in &variants {
            scored.push(self.score(label, run, &teacher_cfg)?);
        }
        if scored.iter().any(|s| s.preds.requests != scored[0].preds.requests) {
            return Err(TrainError::Other("the models scored different rows".into()));
        }
        self.lap("score");
        let boot = BootstrapConfig { resamples: p.resamples, seed: p.seed, ..Default::default() };
        let (metrics_md, metrics_js) = metrics_tables(&teacher_cfg, &scored);
        let mut lifts_md = String::new();
        let mut lifts_js = Vec::new();
        let mut verdicts = Vec::new();
        for (a, b) in [(1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (0, 3)] {
            let (md, js, cmp) = lift_table(&teacher_cfg, &scored[a], &scored[b], &boot);
            let (win, loss, n) = tally(&cmp);
            verdicts.push(format!(
                "{} vs {}: {win} of {n} overall metrics significantly better, {loss} significantly worse",
                scored[b].name, scored[a].name
            ));
            lifts_md.push_str(&md);
            lifts_js.push(js);
        }
        self.lap("bootstrap");
        let incremental = match warm {
            Some(w) => Some(self.incremental(w, &tasks, &boot)?),
            None => None,
        };
        let seconds = self.start.elapsed().as_secs_f64();
        let mut md = String::new();
        let _ = writeln!(md, "# Data-retention experiment\n");
        let _ = writeln!(
            md,
            "Simulated engagement data, {} requests/day x {CANDIDATES} candidates, seed {}. Teacher (production, shared-bottom DCNv2): days {}..{} ({} days, {} epoch(s)). Students (heterogeneous MMoE): the recent days {}..{} only ({} epoch(s)), distillation weight {}, temperature {}, pairwise: {} partners per row, sampled in the batch for (c), within requests on whole-request batches for (c'). Evaluation: days {}..{}.\n",
            p.requests_per_day,
            p.seed,
            self.days[0],
            self.days[t - 1],
            t,
            p.teacher_epochs,
            self.days[recent.0],
            self.days[recent.1],
            p.student_epochs,
            p.distill_weight,
            p.temperature,
            p.pairs_per_row,
            self.days[eval.0],
            self.days[eval.1]
        );
        let _ = writeln!(md, "## Metrics on the following days\n{metrics_md}");
        let _ = writeln!(md, "## Paired comparisons\n");
        for v in &verdicts {
            let _ = writeln!(md, "- {v}");
        }
        let _ = writeln!(md, "{lifts_md}");
        let _ = writeln!(md, "## Incremental training from (c)\n");
        match &incremental {
            Some((text, _)) => md.push_str(text),
            None => {
                let _ = writeln!(
                    md,
                    "Not run: warm-starting from a checkpoint (`--stage incremental --init`) is not part of this build."
                );
            }
        }
        let _ = writeln!(md, "\n## Time\n");
        for (what, s) in &self.timings {
            let _ = writeln!(md, "- {what}: {s:.1} s");
        }
        let _ = writeln!(md, "- total: {seconds:.1} s");
        let runs: Vec<Value> = summaries
            .iter()
            .map(|(n, s)| json!({ "run": n, "steps": s.steps, "examples": s.examples, "seconds": s.seconds }))
            .collect();
        let json = json!({
            "plan": format!("{p:?}"),
            "days": { "teacher": [self.days[0], self.days[t - 1]], "students": [self.days[recent.0], self.days[recent.1]], "eval": [self.days[eval.0], self.days[eval.1]] },
            "runs": runs,
            "metrics": metrics_js,
            "comparisons": lifts_js,
            "verdicts": verdicts,
            "incremental": incremental.map(|x| x.1),
            "seconds": seconds,
        });
        let text = serde_json::to_string_pretty(&json).map_err(|e| TrainError::Other(e.to_string()))?;
        crate::error::write_atomic(&self.out.join("report.json"), text.as_bytes())?;
        crate::error::write_atomic(&self.out.join("report.md"), md.as_bytes())?;
        Ok(RetentionReport { markdown: md, json, seconds })
    }

    /// Three days of incremental training from (c), distillation off and on, each
    /// chain then scored on the day after its last training day, against (c) itself.
    fn incremental(
        &mut self,
        warm: &dyn WarmStart,
        tasks: &[(String, TaskKind)],
        boot: &BootstrapConfig,
    ) -> Result<(String, Value)> {
        let p = self.plan;
        let t = p.teacher_days;
        let test = (t + p.incremental_days, t + p.incremental_days);
        let mut finals = Vec::new();
        for (tag, distill) in [("off", false), ("on", true)] {
            let mut parent = self.run_dir("c_pairwise");
            for i in 0..p.incremental_days {
                let name = format!("inc_{tag}_{i}");
                let d = distill.then(|| self.distill(DistillLossKind::Pairwise, PairSampling::Batch, tasks));
                let cfg = self.config(&name, STUDENT_MODEL, 1, (t + i, t + i), test, d)?;
                self.say(&format!("incremental {name} from {}", parent.display()));
                let mut opts = TrainOptions::new(self.run_dir(&name));
                opts.overwrite = true;
                opts.progress = self.progress;
                warm.train_incremental(cfg, &parent, &opts)?;
                parent = self.run_dir(&name);
            }
            finals.push(parent);
        }
        let eval_cfg = self.config("incremental_eval", STUDENT_MODEL, 1, test, test, None)?;
        let c = self.score("(c) before incremental", "c_pairwise", &eval_cfg)?;
        let name = |d: &Path| d.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let off = self.score("(c) + 3 days, distillation off", &name(&finals[0]), &eval_cfg)?;
        let on = self.score("(c) + 3 days, distillation on", &name(&finals[1]), &eval_cfg)?;
        let scored = [c, off, on];
        let (m, mjs) = metrics_tables(&eval_cfg, &scored);
        let mut md = format!("Evaluated on {}.\n{m}", self.days[test.0]);
        let (l, ljs, cmp) = lift_table(&eval_cfg, &scored[1], &scored[2], boot);
        let (win, loss, n) = tally(&cmp);
        let _ = writeln!(
            md,
            "\nDistillation on vs off: {win} of {n} overall metrics significantly better, {loss} worse.\n{l}"
        );
        self.lap("incremental");
        Ok((md, json!({ "metrics": mjs, "on_vs_off": ljs })))
    }
}
