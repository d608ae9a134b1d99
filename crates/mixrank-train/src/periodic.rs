//! Periodic checkpoints for crash safety and finding the newest good one to resume.
//!
//! Layout under the run directory:
//! - `checkpoints/step-<N>/`: a full checkpoint ([`crate::checkpoint`]) after step N,
//!   every `[train].checkpoint_every_steps` steps and/or `checkpoint_every_minutes`
//!   minutes; the newest `keep_checkpoints` are kept, older ones deleted;
//! - `checkpoints/LATEST`: the name of the newest one (`step-<N>`), written atomically
//!   after its directory is complete (informational: resume scans the directories);
//! - `checkpoint/`: the final model (what eval, compare and serve load).

use crate::checkpoint::{read_verified, save, CheckpointInfo, Verified};
use crate::error::{write_atomic, Result, TrainError};
use crate::optimizers::Optimizers;
use mixrank_data::config::model::TrainSection;
use mixrank_engine::Backend;
use mixrank_model::Model;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CHECKPOINTS: &str = "checkpoints";
pub const LATEST: &str = "LATEST";
/// The final checkpoint's directory name under the run directory.
pub const FINAL: &str = "checkpoint";

/// Decides when to write periodic checkpoints and writes them.
pub struct Periodic {
    run_dir: PathBuf,
    every_steps: u64,
    every: Option<Duration>,
    keep: usize,
    last: Instant,
}

impl Periodic {
    /// Also deletes what a killed save left behind: hidden `.<name>.tmp-<pid>` and
    /// `.<name>.old-<pid>` directories under `checkpoints/` and of the final checkpoint
    /// (one trainer per run directory is assumed).
    pub fn new(run_dir: &Path, t: &TrainSection) -> Periodic {
        for dir in [run_dir.to_path_buf(), run_dir.join(CHECKPOINTS)] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let leftover = name.starts_with('.') && (name.contains(".tmp-") || name.contains(".old-"));
                let ours = dir != run_dir || name.starts_with(&format!(".{FINAL}."));
                if leftover && ours && e.path().is_dir() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Periodic {
            run_dir: run_dir.to_path_buf(),
            every_steps: t.checkpoint_every_steps,
            every: (t.checkpoint_every_minutes > 0.0)
                .then(|| Duration::from_secs_f64(t.checkpoint_every_minutes * 60.0)),
            keep: t.keep_checkpoints.max(1),
            last: Instant::now(),
        }
    }

    /// Whether a checkpoint is due after `step` (1-based count of updates done).
    pub fn due(&self, step: u64) -> bool {
        self.due_by_steps(step) || self.due_by_clock()
    }

    /// `checkpoint_every_steps`' part of [`Periodic::due`]: the same on every rank.
    pub fn due_by_steps(&self, step: u64) -> bool {
        self.every_steps > 0 && step.is_multiple_of(self.every_steps)
    }

    /// `checkpoint_every_minutes`' part of [`Periodic::due`]: this process's clock, so
    /// with several ranks rank 0's answer is every rank's (the trainer sends it along
    /// with the step's losses).
    pub fn due_by_clock(&self) -> bool {
        self.every.is_some_and(|d| self.last.elapsed() >= d)
    }

    /// Writes `checkpoints/step-<step>/`, deletes the oldest beyond `keep` and points
    /// `LATEST` at the new one. Returns the new directory. (A kill between the write
    /// and the pruning leaves one extra directory, deleted by the next save.)
    pub fn save<B: Backend>(
        &mut self,
        ops: &B,
        model: &mut dyn Model<B>,
        optim: &Optimizers<B>,
        info: &CheckpointInfo<'_>,
    ) -> Result<PathBuf> {
        let dir = self.dir(info.step);
        save(&dir, ops, model, optim, info)?;
        self.saved(info.step)?;
        Ok(dir)
    }

    /// The directory of step `step`'s periodic checkpoint.
    pub fn dir(&self, step: u64) -> PathBuf {
        self.run_dir.join(CHECKPOINTS).join(format!("step-{step}"))
    }

    /// After step `step`'s checkpoint is in [`Periodic::dir`] (written by [`Periodic::save`]
    /// or, with sharded tables, by every rank through `checkpoint::save_sharded`): deletes
    /// the oldest beyond `keep_checkpoints` and points `LATEST` at it.
    pub fn saved(&mut self, step: u64) -> Result<()> {
        for (_, old) in list(&self.run_dir).into_iter().skip(self.keep) {
            std::fs::remove_dir_all(&old).map_err(|source| TrainError::Io { path: old.clone(), source })?;
        }
        write_atomic(&self.run_dir.join(CHECKPOINTS).join(LATEST), format!("step-{step}\n").as_bytes())?;
        self.last = Instant::now();
        Ok(())
    }
}

/// The periodic checkpoint directories of a run, newest (highest step) first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir.join(CHECKPOINTS))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out
}

/// The checkpoint to resume from and the newer ones that were refused.
pub struct Found {
    pub checkpoint: Verified,
    /// `(directory, reason)` of every newer checkpoint that failed verification.
    pub refused: Vec<(PathBuf, String)>,
}

/// The newest checkpoint of `run_dir` that verifies, among the periodic ones and the
/// final one (by step; the final one wins a tie). Fails when none does, listing why.
pub fn newest_good(run_dir: &Path) -> Result<Found> {
    let mut refused = Vec::new();
    let fin = run_dir.join(FINAL);
    let mut best = None;
    if fin.is_dir() {
        match read_verified(&fin) {
            Ok(v) => best = Some(v),
            Err(e) => refused.push((fin, e.to_string())),
        }
    }
    let floor = best.as_ref().map(|b: &Verified| b.manifest.step);
    for (step, dir) in list(run_dir) {
        if floor.is_some_and(|f| step <= f) {
            break;
        }
        match read_verified(&dir) {
            Ok(v) => {
                best = Some(v);
                break;
            }
            Err(e) => refused.push((dir, e.to_string())),
        }
    }
    match best {
        Some(checkpoint) => Ok(Found { checkpoint, refused }),
        None if refused.is_empty() => Err(TrainError::Resume(format!(
            "no checkpoint in {} (nor {})",
            run_dir.join(CHECKPOINTS).display(),
            run_dir.join(FINAL).display()
        ))),
        None => Err(TrainError::Resume(format!(
            "no checkpoint verifies: {}",
            refused.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>().join("; ")
        ))),
    }
}
