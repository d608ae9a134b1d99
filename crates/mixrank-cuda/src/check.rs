//! Argument checks with the engine's errors: `mixrank-engine`'s shared `check` module
//! (so this backend rejects the calls the host backends reject, with the same errors),
//! and the loss inputs' lengths, which the host backends check inside their loss code.

pub use mixrank_engine::check::{col_copy, gather, gemm, holds, ids_in_range, matrix, offsets, vector};
use mixrank_engine::Result;

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
