//! [`Collective`] over NCCL (feature `nccl`), through `cudarc`'s nccl module with
//! dynamic loading: the binary builds and runs without NCCL or a GPU, and asking for
//! NCCL where `libnccl.so` cannot be loaded is a clear error ([`Nccl::available`]).
//!
//! **Set-up.** NCCL needs every rank to hold the same unique id before the communicator
//! exists; [`Nccl::over`] takes the job's bootstrap group (MPI under `mpirun`, or the
//! in-process group of threads in tests), rank 0 makes the id and broadcasts it, and
//! every rank initialises its communicator on its GPU. The bootstrap group stays for
//! [`Collective::abort_group`] (`MPI_Abort` ends an MPI job; NCCL has no job-wide abort).
//!
//! **Host-staged.** The trainer's collectives take host buffers (the dense gradients are
//! read off the backend, the sparse ones are host bytes), so each operation copies its
//! buffer to the device, runs the NCCL collective on this rank's stream and copies the
//! result back. A device-resident step would hand NCCL its gradient buffers instead.
//! Byte operations with variable counts exchange their counts first (an all-gather of
//! `u64`s), then: all-gather pads every rank's bytes to the longest; all-to-all is a
//! group of point-to-point sends and receives (`ncclGroupStart` … `ncclGroupEnd`), as
//! NCCL has no variable-count all-to-all; broadcast sends the length, then the bytes.
//!
//! **Sums.** NCCL's all-reduce gives every rank the same result (each element is
//! reduced once and then broadcast), so replicas stay bit for bit equal; the order of
//! the sum is NCCL's (ring or tree), not rank order.

use crate::collective::Collective;
use crate::error::{DistError, Result};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::safe::{group_end, group_start, Comm, Id, NcclType, ReduceOp};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// This rank's NCCL communicator on one GPU.
pub struct Nccl {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
    ordinal: usize,
    boot: Arc<dyn Collective>,
}

struct Inner {
    comm: Comm,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

// SAFETY: an NCCL communicator and a CUDA stream may be used from any thread as long as
// no two threads use them at once; every use goes through `inner`'s mutex, and binds the
// context to the calling thread first.
unsafe impl Send for Inner {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nccl {{ rank: {}, size: {}, gpu: {} }}", self.rank, self.size, self.ordinal)
    }
}

fn fail(op: &'static str) -> impl Fn(&dyn std::fmt::Debug) -> DistError {
    move |e| DistError::Transport { op, message: format!("{e:?}") }
}

/// Runs a call that may panic when a CUDA or NCCL library cannot be loaded (cudarc's
/// dynamic loading panics), turning the panic into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(DistError::Init(format!("{what}: {msg}")))
    })
}

impl Nccl {
    /// Whether `libnccl.so` (and the CUDA driver) can be loaded. NCCL's pip wheel
    /// (`nvidia-nccl-cu12`) ships `libnccl.so.2` only: a `libnccl.so` link to it on the
    /// loader path is needed.
    pub fn available() -> bool {
        catch_unwind(|| unsafe { cudarc::nccl::sys::is_culib_present() && cudarc::driver::sys::is_culib_present() })
            .unwrap_or(false)
    }

    /// Collective over `boot`: rank 0 makes NCCL's unique id and broadcasts it over
    /// `boot`; every rank then joins the communicator on GPU `ordinal` (one GPU per rank:
    /// NCCL refuses two ranks on one GPU).
    pub fn over(boot: Arc<dyn Collective>, ordinal: usize) -> Result<Nccl> {
        if !Self::available() {
            // Every rank fails alike, before any collective: nobody is left waiting.
            return Err(DistError::Init(
                "NCCL was asked for, but libnccl.so or the CUDA driver (libcuda.so) cannot be loaded: \
                 put NCCL's library directory on LD_LIBRARY_PATH (pip's nvidia-nccl-cu12 ships \
                 nvidia/nccl/lib/libnccl.so.2: link libnccl.so to it)"
                    .into(),
            ));
        }
        let (rank, size) = (boot.rank(), boot.size());
        // Rank 0's id; empty when it could not make one, so every rank fails alike.
        let mut id = Vec::new();
        let mut made = Ok(());
        if rank == 0 {
            match guarded("making NCCL's unique id", || Id::new().map_err(|e| fail("ncclGetUniqueId")(&e))) {
                Ok(m) => id = m.internal().iter().map(|&c| c as u8).collect(),
                Err(e) => made = Err(e),
            }
        }
        boot.broadcast_bytes(&mut id, 0)?;
        made?;
        if id.len() != 128 {
            return Err(DistError::Init("rank 0 could not make NCCL's unique id".into()));
        }
        let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| id[i] as std::ffi::c_char);
        // Every rank opens its GPU, and they agree that all did before joining: NCCL's
        // initialisation waits for every rank, and one that failed would never come.
        let ctx = guarded("opening the GPU for NCCL", || {
            CudaContext::new(ordinal).map_err(|e| DistError::Init(format!("opening GPU {ordinal} for NCCL: {e:?}")))
        });
        let mut failed = [if ctx.is_err() { 1.0f32 } else { 0.0 }];
        boot.all_reduce_sum_f32(&mut failed)?;
        let ctx = ctx?;
        if failed[0] > 0.0 {
            return Err(DistError::Init(format!("{} other rank(s) could not open their GPU for NCCL", failed[0])));
        }
        let inner = guarded("starting NCCL", || {
            let stream = ctx.default_stream();
            let comm = Comm::from_rank(stream.clone(), rank, size, Id::uninit(internal)).map_err(|e| {
                DistError::Init(format!("ncclCommInitRank (rank {rank} of {size}, GPU {ordinal}): {e:?}"))
            })?;
            Ok(Inner { comm, stream, ctx })
        })?;
        Ok(Nccl { inner: Mutex::new(inner), rank, size, ordinal, boot })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.ctx.bind_to_thread().map_err(|e| fail("binding the GPU context")(&e))?;
        Ok(g)
    }
}

impl Inner {
    fn to_device<T: DeviceRepr>(&self, op: &'static str, v: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(v).map_err(|e| fail(op)(&e))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, op: &'static str, n: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(n).map_err(|e| fail(op)(&e))
    }

    fn to_host<T: DeviceRepr + Default + Clone>(
        &self,
        op: &'static str,
        d: &CudaSlice<T>,
        out: &mut [T],
    ) -> Result<()> {
        self.stream.memcpy_dtoh(d, out).map_err(|e| fail(op)(&e))?;
        self.stream.synchronize().map_err(|e| fail(op)(&e))
    }

    /// Sums `buf` over the ranks, in place.
    fn all_reduce<T: DeviceRepr + NcclType + Default + Clone>(&self, op: &'static str, buf: &mut [T]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = self.to_device(op, buf)?;
        self.comm.all_reduce_in_place(&mut d, &ReduceOp::Sum).map_err(|e| fail(op)(&e))?;
        self.to_host(op, &d, buf)
    }

    /// Every rank's `v` (all the same length `v.len()`), rank after rank.
    fn all_gather<T: DeviceRepr + NcclType + ValidAsZeroBits + Default + Clone>(
        &self,
        op: &'static str,
        v: &[T],
        size: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); v.len() * size];
        if v.is_empty() {
            return Ok(out);
        }
        let send = self.to_device(op, v)?;
        let mut recv = self.zeros::<T>(op, out.len())?;
        self.comm.all_gather(&send, &mut recv).map_err(|e| fail(op)(&e))?;
        self.to_host(op, &recv, &mut out)?;
        Ok(out)
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn transport(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.lock()?.all_reduce("all_reduce_sum_f32", buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.lock()?.all_reduce("all_reduce_sum_f64", buf)
    }
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all_gather_bytes";
        let g = self.lock()?;
        let lens = g.all_gather(OP, &[send.len() as u64], self.size)?;
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        let mut padded = send.to_vec();
        padded.resize(longest, 0);
        let all = g.all_gather(OP, &padded, self.size)?;
        Ok(lens.iter().enumerate().map(|(r, &n)| all[r * longest..r * longest + n as usize].to_vec()).collect())
    }
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all_to_all_bytes";
        if send.len() != self.size {
            return Err(DistError::Mismatch {
                op: OP,
                reason: format!("{} blocks for {} ranks", send.len(), self.size),
            });
        }
        let g = self.lock()?;
        // counts[src * size + dst]: what `src` sends `dst`.
        let mine: Vec<u64> = send.iter().map(|b| b.len() as u64).collect();
        let counts = g.all_gather(OP, &mine, self.size)?;
        let (me, n) = (self.rank, self.size);
        let sends: Vec<Option<CudaSlice<u8>>> = send
            .iter()
            .enumerate()
            .map(|(r, b)| if r == me || b.is_empty() { Ok(None) } else { g.to_device(OP, b).map(Some) })
            .collect::<Result<_>>()?;
        let mut recvs: Vec<Option<CudaSlice<u8>>> = (0..n)
            .map(|r| match counts[r * n + me] as usize {
                0 => Ok(None),
                _ if r == me => Ok(None),
                k => g.zeros::<u8>(OP, k).map(Some),
            })
            .collect::<Result<_>>()?;
        // One group of every send and receive (`ncclGroupEnd` issues them together). The
        // group is ended whatever happens, and its error returned (cudarc's `Group` would
        // panic on it).
        group_start().map_err(|e| fail(OP)(&e))?;
        let mut posted = Ok(());
        for (r, s) in sends.iter().enumerate() {
            if let (Some(s), Ok(())) = (s, &posted) {
                posted = g.comm.send(s, r as i32).map_err(|e| fail(OP)(&e));
            }
        }
        for (r, d) in recvs.iter_mut().enumerate() {
            if let (Some(d), Ok(())) = (d, &posted) {
                posted = g.comm.recv(d, r as i32).map(|_| ()).map_err(|e| fail(OP)(&e));
            }
        }
        let ended = group_end().map(|_| ()).map_err(|e| fail(OP)(&e));
        posted?;
        ended?;
        g.stream.synchronize().map_err(|e| fail(OP)(&e))?;
        // Every receive copied back, then one synchronisation.
        let mut out = Vec::with_capacity(n);
        for (r, d) in recvs.iter().enumerate() {
            out.push(match d {
                _ if r == me => send[me].clone(),
                None => Vec::new(),
                Some(d) => {
                    let mut v = vec![0u8; d.len()];
                    g.stream.memcpy_dtoh(d, &mut v).map_err(|e| fail(OP)(&e))?;
                    v
                }
            });
        }
        g.stream.synchronize().map_err(|e| fail(OP)(&e))?;
        Ok(out)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        const OP: &str = "broadcast_bytes";
        let g = self.lock()?;
        let mut len = [if self.rank == root { buf.len() as u64 } else { 0 }];
        // A sum in which only the root contributes: its length on every rank.
        g.all_reduce(OP, &mut len)?;
        buf.resize(len[0] as usize, 0);
        if buf.is_empty() {
            return Ok(());
        }
        let mut d = g.to_device(OP, buf)?;
        g.comm.broadcast_in_place(&mut d, root as i32).map_err(|e| fail(OP)(&e))?;
        g.to_host(OP, &d, buf)
    }
    fn barrier(&self) -> Result<()> {
        self.lock()?.all_reduce("barrier", &mut [0f32])
    }
    fn abort_group(&self, code: i32) {
        self.boot.abort_group(code)
    }
}
