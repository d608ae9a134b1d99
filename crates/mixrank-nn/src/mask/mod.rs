//! MaskNet: [`MaskBlock`] and the serial/parallel [`MaskNet`].

mod mask_block;
mod mask_net;

pub use mask_block::{MaskBlock, MaskBlockConfig};
pub use mask_net::{MaskNet, MaskNetConfig, MaskNetStructure};
