//! mixrank-train: trains a [`mixrank_model::RankingModel`] on a config's train split
//! and validates it, logging JSON lines. Models return logits; the losses live here.

pub mod checkpoint;
pub mod distill;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod trainer;

pub use error::{Result, TrainError};
pub use evaluate::{evaluate, task_type, CheckpointScorer, Predictions};
pub use trainer::{train, TrainOptions, TrainSummary};
