//! FinalMLP: [`FeatureGate`], [`BilinearFusion`] and the two-stream [`FinalMlp`].

mod feature_gate;
mod final_mlp;
mod fusion;

pub use feature_gate::FeatureGate;
pub use final_mlp::{FinalMlp, FinalMlpConfig, GateContext};
pub use fusion::{BilinearFusion, BilinearFusionConfig};
