//! Backends for testing layer code, which is generic over `B: Backend` and so runs
//! unchanged on them:
//!
//! - [`RefOpsOf<T>`]: the engine's reference backend with `T`-valued buffers; in `f64`
//!   ([`RefOpsF64`]) for finite-difference gradient checks (re-exported from
//!   [`mixrank_engine::reference`], where `RefOps` is `RefOpsOf<f32>`).
//! - [`BoundOps`]: exact values (f64) carried together with a rigorous first-order bound
//!   on the rounding error any f32 backend may commit; the tolerance of every
//!   CpuOps-vs-RefOps comparison.

mod bound;

pub use bound::{BoundOps, Bounded};
pub use mixrank_engine::reference::{RefOpsF64, RefOpsOf};
