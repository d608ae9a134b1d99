//! [`Collective`] over MPI (`MPI_COMM_WORLD`) through the `mpi` crate (rsmpi).
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: the trainer calls collectives from a
//! worker thread of its thread pool, never from two threads at once (a mutex makes sure).
//! Byte operations with variable counts exchange the counts first (`MPI_Allgather`,
//! `MPI_Alltoall`), then the data (`MPI_Allgatherv`, `MPI_Alltoallv`). MPI's default
//! error handler aborts the job on a communication failure, so a rank that dies stops
//! the others (`mpirun` kills the job) rather than leaving them waiting.

use crate::collective::Collective;
use crate::error::{DistError, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;
use std::sync::Mutex;

/// This process's rank of `MPI_COMM_WORLD`. MPI is finalised when it is dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Serialises calls (`MPI_THREAD_SERIALIZED`).
    lock: Mutex<()>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

// SAFETY: MPI was initialised with (at least) `MPI_THREAD_SERIALIZED`, which allows
// calls from any thread as long as no two run at once; every call below holds `lock`.
unsafe impl Send for Mpi {}
// SAFETY: as above: shared references only reach MPI through `lock`.
unsafe impl Sync for Mpi {}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank, self.size)
    }
}

fn count(op: &'static str, n: usize) -> Result<Count> {
    Count::try_from(n).map_err(|_| DistError::Mismatch { op, reason: format!("{n} bytes exceed MPI's count type") })
}

/// Displacements of consecutive blocks of `counts`.
fn displs(op: &'static str, counts: &[Count]) -> Result<Vec<Count>> {
    let mut at = 0usize;
    counts
        .iter()
        .map(|&c| {
            let d = count(op, at)?;
            at += c as usize;
            Ok(d)
        })
        .collect()
}

/// A zeroed byte buffer of `len` with a real allocation even when empty. Open MPI's
/// `MPI_IN_PLACE` is the address 1, which is exactly where an empty `Vec<u8>` or `&[u8]`
/// points (`NonNull::dangling`): an empty receive buffer would be read as "in place" and
/// refused (`MPI_ERR_ARG`), an empty send buffer as "take mine from the receive buffer".
fn heap_bytes(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(1));
    v.resize(len, 0);
    v
}

/// Splits `buf` into blocks of `counts`.
fn split(buf: &[u8], counts: &[Count]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            let v = buf[at..at + c as usize].to_vec();
            at += c as usize;
            v
        })
        .collect()
}

impl Mpi {
    /// Initialises MPI; fails when it was initialised before or the library does not
    /// offer serialised multi-threaded use.
    pub fn init() -> Result<Mpi> {
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| DistError::Init("MPI was already initialised".into()))?;
        if matches!(provided, mpi::Threading::Single | mpi::Threading::Funneled) {
            return Err(DistError::Init(format!("the MPI library offers only {provided:?} threading, not Serialized")));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi { world, rank, size, lock: Mutex::new(()), _universe: universe })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn transport(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        let _g = self.guard();
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let _g = self.guard();
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all_gather";
        let _g = self.guard();
        let mine = count(OP, send.len())?;
        let mut counts = vec![0 as Count; self.size];
        self.world.all_gather_into(&mine, &mut counts[..]);
        let displs = displs(OP, &counts)?;
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut recv = heap_bytes(total);
        let mut mine = heap_bytes(send.len());
        mine.copy_from_slice(send);
        {
            let mut part = PartitionMut::new(&mut recv[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(&mine[..], &mut part);
        }
        Ok(split(&recv, &counts))
    }
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all_to_all";
        if send.len() != self.size {
            return Err(DistError::Mismatch {
                op: OP,
                reason: format!("{} send buffers for {} ranks", send.len(), self.size),
            });
        }
        let _g = self.guard();
        let send_counts: Vec<Count> = send.iter().map(|b| count(OP, b.len())).collect::<Result<_>>()?;
        let mut recv_counts = vec![0 as Count; self.size];
        self.world.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let mut flat = heap_bytes(0);
        send.iter().for_each(|b| flat.extend_from_slice(b));
        let send_displs = displs(OP, &send_counts)?;
        let recv_displs = displs(OP, &recv_counts)?;
        let mut recv = heap_bytes(recv_counts.iter().map(|&c| c as usize).sum());
        {
            let part = Partition::new(&flat[..], &send_counts[..], &send_displs[..]);
            let mut rpart = PartitionMut::new(&mut recv[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&part, &mut rpart);
        }
        Ok(split(&recv, &recv_counts))
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.size {
            return Err(DistError::Mismatch { op: OP, reason: format!("root {root} of {} ranks", self.size) });
        }
        let _g = self.guard();
        let p = self.world.process_at_rank(root as mpi::Rank);
        let mut len = buf.len() as u64;
        p.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        // Every rank has the length: an empty buffer (which would point at `MPI_IN_PLACE`,
        // see `heap_bytes`) is not sent.
        if len > 0 {
            p.broadcast_into(&mut buf[..]);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let _g = self.guard();
        self.world.barrier();
        Ok(())
    }

    fn abort_group(&self, code: i32) {
        // Not under `lock`: the caller's training has returned, so no call of this
        // process is in flight, and a lock poisoned by a panic must not stop the abort.
        self.world.abort(code)
    }
}
