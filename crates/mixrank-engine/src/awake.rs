//! Keeping rayon's workers awake through a stretch of many small parallel ops.
//!
//! Between two parallel ops a rayon worker yields a few dozen times, then sleeps on a
//! futex; the next op wakes it with a system call, and on a VM an idle vCPU is woken
//! by an interrupt. A training step of a small model is hundreds of ops of tens of
//! microseconds, so its workers fall asleep and are woken between most of them
//! (the small MMoE's profile: ~10% of its samples in the scheduler). OpenMP runtimes
//! spin for a while instead (`KMP_BLOCKTIME`, `GOMP_SPINCOUNT`); [`KeepAwake`] does the
//! same for rayon: while it lives, every worker but the caller's runs a job that keeps
//! asking the pool for work ([`rayon::yield_now`]) and runs what it finds, so a split
//! op's chunks are picked up without a wake-up. It gives its CPU to other threads
//! (the input pipeline) with `sched_yield` while the pool has nothing to do.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Idle polls between two `sched_yield`s of a spinning worker.
const POLLS_PER_OS_YIELD: u32 = 16;

thread_local! {
    /// Whether this thread already runs a spinner (a second one would bury the first).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// While alive, the current rayon pool's other workers poll for work instead of
/// sleeping. Create it on a worker of the pool (inside `install`); created elsewhere it
/// does nothing. Dropping it stops the spinners and waits for them to leave.
#[must_use = "the workers stay awake only while the guard lives"]
pub struct KeepAwake {
    state: Option<Arc<Spin>>,
}

struct Spin {
    stop: AtomicBool,
    /// Spinner jobs not yet finished (every worker's, the caller's included).
    pending: AtomicUsize,
}

impl KeepAwake {
    /// A guard that keeps nothing awake (a backend without host workers).
    pub fn none() -> KeepAwake {
        KeepAwake { state: None }
    }

    /// Starts a spinner on every worker of the current pool except the caller's.
    pub fn start() -> KeepAwake {
        let (Some(owner), threads) = (rayon::current_thread_index(), rayon::current_num_threads()) else {
            return KeepAwake { state: None };
        };
        if threads < 2 || spinning_here() {
            return KeepAwake { state: None };
        }
        let spin = Arc::new(Spin { stop: AtomicBool::new(false), pending: AtomicUsize::new(threads) });
        let shared = Arc::clone(&spin);
        // One job per worker; the caller's returns at once (spinning there would bury
        // the caller's own stack under a loop that only the caller can stop).
        rayon::spawn_broadcast(move |ctx| {
            if ctx.index() != owner && !spinning_here() {
                SPINNING.with(|s| s.set(true));
                poll(&shared.stop);
                SPINNING.with(|s| s.set(false));
            }
            shared.pending.fetch_sub(1, Ordering::Release);
        });
        KeepAwake { state: Some(spin) }
    }
}

/// Whether the calling thread is a worker kept polling by a [`KeepAwake`] (a job it
/// runs sees it): a diagnostic for tests.
pub fn spinning_here() -> bool {
    SPINNING.with(Cell::get)
}

/// Runs the pool's pending jobs until `stop`.
fn poll(stop: &AtomicBool) {
    let mut idle = 0u32;
    while !stop.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = 0,
            Some(rayon::Yield::Idle) => {
                idle += 1;
                if idle.is_multiple_of(POLLS_PER_OS_YIELD) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            None => return,
        }
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        let Some(spin) = self.state.take() else { return };
        spin.stop.store(true, Ordering::Release);
        // The caller's own job may still sit in its queue: run pool work until every
        // spinner has left, so none outlives the guard.
        while spin.pending.load(Ordering::Acquire) > 0 {
            if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                std::thread::yield_now();
            }
        }
    }
}
