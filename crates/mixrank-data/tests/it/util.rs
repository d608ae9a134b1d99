//! Shared test helpers: temp dirs, tiny Parquet/CSV writers, config builders.

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use mixrank_data::encode::{DenseMode, Encoder};
use mixrank_data::pipeline::{read_all, StreamOptions};
use mixrank_data::{Batch, DataError, ExperimentConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>, row_group_rows: usize) {
    let rb = RecordBatch::try_from_iter(cols.into_iter().map(|(n, a)| (n.to_string(), a))).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, rb.schema(), Some(props)).unwrap();
    w.write(&rb).unwrap();
    w.close().unwrap();
}

/// Writes `config.toml` into `dir` and loads it.
pub fn load_config(dir: &Path, text: &str) -> Result<ExperimentConfig, DataError> {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    ExperimentConfig::load(&p)
}

/// Reads a whole split with fitted-free (raw) dense mode unless the config needs stats.
pub fn read_split(cfg: ExperimentConfig, split: &str) -> Result<(Vec<Batch>, u64), DataError> {
    let cfg = Arc::new(cfg);
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw)?);
    let mut opts = StreamOptions::from_config(&cfg, false);
    opts.batch_size = 1 << 20;
    read_all(enc, cfg.split(split)?, opts)
}

/// Concatenates batches.
pub fn concat(batches: &[Batch]) -> Batch {
    let mut it = batches.iter();
    let mut out = it.next().cloned().expect("at least one batch");
    for b in it {
        out.append(b);
    }
    out
}

/// The shared data directory beside the repository.
pub fn shared_data() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(p.is_dir(), "../shared/data not found at {}", p.display());
    p
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A minimal parquet config over `data.parquet` with the given feature/task blocks.
pub fn parquet_config(body: &str) -> String {
    format!("[data]\nformat = \"parquet\"\n[data.splits.train]\npaths = [\"data.parquet\"]\n\n{body}")
}

pub fn err_text<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}
