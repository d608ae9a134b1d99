//! `mixrank simulate`: the embedded default data. Two kinds:
//! - [`engagement`]: an ads-engagement log with users, ads, advertisers, categories,
//!   three surfaces, position bias, four tasks and day-to-day drift;
//! - [`mmoe_paper`]: the two-task synthetic regression data of Ma et al. (KDD 2018).
//!
//! Both are deterministic from a seed (independent of thread count) and write Parquet
//! plus a ready-to-use config, each file through a temporary name and a rename.

pub mod engagement;
pub mod mmoe_paper;
mod write;

pub use engagement::{simulate_engagement, EngagementParams};
pub use mmoe_paper::{simulate_mmoe_paper, MmoePaperParams};

/// What a simulation wrote.
#[derive(Debug, Clone)]
pub struct SimSummary {
    pub rows: u64,
    pub files: Vec<std::path::PathBuf>,
    pub config: std::path::PathBuf,
}
