//! Teacher scores for a training batch, as logits (values for regression tasks):
//! either the batch's own teacher columns, or a frozen mixrank checkpoint scoring the
//! same rows beside the student.
//!
//! A checkpoint teacher may have any architecture and its own feature config: it reads
//! the student's files through its own [`Encoder`], in a second [`BatchStream`] started
//! with the student's data options (same files, chunking, seed, epoch, shuffle window
//! and batch size), which yields the same rows in the same order. Each teacher batch is
//! checked against the student's — row count, request ids (when both configs read the
//! same request column) and labels of tasks both read from the same column — and a
//! mismatch fails the run.

use crate::error::{engine, Result, TrainError};
use mixrank_data::config::distill::{DistillTask, TeacherPrecision};
use mixrank_data::config::{ExperimentConfig, Split};
use mixrank_data::pipeline::{BatchStream, StreamOptions};
use mixrank_data::{Batch, DenseMode, Encoder};
use mixrank_engine::Backend;
use mixrank_model::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A verified checkpoint run in inference mode beside the student.
pub struct CheckpointTeacher<B: Backend> {
    dir: PathBuf,
    model: Box<dyn Model<B>>,
    enc: Arc<Encoder>,
    /// `(student task, teacher task)` for each distilled task.
    tasks: Vec<(usize, usize)>,
    /// `(student task, teacher task)` pairs whose labels must agree row by row.
    label_checks: Vec<(usize, usize)>,
    check_requests: bool,
    stream: Option<BatchStream>,
    /// Epoch of the running stream.
    epoch: Option<u64>,
    batches: u64,
    host: Vec<f32>,
}

/// The checkpoint directory of a run directory (or the directory itself when it holds
/// a manifest).
pub fn checkpoint_dir(path: &Path) -> PathBuf {
    if path.join("manifest.json").is_file() {
        path.to_path_buf()
    } else {
        path.join("checkpoint")
    }
}

impl<B: Backend + 'static> CheckpointTeacher<B> {
    /// Loads and verifies the checkpoint at `path` (a run or checkpoint directory),
    /// switches it to bf16 inference when asked, and maps the distilled tasks onto the
    /// teacher's tasks by name.
    pub fn open(
        path: &Path,
        student: &ExperimentConfig,
        tasks: &[DistillTask],
        precision: TeacherPrecision,
        ops: &B,
    ) -> Result<Self> {
        let dir = checkpoint_dir(path);
        let bs = student.data.batch_size;
        let mut loaded = crate::checkpoint::load(&dir, ops, bs).map_err(|e| {
            TrainError::Other(format!(
                "loading the distillation teacher (distill.checkpoint = {}): {e}",
                path.display()
            ))
        })?;
        // A frozen teacher scores as it would serve: dropout off, training-only logit
        // sources (the position tower) off.
        loaded.model.set_training(false);
        if precision == TeacherPrecision::Bf16 {
            loaded.model.use_bf16(ops)?;
        }
        let mut tcfg = (*loaded.config).clone();
        // The teacher reads the student's files exactly as the student does.
        tcfg.data = student.data.clone();
        let tcfg = Arc::new(tcfg);
        let stats = Arc::new(loaded.manifest.dense_stats.clone());
        let enc = Arc::new(Encoder::new(tcfg.clone(), DenseMode::Fitted(stats))?);
        let mut map = Vec::new();
        for t in tasks {
            let st = &student.tasks[t.task];
            let Some(ti) = tcfg.tasks.iter().position(|x| x.name == t.teacher_task) else {
                let have: Vec<&str> = tcfg.tasks.iter().map(|x| x.name.as_str()).collect();
                return Err(TrainError::Other(format!(
                    "distillation teacher {}: no task `{}` to distill `{}` from (teacher tasks: {})",
                    dir.display(),
                    t.teacher_task,
                    st.name,
                    have.join(", ")
                )));
            };
            if tcfg.tasks[ti].kind != st.kind {
                return Err(TrainError::Other(format!(
                    "distillation teacher {}: task `{}` is {:?} but the student's `{}` is {:?}",
                    dir.display(),
                    t.teacher_task,
                    tcfg.tasks[ti].kind,
                    st.name,
                    st.kind
                )));
            }
            map.push((t.task, ti));
        }
        let label_checks = student
            .tasks
            .iter()
            .enumerate()
            .filter_map(|(si, s)| {
                tcfg.tasks
                    .iter()
                    .position(|t| t.label == s.label && t.transform == s.transform && t.mask == s.mask)
                    .map(|ti| (si, ti))
            })
            .collect();
        let check_requests =
            student.columns.request_id.is_some() && student.columns.request_id == tcfg.columns.request_id;
        Ok(CheckpointTeacher {
            dir,
            model: loaded.model,
            enc,
            tasks: map,
            label_checks,
            check_requests,
            stream: None,
            epoch: None,
            batches: 0,
            host: vec![0.0; bs],
        })
    }

    /// Scores the teacher's next batch — the same rows as the student's `b` — and writes
    /// the distilled tasks' logits into `out[student task][..rows]`. Starts the
    /// teacher's stream over `split` when `opts.epoch` begins.
    ///
    /// `part`: data-parallel training with replicated reading, where the stream yields
    /// the global batch and `b` is this rank's shard of it
    /// ([`crate::data_parallel::shard`]): the teacher scores the same shard (possibly
    /// no rows; every rank still reads every batch, to stay in step).
    pub fn score(
        &mut self,
        ops: &B,
        b: &Batch,
        split: &Split,
        opts: &StreamOptions,
        part: Option<&dyn mixrank_dist::Collective>,
        out: &mut [Vec<f32>],
    ) -> Result<()> {
        for &(s, _) in &self.tasks {
            out[s].clear();
        }
        if self.epoch != Some(opts.epoch) {
            // The previous epoch's stream must have ended with the student's.
            if let Some(mut old) = self.stream.take() {
                if old.next().is_some() {
                    return Err(
                        self.misaligned(self.batches, "the teacher has rows after the student's epoch ended".into())
                    );
                }
            }
            self.stream = Some(BatchStream::start(self.enc.clone(), split, opts.clone())?);
            self.epoch = Some(opts.epoch);
            self.batches = 0;
        }
        let stream = self.stream.as_mut().expect("started above");
        let at = self.batches;
        self.batches += 1;
        let tb = match stream.next() {
            Some(tb) => tb?,
            // Sharded reading: this rank's shard ran out before the others' and it steps
            // with no rows until the epoch ends; its teacher's shard ran out too.
            None if b.rows == 0 && part.is_none() => return Ok(()),
            None => return Err(self.misaligned(at, "the teacher's stream ended before the student's".into())),
        };
        let tb = match part {
            Some(c) => crate::data_parallel::shard(&tb, c),
            None => tb,
        };
        if tb.rows != b.rows {
            return Err(self.misaligned(at, format!("{} teacher rows against {} student rows", tb.rows, b.rows)));
        }
        if self.check_requests && tb.request_id != b.request_id {
            return Err(self.misaligned(at, "request ids differ".into()));
        }
        for &(s, t) in &self.label_checks {
            let differs = (0..b.rows).any(|r| b.mask(s)[r] != tb.mask(t)[r] || b.label(s)[r] != tb.label(t)[r]);
            if differs {
                return Err(self.misaligned(at, format!("labels of task `{}` differ", self.enc.config().tasks[t].name)));
            }
        }
        if tb.rows == 0 {
            return Ok(());
        }
        self.model.forward(ops, &tb)?;
        for &(s, t) in &self.tasks {
            ops.read(self.model.logits(t), &mut self.host[..b.rows]).map_err(engine("reading teacher logits"))?;
            out[s].extend_from_slice(&self.host[..b.rows]);
        }
        Ok(())
    }

    fn misaligned(&self, batch: u64, what: String) -> TrainError {
        TrainError::Other(format!(
            "distillation teacher {}: batch {batch} does not hold the student's rows ({what}); \
             the teacher must read the same rows (do both configs skip the same bad rows?)",
            self.dir.display()
        ))
    }
}
