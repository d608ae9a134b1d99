//! `mixrank experiment retention`: the data-retention study of distillation from a
//! production model (docs/DISTILLATION.md); `mixrank experiment experts`: the expert
//! cost-benefit report of a trained MMoE/OMoE run (docs/experts.md).

use anyhow::Result;
use mixrank_train::experiment::{run_experts, run_retention, ExpertsPlan, ExpertsReport, RetentionPlan};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ExperimentCommand {
    /// Teacher on a long window, MMoE students on the recent days only (labels /
    /// pointwise / pairwise distillation), evaluated on the following days.
    Retention(RetentionArgs),
    /// Per expert of an MMoE/OMoE run: parameters, FLOPs per example, share of the
    /// inference latency at f32 and bf16, and the metric change when it is masked out of
    /// every gate; writes experts.md, experts.json and experts.svg.
    Experts(ExpertsArgs),
}

#[derive(clap::Args)]
pub struct ExpertsArgs {
    /// Run directory written by `mixrank train` (an mmoe or omoe model).
    pub run_dir: PathBuf,
    /// Split scored with and without each expert (its first batch is timed).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Where experts.md, experts.json and experts.svg go (default RUN_DIR/experts).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Timed repetitions per measurement (medians are reported).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// Bootstrap resamples of each masked-vs-full comparison.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Also retrain the model without each expert (one run per expert in DIR,
    /// `without_<index>_<kind>`, replaced if present) and compare each with the full model.
    #[arg(long, value_name = "DIR")]
    pub retrain: Option<PathBuf>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(clap::Args)]
pub struct RetentionArgs {
    /// Working directory: data/, configs/, runs/, report.md, report.json.
    #[arg(long)]
    pub out: PathBuf,
    /// A tiny run (seconds) that exercises every step; its numbers mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Simulator seed (also the training and bootstrap seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn progress(line: &str) {
    eprintln!("  {line}");
}

/// The plot: per expert, the mean AUC lost when it is masked against its FLOPs per
/// example (one marker each; up and to the left is the better buy).
fn experts_svg(r: &ExpertsReport) -> String {
    let series: Vec<mixrank_report::svg::Series> = r
        .rows
        .iter()
        .map(|x| mixrank_report::svg::Series {
            name: format!("{}:{}", x.cost.index, x.cost.kind),
            points: vec![(x.cost.flops as f64 / 1e6, x.mean_auc_drop())],
            markers: true,
        })
        .collect();
    let chart = mixrank_report::svg::Chart {
        title: "AUC lost when the expert is masked vs its cost".into(),
        x_label: "MFLOPs per example".into(),
        y_label: "mean AUC drop".into(),
        range: None,
        diagonal: false,
    };
    mixrank_report::svg::line_chart(&chart, &series)
}

fn experts(a: &ExpertsArgs) -> Result<()> {
    let ops = crate::backend::ops();
    let plan = ExpertsPlan {
        split: a.split.clone(),
        reps: a.reps,
        resamples: a.resamples,
        retrain: a.retrain.clone(),
        ..Default::default()
    };
    let r = run_experts(&a.run_dir, &ops, &plan, Some(&progress))?;
    let md = r.markdown();
    let dir = a.out.clone().unwrap_or_else(|| a.run_dir.join("experts"));
    std::fs::create_dir_all(&dir)?;
    crate::stats_cmd::write_atomic(&dir.join("experts.json"), &serde_json::to_string_pretty(&r.to_json())?)?;
    crate::stats_cmd::write_atomic(&dir.join("experts.md"), &md)?;
    crate::stats_cmd::write_atomic(&dir.join("experts.svg"), &experts_svg(&r))?;
    crate::emit(&md);
    crate::say!("written: {} (and experts.json, experts.svg)", dir.join("experts.md").display());
    Ok(())
}

pub fn run(cmd: &ExperimentCommand) -> Result<()> {
    match cmd {
        ExperimentCommand::Experts(a) => {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build()?;
            pool.install(|| experts(a))
        }
        ExperimentCommand::Retention(a) => {
            let mut plan = if a.quick { RetentionPlan::quick() } else { RetentionPlan::full() };
            if let Some(s) = a.seed {
                plan.seed = s;
            }
            plan.threads = a.threads;
            // The incremental part warm-starts from (c) through the trainer's stages.
            let warm = mixrank_train::experiment::StageWarmStart(crate::backend::ops());
            let r = run_retention(&plan, &a.out, Some(&warm), Some(progress), &crate::backend::ops())?;
            crate::emit(&r.markdown);
            crate::say!("report: {} (and report.json), {:.0} s", a.out.join("report.md").display(), r.seconds);
            Ok(())
        }
    }
}
