//! N ranks as threads of one process: the reference implementation of [`Collective`]
//! for tests and `--ranks-in-process`.
//!
//! Every operation is one rendezvous: each rank deposits its contribution (one byte
//! vector per destination), the last to arrive publishes all of them, and each rank
//! computes its result from the same published data (sums in rank order, so every rank
//! gets the same bits). A rank whose handle is dropped (its thread returned or panicked)
//! makes every rank waiting in, or later entering, an operation fail with
//! [`DistError::PeerGone`] instead of hanging.

use crate::collective::Collective;
use crate::error::{DistError, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Contributions of every rank to one operation: `[rank][destination]` byte vectors.
type Published = Arc<Vec<Vec<Vec<u8>>>>;

#[derive(Debug)]
struct State {
    /// Completed operations.
    generation: u64,
    /// The operation under way, named by the first rank to enter it.
    op: Option<&'static str>,
    slots: Vec<Option<Vec<Vec<u8>>>>,
    arrived: usize,
    /// The contributions of the last completed operation.
    published: Published,
    /// Ranks whose handle was dropped.
    left: Vec<bool>,
}

#[derive(Debug)]
struct Group {
    size: usize,
    state: Mutex<State>,
    wake: Condvar,
}

/// One rank of an in-process group (see the module docs). Dropping it leaves the group.
#[derive(Debug)]
pub struct InProcess {
    rank: usize,
    group: Arc<Group>,
}

impl InProcess {
    /// A group of `size` ranks: handle `r` is rank `r`; move each to its own thread.
    pub fn group(size: usize) -> Vec<InProcess> {
        let size = size.max(1);
        let group = Arc::new(Group {
            size,
            state: Mutex::new(State {
                generation: 0,
                op: None,
                slots: vec![None; size],
                arrived: 0,
                published: Arc::new(Vec::new()),
                left: vec![false; size],
            }),
            wake: Condvar::new(),
        });
        (0..size).map(|rank| InProcess { rank, group: group.clone() }).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left the state consistent (every
        // update is a few assignments); go on and let `left` report it.
        self.group.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deposits this rank's contribution and returns everyone's once all have arrived.
    fn exchange(&self, op: &'static str, mine: Vec<Vec<u8>>) -> Result<Published> {
        let mut s = self.lock();
        if let Some(rank) = s.left.iter().position(|&l| l) {
            return Err(DistError::PeerGone { op, rank });
        }
        match s.op {
            Some(other) if other != op => {
                return Err(DistError::Mismatch {
                    op,
                    reason: format!("rank {} called `{op}` while others are in `{other}`", self.rank),
                })
            }
            _ => s.op = Some(op),
        }
        s.slots[self.rank] = Some(mine);
        s.arrived += 1;
        let generation = s.generation;
        if s.arrived == self.group.size {
            let all: Vec<Vec<Vec<u8>>> = s.slots.iter_mut().map(|x| x.take().unwrap_or_default()).collect();
            s.published = Arc::new(all);
            s.arrived = 0;
            s.op = None;
            s.generation += 1;
            self.group.wake.notify_all();
            return Ok(s.published.clone());
        }
        loop {
            s = self.group.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            if s.generation != generation {
                return Ok(s.published.clone());
            }
            if let Some(rank) = s.left.iter().position(|&l| l) {
                return Err(DistError::PeerGone { op, rank });
            }
        }
    }

    /// Sums everyone's contribution in rank order (the same bits on every rank).
    fn reduce<T: Copy + std::ops::AddAssign>(
        &self,
        op: &'static str,
        buf: &mut [T],
        encode: impl Fn(&[T]) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Vec<T>,
    ) -> Result<()> {
        let all = self.exchange(op, vec![encode(buf)])?;
        let parts: Vec<Vec<T>> = all.iter().map(|r| decode(&r[0])).collect();
        if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.len() != buf.len()) {
            return Err(DistError::Mismatch {
                op,
                reason: format!("rank {r} sent {} values, rank {} {}", p.len(), self.rank, buf.len()),
            });
        }
        buf.copy_from_slice(&parts[0]);
        for p in &parts[1..] {
            for (b, &x) in buf.iter_mut().zip(p) {
                *b += x;
            }
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let mut s = self.lock();
        s.left[self.rank] = true;
        self.group.wake.notify_all();
    }
}

impl Collective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.group.size
    }
    fn transport(&self) -> &'static str {
        "in-process"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.reduce(
            "all_reduce_sum_f32",
            buf,
            |v| v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            |b| b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        )
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.reduce(
            "all_reduce_sum_f64",
            buf,
            |v| v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            |b| b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        )
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        let all = self.exchange("all_gather", vec![send.to_vec()])?;
        Ok(all.iter().map(|r| r[0].clone()).collect())
    }
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        if send.len() != self.group.size {
            return Err(DistError::Mismatch {
                op: "all_to_all",
                reason: format!("{} send buffers for {} ranks", send.len(), self.group.size),
            });
        }
        let all = self.exchange("all_to_all", send.to_vec())?;
        Ok(all.iter().map(|from| from.get(self.rank).cloned().unwrap_or_default()).collect())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        if root >= self.group.size {
            return Err(DistError::Mismatch {
                op: "broadcast",
                reason: format!("root {root} of {} ranks", self.group.size),
            });
        }
        let mine = if self.rank == root { vec![std::mem::take(buf)] } else { vec![Vec::new()] };
        let all = self.exchange("broadcast", mine)?;
        *buf = all[root][0].clone();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Vec::new()).map(|_| ())
    }

    fn abort_group(&self, _code: i32) {
        // Dropping this rank's handle leaves the group (see `Drop`), which is what
        // stops the others; the caller drops it when it returns.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::{all_gather_u32, all_to_all_f32};

    /// Runs `f` on every rank of an `n`-rank group, one thread each; results by rank.
    fn on_ranks<T: Send>(n: usize, f: impl Fn(&InProcess) -> T + Sync) -> Vec<T> {
        let ranks = InProcess::group(n);
        std::thread::scope(|s| {
            let f = &f;
            // Each thread owns its handle: it leaves the group when the thread returns.
            let hs: Vec<_> = ranks.into_iter().map(|c| s.spawn(move || f(&c))).collect();
            hs.into_iter().map(|h| h.join().expect("rank thread")).collect()
        })
    }

    #[test]
    fn all_reduce_sums_in_rank_order_with_the_same_bits_everywhere() {
        for n in [1, 2, 3] {
            let out = on_ranks(n, |c| {
                let r = c.rank() as f32;
                let mut a = vec![1.0 + r, 1e-8 * (r + 1.0), -3.0 * r];
                c.all_reduce_sum_f32(&mut a).unwrap();
                let mut b = vec![0.1 * (r as f64 + 1.0)];
                c.all_reduce_sum_f64(&mut b).unwrap();
                (a, b)
            });
            // The same sum in rank order, computed here: rank 0's values, then each
            // other rank's added (so -0.0 from a single rank stays -0.0).
            let vals = |r: usize| {
                let r = r as f32;
                [1.0 + r, 1e-8 * (r + 1.0), -3.0 * r]
            };
            let mut want = vals(0).to_vec();
            let mut want64 = 0.1f64;
            for r in 1..n {
                for (w, x) in want.iter_mut().zip(vals(r)) {
                    *w += x;
                }
                want64 += 0.1 * (r as f64 + 1.0);
            }
            for (a, b) in &out {
                assert_eq!(
                    a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(b[0].to_bits(), want64.to_bits());
            }
        }
    }

    #[test]
    fn gather_all_to_all_broadcast_with_variable_counts() {
        let out = on_ranks(3, |c| {
            let r = c.rank();
            // Rank r sends r + 1 values.
            let g = all_gather_u32(c, &vec![r as u32; r + 1]).unwrap();
            // Rank r sends d + r values of (10 r + d) to rank d.
            let send: Vec<Vec<f32>> = (0..3).map(|d| vec![(10 * r + d) as f32; d + r]).collect();
            let a = all_to_all_f32(c, &send).unwrap();
            let mut b = if r == 2 { b"from two".to_vec() } else { vec![9; 40] };
            c.broadcast_bytes(&mut b, 2).unwrap();
            c.barrier().unwrap();
            (g, a, b)
        });
        for (me, (g, a, b)) in out.iter().enumerate() {
            assert_eq!(g, &vec![vec![0], vec![1, 1], vec![2, 2, 2]]);
            let want: Vec<Vec<f32>> = (0..3).map(|from| vec![(10 * from + me) as f32; me + from]).collect();
            assert_eq!(a, &want);
            assert_eq!(b, b"from two");
        }
    }

    #[test]
    fn a_rank_that_leaves_stops_the_others_instead_of_hanging() {
        let out = on_ranks(3, |c| {
            if c.rank() == 1 {
                return Ok(());
            }
            c.barrier()
        });
        assert!(out[1].is_ok());
        for r in [0, 2] {
            match &out[r] {
                // Rank 1 left first; a rank woken later may see another one gone too.
                Err(DistError::PeerGone { op: "barrier", rank }) if *rank != r => {}
                other => panic!("rank {r}: expected PeerGone, got {other:?}"),
            }
        }
    }
}
