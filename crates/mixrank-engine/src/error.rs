//! The engine's error type.

/// Result alias used by every op.
pub type Result<T> = std::result::Result<T, EngineError>;

/// Why an op refused to run. Every variant names the op so a message read in a log
/// points at the call site's kernel without a backtrace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A buffer is shorter than the shape the op was asked to read or write.
    #[error("{op}: {operand} holds {len} elements but shape {shape:?} needs {needed}")]
    BufferTooSmall { op: &'static str, operand: &'static str, shape: Vec<usize>, needed: usize, len: usize },
    /// Two operands (or an operand and the op's spec) disagree on a dimension.
    #[error("{op}: {lhs} {lhs_shape:?} does not match {rhs} {rhs_shape:?}")]
    ShapeMismatch {
        op: &'static str,
        lhs: &'static str,
        lhs_shape: Vec<usize>,
        rhs: &'static str,
        rhs_shape: Vec<usize>,
    },
    /// An embedding id points past the end of its table.
    #[error("{op}: id {id} at position {position} is out of range for a table of {rows} rows")]
    IdOutOfRange { op: &'static str, id: u32, position: usize, rows: usize },
    /// CSR offsets of a multi-valued field are not a valid partition of the ids.
    #[error("{op}: invalid offsets at index {index}: {reason}")]
    InvalidOffsets { op: &'static str, index: usize, reason: &'static str },
    /// A scalar argument is outside its domain (e.g. a leading dimension below the
    /// number of columns).
    #[error("{op}: {reason}")]
    InvalidArgument { op: &'static str, reason: &'static str },
    /// The CPU lacks an instruction set the caller explicitly asked for.
    #[error("{op}: this CPU does not support {feature}")]
    Unsupported { op: &'static str, feature: &'static str },
}
