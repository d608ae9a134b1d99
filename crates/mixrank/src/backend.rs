//! The one place the command line picks the engine backend. Every library crate above
//! `mixrank-nn` is generic over it (`mixrank_engine::Backend`); today the CLI runs on
//! the CPU backend (`CpuOps`: the `gemm` crate's kernels, rayon threads sized by
//! `--threads` / `[train] threads`).

use mixrank_engine::CpuOps;

/// The backend of training, evaluation, benchmarking and serving.
pub type Ops = CpuOps;

pub fn ops() -> Ops {
    CpuOps::new()
}

/// The serving engine (sessions are reopened through it on reload).
pub fn engine() -> mixrank_serve::Engine {
    mixrank_serve::Engine::new(ops())
}
