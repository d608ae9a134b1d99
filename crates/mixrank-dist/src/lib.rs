//! mixrank-dist: the collective operations multi-process training uses, behind one
//! object-safe trait ([`Collective`]) so the trainer names no transport.
//!
//! Implementations:
//! - [`InProcess`]: N ranks as threads of one process sharing a rendezvous (unit tests,
//!   `mixrank train --ranks-in-process N`);
//! - `Mpi` (feature `mpi`): MPI through the `mpi` crate (rsmpi), for `mpirun -n N
//!   mixrank train …`;
//! - `Nccl` (feature `nccl`): NCCL through `cudarc` (dynamic loading), one GPU per rank,
//!   bootstrapped over another group (MPI, or in-process threads in tests).
//!
//! Every operation is collective: every rank of the group calls it, in the same order.
//! Results are identical on every rank (reductions sum in one order for everyone), so
//! replicas that apply the same update stay bit for bit equal.

mod collective;
mod error;
mod in_process;
mod launch;
#[cfg(feature = "mpi")]
mod mpi_world;
#[cfg(feature = "nccl")]
mod nccl;

pub use collective::{all_gather_f32, all_gather_u32, all_gather_u64, all_to_all_f32, Collective};
pub use error::{DistError, Result};
pub use in_process::InProcess;
pub use launch::{launched_by_mpirun, local_rank};
#[cfg(feature = "mpi")]
pub use mpi_world::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;
