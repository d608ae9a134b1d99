//! `KeepAwake`: the pool's other workers poll while the guard lives, and only then.

use mixrank_engine::awake::spinning_here;
use mixrank_engine::{Backend, CpuOps, KeepAwake};
use rayon::prelude::*;

/// For each worker of the current pool, whether a job broadcast to it runs inside a
/// spinner.
fn spinning_workers() -> Vec<bool> {
    rayon::broadcast(|_| spinning_here())
}

#[test]
fn the_other_workers_spin_while_the_guard_lives_and_stop_after() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    pool.install(|| {
        let me = rayon::current_thread_index().unwrap();
        assert_eq!(spinning_workers(), vec![false; 3]);
        let guard = CpuOps::new().keep_awake();
        // The broadcast reaches every other worker inside its spinner (which runs the
        // pool's jobs); the caller's own runs outside one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            let s = spinning_workers();
            if s.iter().filter(|&&b| b).count() == 2 || std::time::Instant::now() > deadline {
                break s;
            }
        };
        let want: Vec<bool> = (0..3).map(|i| i != me).collect();
        assert_eq!(seen, want);
        // Parallel work while they spin gives the sequential result.
        let v: Vec<u64> = (0..1_000_000).collect();
        for _ in 0..50 {
            assert_eq!(v.par_iter().sum::<u64>(), 499_999_500_000);
        }
        // A second guard on the same thread, or on a spinning worker, adds none and
        // does not bury the first.
        let nested = KeepAwake::start();
        drop(nested);
        drop(guard);
        assert_eq!(spinning_workers(), vec![false; 3]);
    });
}

#[test]
fn outside_a_pool_or_with_one_thread_it_keeps_nothing() {
    // Not a worker of any pool: nothing to keep awake, and dropping returns.
    let g = KeepAwake::start();
    drop(g);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let g = KeepAwake::start();
        assert_eq!(spinning_workers(), vec![false]);
        drop(g);
    });
}

#[test]
fn many_short_guards_in_a_row_all_end() {
    // The trainer holds one per step: start and drop thousands, with work between.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        let v: Vec<u32> = (0..10_000).collect();
        for i in 0..2_000u32 {
            let _g = KeepAwake::start();
            if i % 2 == 0 {
                assert_eq!(v.par_iter().map(|&x| x as u64).sum::<u64>(), 49_995_000);
            }
        }
        assert_eq!(spinning_workers(), vec![false; 2]);
    });
}
