//! Dense building blocks: [`Linear`], [`LayerNorm`], [`Dropout`], [`Mlp`], [`Tower`].

mod dropout;
mod layer_norm;
mod linear;
mod mlp;
mod reduced;
mod tower;

pub use dropout::{Dropout, DropoutConfig, MaskStream};
pub use layer_norm::{LayerNorm, LayerNormConfig};
pub use linear::{Linear, LinearConfig};
pub use mlp::{Mlp, MlpConfig};
pub use reduced::{HostBf16, ReducedGemm, ReducedSite, WeightLayout};
pub use tower::{Tower, TowerConfig};
