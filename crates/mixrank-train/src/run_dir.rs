//! Claiming a run directory: one writer at a time, and no silent overwrite.
//!
//! `train --out RUN` refuses a directory that already holds a run unless the caller
//! resumes it (`--resume`) or replaces it (`--overwrite`), and holds `RUN/.mixrank.lock`
//! (created exclusively, holding the writer's pid) for as long as it writes. A second
//! writer fails at once naming the holder's pid; a lock left by a process that no longer
//! runs (killed) is detected and taken over, and the take-over is reported.

use crate::error::{Result, TrainError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK: &str = ".mixrank.lock";

/// Files and directories whose presence makes a directory hold a run (`checkpoints/`
/// only with a finished `step-<N>` in it: a save killed half-way leaves a temporary
/// directory, which the next run cleans up).
const RUN_MARKERS: [&str; 4] = ["train_log.jsonl", "metrics.json", "checkpoint", "best"];

/// How to treat a run directory that already holds a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Refuse it (a fresh run).
    Fresh,
    /// Continue it (`--resume`).
    Resume,
    /// Delete the previous run's files first (`--overwrite`).
    Overwrite,
}

/// The held lock of a run directory; released (the lock file removed) on drop.
#[derive(Debug)]
pub struct RunDirLock {
    path: PathBuf,
    /// A stale lock that was taken over: the pid it named.
    pub took_over_from: Option<u32>,
}

impl Drop for RunDirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What in `dir` makes it hold a run (a train log, metrics or checkpoints); empty when
/// it holds none.
pub fn run_files(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = RUN_MARKERS.iter().filter(|m| dir.join(m).exists()).map(|m| m.to_string()).collect();
    if !crate::periodic::list(dir).is_empty() {
        found.push(crate::periodic::CHECKPOINTS.to_string());
    }
    found
}

/// Creates `dir` if needed, takes its lock and applies `claim`.
pub fn claim(dir: &Path, claim: Claim) -> Result<RunDirLock> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock = acquire(dir)?;
    let found = run_files(dir);
    if !found.is_empty() {
        match claim {
            Claim::Resume => {}
            Claim::Fresh => {
                return Err(TrainError::RunDir(format!(
                    "{} already holds a run ({}); pass --resume to continue it or --overwrite to replace it",
                    dir.display(),
                    found.join(", ")
                )))
            }
            Claim::Overwrite => {
                for entry in std::fs::read_dir(dir).map_err(io(dir))? {
                    let p = entry.map_err(io(dir))?.path();
                    if p.file_name().is_some_and(|n| n == LOCK) {
                        continue;
                    }
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).map_err(io(&p))?;
                    } else {
                        std::fs::remove_file(&p).map_err(io(&p))?;
                    }
                }
            }
        }
    }
    Ok(lock)
}

fn acquire(dir: &Path) -> Result<RunDirLock> {
    let path = dir.join(LOCK);
    let mut took_over_from = None;
    // Two tries: the second after removing a stale lock.
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{}", std::process::id())
                    .map_err(|source| TrainError::Io { path: path.clone(), source })?;
                return Ok(RunDirLock { path, took_over_from });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match text.trim().parse::<u32>() {
                    Ok(pid) if !alive(pid) => {
                        // The holder is gone (killed): take the lock over.
                        std::fs::remove_file(&path).map_err(|source| TrainError::Io { path: path.clone(), source })?;
                        took_over_from = Some(pid);
                    }
                    Ok(pid) => {
                        return Err(TrainError::RunDir(format!(
                            "{} is being written by another mixrank process (pid {pid}, lock {})",
                            dir.display(),
                            path.display()
                        )))
                    }
                    // Being written right now by a process that just created it, or
                    // garbage: refuse rather than guess.
                    Err(_) => {
                        return Err(TrainError::RunDir(format!(
                            "{} is locked ({} holds no pid: {:?}); remove it if no mixrank process writes this run",
                            dir.display(),
                            path.display(),
                            text.trim()
                        )))
                    }
                }
            }
            Err(source) => return Err(TrainError::Io { path, source }),
        }
    }
    Err(TrainError::RunDir(format!("{} is locked by another process that just took it over", dir.display())))
}

/// Whether a process with this pid runs (Linux: `/proc/<pid>`; elsewhere assumed alive,
/// so a stale lock is refused rather than stolen).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        // A process that ended but was not reaped yet (a zombie: its parent, such as an
        // `mpirun` that stopped a job, exited first, and a container's first process
        // may never reap it) still has its /proc entry; it no longer runs. State is the
        // field after the command's closing parenthesis in /proc/PID/stat.
        match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
            Ok(stat) => {
                !matches!(stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()), Some(r) if r.starts_with(['Z', 'X']))
            }
            Err(_) => false,
        }
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_process_that_ended_unreaped_does_not_hold_a_lock() {
        assert!(alive(std::process::id()));
        // A child that exited and is not waited for yet is a zombie with a /proc entry.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(&stat).unwrap().contains(") Z") {
            assert!(t0.elapsed().as_secs() < 10, "the child did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!alive(child.id()), "a zombie does not run");
        child.wait().unwrap();
        assert!(!alive(child.id()), "nor does a reaped process");
        // A running one does.
        let mut sleeper = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(alive(sleeper.id()));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }

    #[test]
    fn second_writer_fails_naming_the_pid_and_a_stale_lock_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        let held = claim(&run, Claim::Fresh).unwrap();
        assert_eq!(held.took_over_from, None);
        let e = claim(&run, Claim::Fresh).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        assert!(!run.join(LOCK).exists(), "released on drop");
        // A lock naming a pid that does not run (pid_max is at most 2^22 on Linux).
        std::fs::write(run.join(LOCK), "4194305\n").unwrap();
        let l = claim(&run, Claim::Fresh).unwrap();
        assert_eq!(l.took_over_from, Some(4_194_305));
    }

    #[test]
    fn a_run_is_refused_unless_resumed_or_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        // A save killed half-way is not a run.
        std::fs::create_dir_all(run.join("checkpoints/.step-9.tmp-1")).unwrap();
        drop(claim(&run, Claim::Fresh).unwrap());
        std::fs::create_dir_all(run.join("checkpoints/step-9")).unwrap();
        let e = claim(&run, Claim::Fresh).unwrap_err().to_string();
        assert!(e.contains("(checkpoints)"), "{e}");
        std::fs::create_dir_all(run.join("checkpoint")).unwrap();
        std::fs::write(run.join("train_log.jsonl"), "{}\n").unwrap();
        let e = claim(&run, Claim::Fresh).unwrap_err().to_string();
        assert!(e.contains("already holds a run") && e.contains("--overwrite") && e.contains("train_log.jsonl"), "{e}");
        assert!(!run.join(LOCK).exists(), "a refused claim releases the lock");
        drop(claim(&run, Claim::Resume).unwrap());
        assert!(run.join("train_log.jsonl").exists(), "resume keeps the run");
        drop(claim(&run, Claim::Overwrite).unwrap());
        assert!(!run.join("train_log.jsonl").exists() && !run.join("checkpoint").exists(), "overwrite clears it");
        // An empty or unrelated directory is not a run.
        std::fs::write(run.join("notes.txt"), "x").unwrap();
        drop(claim(&run, Claim::Fresh).unwrap());
    }
}
