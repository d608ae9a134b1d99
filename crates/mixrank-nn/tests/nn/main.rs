//! The layer crate's integration tests, as one binary.

mod common;
mod cross;
mod dense;
mod embedding;
mod finalmlp;
mod golden;
mod mask;
mod moe;
mod normalize;
mod optim;
mod random_shapes;
mod ranking_loss;
