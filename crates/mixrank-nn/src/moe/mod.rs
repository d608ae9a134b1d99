//! Mixture-of-experts pieces: the lightweight [`Gate`] and the [`MoeMix`] op.

mod gate;
mod mix;

pub use gate::{Gate, GateConfig};
pub use mix::MoeMix;
