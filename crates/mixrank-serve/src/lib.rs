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

/// The gRPC messages and service, generated from `proto/mixrank.proto` by
/// `tools/protogen` and committed (`src/proto/mixrank.v1.rs`), so a build compiles no
/// protobuf compiler; `generated_proto_code_is_current` fails when the .proto changed
/// and the code was not regenerated.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!("proto/mixrank.v1.rs");
}

pub use error::{Result, ServeError};
pub use server::{start, RunningServer, ServeOptions};
pub use session::{Engine, InferenceSession, Precision};

#[cfg(test)]
mod proto_tests {
    /// The first line of the generated file records the xxh3-64 of the .proto it came from.
    #[test]
    fn generated_proto_code_is_current() {
        let proto = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/mixrank.proto")).unwrap();
        let first_line = include_str!("proto/mixrank.v1.rs").lines().next().unwrap_or_default();
        let want = format!("proto xxh3-64: {:016x}", xxhash_rust::xxh3::xxh3_64(&proto));
        assert!(
            first_line.ends_with(&want),
            "src/proto/mixrank.v1.rs is stale ({first_line:?}, the .proto now has {want:?}): run \
             `cargo run --manifest-path tools/protogen/Cargo.toml`"
        );
    }
}
