//! Reduced-precision inference GEMMs behind a [`Linear`](super::Linear): bf16 weights
//! packed once, activations rounded to bf16 per call, f32 accumulation (the engine's
//! AMX / AVX512-BF16 / portable kernels, picked at run time) — or, on CPUs without bf16
//! arithmetic, f32 activations times the bf16 weights widened to f32 (the widening
//! kernels). Inference only.

use mixrank_engine::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use mixrank_engine::Backend;

use crate::error::{Ctx, Result};
use crate::optim::HostBackend;

/// `out[..batch, ..n] = input[..batch, ..k] · W` in reduced precision.
pub trait ReducedGemm<B: Backend>: Send {
    fn gemm(&mut self, batch: usize, input: &B::Buf, out: &mut B::Buf) -> Result<()>;

    /// `out = (x ⊗ y) · W`: row `b` of the input is `x[b, i] · y[b, j]` at column
    /// `i·by + j` (`x`: `[batch, bx]`, `y`: `[batch, by]`, `k = bx·by`). The default forms
    /// it in `z` (f32, `[batch, k]`) and calls [`ReducedGemm::gemm`]; a kernel may form
    /// it in its own precision directly (then `z` is left alone).
    fn gemm_outer(
        &mut self,
        ops: &B,
        shape: mixrank_engine::BlockShape,
        x: &B::Buf,
        y: &B::Buf,
        z: &mut B::Buf,
        out: &mut B::Buf,
    ) -> Result<()> {
        outer_in_f32(self, ops, shape, x, y, z, out)
    }
    /// Kernel name, for reports.
    fn name(&self) -> &'static str;
}

/// [`ReducedGemm::gemm_outer`]'s default: the outer products in f32 in `z`, then the GEMM.
fn outer_in_f32<B: Backend, G: ReducedGemm<B> + ?Sized>(
    g: &mut G,
    ops: &B,
    shape: mixrank_engine::BlockShape,
    x: &B::Buf,
    y: &B::Buf,
    z: &mut B::Buf,
    out: &mut B::Buf,
) -> Result<()> {
    ops.block_outer(shape, x, y, z).ctx("ReducedGemm::gemm_outer")?;
    g.gemm(shape.rows, z, out)
}

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

/// How a [`ReducedSite`]'s weight is stored relative to the GEMM's row-major `[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Stored as the GEMM's row-major `[k, n]`.
    Dense,
    /// Head `head` of a bilinear tensor stored `[heads·hx, n·hy]`
    /// ([`BilinearFusion`](crate::finalmlp::BilinearFusion)'s `w_xy`), used as the
    /// weight of `(x_h ⊗ y_h) · W'` with `k = hx·hy`:
    /// `W'[i·hy + j, o] = W[head·hx + i, o·hy + j]`.
    BilinearHead { head: usize, hx: usize, hy: usize },
}

impl<B: HostBackend> ReducedSite<'_, B> {
    /// The weight as the GEMM's row-major `[k, n]` (borrowed when stored that way).
    pub fn dense_weight(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.layout {
            WeightLayout::Dense => std::borrow::Cow::Borrowed(&self.weight[..self.k * self.n]),
            WeightLayout::BilinearHead { head, hx, hy } => {
                let n = self.n;
                // Head `head`'s rows of the stacked W'.
                let first = head * hx * hy * n;
                let mut w = vec![0f32; hx * hy * n];
                for r in head * hx..(head + 1) * hx {
                    for o in 0..n {
                        for j in 0..hy {
                            let (old, new) = crate::finalmlp::w_prime_index(r, o, j, hy, n);
                            w[new - first] = self.weight[old];
                        }
                    }
                }
                std::borrow::Cow::Owned(w)
            }
        }
    }
}

/// bf16 weights and activations, f32 accumulation, on host memory — or, with a widening
/// kernel, bf16 weights and f32 activations.
pub struct HostBf16 {
    kernel: Bf16Kernel,
    packed: PackedBf16,
    /// Activations rounded to bf16, `[max_batch, k]`, reused every call (empty for a
    /// widening kernel, which reads the f32 activations).
    scratch: Bf16Matrix,
}

impl HostBf16 {
    /// Packs a row-major `[k, n]` f32 weight for up to `max_batch` rows per call.
    pub fn new(kernel: Bf16Kernel, k: usize, n: usize, weight: &[f32], max_batch: usize) -> Result<Self> {
        Ok(HostBf16 {
            kernel,
            packed: PackedBf16::pack(k, n, &weight[..k * n]).ctx("HostBf16")?,
            scratch: Bf16Matrix::zeros(if kernel.takes_f32_activations() { 0 } else { max_batch }, k),
        })
    }
}

impl<B: HostBackend> ReducedGemm<B> for HostBf16 {
    fn gemm(&mut self, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let k = self.packed.k();
        if self.kernel.takes_f32_activations() {
            let n = self.packed.n();
            return self
                .kernel
                .gemm_f32(batch, &input[..batch * k], &self.packed, &mut out[..batch * n])
                .ctx("HostBf16");
        }
        self.scratch.copy_from_f32(self.kernel, batch, &input[..batch * k]).ctx("HostBf16")?;
        let n = self.packed.n();
        self.kernel.gemm(batch, &self.scratch, &self.packed, &mut out[..batch * n]).ctx("HostBf16")
    }

    /// The outer products go straight to bf16 (no f32 `[batch, k]` matrix); a widening
    /// kernel forms them in f32 (`z`).
    fn gemm_outer(
        &mut self,
        ops: &B,
        shape: mixrank_engine::BlockShape,
        x: &Vec<f32>,
        y: &Vec<f32>,
        z: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if self.kernel.takes_f32_activations() {
            return outer_in_f32(self, ops, shape, x, y, z, out);
        }
        let (batch, bx, by) = (shape.rows, shape.blocks, shape.width);
        self.scratch.copy_outer_from_f32(self.kernel, batch, bx, &x[..batch * bx], &y[..batch * by]).ctx("HostBf16")?;
        let n = self.packed.n();
        self.kernel.gemm(batch, &self.scratch, &self.packed, &mut out[..batch * n]).ctx("HostBf16")
    }

    fn name(&self) -> &'static str {
        self.kernel.name()
    }
}
