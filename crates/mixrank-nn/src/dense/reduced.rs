//! Reduced-precision inference GEMMs behind a [`Linear`](super::Linear): bf16 weights
//! packed once, activations rounded to bf16 per call, f32 accumulation (the engine's
//! AMX / AVX512-BF16 / portable kernels, picked at run time). Inference only.

use mixrank_engine::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use mixrank_engine::Backend;

use crate::error::{Ctx, Result};
use crate::optim::HostBackend;

/// `out[..batch, ..n] = input[..batch, ..k] · W` in reduced precision.
pub trait ReducedGemm<B: Backend>: Send {
    fn gemm(&mut self, batch: usize, input: &B::Buf, out: &mut B::Buf) -> Result<()>;
    /// Kernel name, for reports.
    fn name(&self) -> &'static str;
}

/// bf16 weights and activations, f32 accumulation, on host memory.
pub struct HostBf16 {
    kernel: Bf16Kernel,
    packed: PackedBf16,
    /// Activations rounded to bf16, `[max_batch, k]`, reused every call.
    scratch: Bf16Matrix,
}

impl HostBf16 {
    /// Packs a row-major `[k, n]` f32 weight for up to `max_batch` rows per call.
    pub fn new(kernel: Bf16Kernel, k: usize, n: usize, weight: &[f32], max_batch: usize) -> Result<Self> {
        Ok(HostBf16 {
            kernel,
            packed: PackedBf16::pack(k, n, &weight[..k * n]).ctx("HostBf16")?,
            scratch: Bf16Matrix::zeros(max_batch, k),
        })
    }
}

impl<B: HostBackend> ReducedGemm<B> for HostBf16 {
    fn gemm(&mut self, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let k = self.packed.k();
        self.scratch.copy_from_f32(self.kernel, batch, &input[..batch * k]).ctx("HostBf16")?;
        let n = self.packed.n();
        self.kernel.gemm(batch, &self.scratch, &self.packed, &mut out[..batch * n]).ctx("HostBf16")
    }

    fn name(&self) -> &'static str {
        self.kernel.name()
    }
}
