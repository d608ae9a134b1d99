//! mixrank-model: multi-task architectures assembled from `mixrank-nn` layers as the
//! config's `[model]` section says. Models return logits; they never own a loss.
//!
//! The [`MultiTaskHead`] is everything after the input features (the concatenated
//! embeddings and dense features): an optional shared layer, the experts, the gates and
//! per-task mixing, and the towers.

pub mod error;
pub mod expert;
pub mod gates;
pub mod head;
pub mod ple;
pub mod ranking;

pub use error::{ModelError, Result};
pub use expert::Expert;
pub use gates::{ExpertOwner, ExpertRef, GateInfo, GateRole};
pub use head::MultiTaskHead;
pub use ranking::RankingModel;
