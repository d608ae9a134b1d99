//! Backends for testing layer code, which is generic over `B: Backend` and so runs
//! unchanged on them:
//!
//! - [`RefOpsOf<T>`]: the engine's reference kernels with `T`-valued buffers; in `f64`
//!   ([`RefOpsF64`]) for finite-difference gradient checks.
//! - [`BoundOps`]: exact values (f64) carried together with a rigorous first-order bound
//!   on the rounding error any f32 backend may commit; the tolerance of every
//!   CpuOps-vs-RefOps comparison.
//!
//! The engine's own [`mixrank_engine::RefOps`] is fixed to `f32` buffers; its kernels in
//! [`mixrank_engine::reference`] are generic, and this type only dispatches to them.
//! Scalars the trait passes as `f32` (GEMM `alpha`/`beta`, layer-norm `eps`, `scale`)
//! are widened exactly. [`Backend::upload`]/[`Backend::read`] go through `f32`; tests
//! that need full precision read and write `Vec<T>` buffers directly.

mod bound;

pub use bound::{BoundOps, Bounded};

use std::marker::PhantomData;

use mixrank_engine::error::Result;
use mixrank_engine::reference as r;
use mixrank_engine::{
    loss, Activation, Backend, ColCopy, EngineError, Float, GatherSpec, GemmSpec, GradWrite, LayerNormSpec, LossInput,
    NormStats, Pooling, Shape, SparseGrad,
};

/// The reference backend over `Vec<T>` buffers. Slow on purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefOpsOf<T>(PhantomData<T>);

/// The reference backend in `f64`, for gradient checks.
pub type RefOpsF64 = RefOpsOf<f64>;

impl<T> RefOpsOf<T> {
    pub fn new() -> Self {
        RefOpsOf(PhantomData)
    }
}

fn too_small(op: &'static str, operand: &'static str, len: usize, needed: usize) -> EngineError {
    EngineError::BufferTooSmall { op, operand, shape: vec![needed], needed, len }
}

fn cast<T: Float>(x: f32) -> T {
    T::from_f64(x as f64)
}

fn store_sparse<T: Float>(dim: usize, ids: &[u32], rows: &[T], grad: &mut SparseGrad<RefOpsOf<T>>) {
    grad.dim = dim;
    if grad.ids.len() < ids.len() {
        grad.ids.resize(ids.len(), 0);
    }
    if grad.rows.len() < rows.len() {
        grad.rows.resize(rows.len(), T::ZERO);
    }
    grad.ids[..ids.len()].copy_from_slice(ids);
    grad.rows[..rows.len()].copy_from_slice(rows);
    grad.len = ids.len();
}

impl<T: Float> Backend for RefOpsOf<T> {
    type Buf = Vec<T>;
    type Ids = Vec<u32>;

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; len])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&x| cast(x)).collect())
    }
    fn write(&self, host: &[f32], dst: &mut Vec<T>) -> Result<()> {
        if dst.len() < host.len() {
            return Err(too_small("write", "dst", dst.len(), host.len()));
        }
        for (d, &h) in dst.iter_mut().zip(host) {
            *d = cast(h);
        }
        Ok(())
    }
    fn read(&self, src: &Vec<T>, host: &mut [f32]) -> Result<()> {
        if src.len() < host.len() {
            return Err(too_small("read", "src", src.len(), host.len()));
        }
        for (h, s) in host.iter_mut().zip(src) {
            *h = s.to_f64() as f32;
        }
        Ok(())
    }
    fn len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }
    fn fill(&self, n: usize, value: f32, buf: &mut Vec<T>) -> Result<()> {
        if buf.len() < n {
            return Err(too_small("fill", "buf", buf.len(), n));
        }
        buf[..n].fill(cast(value));
        Ok(())
    }
    fn alloc_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }
    fn upload_ids(&self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_ids(&self, host: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        if dst.len() < host.len() {
            return Err(too_small("write_ids", "dst", dst.len(), host.len()));
        }
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }
    fn read_ids(&self, src: &Vec<u32>, host: &mut [u32]) -> Result<()> {
        if src.len() < host.len() {
            return Err(too_small("read_ids", "src", src.len(), host.len()));
        }
        host.copy_from_slice(&src[..host.len()]);
        Ok(())
    }
    fn ids_len(&self, ids: &Vec<u32>) -> usize {
        ids.len()
    }

    fn gemm(&self, spec: &GemmSpec, a: &Vec<T>, b: &Vec<T>, c: &mut Vec<T>) -> Result<()> {
        r::gemm(spec, a, b, c)
    }

    fn bias_act_forward(
        &self,
        act: Activation,
        shape: Shape,
        bias: Option<&Vec<T>>,
        z: &mut Vec<T>,
        y: &mut Vec<T>,
    ) -> Result<()> {
        r::bias_act_forward(act, shape, bias.map(|b| b.as_slice()), z, y)
    }
    fn bias_act_inplace(&self, act: Activation, shape: Shape, bias: Option<&Vec<T>>, x: &mut Vec<T>) -> Result<()> {
        r::bias_act_inplace(act, shape, bias.map(|b| b.as_slice()), x)
    }
    fn bias_act_backward(
        &self,
        act: Activation,
        shape: Shape,
        z: &Vec<T>,
        dy: &Vec<T>,
        dz: &mut Vec<T>,
        dbias: Option<&mut Vec<T>>,
    ) -> Result<()> {
        r::bias_act_backward(act, shape, z, dy, dz, dbias.map(|b| b.as_mut_slice()))
    }

    fn add(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::add(n, a, b, out)
    }
    fn mul(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::mul(n, a, b, out)
    }
    fn mul_acc(&self, n: usize, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::mul_acc(n, a, b, out)
    }
    fn mul_backward(
        &self,
        n: usize,
        a: &Vec<T>,
        b: &Vec<T>,
        dout: &Vec<T>,
        da: &mut Vec<T>,
        db: &mut Vec<T>,
    ) -> Result<()> {
        r::mul_backward(n, a, b, dout, da, db)
    }
    fn scale(&self, n: usize, alpha: f32, x: &mut Vec<T>) -> Result<()> {
        r::scale(n, cast(alpha), x)
    }
    fn axpy(&self, n: usize, alpha: f32, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        r::axpy(n, cast(alpha), x, y)
    }
    fn copy_cols(&self, spec: &ColCopy, src: &Vec<T>, dst: &mut Vec<T>) -> Result<()> {
        r::copy_cols(spec, src, dst)
    }

    fn softmax_rows(&self, shape: Shape, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        r::softmax_rows(shape, x, y)
    }
    fn softmax_rows_backward(&self, shape: Shape, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        r::softmax_rows_backward(shape, y, dy, dx)
    }

    fn layer_norm_forward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<T>,
        gamma: &Vec<T>,
        beta: &Vec<T>,
        y: &mut Vec<T>,
        stats: &mut NormStats<Self>,
    ) -> Result<()> {
        r::layer_norm_forward(spec, x, gamma, beta, y, &mut stats.mean, &mut stats.rstd)
    }
    fn layer_norm_backward(
        &self,
        spec: &LayerNormSpec,
        x: &Vec<T>,
        gamma: &Vec<T>,
        stats: &NormStats<Self>,
        dy: &Vec<T>,
        dx: &mut Vec<T>,
        dgamma: &mut Vec<T>,
        dbeta: &mut Vec<T>,
    ) -> Result<()> {
        r::layer_norm_backward(spec, x, gamma, &stats.mean, &stats.rstd, dy, dx, dgamma, dbeta)
    }

    fn gather_rows(&self, spec: &GatherSpec, ids: &Vec<u32>, table: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::gather_rows(spec, ids, table, out)
    }
    fn gather_pooled(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        table: &Vec<T>,
        out: &mut Vec<T>,
    ) -> Result<()> {
        r::gather_pooled(spec, pooling, offsets, ids, table, out)
    }
    fn scatter_rows_grad(
        &self,
        spec: &GatherSpec,
        ids: &Vec<u32>,
        dout: &Vec<T>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let (unique, rows) = r::scatter_rows_grad(spec, ids, dout)?;
        store_sparse(spec.dim, &unique, &rows, grad);
        Ok(())
    }
    fn scatter_pooled_grad(
        &self,
        spec: &GatherSpec,
        pooling: Pooling,
        offsets: &Vec<u32>,
        ids: &Vec<u32>,
        dout: &Vec<T>,
        grad: &mut SparseGrad<Self>,
    ) -> Result<()> {
        let (unique, rows) = r::scatter_pooled_grad(spec, pooling, offsets, ids, dout)?;
        store_sparse(spec.dim, &unique, &rows, grad);
        Ok(())
    }

    fn sum_rows(&self, shape: Shape, x: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::sum_rows(shape, x, out)
    }
    fn sum_cols(&self, shape: Shape, x: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        r::sum_cols(shape, x, out)
    }
    fn sum(&self, n: usize, x: &Vec<T>) -> Result<f32> {
        Ok(r::sum(n, x)? as f32)
    }

    fn bce_with_logits(
        &self,
        n: usize,
        input: LossInput<'_, Vec<T>>,
        grad: &mut Vec<T>,
        write: GradWrite,
    ) -> Result<f32> {
        Ok(loss::bce_with_logits(n, slices(&input), grad, write)? as f32)
    }
    fn mse(&self, n: usize, input: LossInput<'_, Vec<T>>, grad: &mut Vec<T>, write: GradWrite) -> Result<f32> {
        Ok(loss::mse(n, slices(&input), grad, write)? as f32)
    }
}

fn slices<'a, T>(input: &LossInput<'a, Vec<T>>) -> LossInput<'a, [T]> {
    LossInput {
        pred: input.pred.as_slice(),
        target: input.target.as_slice(),
        weight: input.weight.map(|w| w.as_slice()),
        mask: input.mask.map(|m| m.as_slice()),
    }
}
