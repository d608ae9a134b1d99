//! Parquet through arrow-rs: one unit per row group, only the needed columns read.

use super::{file_key, Unit};
use crate::batch::Batch;
use crate::column::Col;
use crate::encode::{BadRows, ChunkOrigin, Encoder};
use crate::error::{DataError, Result};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::path::Path;

fn open(file: &Path) -> Result<(File, ArrowReaderMetadata)> {
    let f = File::open(file).map_err(|source| DataError::Io { file: file.to_path_buf(), source })?;
    let meta = ArrowReaderMetadata::load(&f, ArrowReaderOptions::new()).map_err(|e| DataError::Parquet {
        file: file.to_path_buf(),
        row_group: None,
        message: e.to_string(),
    })?;
    Ok((f, meta))
}

/// The file's Arrow schema (reads the footer only).
pub(super) fn schema(file: &Path) -> Result<arrow::datatypes::SchemaRef> {
    Ok(open(file)?.1.schema().clone())
}

/// Row counts of the file's row groups (reads the footer only).
pub(super) fn row_groups(file: &Path) -> Result<Vec<u64>> {
    let (_, meta) = open(file)?;
    Ok(meta.metadata().row_groups().iter().map(|g| g.num_rows() as u64).collect())
}

pub(super) fn decode(
    enc: &Encoder,
    unit: &Unit,
    fraction: Option<(f64, f64)>,
    bad: &BadRows,
    emit: &mut dyn FnMut(Batch) -> bool,
) -> Result<()> {
    let file = unit.file.as_path();
    let g = unit.row_group.expect("parquet units have a row group");
    let (f, meta) = open(file)?;
    let schema = meta.schema().clone();
    let names = enc.column_names();
    let mut roots = Vec::with_capacity(names.len());
    for n in names {
        match schema.index_of(n) {
            Ok(i) => roots.push(i),
            Err(_) => {
                let available: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(DataError::MissingColumn {
                    file: file.to_path_buf(),
                    column: n.clone(),
                    available: available.join(", "),
                });
            }
        }
    }
    let first_row: u64 = meta.metadata().row_groups()[..g].iter().map(|rg| rg.num_rows() as u64).sum();
    let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta)
        .with_row_groups(vec![g])
        .with_projection(mask)
        .with_batch_size(enc.config().data.chunk_rows)
        .build()
        .map_err(|e| DataError::Parquet { file: file.to_path_buf(), row_group: Some(g), message: e.to_string() })?;
    let fkey = file_key(file);
    let mut offset = 0u64;
    let mut checked = false;
    for rb in reader {
        let rb = rb.map_err(|e| DataError::Parquet {
            file: file.to_path_buf(),
            row_group: Some(g),
            message: e.to_string(),
        })?;
        let arrays: Vec<_> = names.iter().map(|n| rb.column_by_name(n).expect("projected column")).collect();
        let mut cols = Vec::with_capacity(arrays.len());
        for (a, n) in arrays.iter().zip(names) {
            cols.push(Col::from_arrow(a).map_err(|found| DataError::WrongType {
                file: file.to_path_buf(),
                column: n.clone(),
                expected: "a number, string, dictionary<string> or list column".into(),
                found,
            })?);
        }
        if !checked {
            enc.check_types(file, &cols)?;
            checked = true;
        }
        let origin =
            ChunkOrigin { file, file_key: fkey, first_row: first_row + offset, row_group: Some(g), lines: None };
        let batch = enc.encode(&cols, rb.num_rows(), &origin, fraction, bad)?;
        offset += rb.num_rows() as u64;
        if !emit(batch) {
            break;
        }
    }
    Ok(())
}
