//! Row trace, a debugging aid (`mixrank train --trace-rows FILE`): one JSON line per
//! training step naming the rows it trained on, used to prove that a killed and
//! resumed run sees every row exactly once per epoch.
//!
//! Line: `{"step": 12, "epoch": 0, "rows": [[request, position], …]}` with `step` the
//! 1-based number of the update, `request` the batch's request id (the hashed request
//! column, or the row's global index when none is configured) and `position` the row's
//! position (0 without a position column). A run resumed with `--resume` appends, so
//! the file then holds the killed run's lines past its last checkpoint too; keep the
//! lines up to the resumed step and everything the resumed run wrote after it.
//! Each line is written with one `write` call, so a kill leaves at most one partial
//! line at the end, which the next run terminates before appending.

use crate::error::{Result, TrainError};
use mixrank_data::Batch;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct RowTrace {
    path: PathBuf,
    file: std::fs::File,
    line: String,
}

impl RowTrace {
    /// Opens `path`, truncating it for a new run or appending for a resumed one.
    pub fn open(path: &Path, append: bool) -> Result<RowTrace> {
        let io = |source| TrainError::Io { path: path.to_path_buf(), source };
        let mut file =
            std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(!append).open(path).map_err(io)?;
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::End(-1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        Ok(RowTrace { path: path.to_path_buf(), file, line: String::new() })
    }

    /// Records the rows of the batch that update `step` trained on.
    pub fn record(&mut self, step: u64, epoch: u64, b: &Batch) -> Result<()> {
        let rows: Vec<(u64, u64)> = (0..b.rows).map(|r| (b.request_id[r], u64::from(b.position[r]))).collect();
        self.record_rows(step, epoch, &rows)
    }

    /// Records the rows `(request, position)` that update `step` trained on.
    pub fn record_rows(&mut self, step: u64, epoch: u64, rows: &[(u64, u64)]) -> Result<()> {
        use std::fmt::Write as _;
        self.line.clear();
        let _ = write!(self.line, "{{\"step\":{step},\"epoch\":{epoch},\"rows\":[");
        for (r, (request, position)) in rows.iter().enumerate() {
            let sep = if r == 0 { "" } else { "," };
            let _ = write!(self.line, "{sep}[{request},{position}]");
        }
        self.line.push_str("]}\n");
        self.file.write_all(self.line.as_bytes()).map_err(|source| TrainError::Io { path: self.path.clone(), source })
    }
}

/// Data-parallel sharded reading: the `(request, position)` rows of every rank's part of
/// the global batch, in rank order (a collective: every rank calls it).
pub fn gather_rows(c: &dyn mixrank_dist::Collective, b: &Batch) -> Result<Vec<(u64, u64)>> {
    let mine: Vec<u64> = (0..b.rows).flat_map(|r| [b.request_id[r], u64::from(b.position[r])]).collect();
    let all = mixrank_dist::all_gather_u64(c, &mine)?;
    Ok(all.iter().flat_map(|v| v.chunks_exact(2).map(|p| (p[0], p[1]))).collect())
}
