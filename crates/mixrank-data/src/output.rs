//! Streaming a scored file out: [`PredictionWriter`] writes, batch by batch, the
//! pass-through columns a [`Batch`] carries ([`crate::Encoder::with_passthrough`]) and
//! one `f32` column per score, as Parquet.
//!
//! The file is written under a temporary name in the target's directory
//! ([`crate::atomic::tmp_name`]) and renamed into place by [`PredictionWriter::finish`];
//! a writer dropped before that (an error, a panic) removes its temporary file, so the
//! target is either absent (or its old version, with overwrite) or whole. A killed
//! process can leave the hidden temporary file, never a partial target. Memory is
//! bounded by one row group ([`ROW_GROUP_ROWS`]) plus the batch being written.

use crate::atomic::tmp_name;
use crate::batch::Batch;
use crate::error::{DataError, Result};
use crate::reader::Passthrough;
use arrow::array::{ArrayRef, Float32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per Parquet row group of a written file (what the writer buffers).
pub const ROW_GROUP_ROWS: usize = 65_536;

/// A Parquet file being written: pass-through columns, then one `f32` column per score.
pub struct PredictionWriter {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<std::fs::File>>,
    rows: u64,
}

impl PredictionWriter {
    /// Checks that `path` can be written: its directory exists, and the file does not
    /// unless `overwrite`.
    pub fn check_target(path: &Path, overwrite: bool) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(DataError::NoOutputDir { file: path.to_path_buf(), dir: dir.to_path_buf() });
        }
        if path.exists() && !overwrite {
            return Err(DataError::OutputExists { file: path.to_path_buf() });
        }
        Ok(())
    }

    /// Creates the temporary file beside `path` with the columns of `pass` and then
    /// `scores` (names must all differ).
    pub fn create(path: &Path, pass: &Passthrough, scores: &[String], overwrite: bool) -> Result<Self> {
        Self::check_target(path, overwrite)?;
        let mut fields: Vec<Field> = Vec::new();
        for (name, t) in &pass.fields {
            fields.push(Field::new(name, t.clone(), true));
        }
        for s in scores {
            fields.push(Field::new(s, DataType::Float32, false));
        }
        for (i, f) in fields.iter().enumerate() {
            if fields[..i].iter().any(|g| g.name() == f.name()) {
                let why = if i >= pass.fields.len() {
                    "a kept column has the name of a score column".to_string()
                } else {
                    "named twice".to_string()
                };
                return Err(DataError::DuplicateColumn { file: path.to_path_buf(), column: f.name().clone(), why });
            }
        }
        let schema = Arc::new(Schema::new(fields));
        let tmp = tmp_name(path);
        let file = std::fs::File::create(&tmp).map_err(|source| DataError::Io { file: tmp.clone(), source })?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        // From here on `Drop` removes the temporary file.
        let mut w = PredictionWriter { path: path.to_path_buf(), tmp, schema: schema.clone(), writer: None, rows: 0 };
        w.writer = Some(ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| w.parquet_error(e))?);
        Ok(w)
    }

    fn parquet_error(&self, e: parquet::errors::ParquetError) -> DataError {
        DataError::Parquet { file: self.tmp.clone(), row_group: None, message: e.to_string() }
    }

    /// Appends `batch`'s rows: its pass-through columns and `scores[k][row]` (one vector
    /// of `batch.rows` values per score column).
    pub fn write(&mut self, batch: &Batch, scores: &[Vec<f32>]) -> Result<()> {
        let n_pass = self.schema.fields().len() - scores.len();
        if batch.passthrough.len() != n_pass || scores.iter().any(|s| s.len() != batch.rows) {
            return Err(DataError::Other(format!(
                "{}: a batch of {} rows with {} pass-through columns and scores of lengths {:?} does not fit the \
                 file's {} pass-through columns",
                self.path.display(),
                batch.rows,
                batch.passthrough.len(),
                scores.iter().map(Vec::len).collect::<Vec<_>>(),
                n_pass
            )));
        }
        let mut cols: Vec<ArrayRef> = batch.passthrough.clone();
        cols.extend(scores.iter().map(|s| Arc::new(Float32Array::from(s.clone())) as ArrayRef));
        let rb = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| DataError::Other(format!("{}: {e}", self.path.display())))?;
        let w = self.writer.as_mut().expect("open until finish");
        w.write(&rb).map_err(|e| DataError::Parquet {
            file: self.tmp.clone(),
            row_group: None,
            message: e.to_string(),
        })?;
        self.rows += batch.rows as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer, syncs and renames the file into place; returns the rows written.
    pub fn finish(mut self) -> Result<u64> {
        let w = self.writer.take().expect("open until finish");
        let file = w.into_inner().map_err(|e| self.parquet_error(e))?;
        file.sync_all().map_err(|source| DataError::Io { file: self.tmp.clone(), source })?;
        std::fs::rename(&self.tmp, &self.path).map_err(|source| DataError::Io { file: self.path.clone(), source })?;
        self.tmp = PathBuf::new();
        Ok(self.rows)
    }
}

impl Drop for PredictionWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{Float32Type, Int64Type};

    fn pass() -> Passthrough {
        Passthrough { fields: vec![("request_id".into(), DataType::Int64)] }
    }

    fn batch(ids: &[i64]) -> Batch {
        Batch { rows: ids.len(), passthrough: vec![Arc::new(Int64Array::from(ids.to_vec()))], ..Default::default() }
    }

    fn read(path: &Path) -> Vec<RecordBatch> {
        let f = std::fs::File::open(path).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn writes_then_renames_and_an_unfinished_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("preds.parquet");
        let names = ["pred_click".to_string()];
        let mut w = PredictionWriter::create(&out, &pass(), &names, false).unwrap();
        let tmp = tmp_name(&out);
        assert!(tmp.is_file() && !out.exists(), "written under the temporary name");
        w.write(&batch(&[7, 8]), &[vec![0.25, 0.5]]).unwrap();
        w.write(&batch(&[9]), &[vec![0.75]]).unwrap();
        assert_eq!(w.finish().unwrap(), 3);
        assert!(!tmp.exists() && out.is_file());
        let rbs = read(&out);
        let ids: Vec<i64> =
            rbs.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
        let p: Vec<f32> =
            rbs.iter().flat_map(|b| b.column(1).as_primitive::<Float32Type>().values().to_vec()).collect();
        assert_eq!((ids, p), (vec![7, 8, 9], vec![0.25, 0.5, 0.75]));
        assert_eq!(rbs[0].schema().field(1).name(), "pred_click");

        // Exists: refused unless overwrite; an abandoned overwrite keeps the old file.
        let e = PredictionWriter::create(&out, &pass(), &names, false).err().unwrap();
        assert!(matches!(e, DataError::OutputExists { .. }), "{e}");
        let mut w = PredictionWriter::create(&out, &pass(), &names, true).unwrap();
        w.write(&batch(&[1]), &[vec![0.1]]).unwrap();
        assert!(tmp.is_file());
        drop(w);
        assert!(!tmp.exists(), "the temporary file is removed");
        assert_eq!(read(&out).iter().map(|b| b.num_rows()).sum::<usize>(), 3, "the old file is untouched");

        // A missing directory and a duplicate name are refused before anything is created.
        let e = PredictionWriter::create(&d.path().join("nope/p.parquet"), &pass(), &names, false).err().unwrap();
        assert!(e.to_string().contains("nope") && e.to_string().contains("does not exist"), "{e}");
        let e = PredictionWriter::create(&d.path().join("q.parquet"), &pass(), &["request_id".into()], false)
            .err()
            .unwrap();
        assert!(matches!(e, DataError::DuplicateColumn { .. }), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "only preds.parquet");
        // A batch that does not fit the file's columns is an error, not a panic.
        let mut w = PredictionWriter::create(&d.path().join("r.parquet"), &pass(), &names, false).unwrap();
        assert!(w.write(&batch(&[1, 2]), &[vec![0.1]]).is_err());
        assert!(batch(&[1]).passthrough[0].len() == 1);
    }
}
