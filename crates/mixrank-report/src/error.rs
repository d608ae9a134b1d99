//! Errors of report building.

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A line of the training log is not the JSON the trainer writes.
    #[error("{path} line {line}: {message}")]
    Log { path: String, line: usize, message: String },
}
