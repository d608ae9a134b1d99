//! Atomic file writes shared by the simulators.

use crate::atomic::tmp_name;
use crate::error::{DataError, Result};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::Path;

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { file: path.to_path_buf(), source }
}

/// Writes record batches as one Parquet file (row groups of `row_group_rows`), via a
/// temporary file and a rename, so a crash never leaves a half-written file.
pub fn write_parquet_atomic(path: &Path, batches: &[RecordBatch], row_group_rows: usize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = tmp_name(path);
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| DataError::Other("nothing to write".into()))?;
    let perr = |e: parquet::errors::ParquetError| DataError::Parquet {
        file: path.to_path_buf(),
        row_group: None,
        message: e.to_string(),
    };
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(perr)?;
    for b in batches {
        w.write(b).map_err(perr)?;
    }
    let f = w.into_inner().map_err(perr)?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Writes a text file via a temporary file and a rename.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    crate::atomic::write_atomic(path, text.as_bytes()).map_err(|(file, source)| DataError::Io { file, source })
}
