//! mixrank-train: trains a [`mixrank_model::RankingModel`] on a config's train split
//! and validates it, logging JSON lines. Models return logits; the losses live here.
//!
//! Checkpoints ([`checkpoint`]) hold weights, optimizer state ([`optimizers`]), the data
//! cursor and lineage ([`lineage`]); [`periodic`] writes them during training and finds
//! the newest good one for `--resume`; [`warm_start`] carries a parent into a changed
//! config for `--init`; [`trace`] is a row-level debugging aid.

pub mod calibration;
pub mod checkpoint;
pub mod data_parallel;
pub mod distill;
pub mod early_stop;
pub mod error;
pub mod eval_section;
pub mod evaluate;
pub mod experiment;
pub mod lineage;
pub mod losses;
pub mod optimizers;
pub mod periodic;
pub mod predict;
pub mod progress;
pub mod run_dir;
pub mod score_ranks;
pub mod sharded_tables;
mod start;
pub mod tensors;
pub mod trace;
mod train_log;
pub mod trainer;
pub mod warm_start;
pub mod weighting;
mod wire;

pub use error::{Result, TrainError};
pub use evaluate::{evaluate, prediction_of, read_predictions, task_type, CheckpointScorer, Predictions};
pub use lineage::{Lineage, Stage};
pub use predict::{score_column, PredictOptions, PredictSummary};
pub use start::{checkpoint_dir, VOCABULARIES};
pub use trainer::{train, Replicas, Scored, StopReason, TrainOptions, TrainSummary};
#[cfg(test)]
mod data_parallel_tests;
