//! Argument checks with the engine's errors, as `mixrank-engine`'s (private) `check`
//! module makes them, so this backend rejects the calls the host backends reject.

use mixrank_engine::{ColCopy, EngineError, GatherSpec, GemmSpec, MatLayout, Result, Shape};

pub fn holds(op: &'static str, operand: &'static str, len: usize, shape: &[usize], needed: usize) -> Result<()> {
    if len < needed {
        return Err(EngineError::BufferTooSmall { op, operand, shape: shape.to_vec(), needed, len });
    }
    Ok(())
}

pub fn matrix(op: &'static str, operand: &'static str, len: usize, shape: Shape) -> Result<()> {
    holds(op, operand, len, &[shape.rows, shape.cols], shape.len())
}

pub fn vector(op: &'static str, operand: &'static str, len: usize, n: usize) -> Result<()> {
    holds(op, operand, len, &[n], n)
}

fn strided(op: &'static str, operand: &'static str, len: usize, [rows, cols]: [usize; 2], l: MatLayout) -> Result<()> {
    if rows > 1 && l.ld < cols {
        return Err(EngineError::ShapeMismatch {
            op,
            lhs: "leading dimension",
            lhs_shape: vec![l.ld],
            rhs: operand,
            rhs_shape: vec![rows, cols],
        });
    }
    let needed = if rows == 0 || cols == 0 { 0 } else { l.offset + (rows - 1) * l.ld + cols };
    holds(op, operand, len, &[rows, cols], needed)
}

pub fn gemm(spec: &GemmSpec, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
    const OP: &str = "gemm";
    strided(OP, "a", a_len, spec.stored_a(), spec.a)?;
    strided(OP, "b", b_len, spec.stored_b(), spec.b)?;
    strided(OP, "c", c_len, [spec.m, spec.n], spec.c)
}

pub fn col_copy(spec: &ColCopy, src_len: usize, dst_len: usize) -> Result<()> {
    const OP: &str = "copy_cols";
    if spec.src_col + spec.cols > spec.src_ld {
        return Err(EngineError::ShapeMismatch {
            op: OP,
            lhs: "src column block [src_col, cols]",
            lhs_shape: vec![spec.src_col, spec.cols],
            rhs: "src_ld",
            rhs_shape: vec![spec.src_ld],
        });
    }
    if spec.dst_col + spec.cols > spec.dst_ld {
        return Err(EngineError::ShapeMismatch {
            op: OP,
            lhs: "dst column block [dst_col, cols]",
            lhs_shape: vec![spec.dst_col, spec.cols],
            rhs: "dst_ld",
            rhs_shape: vec![spec.dst_ld],
        });
    }
    holds(OP, "src", src_len, &[spec.rows, spec.src_ld], spec.rows * spec.src_ld)?;
    holds(OP, "dst", dst_len, &[spec.rows, spec.dst_ld], spec.rows * spec.dst_ld)
}

pub fn gather(op: &'static str, spec: &GatherSpec, table_len: usize, out_len: usize) -> Result<()> {
    if spec.col_offset + spec.dim > spec.out_cols {
        return Err(EngineError::ShapeMismatch {
            op,
            lhs: "embedding block [col_offset, dim]",
            lhs_shape: vec![spec.col_offset, spec.dim],
            rhs: "out [batch, out_cols]",
            rhs_shape: vec![spec.batch, spec.out_cols],
        });
    }
    holds(op, "table", table_len, &[spec.table_rows, spec.dim], spec.table_rows * spec.dim)?;
    holds(op, "out", out_len, &[spec.batch, spec.out_cols], spec.batch * spec.out_cols)
}

pub fn ids_in_range(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= rows) {
        Some(position) => Err(EngineError::IdOutOfRange { op, id: ids[position], position, rows }),
        None => Ok(()),
    }
}

/// CSR offsets (read back to the host) for `batch` bags over `ids_len` ids; returns the
/// number of ids used.
pub fn offsets(op: &'static str, offsets: &[u32], batch: usize, ids_len: usize) -> Result<usize> {
    holds(op, "offsets", offsets.len(), &[batch + 1], batch + 1)?;
    if offsets[0] != 0 {
        return Err(EngineError::InvalidOffsets { op, index: 0, reason: "offsets[0] must be 0" });
    }
    for b in 0..batch {
        if offsets[b + 1] < offsets[b] {
            return Err(EngineError::InvalidOffsets { op, index: b + 1, reason: "offsets must be non-decreasing" });
        }
    }
    let nnz = offsets[batch] as usize;
    holds(op, "ids", ids_len, &[nnz], nnz)?;
    Ok(nnz)
}

/// Checks of a per-example loss's inputs (as loss.rs `check_input`).
pub fn loss_input(
    op: &'static str,
    n: usize,
    pred: usize,
    target: usize,
    weight: Option<usize>,
    mask: Option<usize>,
    grad: usize,
) -> Result<()> {
    vector(op, "pred", pred, n)?;
    vector(op, "target", target, n)?;
    if let Some(w) = weight {
        vector(op, "weight", w, n)?;
    }
    if let Some(m) = mask {
        vector(op, "mask", m, n)?;
    }
    vector(op, "grad", grad, n)
}
