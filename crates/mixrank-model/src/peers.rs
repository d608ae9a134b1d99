//! Data-parallel training: how a model reaches the other ranks' rows of the global batch,
//! for a loss that reads the whole batch (the two-tower model's in-batch softmax, whose
//! negatives are every row's item). The trainer hands the model its group
//! ([`crate::Model::set_batch_peers`]); this crate knows no transport.

/// The ranks of a data-parallel job, seen from one of them.
pub trait BatchPeers: Send + Sync {
    /// Collective: every rank's `local` values, in rank order — the global batch's row
    /// order, each rank holding a contiguous share of it.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<Vec<f32>>, String>;
    /// This rank, `0..size`.
    fn rank(&self) -> usize;
}
