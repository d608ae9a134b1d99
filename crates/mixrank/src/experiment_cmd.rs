//! `mixrank experiment retention`: the data-retention study of distillation from a
//! production model (docs/DISTILLATION.md).

use anyhow::Result;
use mixrank_train::experiment::{run_retention, RetentionPlan};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ExperimentCommand {
    /// Teacher on a long window, MMoE students on the recent days only (labels /
    /// pointwise / pairwise distillation), evaluated on the following days.
    Retention(RetentionArgs),
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

pub fn run(cmd: &ExperimentCommand) -> Result<()> {
    match cmd {
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
