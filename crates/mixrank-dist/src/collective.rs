//! The collective interface the trainer uses, and typed helpers over its byte
//! operations.

use crate::error::{DistError, Result};

/// One rank's handle on a group of `size` ranks. Every method is collective: all ranks
/// call it, in the same order, or the group stops with an error (in-process) or aborts
/// (MPI). Results are the same on every rank.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn size(&self) -> usize;
    /// The transport, for logs: `in-process`, `mpi` or `nccl`.
    fn transport(&self) -> &'static str;
    /// Element-wise sum over the ranks, in place; every rank gets the same bits.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over the ranks, in place; every rank gets the same bits.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Every rank's `send` (lengths may differ), in rank order.
    fn all_gather_bytes(&self, send: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// All-to-all with variable counts: `send[r]` goes to rank `r` (`send.len() ==
    /// size`); returns what every rank sent to this one, in rank order.
    fn all_to_all_bytes(&self, send: &[Vec<u8>]) -> Result<Vec<Vec<u8>>>;
    /// `root`'s `buf` replaces every rank's (its length too).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Called by a rank that stops with an error outside any collective, so that the
    /// other ranks stop too rather than wait for it in a collective it will never join
    /// (for instance the resume point's broadcast after a failed claim of the run
    /// directory). MPI: `MPI_Abort` of the world, which ends every process of the job
    /// with `code` (it does not return). In-process: nothing to do, the rank's handle
    /// leaves the group when it is dropped, failing the others' next collective.
    fn abort_group(&self, code: i32);
}

macro_rules! le_codec {
    ($encode:ident, $decode:ident, $t:ty, $n:expr) => {
        fn $encode(v: &[$t]) -> Vec<u8> {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
        fn $decode(op: &'static str, b: &[u8]) -> Result<Vec<$t>> {
            if b.len() % $n != 0 {
                return Err(DistError::Mismatch {
                    op,
                    reason: format!("{} bytes is not a whole number of values", b.len()),
                });
            }
            Ok(b.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of the value's size")))
                .collect())
        }
    };
}
le_codec!(enc_f32, dec_f32, f32, 4);
le_codec!(enc_u32, dec_u32, u32, 4);
le_codec!(enc_u64, dec_u64, u64, 8);

macro_rules! gather_of {
    ($name:ident, $t:ty, $enc:ident, $dec:ident, $op:literal) => {
        #[doc = concat!("Every rank's `", stringify!($t), "` values (lengths may differ), in rank order.")]
        pub fn $name(c: &dyn Collective, send: &[$t]) -> Result<Vec<Vec<$t>>> {
            c.all_gather_bytes(&$enc(send))?.iter().map(|b| $dec($op, b)).collect()
        }
    };
}
gather_of!(all_gather_f32, f32, enc_f32, dec_f32, "all_gather_f32");
gather_of!(all_gather_u32, u32, enc_u32, dec_u32, "all_gather_u32");
gather_of!(all_gather_u64, u64, enc_u64, dec_u64, "all_gather_u64");

/// All-to-all of `f32` values with variable counts: `send[r]` goes to rank `r`.
pub fn all_to_all_f32(c: &dyn Collective, send: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let bytes: Vec<Vec<u8>> = send.iter().map(|v| enc_f32(v)).collect();
    c.all_to_all_bytes(&bytes)?.iter().map(|b| dec_f32("all_to_all_f32", b)).collect()
}
