//! Experiments that run end to end over the simulator: the data-retention study of
//! distillation (`mixrank experiment retention`).

pub mod experts;
pub mod retention;
pub mod tables;

pub use experts::{run_experts, without_expert, ExpertCost, ExpertRow, ExpertsPlan, ExpertsReport, Retrained};
pub use retention::{run_retention, RetentionPlan, RetentionReport, StageWarmStart, WarmStart};
