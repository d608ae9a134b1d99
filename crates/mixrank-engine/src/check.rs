//! Argument validation shared by every backend, so all of them reject the same calls
//! with the same errors.

use crate::error::{EngineError, Result};
use crate::ops::{ColCopy, GatherSpec, GemmSpec, LayerNormSpec, MatLayout, Shape};

/// `len >= needed`, or a [`EngineError::BufferTooSmall`] naming the op and operand.
pub fn holds(op: &'static str, operand: &'static str, len: usize, shape: &[usize], needed: usize) -> Result<()> {
    if len < needed {
        return Err(EngineError::BufferTooSmall { op, operand, shape: shape.to_vec(), needed, len });
    }
    Ok(())
}

/// A dense `[rows, cols]` matrix fits in `len` elements.
pub fn matrix(op: &'static str, operand: &'static str, len: usize, shape: Shape) -> Result<()> {
    holds(op, operand, len, &[shape.rows, shape.cols], shape.len())
}

/// A vector of `n` elements fits in `len` elements.
pub fn vector(op: &'static str, operand: &'static str, len: usize, n: usize) -> Result<()> {
    holds(op, operand, len, &[n], n)
}

/// A strided `[rows, cols]` matrix at `layout` fits in `len` elements.
fn strided(
    op: &'static str,
    operand: &'static str,
    len: usize,
    [rows, cols]: [usize; 2],
    layout: MatLayout,
) -> Result<()> {
    if rows > 1 && layout.ld < cols {
        return Err(EngineError::ShapeMismatch {
            op,
            lhs: "leading dimension",
            lhs_shape: vec![layout.ld],
            rhs: operand,
            rhs_shape: vec![rows, cols],
        });
    }
    let needed = if rows == 0 || cols == 0 { 0 } else { layout.offset + (rows - 1) * layout.ld + cols };
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

/// Geometry of a gather/scatter: the column block fits in `out`, the table and output
/// buffers are large enough.
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

/// Every id is a valid row of a `rows`-row table.
pub fn ids_in_range(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= rows) {
        Some(position) => Err(EngineError::IdOutOfRange { op, id: ids[position], position, rows }),
        None => Ok(()),
    }
}

/// CSR offsets for `batch` bags over `ids_len` ids; returns the number of ids used
/// (`offsets[batch]`).
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

pub fn layer_norm(spec: &LayerNormSpec) -> Result<()> {
    if spec.eps.is_nan() || spec.eps < 0.0 {
        return Err(EngineError::InvalidArgument { op: "layer_norm", reason: "eps must be a non-negative number" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Transpose;

    #[test]
    fn gemm_rejects_short_buffers_and_small_ld() {
        let spec = GemmSpec::new(Transpose::Yes, Transpose::No, 3, 4, 5);
        assert!(gemm(&spec, 15, 20, 12).is_ok());
        let err = gemm(&spec, 14, 20, 12).unwrap_err();
        assert_eq!(
            err,
            EngineError::BufferTooSmall { op: "gemm", operand: "a", shape: vec![5, 3], needed: 15, len: 14 }
        );
        assert!(gemm(&spec.c_layout(0, 3), 15, 20, 100).is_err());
        // An offset block of a wider matrix.
        assert!(gemm(&spec.c_layout(2, 8), 15, 20, 2 + 2 * 8 + 4).is_ok());
        assert!(gemm(&spec.c_layout(2, 8), 15, 20, 2 + 2 * 8 + 3).is_err());
    }

    #[test]
    fn offsets_must_be_a_partition_prefix() {
        assert_eq!(offsets("t", &[0, 2, 2, 5], 3, 5), Ok(5));
        assert!(matches!(offsets("t", &[1, 2, 2, 5], 3, 5), Err(EngineError::InvalidOffsets { index: 0, .. })));
        assert!(matches!(offsets("t", &[0, 3, 2, 5], 3, 5), Err(EngineError::InvalidOffsets { index: 2, .. })));
        assert!(offsets("t", &[0, 2, 2, 6], 3, 5).is_err());
        assert!(offsets("t", &[0, 2, 2], 3, 5).is_err());
    }

    #[test]
    fn ids_out_of_range_name_the_position() {
        assert_eq!(
            ids_in_range("g", &[0, 9, 10], 10),
            Err(EngineError::IdOutOfRange { op: "g", id: 10, position: 2, rows: 10 })
        );
    }

    #[test]
    fn gather_block_must_fit_in_output() {
        let spec = GatherSpec { batch: 2, dim: 4, table_rows: 3, out_cols: 10, col_offset: 7 };
        let msg = gather("gather_rows", &spec, 12, 20).unwrap_err().to_string();
        assert_eq!(
            msg,
            "gather_rows: embedding block [col_offset, dim] [7, 4] does not match \
             out [batch, out_cols] [2, 10]"
        );
    }
}
