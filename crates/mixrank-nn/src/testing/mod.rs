//! Backends for testing layer code, which is generic over `B: Backend` and so runs
//! unchanged on them:
//!
//! - [`RefOpsOf<T>`]: the engine's reference backend with `T`-valued buffers; in `f64`
//!   ([`RefOpsF64`]) for finite-difference gradient checks (re-exported from
//!   [`mixrank_engine::reference`], where `RefOps` is `RefOpsOf<f32>`).
//! - [`BoundOps`]: exact values (f64) carried together with a rigorous first-order bound
//!   on the rounding error any f32 backend may commit; the tolerance of every
//!   CpuOps-vs-RefOps comparison.
//! - [`gradcheck`]: the fourth-order finite-difference stencil, its tolerance and
//!   [`check_grads`], shared by every gradient check of the workspace.

mod bound;
mod bound_optim;
pub mod gradcheck;

pub use bound::{BoundOps, Bounded};
pub use gradcheck::check_grads;
pub use mixrank_engine::reference::{RefOpsF64, RefOpsOf};
