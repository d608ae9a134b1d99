//! The subset of Apache Arrow that mixrank uses, under the same paths as the `arrow`
//! umbrella crate (`arrow::array`, `arrow::datatypes`, `arrow::record_batch`,
//! `arrow::compute::{concat, take}`).
//!
//! The workspace depends on this crate under the name `arrow`, so code reads as if it
//! used the umbrella crate. Why not the umbrella crate: `arrow` always builds its
//! arithmetic, ordering, row-format, string (with `regex`) and cast (with `lexical-core`)
//! kernels, none of which mixrank calls; leaving them out shortens a cold build of the
//! README's two commands (docs/BENCHMARKS.md, "First run"). Parquet's `arrow` feature
//! needs only the crates below. A kernel that is needed later is one more re-export here.

/// Arrays, builders and the `AsArray` downcasts (`arrow::array`).
pub mod array {
    pub use arrow_array::builder::*;
    pub use arrow_array::cast::*;
    pub use arrow_array::iterator::*;
    pub use arrow_array::*;
}

/// Schemas, data types and the primitive type markers (`arrow::datatypes`).
pub mod datatypes {
    pub use arrow_array::types::*;
    pub use arrow_buffer::ArrowNativeType;
    pub use arrow_schema::{DataType, Field, FieldRef, Fields, Schema, SchemaBuilder, SchemaRef, TimeUnit};
}

/// `RecordBatch` (`arrow::record_batch`).
pub mod record_batch {
    pub use arrow_array::{RecordBatch, RecordBatchOptions, RecordBatchReader};
}

/// Errors (`arrow::error`).
pub mod error {
    pub use arrow_schema::ArrowError;
}

/// The selection kernels mixrank uses: concatenation and gathering rows
/// (`arrow::compute`).
pub mod compute {
    pub use arrow_select::concat::{concat, concat_batches};
    pub use arrow_select::take::{take, take_record_batch};
}
