//! Explicit feature crossing: [`CrossNetV2`], the mixture-of-experts [`CrossNetMix`],
//! and the [`Dcn`] block.

mod cross_mix;
mod cross_net;
mod dcn;

pub use cross_mix::{CrossNetMix, CrossNetMixConfig};
pub use cross_net::{CrossNetV2, CrossNetV2Config, CrossRank};
pub use dcn::{Cross, CrossConfig, Dcn, DcnConfig, DcnStructure};
