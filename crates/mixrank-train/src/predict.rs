//! Offline batch scoring (`mixrank predict`): every row of a split, or of files, scored
//! by a checkpoint and streamed to a Parquet file with the row's request id and any
//! kept source columns, then one `f32` column per task.
//!
//! Rows are read, batched and scored exactly as [`crate::evaluate`] does (the
//! [`CheckpointScorer`]'s config and dense statistics, its 4096-row batches in file
//! order, [`crate::read_predictions`]), so a row's score is bit for bit `mixrank eval`'s
//! at the same precision. Columns carried to the output are read beside the features
//! ([`mixrank_data::Encoder::with_passthrough`]) and checked in every file's footer or
//! header before anything is written; the file is written under a temporary name and
//! renamed at the end ([`PredictionWriter`]), so an error leaves no output.

use crate::error::{Result, TrainError};
use crate::evaluate::{read_predictions, CheckpointScorer};
use mixrank_data::config::Split;
use mixrank_data::output::PredictionWriter;
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::reader::Passthrough;
use mixrank_data::{DenseMode, Encoder};
use mixrank_engine::Backend;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of task `task`'s score column.
pub fn score_column(task: &str) -> String {
    format!("pred_{task}")
}

/// What to write besides the scores.
#[derive(Debug, Clone, Default)]
pub struct PredictOptions {
    /// Source columns carried to the output unchanged (after the request id column).
    pub keep: Vec<String>,
    /// Replace an existing output file.
    pub overwrite: bool,
}

/// What a prediction run wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictSummary {
    pub out: PathBuf,
    pub rows: u64,
    pub files: usize,
    /// Output columns, in order.
    pub columns: Vec<String>,
    /// Rows skipped as bad (under `max_bad_rows`).
    pub bad_rows: u64,
}

impl<B: Backend + 'static> CheckpointScorer<B> {
    /// Opens `run_dir`'s checkpoint, saying plainly when the directory is not there.
    pub fn open_run(run_dir: &Path, ops: &B) -> Result<Self> {
        if !run_dir.is_dir() {
            return Err(TrainError::NoRunDir { path: run_dir.to_path_buf() });
        }
        Self::open(run_dir, ops, None)
    }

    /// Scores every row of `split` and writes `out` (see the module docs): the config's
    /// `[columns] request_id` column when it has one, the `keep` columns, then
    /// `pred_<task>` for every task (probabilities for binary tasks — through the
    /// checkpoint's calibration layer when it has one —, the label-transform space for
    /// regression tasks).
    pub fn predict(&mut self, ops: &B, split: &Split, out: &Path, opts: &PredictOptions) -> Result<PredictSummary> {
        PredictionWriter::check_target(out, opts.overwrite)?;
        let cfg = self.config.clone();
        let mut carried: Vec<String> = cfg.columns.request_id.iter().cloned().collect();
        for k in &opts.keep {
            if !carried.contains(k) {
                carried.push(k.clone());
            }
        }
        let pass = Passthrough::plan(&cfg, split, &carried)?;
        let scores: Vec<String> = cfg.tasks.iter().map(|t| score_column(&t.name)).collect();
        let stats = Arc::new(self.loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Fitted(stats))?.with_passthrough(&pass.names()));
        // Started (every file's footer read) before the output is created.
        let mut stream = BatchStream::start(enc, split, StreamOptions::from_config(&cfg, false))?;
        let files = mixrank_data::reader::split_files(split)?.len();
        let mut w = PredictionWriter::create(out, &pass, &scores, opts.overwrite)?;
        let model = &mut *self.loaded.model;
        model.set_training(false);
        let mut host = vec![0f32; cfg.data.batch_size];
        let mut preds: Vec<Vec<f32>> = vec![Vec::with_capacity(cfg.data.batch_size); cfg.tasks.len()];
        for b in stream.by_ref() {
            let b = b?;
            let _awake = ops.keep_awake();
            model.forward(ops, &b)?;
            preds.iter_mut().for_each(Vec::clear);
            read_predictions(model, ops, &cfg.tasks, b.rows, &mut host, &mut preds)?;
            if let Some(cal) = &self.loaded.calibration {
                cal.apply_all(&b.segment, &mut preds);
            }
            w.write(&b, &preds)?;
        }
        let bad_rows = stream.bad_rows().count();
        let rows = w.finish()?;
        Ok(PredictSummary { out: out.to_path_buf(), rows, files, columns: [pass.names(), scores].concat(), bad_rows })
    }
}
