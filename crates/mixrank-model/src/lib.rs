//! mixrank-model: multi-task architectures assembled from `mixrank-nn` layers as the
//! config's `[model]` section says. Models return logits; they never own a loss.
//!
//! A [`Head`] is everything after the input features (the feature groups it reads,
//! concatenated: embeddings and dense features): an optional shared layer ([`trunk`]),
//! the architecture's experts, gates and mixing, and the towers ([`towers`]). One type
//! per architecture ([`SharedBottom`], [`Moe`], [`Ple`]); [`build_head`] picks it from
//! the config. [`RankingModel`] puts the embeddings and the input assembly
//! ([`inputs`]) in front and may add [`LogitSource`]s' logits (the
//! [`PositionTower`]) to chosen tasks in training.
//! Everything above this crate holds a model as a `Box<dyn` [`Model`]`<B>>` built by
//! [`build_model`], on any backend `B`.

pub mod error;
pub mod expert;
pub mod gates;
pub mod head;
mod in_batch;
pub mod inputs;
pub mod logit_source;
pub mod lookup;
pub mod model;
pub mod moe;
pub mod peers;
pub mod ple;
pub mod position_tower;
pub mod ranking;
pub mod shared_bottom;
pub mod towers;
pub mod trunk;
pub mod two_tower;

pub use error::{ModelError, Result};
pub use expert::Expert;
pub use gates::{ExpertOwner, ExpertRef, GateInfo, GateRole, TowerName};
pub use head::{build_head, build_head_shaped, build_head_with_outputs, Head, HeadShape};
pub use inputs::{InputGroup, InputLayout};
pub use logit_source::{LogitSource, LogitSources, SourceInput};
pub use model::{build_model, Model, ModelIo};
pub use moe::{Gating, Moe};
pub use ple::Ple;
pub use position_tower::PositionTower;
pub use ranking::RankingModel;
pub use shared_bottom::SharedBottom;
pub use two_tower::{Tower, TwoTowerModel};
