//! Reduced-precision inference GEMMs behind a [`Linear`](super::Linear) (and the other
//! layers with one): a layer exposes each GEMM that may run in reduced precision as a
//! [`ReducedSite`]; [`ReducedSite::pack`] asks the backend to pack the weight
//! ([`Backend::pack_reduced`]: on the CPU, bf16 weights for the AMX / AVX512-BF16 /
//! widening / portable kernels) and fills the layer's slot. Inference only.

pub use mixrank_engine::reduced::{HostBf16, ReducedGemm, WeightLayout};
use mixrank_engine::Backend;

use crate::error::{Ctx, Result};

/// One GEMM `out[..batch, ..n] = input[..batch, ..k] · W` that may run in reduced
/// precision at inference, as a layer exposes it through
/// [`Layer::visit_reduced`](crate::Layer::visit_reduced): the f32 weight to pack (in
/// the layer's storage `layout`), and the slot the layer's forward reads. Filling the
/// slot switches that GEMM; the layer's backward then refuses (inference only).
pub struct ReducedSite<'a, B: Backend> {
    pub k: usize,
    pub n: usize,
    /// Rows per call the packed GEMM must accept (the layer's `max_batch`).
    pub max_batch: usize,
    pub weight: &'a B::Buf,
    pub layout: WeightLayout,
    pub slot: &'a mut Option<Box<dyn ReducedGemm<B>>>,
}

impl<B: Backend> ReducedSite<'_, B> {
    /// Packs the site's weight with the backend's reduced-precision GEMM and switches
    /// the layer to it.
    pub fn pack(self, ops: &B) -> Result<()> {
        *self.slot =
            Some(ops.pack_reduced(self.k, self.n, self.weight, self.layout, self.max_batch).ctx("ReducedSite")?);
        Ok(())
    }
}

impl<B: Backend<Buf = Vec<f32>>> ReducedSite<'_, B> {
    /// The weight as the GEMM's row-major `[k, n]` (borrowed when stored that way), for
    /// host-memory backends and tests that pack a kernel of their own.
    pub fn dense_weight(&self) -> std::borrow::Cow<'_, [f32]> {
        mixrank_engine::reduced::dense_weight(self.weight, self.k, self.n, self.layout)
            .expect("a layer's reduced site describes its own weight")
    }
}
