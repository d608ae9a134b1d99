//! Optimizers: dense [`Adam`]/AdamW with global-norm clipping and a learning-rate
//! [`LrSchedule`]; sparse [`RowWiseAdagrad`] and [`LazyAdam`] for embedding tables.
//!
//! They run on host-memory backends ([`HostBackend`]: `CpuOps`, `RefOps`): the engine's
//! `Backend` has no square root or division op and no fused optimizer kernels yet, so a
//! device backend will need those kernels (the update math here is their reference).

mod adam;
mod schedule;
mod sparse;

pub use adam::{Adam, AdamConfig, StepStats, WeightDecay, CHUNK};
pub use schedule::{Decay, LrSchedule};
pub use sparse::{BiasCorrection, DecayScope, LazyAdam, LazyAdamConfig, RowWiseAdagrad, RowWiseAdagradConfig};

use mixrank_engine::Backend;

/// A backend whose buffers are host `Vec`s, which the optimizers update in place.
pub trait HostBackend: Backend<Buf = Vec<f32>, Ids = Vec<u32>> {}

impl<B: Backend<Buf = Vec<f32>, Ids = Vec<u32>>> HostBackend for B {}
