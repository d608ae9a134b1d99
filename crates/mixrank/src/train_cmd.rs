//! `mixrank train CONFIG --out RUN_DIR`.

use anyhow::Result;
use mixrank_data::ExperimentConfig;
use mixrank_metrics::{TaskMetrics, TaskReport};
use mixrank_train::{train, Stage, TrainOptions};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Experiment config (TOML) with a [model] section (or give --model).
    pub config: PathBuf,
    /// Run directory: train_log.jsonl, metrics.json and dense_stats.json go here.
    #[arg(long)]
    pub out: PathBuf,
    /// A TOML file with [model] (and optionally [train]) replacing the config's.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Stop after this many steps (overrides [train].max_steps).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// One seed for the run: sets both `[data] seed` (shuffling) and `[train] seed`
    /// (initialisation, dropout); the checkpoint's manifest records the config with both.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Progress and log interval, in steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Training stage: `batch` (from scratch or --init; distillation on when the config
    /// has teachers) or `incremental` (needs --init; distillation off by default).
    #[arg(long, value_enum, default_value = "batch")]
    pub stage: StageArg,
    /// Warm-start from this checkpoint (or run directory): weights, optimizer state and
    /// dense statistics, mapped onto this config; every change is reported.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint that verifies, at its exact
    /// data cursor (refused checkpoints are reported and moved aside).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the run already in --out (its files are deleted first). Without it (or
    /// --resume), an --out that holds a run is refused.
    #[arg(long)]
    pub overwrite: bool,
    /// Keep distillation on in the incremental stage (logged as a warning).
    #[arg(long)]
    pub distill_in_incremental: bool,
    /// Debugging aid: write the (request id, position) of every row of every step to
    /// this JSON-lines file (appended on --resume).
    #[arg(long, hide = true)]
    pub trace_rows: Option<PathBuf>,
    /// Debugging aid for crash tests: sleep this many milliseconds after every step.
    #[arg(long, hide = true)]
    pub debug_step_delay_ms: Option<u64>,
    /// Data-parallel training with N ranks as threads of this process (the in-process
    /// transport; for tests and trying the path without MPI). Under `mpirun` the ranks
    /// are MPI's instead (docs/distributed.md).
    #[arg(long, value_name = "N")]
    pub ranks_in_process: Option<usize>,
    /// Where to train: `cpu` or `cuda[:N]` (GPU N, default 0). The checkpoint is the same
    /// on both and moves freely between them.
    #[arg(long, default_value = "cpu")]
    pub device: crate::backend::Device,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StageArg {
    Batch,
    Incremental,
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

pub fn run(a: &TrainArgs) -> Result<()> {
    let mut cfg = ExperimentConfig::load(&a.config)?;
    if let Some(m) = &a.model {
        cfg = cfg.with_model_file(m)?;
    }
    if let Some(seed) = a.seed {
        cfg = cfg.with_seed(seed)?;
    }
    let mut opts = TrainOptions::new(&a.out);
    opts.max_steps = a.max_steps;
    opts.log_every = a.log_every;
    opts.progress = Some(progress);
    opts.stage = match a.stage {
        StageArg::Batch => Stage::Batch,
        StageArg::Incremental => Stage::Incremental,
    };
    opts.init = a.init.clone();
    opts.resume = a.resume;
    opts.overwrite = a.overwrite;
    opts.allow_distill_in_incremental = a.distill_in_incremental;
    opts.trace_rows = a.trace_rows.clone();
    opts.step_delay = a.debug_step_delay_ms.map(std::time::Duration::from_millis);
    let cfg = Arc::new(cfg);
    if a.ranks_in_process.is_some() && a.device != crate::backend::Device::Cpu {
        anyhow::bail!(
            "--ranks-in-process trains on the CPU only (--device {}): on GPUs, start one process per GPU \
             with `mpirun -n N mixrank train … --device cuda` (NCCL; docs/distributed.md)",
            a.device
        );
    }
    let launched = launched_by()?;
    let s = match (a.ranks_in_process, launched) {
        (Some(_), Some(_)) => anyhow::bail!("--ranks-in-process and mpirun exclude each other"),
        (Some(0), None) => anyhow::bail!("--ranks-in-process needs at least 1 rank"),
        (Some(n), None) => train_in_process(&cfg, &opts, n)?,
        (None, Some(c)) => match a.device {
            crate::backend::Device::Cpu => {
                let ops = crate::backend::train_ops(&cfg.train);
                train_rank(cfg, &mut opts, &ops, c)?
            }
            // One GPU per process: `cuda:K` is the first, the process of local rank `l`
            // (on its node) takes GPU `K + l`; NCCL carries the collectives, bootstrapped
            // over MPI.
            crate::backend::Device::Cuda(first) => {
                let gpu = first + mixrank_dist::local_rank();
                let started = mixrank_dist::Nccl::over(c.clone(), gpu)
                    .map_err(anyhow::Error::from)
                    .and_then(|nccl| Ok((nccl, crate::backend::train_cuda(gpu, &cfg.train)?)));
                let (nccl, ops) = or_abort(&*c, started)?;
                train_rank(cfg, &mut opts, &ops, Arc::new(nccl))?
            }
        },
        (None, None) => match a.device {
            crate::backend::Device::Cpu => {
                let ops = crate::backend::train_ops(&cfg.train);
                train(cfg, &opts, &ops)?
            }
            crate::backend::Device::Cuda(n) => {
                let ops = crate::backend::train_cuda(n, &cfg.train)?;
                train(cfg, &opts, &ops)?
            }
        },
    };
    if !opts.is_lead() {
        // Ranks other than 0 trained the same model; rank 0 reports.
        return Ok(());
    }
    crate::say!(
        "trained {} steps, {} examples in {:.1} s ({:.1} s training: {:.0} examples/s); stopped: {}; run dir {}",
        s.steps,
        s.examples,
        s.seconds,
        s.train_seconds,
        s.examples_per_second,
        s.stop,
        a.out.display()
    );
    if let Some(sc) = &s.scored {
        crate::say!(
            "{} split, scored by {} (step {}{}):",
            sc.split,
            sc.checkpoint.display(),
            sc.step,
            if sc.best { ", the best validation's model" } else { ", the last step's model" }
        );
    }
    crate::emit(&render_reports(&s.validation));
    if let Some(c) = &s.calibration {
        crate::say!("calibration layer fitted and stored in the checkpoint (validation split, in-sample):");
        crate::emit(&mixrank_train::calibration::render_report(&c.file, &c.report));
    }
    Ok(())
}

/// This process's rank of an `mpirun` job, over the collective `c`.
fn train_rank<B: mixrank_engine::Backend + 'static>(
    cfg: Arc<ExperimentConfig>,
    opts: &mut TrainOptions,
    ops: &B,
    c: Arc<dyn mixrank_dist::Collective>,
) -> Result<mixrank_train::TrainSummary> {
    opts.collective = Some(c.clone());
    or_abort(&*c, train(cfg, opts, ops).map_err(anyhow::Error::from))
}

/// A rank of an `mpirun` job that fails may have failed outside any collective
/// (claiming the run directory, reading the config, opening its GPU): the others would
/// wait for it forever, and MPI_Finalize with them. It says why, then ends the job.
fn or_abort<T>(c: &dyn mixrank_dist::Collective, r: Result<T>) -> Result<T> {
    r.map_err(|e| {
        eprintln!("error: rank {} of {}: {e:#}", c.rank(), c.size());
        c.abort_group(1);
        e
    })
}

/// `n` ranks as threads, each training on its share of every batch through the
/// in-process transport; rank 0's summary (the others' fail the run if they fail).
fn train_in_process(cfg: &Arc<ExperimentConfig>, opts: &TrainOptions, n: usize) -> Result<mixrank_train::TrainSummary> {
    let results: Vec<mixrank_train::Result<mixrank_train::TrainSummary>> = std::thread::scope(|s| {
        let handles: Vec<_> = mixrank_dist::InProcess::group(n)
            .into_iter()
            .map(|c| {
                let mut o = opts.clone();
                o.collective = Some(Arc::new(c));
                let cfg = cfg.clone();
                // The handle is dropped when the thread returns: a failing rank stops
                // the others' collectives instead of leaving them waiting.
                s.spawn(move || {
                    let ops = crate::backend::train_ops(&cfg.train);
                    train(cfg, &o, &ops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(mixrank_train::TrainError::Other("a rank panicked".into()))))
            .collect()
    });
    let mut first = None;
    let mut errors = Vec::new();
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(s) if r == 0 => first = Some(s),
            Ok(_) => {}
            Err(e) => errors.push(format!("rank {r}: {e}")),
        }
    }
    match first {
        Some(s) if errors.is_empty() => Ok(s),
        _ => anyhow::bail!("data-parallel training failed: {}", errors.join("; ")),
    }
}

/// This process's rank when `mpirun` started it with more than one process: MPI's
/// (built with the `mpi` feature), else refused rather than training N copies that race
/// for the run directory.
fn launched_by() -> Result<Option<Arc<dyn mixrank_dist::Collective>>> {
    match mixrank_dist::launched_by_mpirun() {
        None | Some(0 | 1) => Ok(None),
        #[cfg(feature = "mpi")]
        Some(_) => Ok(Some(Arc::new(mixrank_dist::Mpi::init()?))),
        #[cfg(not(feature = "mpi"))]
        Some(n) => anyhow::bail!(
            "started by mpirun with {n} processes, but this mixrank was built without MPI: \
             rebuild with `cargo build --release --features mpi` (docs/distributed.md)"
        ),
    }
}

/// A table of per-task metrics, overall and per segment. The task and segment columns
/// are as wide as their longest name (at least 12 and 14).
pub fn render_reports(reports: &[TaskReport]) -> String {
    let mut o = String::new();
    if reports.is_empty() {
        return o;
    }
    let tw = task_width(reports.iter().map(|r| r.task.as_str()));
    let sw = reports.iter().flat_map(|r| r.segments.keys()).map(|s| s.chars().count()).max().unwrap_or(0).max(14);
    let _ = writeln!(
        o,
        "{:<tw$} {:<sw$} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "task", "segment", "rows", "AUC", "logloss", "NE", "calib", "RMSE"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.5}"));
    for r in reports {
        let rows =
            std::iter::once(("all".to_string(), &r.overall)).chain(r.segments.iter().map(|(k, v)| (k.clone(), v)));
        for (seg, m) in rows {
            match m {
                TaskMetrics::Binary(b) => {
                    let _ = writeln!(
                        o,
                        "{:<tw$} {:<sw$} {:>9} {:>9} {:>9.5} {:>8} {:>8} {:>9}",
                        r.task,
                        seg,
                        b.rows,
                        opt(b.auc),
                        b.logloss,
                        opt(b.ne).chars().take(7).collect::<String>(),
                        opt(b.calibration).chars().take(7).collect::<String>(),
                        "-"
                    );
                }
                TaskMetrics::Regression(g) => {
                    let _ = writeln!(
                        o,
                        "{:<tw$} {:<sw$} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9.5}",
                        r.task, seg, g.rows, "-", "-", "-", "-", g.rmse
                    );
                }
            }
        }
    }
    o
}

/// Width of a task-name column: the longest name, at least 12.
pub fn task_width<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    names.map(|n| n.chars().count()).max().unwrap_or(0).max(12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixrank_metrics::{binary_metrics, regression_metrics};

    #[test]
    fn long_task_and_segment_names_keep_the_columns_aligned() {
        let bin = TaskMetrics::Binary(binary_metrics(&[0.9, 0.2], &[1.0, 0.0], None, None));
        let reg = TaskMetrics::Regression(regression_metrics(&[1.0], &[2.0], None));
        let reports = vec![
            TaskReport {
                task: "click".into(),
                overall: bin.clone(),
                segments: [("a_very_long_segment_name".to_string(), bin.clone())].into(),
            },
            TaskReport { task: "time_spent_after_click_seconds".into(), overall: reg, segments: Default::default() },
        ];
        let text = render_reports(&reports);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Every column ends where the header's does: "rows" is right-aligned over the counts.
        let end = lines[0].find("rows").unwrap() + 4;
        for l in &lines[1..] {
            assert_eq!(l.chars().count(), lines[0].chars().count(), "{text}");
            assert!(l[..end].ends_with('2') || l[..end].ends_with('1'), "{text}");
        }
        assert!(lines[3].starts_with("time_spent_after_click_seconds all"), "{text}");
    }
}
