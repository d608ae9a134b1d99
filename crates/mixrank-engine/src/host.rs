//! Helpers shared by the two host-memory backends ([`crate::CpuOps`], [`crate::RefOps`](type@crate::RefOps)),
//! whose buffers are plain `Vec`s.

use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::ops::{Backend, LossInput, SparseGrad};

/// Copies `src` into the front of `dst`.
pub fn copy<T: Copy>(op: &'static str, src: &[T], dst: &mut [T]) -> Result<()> {
    check::vector(op, "dst", dst.len(), src.len())?;
    dst[..src.len()].copy_from_slice(src);
    Ok(())
}

/// Fills `dst` from the front of `src`.
pub fn copy_out<T: Copy>(op: &'static str, src: &[T], dst: &mut [T]) -> Result<()> {
    check::vector(op, "src", src.len(), dst.len())?;
    dst.copy_from_slice(&src[..dst.len()]);
    Ok(())
}

/// Borrows a loss input over `Vec`s as one over slices.
pub fn loss_slices<'a, T>(input: &LossInput<'a, Vec<T>>) -> LossInput<'a, [T]> {
    LossInput {
        pred: input.pred.as_slice(),
        target: input.target.as_slice(),
        weight: input.weight.map(|w| w.as_slice()),
        mask: input.mask.map(|m| m.as_slice()),
    }
}

/// Makes room for `touched` positions (grows, i.e. allocates, only past capacity).
pub fn reserve_sparse<T: Float, B>(grad: &mut SparseGrad<B>, dim: usize, touched: usize)
where
    B: Backend<Buf = Vec<T>, Ids = Vec<u32>>,
{
    grad.dim = dim;
    if grad.ids.len() < touched {
        grad.ids.resize(touched, 0);
        grad.scratch.resize(touched, 0);
    }
    if grad.rows.len() < touched * dim {
        grad.rows.resize(touched * dim, T::ZERO);
    }
}

/// Stores distinct ids and their rows into `grad`.
pub fn store_sparse<T: Float, B>(dim: usize, ids: &[u32], rows: &[T], grad: &mut SparseGrad<B>)
where
    B: Backend<Buf = Vec<T>, Ids = Vec<u32>>,
{
    reserve_sparse(grad, dim, ids.len());
    grad.ids[..ids.len()].copy_from_slice(ids);
    grad.rows[..rows.len()].copy_from_slice(rows);
    grad.len = ids.len();
}
