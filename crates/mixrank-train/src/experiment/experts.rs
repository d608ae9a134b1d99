//! The expert cost-benefit report behind `mixrank experiment experts` (docs/experts.md):
//! for each expert of an MMoE or OMoE run, what it costs (parameters, FLOPs per example,
//! its share of the inference latency at f32 and bf16) and what it brings (the per-task
//! metric change when it is masked out of every gate at evaluation, with the paired
//! bootstrap interval of `mixrank compare`).
//!
//! - Parameters: the trained expert's tensors (its network and projection).
//! - FLOPs per example: the expert rebuilt from its config section on the reference
//!   backend wrapped in [`Counting`], one forward of one row; each matrix product counts
//!   `2·m·n·k` from its shape ([`Counting::flops`]).
//! - Latency: the trained expert's forward over a batch of the split's width (random
//!   inputs of the expert's input width), against the whole model's forward over the
//!   split's first batch; medians of `reps` timed repetitions after one warm-up; then the
//!   same after the model is switched to bf16.
//! - Contribution: the split scored with the expert excluded from every gate (weight 0,
//!   the others renormalised: [`mixrank_model::Model::exclude_experts`]) against the full
//!   model on the same rows.
//! - Optionally (`ExpertsPlan::retrain`, `--retrain DIR`), the contribution when the model
//!   is **retrained** without the expert: the run's config with that expert removed
//!   ([`without_expert`]) trained from scratch on the same data, seed and schedule, then
//!   scored on the split against the full model. Masking measures what the trained model
//!   loses; retraining measures what the expert adds when the others can adapt — but one
//!   retrained run carries training noise that the bootstrap interval (over rows) does not
//!   cover, so a small difference needs several seeds.

use crate::error::{engine, Result, TrainError};
use crate::evaluate::{task_type, CheckpointScorer, Predictions};
use mixrank_data::config::model::Architecture;
use mixrank_data::config::ExperimentConfig;
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_engine::counting::Counting;
use mixrank_engine::Backend;
use mixrank_engine::RefOps;
use mixrank_metrics::{compare_task, BootstrapConfig, Lift, Metric, TaskComparison};
use mixrank_model::expert::expanded;
use mixrank_model::Expert;
use mixrank_nn::Parameters;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ExpertsPlan {
    /// Split scored for the contributions (and whose first batch is timed).
    pub split: String,
    /// Timed repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Bootstrap resamples of each masked-vs-full comparison.
    pub resamples: usize,
    pub seed: u64,
    /// Also retrain the model without each expert, one run per expert under this
    /// directory (`without_<index>_<kind>`, replaced if present), and compare each with
    /// the full model.
    pub retrain: Option<PathBuf>,
}

impl Default for ExpertsPlan {
    fn default() -> Self {
        ExpertsPlan { split: "test".into(), reps: 7, resamples: 1000, seed: 17, retrain: None }
    }
}

/// One expert's cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertCost {
    /// Position in the head's expert list (what gates and `exclude_experts` number).
    pub index: usize,
    /// `dcnv2`, `masknet`, `finalmlp` or `mlp`.
    pub kind: String,
    pub params: u64,
    pub flops: u64,
    /// Median forward time of the timed batch (milliseconds) and its share of the whole
    /// model's, at f32 and at bf16.
    pub f32_ms: f64,
    pub f32_share: f64,
    pub bf16_ms: f64,
    pub bf16_share: f64,
}

/// One expert: its cost and, per task, the full model (A) against the model without it (B).
#[derive(Debug, Clone)]
pub struct ExpertRow {
    pub cost: ExpertCost,
    pub masked: Vec<TaskComparison>,
    /// With [`ExpertsPlan::retrain`]: the full model (A) against the model retrained
    /// without the expert (B), per task.
    pub retrained: Option<Retrained>,
}

/// The model retrained without one expert.
#[derive(Debug, Clone)]
pub struct Retrained {
    /// Its run directory.
    pub run_dir: PathBuf,
    /// Its training time (seconds of training, validation and checkpoints excluded).
    pub train_seconds: f64,
    pub comparisons: Vec<TaskComparison>,
}

/// The report.
#[derive(Debug, Clone)]
pub struct ExpertsReport {
    pub split: String,
    pub architecture: String,
    /// Rows of the timed batch.
    pub timed_rows: usize,
    pub reps: usize,
    pub bf16_kernel: String,
    /// Task names, in the order of each row's comparisons.
    pub tasks: Vec<String>,
    /// Whole-model median forward time of the timed batch (ms), f32 and bf16.
    pub model_f32_ms: f64,
    pub model_bf16_ms: f64,
    pub rows: Vec<ExpertRow>,
}

impl ExpertRow {
    /// Task `task`'s comparison on `metric` (overall).
    pub fn lift(&self, task: usize, metric: Metric) -> Option<&Lift> {
        self.masked.get(task)?.overall.iter().find(|l| l.metric == metric)
    }

    /// The same for the retrained model, when there is one.
    pub fn retrained_lift(&self, task: usize, metric: Metric) -> Option<&Lift> {
        self.retrained.as_ref()?.comparisons.get(task)?.overall.iter().find(|l| l.metric == metric)
    }

    /// Mean over binary tasks of the AUC lost when the expert is masked (full − masked):
    /// the "benefit" the plot puts against cost.
    pub fn mean_auc_drop(&self) -> f64 {
        let drops: Vec<f64> =
            (0..self.masked.len()).filter_map(|t| self.lift(t, Metric::Auc)).map(|l| l.a - l.b).collect();
        if drops.is_empty() {
            0.0
        } else {
            drops.iter().sum::<f64>() / drops.len() as f64
        }
    }
}

/// The run's config without expert `e` of its expanded expert list (the order gates
/// and the report number them): that entry's `count` lowered by one, or the entry
/// removed when it was its only copy. The smaller `[model]` is validated as a config
/// file's would be (e.g. a `gate.top_k` the remaining experts cannot fill is refused).
pub fn without_expert(cfg: &ExperimentConfig, e: usize) -> Result<ExperimentConfig> {
    let refuse = |m: String| TrainError::Other(format!("retraining without expert {e}: {m}"));
    // Edit the file as parsed and validate it again, so the run's checkpoint stores the
    // smaller config (manifests keep `wire`).
    let mut wire = cfg.wire.clone();
    let m = wire.model.as_mut().ok_or_else(|| refuse("the config has no [model] section".into()))?;
    let mut left = e;
    let Some(i) = m.experts.iter().position(|s| {
        let hit = left < s.count();
        if !hit {
            left -= s.count();
        }
        hit
    }) else {
        return Err(refuse(format!("the model has only {} experts", expanded(m).len())));
    };
    let count = m.experts[i].count_mut();
    if *count > 1 {
        *count -= 1;
    } else {
        m.experts.remove(i);
    }
    ExperimentConfig::from_wire(wire, &cfg.path, &cfg.base_dir).map_err(|err| refuse(err.to_string()))
}

/// FLOPs of one forward of `expert`'s config on one row of `d_in` features, counted on
/// the reference backend ([`Counting::flops`]).
pub fn expert_flops(
    section: &mixrank_data::config::model::ExpertSection,
    d_in: usize,
    expert_dim: usize,
) -> Result<u64> {
    let ops = Counting::new(RefOps);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut e = Expert::new(section, d_in, expert_dim, &ops, 1, &mut rng)?;
    let x = ops.upload(&vec![0.5f32; d_in]).map_err(crate::error::engine("the expert's input"))?;
    let before = ops.flops();
    e.forward(&ops, &x, 1)?;
    Ok(ops.flops() - before)
}

/// Number of parameters (elements of every tensor) of a module.
pub fn param_count<B: mixrank_engine::Backend, P: Parameters<B> + ?Sized>(p: &mut P) -> u64 {
    let mut n = 0u64;
    p.params(&mut |_, t| n += t.len() as u64);
    n
}

/// Median of `reps` timings of `f` (milliseconds) after one untimed call.
fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Times the whole model on `batch` and each expert on random inputs of its width.
fn time_all<B: Backend + 'static>(
    scorer: &mut CheckpointScorer<B>,
    ops: &B,
    batch: &mixrank_data::Batch,
    inputs: &[B::Buf],
    reps: usize,
) -> Result<(f64, Vec<f64>)> {
    let model = &mut scorer.loaded.model;
    let whole = median_ms(reps, || Ok(model.forward(ops, batch)?))?;
    let mut per = Vec::new();
    for (e, x) in model.experts_mut().into_iter().zip(inputs) {
        per.push(median_ms(reps, || e.forward(ops, x, batch.rows).map(|_| ()).map_err(TrainError::from))?);
    }
    Ok((whole, per))
}

/// Runs the report on the checkpoint of `run_dir`. `progress` hears each step.
pub fn run_experts<B: Backend + 'static>(
    run_dir: &Path,
    ops: &B,
    plan: &ExpertsPlan,
    progress: Option<&dyn Fn(&str)>,
) -> Result<ExpertsReport> {
    let say = |s: &str| {
        if let Some(p) = progress {
            p(s)
        }
    };
    let mut scorer = CheckpointScorer::open(run_dir, ops, None)?;
    let cfg = scorer.config.clone();
    let Some(m) = cfg.model.clone() else {
        return Err(TrainError::Other(format!("{}: the run's config has no [model] section", run_dir.display())));
    };
    if !matches!(m.architecture, Architecture::Mmoe | Architecture::Omoe) {
        return Err(TrainError::Other(format!(
            "{}: the expert report needs an mmoe or omoe model (gates over one expert list); this run's \
             architecture is {:?}",
            run_dir.display(),
            m.architecture
        )));
    }
    let sections = expanded(&m);
    let n = scorer.loaded.model.experts_mut().len();
    if n != sections.len() {
        return Err(TrainError::Other(format!(
            "the model has {n} experts in its expert list, its config {}",
            sections.len()
        )));
    }
    say("scoring the full model");
    let full = scorer.score(ops, &plan.split)?;
    let boot = BootstrapConfig { resamples: plan.resamples, seed: plan.seed, ..Default::default() };
    let names = cfg.segment_names();
    let compare = |masked: &Predictions| -> Vec<TaskComparison> {
        cfg.tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                compare_task(
                    &task.name,
                    task_type(task.kind),
                    &full.task_rows(&cfg, t),
                    &masked.preds[t],
                    &names,
                    &boot,
                )
            })
            .collect()
    };
    let mut masked = Vec::with_capacity(n);
    for (e, s) in sections.iter().enumerate() {
        say(&format!("scoring without expert {e} ({})", s.kind().name()));
        scorer.loaded.model.exclude_experts(ops, &[e])?;
        let p = scorer.score(ops, &plan.split);
        scorer.loaded.model.exclude_experts(ops, &[])?;
        masked.push(compare(&p?));
    }

    let mut retrained: Vec<Option<Retrained>> = vec![None; n];
    if let Some(dir) = &plan.retrain {
        for (e, s) in sections.iter().enumerate() {
            say(&format!("retraining without expert {e} ({})", s.kind().name()));
            let run = dir.join(format!("without_{e}_{}", s.kind().name()));
            let mut opts = crate::TrainOptions::new(run.clone());
            opts.overwrite = true;
            let summary = crate::train(Arc::new(without_expert(&cfg, e)?), &opts, ops)?;
            let p = CheckpointScorer::open(&run, ops, None)?.score(ops, &plan.split)?;
            retrained[e] =
                Some(Retrained { run_dir: run, train_seconds: summary.train_seconds, comparisons: compare(&p) });
        }
    }

    say("counting parameters and FLOPs");
    let mut costs = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    let batch = {
        let opts = StreamOptions::from_config(&cfg, false);
        let split = cfg.split(&plan.split)?;
        match BatchStream::start(scorer.encoder(), split, opts)?.next() {
            Some(b) => b?,
            None => return Err(TrainError::Other(format!("split `{}` has no rows to time", plan.split))),
        }
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    for (e, (ex, s)) in scorer.loaded.model.experts_mut().into_iter().zip(&sections).enumerate() {
        let d_in = ex.d_in();
        let x: Vec<f32> = (0..batch.rows * d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        inputs.push(ops.upload(&x).map_err(engine("uploading timing inputs"))?);
        costs.push(ExpertCost {
            index: e,
            kind: s.kind().name().to_string(),
            params: param_count(ex),
            flops: expert_flops(s, d_in, m.expert_dim)?,
            f32_ms: 0.0,
            f32_share: 0.0,
            bf16_ms: 0.0,
            bf16_share: 0.0,
        });
    }
    scorer.loaded.model.set_training(false);
    say("timing at f32");
    let (model_f32_ms, per) = time_all(&mut scorer, ops, &batch, &inputs, plan.reps)?;
    for (c, ms) in costs.iter_mut().zip(per) {
        (c.f32_ms, c.f32_share) = (ms, ms / model_f32_ms);
    }
    scorer.loaded.model.use_bf16(ops)?;
    say("timing at bf16");
    let (model_bf16_ms, per) = time_all(&mut scorer, ops, &batch, &inputs, plan.reps)?;
    for (c, ms) in costs.iter_mut().zip(per) {
        (c.bf16_ms, c.bf16_share) = (ms, ms / model_bf16_ms);
    }
    Ok(ExpertsReport {
        split: plan.split.clone(),
        architecture: format!("{:?}", m.architecture).to_lowercase(),
        timed_rows: batch.rows,
        reps: plan.reps,
        bf16_kernel: scorer.loaded.model.reduced_kernel().unwrap_or("none").to_string(),
        tasks: cfg.tasks.iter().map(|t| t.name.clone()).collect(),
        model_f32_ms,
        model_bf16_ms,
        rows: costs
            .into_iter()
            .zip(masked)
            .zip(retrained)
            .map(|((cost, masked), retrained)| ExpertRow { cost, masked, retrained })
            .collect(),
    })
}

/// A table cell for an AUC comparison: `B − A`, the 95% interval of the relative
/// change, `*` when significant.
fn auc_cell(a: &Lift) -> String {
    format!(
        "{:+.5} [{:+.3}%, {:+.3}%]{}",
        a.b - a.a,
        100.0 * a.ci_low,
        100.0 * a.ci_high,
        if a.significant { " *" } else { "" }
    )
}

impl ExpertsReport {
    /// One markdown table: per expert its cost, then per binary task the AUC and logloss
    /// change when it is masked (masked − full) with the 95% interval of the relative
    /// change.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let tasks = &self.tasks;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} on split `{}`: masking = the expert's gate weight set to 0 in every gate, the others \
             renormalised. Latency: median of {} forwards of {} rows (whole model: {:.2} ms f32, {:.2} ms bf16, \
             {} kernel).\n",
            self.architecture,
            self.split,
            self.reps,
            self.timed_rows,
            self.model_f32_ms,
            self.model_bf16_ms,
            self.bf16_kernel
        );
        let mut head = "| expert | params | MFLOPs/ex | f32 ms (share) | bf16 ms (share) |".to_string();
        let mut rule = "|---|---:|---:|---:|---:|".to_string();
        for t in tasks {
            let _ = write!(head, " {t} ΔAUC [95% CI of rel.] | {t} Δlogloss |");
            rule.push_str("---:|---:|");
        }
        let retrained = self.rows.iter().any(|r| r.retrained.is_some());
        if retrained {
            for t in tasks {
                let _ = write!(head, " {t} ΔAUC retrained [95% CI of rel.] |");
                rule.push_str("---:|");
            }
            head.push_str(" retrain s |");
            rule.push_str("---:|");
        }
        head.push_str(" mean AUC drop per MFLOP |");
        rule.push_str("---:|");
        let _ = writeln!(o, "{head}\n{rule}");
        for r in &self.rows {
            let c = &r.cost;
            let mflops = c.flops as f64 / 1e6;
            let _ = write!(
                o,
                "| {}:{} | {} | {:.3} | {:.3} ({:.0}%) | {:.3} ({:.0}%) |",
                c.index,
                c.kind,
                c.params,
                mflops,
                c.f32_ms,
                100.0 * c.f32_share,
                c.bf16_ms,
                100.0 * c.bf16_share
            );
            for t in 0..tasks.len() {
                match (r.lift(t, Metric::Auc), r.lift(t, Metric::Logloss)) {
                    (Some(a), Some(l)) => {
                        let _ = write!(o, " {} | {:+.5} |", auc_cell(a), l.b - l.a);
                    }
                    _ => o.push_str(" - | - |"),
                }
            }
            if retrained {
                for t in 0..tasks.len() {
                    match r.retrained_lift(t, Metric::Auc) {
                        Some(a) => {
                            let _ = write!(o, " {} |", auc_cell(a));
                        }
                        None => o.push_str(" - |"),
                    }
                }
                match &r.retrained {
                    Some(x) => {
                        let _ = write!(o, " {:.1} |", x.train_seconds);
                    }
                    None => o.push_str(" - |"),
                }
            }
            let per = if mflops > 0.0 { r.mean_auc_drop() / mflops } else { 0.0 };
            let _ = writeln!(o, " {per:+.6} |");
        }
        let _ = writeln!(
            o,
            "\nΔ = masked − full (a negative ΔAUC is what the expert contributes); the interval is of the relative \
             AUC change (paired bootstrap over requests), * = significant (excludes 0 and |change| ≥ 0.1%)."
        );
        if retrained {
            let _ = writeln!(
                o,
                "Retrained: the model trained from scratch without the expert (same data, seed and schedule) − full; \
                 its interval covers the rows, not the training noise of one retrained run."
            );
        }
        o
    }

    /// The same as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let c = &r.cost;
                serde_json::json!({
                    "index": c.index,
                    "kind": c.kind,
                    "params": c.params,
                    "flops_per_example": c.flops,
                    "f32_ms": c.f32_ms,
                    "f32_share": c.f32_share,
                    "bf16_ms": c.bf16_ms,
                    "bf16_share": c.bf16_share,
                    "mean_auc_drop": r.mean_auc_drop(),
                    "masked": serde_json::to_value(&r.masked).unwrap_or_default(),
                    "retrained": r.retrained.as_ref().map(|x| serde_json::json!({
                        "run_dir": x.run_dir,
                        "train_seconds": x.train_seconds,
                        "comparisons": serde_json::to_value(&x.comparisons).unwrap_or_default(),
                    })),
                })
            })
            .collect();
        serde_json::json!({
            "split": self.split,
            "architecture": self.architecture,
            "timed_rows": self.timed_rows,
            "reps": self.reps,
            "bf16_kernel": self.bf16_kernel,
            "tasks": self.tasks,
            "model_f32_ms": self.model_f32_ms,
            "model_bf16_ms": self.model_bf16_ms,
            "experts": rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixrank_data::config::model::ExpertSection;

    fn mmoe(experts_and_gate: &str) -> ExperimentConfig {
        ExperimentConfig::parse(
            &format!(
                "[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"x\"]\n[[features.dense]]\nname = \"a\"\n\
                 [[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"y\"\n\
                 [model]\narchitecture = \"mmoe\"\nexpert_dim = 4\n{experts_and_gate}"
            ),
            Path::new("t.toml"),
        )
        .unwrap()
    }

    fn kinds(c: &ExperimentConfig) -> Vec<(String, usize)> {
        c.model.as_ref().unwrap().experts.iter().map(|s| (s.kind().name().to_string(), s.count())).collect()
    }

    #[test]
    fn without_expert_lowers_a_count_or_drops_the_entry() {
        let cfg = mmoe(
            "[[model.experts]]\nkind = \"dcnv2\"\n[[model.experts]]\nkind = \"mlp\"\nhidden = [4]\ncount = 2\n\
             [[model.experts]]\nkind = \"masknet\"\n",
        );
        let k = |v: &[(&str, usize)]| v.iter().map(|(a, b)| (a.to_string(), *b)).collect::<Vec<_>>();
        assert_eq!(kinds(&without_expert(&cfg, 0).unwrap()), k(&[("mlp", 2), ("masknet", 1)]));
        assert_eq!(kinds(&without_expert(&cfg, 1).unwrap()), k(&[("dcnv2", 1), ("mlp", 1), ("masknet", 1)]));
        assert_eq!(kinds(&without_expert(&cfg, 2).unwrap()), k(&[("dcnv2", 1), ("mlp", 1), ("masknet", 1)]));
        assert_eq!(kinds(&without_expert(&cfg, 3).unwrap()), k(&[("dcnv2", 1), ("mlp", 2)]));
        let err = without_expert(&cfg, 4).unwrap_err().to_string();
        assert!(err.contains("only 4 experts"), "{err}");
        // top_k = 3 of 3 experts: two cannot fill it.
        let cfg = mmoe("[[model.experts]]\nkind = \"mlp\"\nhidden = [4]\ncount = 3\n[model.gate]\ntop_k = 3\n");
        let err = without_expert(&cfg, 1).unwrap_err().to_string();
        assert!(err.contains("retraining without expert 1") && err.contains("top_k"), "{err}");
    }

    #[test]
    fn mlp_expert_flops_by_hand() {
        // An MLP expert 6 → [5, 4] with expert_dim 3: three GEMMs on one row,
        // 2·(6·5 + 5·4 + 4·3) = 124 (the projection 4 → 3 included).
        let s: ExpertSection = toml::from_str("kind = \"mlp\"\nhidden = [5, 4]\n").unwrap();
        assert_eq!(expert_flops(&s, 6, 3).unwrap(), 2 * (6 * 5 + 5 * 4 + 4 * 3));
        // Without a projection (last width = expert_dim): 2·(6·5 + 5·3).
        let s: ExpertSection = toml::from_str("kind = \"mlp\"\nhidden = [5, 3]\n").unwrap();
        assert_eq!(expert_flops(&s, 6, 3).unwrap(), 2 * (6 * 5 + 5 * 3));
        let mut e = Expert::new(&s, 6, 3, &RefOps, 1, &mut rand::rngs::StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(param_count(&mut e), (6 * 5 + 5) + (5 * 3 + 3));
    }
}
