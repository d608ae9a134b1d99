//! mixrank-serve: inference sessions and the scoring server.
//!
//! ```text
//! JSON / protobuf ─► request (validate) ─► encode (training Encoder) ─► batcher queue
//!        ▲                                                                  │
//!        └──── predictions + ranking score ◄── session.predict (f32|bf16) ◄─┘
//! ```
//!
//! - [`session`]: a verified checkpoint loaded for inference at f32 or bf16;
//! - [`request`] and [`encode`]: wire types, validation (errors name the field) and
//!   encoding exactly as in training;
//! - [`score`]: the configurable ranking score;
//! - [`batcher`]: micro-batching with a bounded wait and a bounded queue;
//! - [`reload`]: atomic model swap, refusing checkpoints that fail verification;
//! - [`service`], [`http`], [`grpc`], [`server`]: the front ends and their lifecycle;
//! - [`metrics`]: Prometheus text;
//! - [`replay`]: requests rebuilt from logged Parquet rows (tests, load generator);
//! - [`loadgen`]: a bounded keep-alive HTTP load generator (`mixrank bench serve`).

pub mod batcher;
pub mod embed_items;
pub mod encode;
pub mod error;
pub mod grpc;
pub mod http;
pub mod item_scoring;
pub mod item_table;
pub mod loadgen;
pub mod metrics;
pub mod reload;
pub mod replay;
pub mod request;
pub mod score;
pub mod server;
pub mod service;
pub mod session;

/// Generated from `proto/mixrank.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("mixrank.v1");
}

pub use error::{Result, ServeError};
pub use server::{start, RunningServer, ServeOptions};
pub use session::{Engine, InferenceSession, Precision};
