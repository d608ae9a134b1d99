//! Errors of the serving crate. [`ServeError`] is what a scoring call can fail with;
//! each variant maps to one HTTP status and one gRPC code, so both front ends report
//! the same failure the same way.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed; `field` is the JSON path of the offending value
    /// (`candidates[3].bid`), or empty for the body as a whole.
    #[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    BadRequest { field: String, message: String },
    /// The request exceeds a configured size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The queue is full: back-pressure, the caller should retry later.
    #[error("server overloaded: the scoring queue holds {capacity} requests; retry later")]
    Overloaded { capacity: usize },
    /// The request did not finish within the per-request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Admin endpoint without the right bearer token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// Loading or verifying a checkpoint failed.
    #[error("{}: {message}", dir.display())]
    Checkpoint { dir: PathBuf, message: String },
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServeError::BadRequest { field: field.into(), message: message.into() }
    }

    /// Short machine-readable name, also the `outcome` label of the request metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::BadRequest { .. } => "bad_request",
            ServeError::TooLarge(_) => "too_large",
            ServeError::Overloaded { .. } => "overloaded",
            ServeError::Timeout(_) => "timeout",
            ServeError::ShuttingDown => "shutting_down",
            ServeError::Unauthorized => "unauthorized",
            ServeError::Checkpoint { .. } => "checkpoint",
            ServeError::Config { .. } => "config",
            ServeError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            ServeError::BadRequest { .. } => 400,
            ServeError::TooLarge(_) => 413,
            ServeError::Overloaded { .. } => 429,
            ServeError::Timeout(_) => 504,
            ServeError::ShuttingDown => 503,
            ServeError::Unauthorized => 401,
            ServeError::Checkpoint { .. } | ServeError::Config { .. } => 422,
            ServeError::Internal(_) => 500,
        }
    }

    /// The gRPC status of this error.
    pub fn grpc_status(&self) -> tonic::Status {
        let m = self.to_string();
        match self {
            ServeError::BadRequest { .. } => tonic::Status::invalid_argument(m),
            ServeError::TooLarge(_) | ServeError::Overloaded { .. } => tonic::Status::resource_exhausted(m),
            ServeError::Timeout(_) => tonic::Status::deadline_exceeded(m),
            ServeError::ShuttingDown => tonic::Status::unavailable(m),
            ServeError::Unauthorized => tonic::Status::unauthenticated(m),
            ServeError::Checkpoint { .. } | ServeError::Config { .. } => tonic::Status::failed_precondition(m),
            ServeError::Internal(_) => tonic::Status::internal(m),
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
