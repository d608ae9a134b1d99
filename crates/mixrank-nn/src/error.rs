//! The crate's error type.

use mixrank_engine::EngineError;

/// Result alias used by every layer.
pub type Result<T> = std::result::Result<T, NnError>;

/// Why a layer refused to build or run. Every variant names the layer, so a message in a
/// log points at the module without a backtrace.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NnError {
    /// Two dimensions that must agree do not (e.g. a layer's `d_in` and its input width).
    #[error("{layer}: {lhs} = {lhs_dim} does not match {rhs} = {rhs_dim}")]
    DimMismatch { layer: &'static str, lhs: &'static str, lhs_dim: usize, rhs: &'static str, rhs_dim: usize },
    /// A configuration field is outside its domain.
    #[error("{layer}: invalid {field}: {reason}")]
    InvalidConfig { layer: &'static str, field: &'static str, reason: String },
    /// A forward was asked for more rows than the workspaces were allocated for.
    #[error("{layer}: batch {batch} exceeds max_batch {max_batch} the workspaces were allocated for")]
    BatchTooLarge { layer: &'static str, batch: usize, max_batch: usize },
    /// `backward` was called without a training-mode `forward` before it.
    #[error("{layer}: backward called without a preceding training forward")]
    NoForward { layer: &'static str },
    /// An engine op rejected its arguments.
    #[error("{layer}: {source}")]
    Engine {
        layer: &'static str,
        #[source]
        source: EngineError,
    },
}

/// Attaches the layer name to an engine error.
pub(crate) trait Ctx<T> {
    fn ctx(self, layer: &'static str) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, EngineError> {
    fn ctx(self, layer: &'static str) -> Result<T> {
        self.map_err(|source| NnError::Engine { layer, source })
    }
}

/// `Ok` iff `lhs_dim == rhs_dim`.
pub(crate) fn same_dim(
    layer: &'static str,
    lhs: &'static str,
    lhs_dim: usize,
    rhs: &'static str,
    rhs_dim: usize,
) -> Result<()> {
    if lhs_dim != rhs_dim {
        return Err(NnError::DimMismatch { layer, lhs, lhs_dim, rhs, rhs_dim });
    }
    Ok(())
}

/// `Ok` iff `value > 0`.
pub(crate) fn positive(layer: &'static str, field: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(NnError::InvalidConfig { layer, field, reason: "must be at least 1".into() });
    }
    Ok(())
}

/// `Ok` iff `batch <= max_batch`.
pub(crate) fn batch_fits(layer: &'static str, batch: usize, max_batch: usize) -> Result<()> {
    if batch > max_batch {
        return Err(NnError::BatchTooLarge { layer, batch, max_batch });
    }
    Ok(())
}
