//! mixrank-data: the typed experiment config, readers for Parquet, CSV/TSV and
//! libsvm/libFM, stable categorical hashing, the batching pipeline and the
//! engagement simulator.

pub mod atomic;
pub mod batch;
pub mod column;
pub mod config;
pub mod encode;
pub mod error;
pub mod hash;
pub mod output;
pub mod pipeline;
pub mod reader;
pub mod stats;

pub use batch::{Batch, CatColumn};
pub use config::ExperimentConfig;
pub use encode::{BadRows, DenseMode, Encoder};
pub use error::{DataError, Result};
pub use pipeline::{BatchStream, StreamOptions};
pub mod simulate;
