//! Reduced-precision inference GEMMs: one weight packed once ([`Backend::pack_reduced`]),
//! then `out = input · W` per call in the backend's reduced precision. The CPU backend
//! packs bf16 weights for its AMX / AVX512-BF16 / portable kernels (activations rounded
//! to bf16, f32 accumulation) or, on CPUs without bf16 arithmetic, for the widening
//! kernels (f32 activations times the bf16 weights widened to f32): [`HostBf16`].
//! Inference only.
//!
//! [`Backend::pack_reduced`]: crate::Backend::pack_reduced

use crate::bf16::{Bf16Kernel, Bf16Matrix, PackedBf16};
use crate::error::{EngineError, Result};
use crate::ops::{Backend, BlockShape};
use std::borrow::Cow;

/// `out[..batch, ..n] = input[..batch, ..k] · W` in reduced precision, for one packed `W`.
pub trait ReducedGemm<B: Backend>: Send {
    fn gemm(&mut self, batch: usize, input: &B::Buf, out: &mut B::Buf) -> Result<()>;

    /// `out = (x ⊗ y) · W`: row `b` of the input is `x[b, i] · y[b, j]` at column
    /// `i·by + j` (`x`: `[batch, bx]`, `y`: `[batch, by]`, `k = bx·by`). The default forms
    /// it in `z` (f32, `[batch, k]`) and calls [`ReducedGemm::gemm`]; a kernel may form
    /// it in its own precision directly (then `z` is left alone).
    fn gemm_outer(
        &mut self,
        ops: &B,
        shape: BlockShape,
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
pub fn outer_in_f32<B: Backend, G: ReducedGemm<B> + ?Sized>(
    g: &mut G,
    ops: &B,
    shape: BlockShape,
    x: &B::Buf,
    y: &B::Buf,
    z: &mut B::Buf,
    out: &mut B::Buf,
) -> Result<()> {
    ops.block_outer(shape, x, y, z)?;
    g.gemm(shape.rows, z, out)
}

/// How a weight to pack is stored relative to the GEMM's row-major `[k, n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// Stored as the GEMM's row-major `[k, n]`.
    Dense,
    /// Head `head` of a bilinear tensor stored `[heads·hx, n·hy]` (FinalMLP's bilinear
    /// fusion `w_xy`), used as the weight of `(x_h ⊗ y_h) · W'` with `k = hx·hy`:
    /// `W'[i·hy + j, o] = W[head·hx + i, o·hy + j]`.
    BilinearHead { head: usize, hx: usize, hy: usize },
}

/// Element `(r, o, j)` of a bilinear tensor `w_xy` (`[heads·hx, d_out·hy]`,
/// `r = h·hx + i`): its index there and in the stacked `W'_h`
/// (`[heads·hx·hy, d_out]`, `W'_h[i·hy + j, o]`).
pub fn w_prime_index(r: usize, o: usize, j: usize, hy: usize, d_out: usize) -> (usize, usize) {
    (r * d_out * hy + o * hy + j, (r * hy + j) * d_out + o)
}

/// A stored weight as the GEMM's row-major `[k, n]` (borrowed when stored that way).
pub fn dense_weight(weight: &[f32], k: usize, n: usize, layout: WeightLayout) -> Result<Cow<'_, [f32]>> {
    let needed = match layout {
        WeightLayout::Dense => k * n,
        WeightLayout::BilinearHead { head, hx, hy } => (head + 1) * hx * n * hy,
    };
    if weight.len() < needed {
        return Err(EngineError::BufferTooSmall {
            op: "pack_reduced",
            operand: "weight",
            shape: vec![k, n],
            needed,
            len: weight.len(),
        });
    }
    Ok(match layout {
        WeightLayout::Dense => Cow::Borrowed(&weight[..k * n]),
        WeightLayout::BilinearHead { head, hx, hy } => {
            if hx * hy != k {
                return Err(EngineError::InvalidArgument { op: "pack_reduced", reason: "bilinear head: k != hx·hy" });
            }
            // Head `head`'s rows of the stacked W'.
            let first = head * hx * hy * n;
            let mut w = vec![0f32; k * n];
            for r in head * hx..(head + 1) * hx {
                for o in 0..n {
                    for j in 0..hy {
                        let (old, new) = w_prime_index(r, o, j, hy, n);
                        w[new - first] = weight[old];
                    }
                }
            }
            Cow::Owned(w)
        }
    })
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
            packed: PackedBf16::pack(k, n, &weight[..k * n])?,
            scratch: Bf16Matrix::zeros(if kernel.takes_f32_activations() { 0 } else { max_batch }, k),
        })
    }
}

/// From this many rows a widening kernel's GEMM widens the whole weight to f32 once and
/// runs the f32 GEMM. Widening inside the microkernel measured 3–8% slower than the f32
/// GEMM end to end at 2,048 rows (`bench infer`, docs/BENCHMARKS.md), widening the
/// `k·n` values once (vectorised, split over threads) costs a small share of a
/// product that long, and for fewer rows the bytes of the weights matter more (the
/// widening kernel wins at 1–512). The f32 copy is one per thread, reused and as large
/// as the largest weight: the resident weights stay bf16.
pub const WIDEN_ONCE_ROWS: usize = 2048;

thread_local! {
    /// The widened weight of [`WIDEN_ONCE_ROWS`]-row calls, the largest so far.
    static WIDENED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out = input · W` with `W` widened to f32 once, through the CPU backend's f32 GEMM.
fn gemm_widened_once(packed: &PackedBf16, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
    let (k, n) = (packed.k(), packed.n());
    WIDENED.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < k * n {
            w.resize(k * n, 0.0);
        }
        packed.unpack_f32(&mut w[..k * n])?;
        crate::CpuOps::new().gemm(&crate::ops::GemmSpec::nn(batch, n, k), input, &w, out)
    })
}

impl<B: Backend<Buf = Vec<f32>>> ReducedGemm<B> for HostBf16 {
    fn gemm(&mut self, batch: usize, input: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let (k, n) = (self.packed.k(), self.packed.n());
        if self.kernel.takes_f32_activations() {
            if batch >= WIDEN_ONCE_ROWS {
                return gemm_widened_once(&self.packed, batch, input, out);
            }
            return self.kernel.gemm_f32(batch, &input[..batch * k], &self.packed, &mut out[..batch * n]);
        }
        self.scratch.copy_from_f32(self.kernel, batch, &input[..batch * k])?;
        self.kernel.gemm(batch, &self.scratch, &self.packed, &mut out[..batch * n])
    }

    /// The outer products go straight to bf16 (no f32 `[batch, k]` matrix); a widening
    /// kernel forms them in f32 (`z`).
    fn gemm_outer(
        &mut self,
        ops: &B,
        shape: BlockShape,
        x: &Vec<f32>,
        y: &Vec<f32>,
        z: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if self.kernel.takes_f32_activations() {
            return outer_in_f32(self, ops, shape, x, y, z, out);
        }
        let (batch, bx, by) = (shape.rows, shape.blocks, shape.width);
        self.scratch.copy_outer_from_f32(self.kernel, batch, bx, &x[..batch * bx], &y[..batch * by])?;
        let n = self.packed.n();
        self.kernel.gemm(batch, &self.scratch, &self.packed, &mut out[..batch * n])
    }

    fn name(&self) -> &'static str {
        self.kernel.name()
    }
}
