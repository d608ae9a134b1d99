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
    /// The admin endpoint is off: the server was started without an admin token.
    #[error(
        "the admin endpoint is off: this server was started without an admin token \
         (start it with --admin-token or MIXRANK_ADMIN_TOKEN to enable POST /admin/reload)"
    )]
    AdminDisabled,
    /// A reload whose model would change what requests carry or what answers hold
    /// (feature columns, tasks); refused unless forced.
    #[error(
        "reload refused: the new model changes the request schema ({0}); send {{\"force\": true}} to reload anyway"
    )]
    SchemaChanged(Box<crate::reload::SchemaDiff>),
    /// A listener on a non-loopback address while the admin endpoint has no token.
    #[error(
        "refusing to listen on {addr}: it is not a loopback address and the admin endpoint has no token; \
         give an admin token (--admin-token or MIXRANK_ADMIN_TOKEN), or turn the endpoint off (--no-admin)"
    )]
    InsecureBind { addr: std::net::SocketAddr },
    /// Loading or verifying a checkpoint failed.
    #[error("{}: {message}", dir.display())]
    Checkpoint { dir: PathBuf, message: String },
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    /// An item table that cannot be read, or is not the model's (another checkpoint).
    #[error("{0}")]
    ItemTable(Box<crate::item_table::ItemTableError>),
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
            ServeError::AdminDisabled => "admin_disabled",
            ServeError::SchemaChanged(_) => "schema_changed",
            ServeError::InsecureBind { .. } => "insecure_bind",
            ServeError::Checkpoint { .. } => "checkpoint",
            ServeError::Config { .. } => "config",
            ServeError::ItemTable(_) => "item_table",
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
            ServeError::AdminDisabled => 403,
            ServeError::SchemaChanged(_) => 409,
            ServeError::InsecureBind { .. } => 500,
            ServeError::Checkpoint { .. } | ServeError::Config { .. } | ServeError::ItemTable(_) => 422,
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
            ServeError::AdminDisabled => tonic::Status::permission_denied(m),
            ServeError::SchemaChanged(_) => tonic::Status::failed_precondition(m),
            ServeError::InsecureBind { .. } => tonic::Status::internal(m),
            ServeError::Checkpoint { .. } | ServeError::Config { .. } | ServeError::ItemTable(_) => {
                tonic::Status::failed_precondition(m)
            }
            ServeError::Internal(_) => tonic::Status::internal(m),
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
