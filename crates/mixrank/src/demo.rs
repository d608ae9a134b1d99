//! `mixrank demo`: the main job on the embedded default data.
//!
//! Today it simulates the default engagement data and summarises every split; model
//! training, evaluation, comparison and the report join it as they land.

use anyhow::Result;
use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Working directory for the data and outputs.
    #[arg(long, default_value = "mixrank-demo")]
    pub out: PathBuf,
    /// Random seed for the simulator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let data_dir = a.out.join("data");
    crate::say!("[1/2] simulating the default engagement data into {}", data_dir.display());
    let t = std::time::Instant::now();
    let p = EngagementParams { seed: a.seed, ..Default::default() };
    let s = simulate_engagement(&p, &data_dir)?;
    crate::say!("      {} rows, {} day partitions, {:.1} s", s.rows, s.files.len(), t.elapsed().as_secs_f64());
    crate::say!("[2/2] summarising every split of {}", s.config.display());
    let cfg = Arc::new(mixrank_data::ExperimentConfig::load(&s.config)?);
    for split in cfg.data.splits.values() {
        let st = mixrank_data::stats::split_stats(cfg.clone(), split, None)?;
        crate::emit(&crate::stats_cmd::render(&st));
    }
    crate::say!("done: data and config in {}", data_dir.display());
    Ok(())
}
