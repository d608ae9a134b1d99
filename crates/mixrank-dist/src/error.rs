//! Errors of collective operations.

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rank of the group left (its thread ended or panicked) while others waited in a
    /// collective operation: the job stops instead of hanging.
    #[error("collective `{op}`: rank {rank} left the group")]
    PeerGone { op: &'static str, rank: usize },
    /// Ranks called collectives with arguments that do not fit together.
    #[error("collective `{op}`: {reason}")]
    Mismatch { op: &'static str, reason: String },
    /// The transport failed an operation (NCCL or CUDA errors).
    #[error("collective `{op}`: {message}")]
    Transport { op: &'static str, message: String },
    /// The transport could not be started.
    #[error("starting the collective transport: {0}")]
    Init(String),
}

pub type Result<T, E = DistError> = std::result::Result<T, E>;
