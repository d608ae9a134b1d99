//! Helpers shared by the two host-memory backends ([`crate::CpuOps`], [`crate::RefOps`](type@crate::RefOps)),
//! whose buffers are plain `Vec`s.

use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::ops::{Backend, LossInput, SparseGrad};
use crate::optim::{self, LazyAdamSpec, RowAdagradSpec, TableShape};

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
        weight_sum: input.weight_sum,
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

/// [`Backend::merge_sparse_grads`] over host buffers.
pub fn merge_sparse_grads<T: Float, B>(
    dim: usize,
    a: (usize, &Vec<u32>, &Vec<T>),
    b: (usize, &Vec<u32>, &Vec<T>),
    out: &mut SparseGrad<B>,
) -> Result<()>
where
    B: Backend<Buf = Vec<T>, Ids = Vec<u32>>,
{
    let view = |(len, ids, rows): (usize, &'_ Vec<u32>, &'_ Vec<T>)| -> Result<(usize, usize)> {
        check::vector("merge_sparse_grads", "ids", ids.len(), len)?;
        check::vector("merge_sparse_grads", "rows", rows.len(), len * dim)?;
        Ok((len, len * dim))
    };
    let ((la, ra), (lb, rb)) = (view(a)?, view(b)?);
    reserve_sparse(out, dim, la + lb);
    out.len = crate::optim::merge_two(
        dim,
        (&a.1[..la], &a.2[..ra]),
        (&b.1[..lb], &b.2[..rb]),
        &mut out.ids[..la + lb],
        &mut out.rows[..(la + lb) * dim],
    )?;
    Ok(())
}

/// [`Backend::rowwise_adagrad_update`] over host buffers.
#[allow(clippy::too_many_arguments)]
pub fn rowwise_adagrad<T: Float>(
    spec: &RowAdagradSpec,
    shape: TableShape,
    len: usize,
    ids: &[u32],
    rows: &[T],
    table: &mut [T],
    acc: &mut [T],
) -> Result<()> {
    optim::check_sparse("rowwise_adagrad", shape, len, &ids[..len.min(ids.len())], rows)?;
    optim::rowwise_adagrad(spec, shape, &ids[..len], &rows[..len * shape.dim], table, acc)
}

/// [`Backend::lazy_adam_update`] over host buffers.
#[allow(clippy::too_many_arguments)]
pub fn lazy_adam<T: Float>(
    spec: &LazyAdamSpec,
    shape: TableShape,
    len: usize,
    ids: &[u32],
    rows: &[T],
    table: &mut [T],
    m: &mut [T],
    v: &mut [T],
    steps: &mut [u32],
) -> Result<()> {
    optim::check_sparse("lazy_adam", shape, len, &ids[..len.min(ids.len())], rows)?;
    optim::lazy_adam(spec, shape, &ids[..len], &rows[..len * shape.dim], table, m, v, steps)
}
