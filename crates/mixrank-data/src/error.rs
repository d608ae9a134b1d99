//! The one error type of the data crate. Every variant names the file and, where it
//! applies, the row (or row group) and the column, so a user can find the bad input.

use std::path::PathBuf;

/// Where in a file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// 1-based line in a text file (the header, if any, is line 1).
    Line(u64),
    /// 0-based row index within a Parquet file, and its row group.
    ParquetRow { row_group: usize, row: u64 },
    /// A whole Parquet row group.
    RowGroup(usize),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(l) => write!(f, "line {l}"),
            Location::ParquetRow { row_group, row } => write!(f, "row {row} (row group {row_group})"),
            Location::RowGroup(g) => write!(f, "row group {g}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },

    #[error("{file}: at `{key}`: {message}")]
    ConfigKey { file: PathBuf, key: String, message: String },

    #[error("{}: cannot read: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },

    #[error("{}: the file is empty (expected {expected})", file.display())]
    EmptyFile { file: PathBuf, expected: &'static str },

    #[error("{}: missing column `{column}` (available: {available})", file.display())]
    MissingColumn { file: PathBuf, column: String, available: String },

    #[error("{}: column `{column}` has type {found}, expected {expected}", file.display())]
    WrongType { file: PathBuf, column: String, expected: String, found: String },

    #[error("{}: {location}: column `{column}`: {message}", file.display())]
    BadValue { file: PathBuf, location: Location, column: String, message: String },

    #[error("{}: {location}: {message}", file.display())]
    BadRow { file: PathBuf, location: Location, message: String },

    #[error("{}: not a readable Parquet file{}: {message}", file.display(), row_group.map(|g| format!(" (row group {g})")).unwrap_or_default())]
    Parquet { file: PathBuf, row_group: Option<usize>, message: String },

    #[error("split `{split}`: no files match {patterns}")]
    NoFiles { split: String, patterns: String },

    #[error("too many bad rows: {count} exceeds max_bad_rows = {max}; first: {first}")]
    TooManyBadRows { count: u64, max: u64, first: String },

    /// An output file that exists and was not to be replaced.
    #[error("{}: already exists; not overwritten (overwriting must be asked for)", file.display())]
    OutputExists { file: PathBuf },

    /// An output file whose directory does not exist.
    #[error("{}: the output directory {} does not exist", file.display(), dir.display())]
    NoOutputDir { file: PathBuf, dir: PathBuf },

    /// Two output columns of one name.
    #[error("{}: column `{column}` would be written twice ({why})", file.display())]
    DuplicateColumn { file: PathBuf, column: String, why: String },

    #[error("learned vocabulary of table `{table}`: {message}")]
    Vocabulary { table: String, message: String },

    #[error("{0}")]
    Other(String),
}

impl DataError {
    /// True for errors about one row that `max_bad_rows` may skip; file-level
    /// problems (missing column, wrong type, unreadable file) are always fatal.
    pub fn is_row_level(&self) -> bool {
        matches!(self, DataError::BadValue { .. } | DataError::BadRow { .. })
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
