//! The mixrank compute engine: buffers, the op set of the model family behind the
//! [`Backend`] trait, and its implementations.
//!
//! - [`Backend`] (in [`ops`]): the interface layer code calls. Row-major `f32`, explicit
//!   shapes, workspaces allocated once and reused.
//! - [`CpuOps`]: the fast host backend (`gemm` crate for GEMMs, rayon over rows).
//! - [`RefOps`](type@RefOps): naive loops; the reference the tests compare against. It is
//!   [`RefOpsOf<f32>`]; [`RefOpsF64`] runs the same kernels in `f64` for
//!   finite-difference gradient checks.
//! - [`counting::Counting`]: forwards to a host backend and counts allocations, uploads
//!   and readbacks — what a device backend would move — for tests.
//! - [`optim`]: optimizer updates (Adam/AdamW with a clip, row-wise Adagrad, lazy Adam)
//!   as ops, so parameters and optimizer state stay in the backend's memory.
//! - [`normalize`]: row L2 normalisation (cosine scores) and its backward.
//! - [`mask`]: dropout and top-k masks as ops, so they are made where the data lives.
//! - [`bf16`]: a bf16-weight, bf16-activation, f32-accumulate GEMM for inference
//!   (AMX-BF16 or AVX512-BF16, chosen at run time, with a portable fallback).
//! - [`reduced`]: a weight packed once for reduced-precision inference GEMMs
//!   ([`Backend::pack_reduced`]); the CPU backend's is [`HostBf16`].
//!
//! `unsafe` lives only in the SIMD kernels (`bf16::avx512`, `bf16::amx`) and in the one
//! call into the `gemm` crate (`cpu::gemm`), each with its safety argument.
//!
//! The engine knows nothing about features, tasks or models.

pub mod activation;
pub mod awake;
pub mod bf16;
pub mod block;
pub mod check;
pub mod counting;
pub mod cpu;
pub mod error;
pub mod float;
mod host;
pub mod loss;
pub mod mask;
pub mod normalize;
pub mod ops;
pub mod optim;
pub mod reduced;
pub mod reference;

pub use activation::Activation;
pub use awake::KeepAwake;
pub use cpu::CpuOps;
pub use error::{EngineError, Result};
pub use float::Float;
pub use ops::{
    round_bf16, Backend, BlockShape, ColCopy, GatherSpec, GemmOperands, GemmSpec, GradWrite, GroupSpec, LayerNormSpec,
    LossInput, MatLayout, NormStats, PairSpec, Pooling, Shape, SparseGrad, SparseView, Transpose,
};
pub use optim::{AdamSpec, LazyAdamSpec, RowAdagradSpec, SparseRows, TableShape, NORM_ACC_LEN};
pub use reduced::{HostBf16, ReducedGemm, WeightLayout};
pub use reference::{RefOps, RefOpsF64, RefOpsOf};
