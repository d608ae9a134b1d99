//! Optimizers: dense [`Adam`]/AdamW with global-norm clipping and a learning-rate
//! [`LrSchedule`]; sparse [`RowWiseAdagrad`] and [`LazyAdam`] for embedding tables.
//!
//! They are generic over the backend: parameters, moments and accumulators stay in its
//! memory, and each update is a backend op (`mixrank_engine::optim`), so a step needs no
//! readback.

mod adam;
mod schedule;
mod sparse;

pub use adam::{Adam, AdamConfig, StepStats, WeightDecay};
pub use schedule::{Decay, LrSchedule};
pub use sparse::{BiasCorrection, DecayScope, LazyAdam, LazyAdamConfig, RowWiseAdagrad, RowWiseAdagradConfig};
