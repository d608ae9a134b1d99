//! Layers with explicit forward and backward on top of the engine's [`Backend`] trait,
//! plus the optimizers that update their parameters.
//!
//! Every layer follows one pattern (llm.c / HugeCTR style):
//! - `XxxConfig` (plain struct, documented fields) → `config.init(ops, max_batch, rng)`
//!   checks dimensions and returns the layer, owning its [`Param`]s (value + gradient)
//!   and workspaces sized for `max_batch` rows, allocated once ([`LayerConfig::build`]
//!   does the same behind one trait).
//! - `forward(ops, input, batch)` writes the layer's own output workspace and returns a
//!   reference to it, keeping what backward needs.
//! - `backward(ops, input, d_output)` **accumulates** parameter gradients and
//!   **overwrites** the layer's `d_input` workspace, returning it. It takes the forward
//!   input again instead of copying it in forward: the caller owns that buffer anyway
//!   (often another layer's output), and in an MMoE several experts read the same input.
//!   `backward_acc(ops, input, d_output, batch, acc)` is the same with the input gradient
//!   **added** into the caller's `acc` (a Linear layer's GEMM with `β = 1`), so the
//!   layers reading one input sum their gradients without a pass each.
//!   Layers with two inputs (MaskBlock, BilinearFusion, MoeMix) have inherent
//!   `forward`/`backward` methods and expose each input gradient by accessor.
//! - [`Parameters::visit_params`] walks named parameters (`blocks.0.linear.weight`) in a
//!   fixed order for optimizers and checkpoints.
//!
//! Layer code is generic over `B: Backend`, so the same code runs on `CpuOps`, on the
//! engine's `RefOps`, in `f64` through [`testing::RefOpsF64`] for gradient checks, with
//! rounding-error bounds through [`testing::BoundOps`], and on a future CUDA backend. A
//! steady-state step allocates nothing (`tests/no_alloc.rs`).
//!
//! | module | contents |
//! |---|---|
//! | [`dense`] | [`Linear`], [`LayerNorm`], [`Dropout`], [`Mlp`], [`Tower`] |
//! | [`cross`] | DCN-V2: [`CrossNetV2`] (full or low rank), [`CrossNetMix`] (mixture of low-rank experts), [`Dcn`] (stacked / parallel) |
//! | [`moe`] | [`Gate`] (linear + tempered softmax, optional top-k), [`MoeMix`] (gated expert mixture) |
//! | [`mask`] | [`MaskBlock`], [`MaskNet`] (serial / parallel) |
//! | [`finalmlp`] | [`FeatureGate`], [`BilinearFusion`], [`FinalMlp`] |
//! | [`embedding`] | [`EmbeddingCollection`]: single / pooled lookups, sparse gradients |
//! | [`optim`] | [`Adam`]/AdamW, [`LrSchedule`], [`RowWiseAdagrad`], [`LazyAdam`] |
//!
//! [`Backend`]: mixrank_engine::Backend

pub mod cross;
pub mod dense;
pub mod embedding;
pub mod error;
pub mod finalmlp;
pub mod layer;
pub mod mask;
pub mod moe;
pub mod optim;
pub mod param;
pub mod testing;

pub use cross::{
    Cross, CrossConfig, CrossNetMix, CrossNetMixConfig, CrossNetV2, CrossNetV2Config, CrossRank, Dcn, DcnConfig,
    DcnStructure,
};
pub use dense::{
    Dropout, DropoutConfig, HostBf16, LayerNorm, LayerNormConfig, Linear, LinearConfig, MaskStream, Mlp, MlpConfig,
    ReducedGemm, ReducedSite, Tower, TowerConfig, WeightLayout,
};
pub use embedding::{
    EmbeddingCollection, EmbeddingCollectionConfig, EmbeddingTable, FeatureConfig, FeatureInput, TableConfig,
};
pub use error::{NnError, Result};
pub use finalmlp::{BilinearFusion, BilinearFusionConfig, FeatureGate, FinalMlp, FinalMlpConfig, GateContext};
pub use layer::{Layer, LayerConfig};
pub use mask::{MaskBlock, MaskBlockConfig, MaskNet, MaskNetConfig, MaskNetStructure};
pub use moe::{Gate, GateConfig, MoeMix};
pub use optim::{
    Adam, AdamConfig, BiasCorrection, Decay, DecayScope, LazyAdam, LazyAdamConfig, LrSchedule, RowWiseAdagrad,
    RowWiseAdagradConfig, StepStats, WeightDecay,
};
pub use param::{substitute_parts, zero_grads, Axis, Init, Param, ParamVisitor, Parameters, Part, RolesFn, Seg};
