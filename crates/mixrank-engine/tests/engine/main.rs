//! The engine's integration tests, as one binary.

mod awake;
mod bf16;
mod bf16_training;
mod common;
mod cpu_vs_ref;
mod gradcheck;
mod optim;
mod ranking;
mod softmax_xent;
