//! `RUN_DIR/train_log.jsonl`: one JSON object per line — `train` every `log_every`
//! steps, `validation` after each validation, `epoch` at the end of each epoch (its
//! training-only time), `early_stopping`, `stop` (which bound ended the run) and the
//! notices of how the run started. Appended on `--resume`.

use crate::error::{Result, TrainError};
use mixrank_metrics::TaskReport;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

/// The line logged every `log_every` steps.
#[derive(Serialize)]
pub(crate) struct TrainLine<'a> {
    pub event: &'static str,
    pub step: u64,
    pub epoch: usize,
    pub examples: u64,
    /// Wall time of this process's run so far (validation and checkpoints included).
    pub elapsed_s: f64,
    /// Time spent training (batches, steps, input pipeline): `elapsed_s` less
    /// validation and checkpoint writing.
    pub train_s: f64,
    /// This process's examples per second of training time (`train_s`).
    pub examples_per_s: f64,
    pub lr: f32,
    /// The embedding optimizer's learning rate (absent for a model without tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse_lr: Option<f32>,
    pub loss: f64,
    pub task_loss: Vec<(&'a str, f64)>,
    /// Mean distillation loss per distilled task (absent without `[distill]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distill_loss: Vec<(&'a str, f64)>,
    /// Mean of each loss the model adds itself (the two-tower in-batch softmax:
    /// `in_batch_softmax:<task>`), unweighted; absent when it has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aux_loss: Vec<(&'a str, f64)>,
}

#[derive(Serialize)]
pub(crate) struct ValidationLine<'a> {
    pub event: &'static str,
    pub step: u64,
    pub epoch: usize,
    pub reports: &'a [TaskReport],
}

/// Appends JSON lines to the train log.
pub(crate) struct Log {
    path: PathBuf,
    /// `None`: a sink (a data-parallel rank other than 0 writes no log).
    file: Option<std::fs::File>,
}

impl Log {
    /// A new log, or the existing one continued (a resumed run); a line cut short by a
    /// kill is terminated first.
    pub fn open(path: PathBuf, append: bool) -> Result<Log> {
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .map_err(io)?;
        if append {
            let text = std::fs::read(&path).map_err(io)?;
            if text.last().is_some_and(|&b| b != b'\n') {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        Ok(Log { path, file: Some(file) })
    }

    /// A log that writes nothing (data-parallel ranks other than 0).
    pub fn sink() -> Log {
        Log { path: PathBuf::new(), file: None }
    }

    pub fn line(&mut self, v: &impl Serialize) -> Result<()> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let text = serde_json::to_string(v).map_err(|e| TrainError::Other(e.to_string()))?;
        writeln!(file, "{text}").map_err(|source| TrainError::Io { path: self.path.clone(), source })
    }
}
