//! Errors of training and evaluation.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] mixrank_data::DataError),
    #[error(transparent)]
    Model(#[from] mixrank_model::ModelError),
    #[error("{context}: {source}")]
    Layer {
        context: &'static str,
        #[source]
        source: Box<mixrank_nn::NnError>,
    },
    #[error("{context}: {source}")]
    Engine {
        context: &'static str,
        #[source]
        source: Box<mixrank_engine::EngineError>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint that cannot be used: corrupt, partial, of another format or another model.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: std::path::PathBuf, message: String },
    /// `--resume` found nothing usable, or the config differs from the checkpoint's.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// `--init` cannot map the parent onto the new config (e.g. the head changed).
    #[error("cannot warm-start from {}: {message}", parent.display())]
    WarmStart { parent: std::path::PathBuf, message: String },
    /// A run directory that is not there.
    #[error("{}: no such run directory", path.display())]
    NoRunDir { path: std::path::PathBuf },
    /// The run directory holds another run, or another process writes it.
    #[error("{0}")]
    RunDir(String),
    #[error("training diverged at step {step}: task `{task}` loss is {loss}")]
    Diverged { step: u64, task: String, loss: f32 },
    /// Data-parallel training: a collective operation failed (a rank left), the replicas'
    /// weights differ, or an option that does not run distributed yet was asked for.
    #[error("distributed training: {0}")]
    Distributed(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn layer(context: &'static str) -> impl Fn(mixrank_nn::NnError) -> TrainError {
    move |source| TrainError::Layer { context, source: Box::new(source) }
}

/// A loss value, or [`TrainError::Diverged`] naming what diverged (`what`, built only
/// then) and the step.
pub(crate) fn finite_loss(loss: f64, step: u64, what: impl FnOnce() -> String) -> Result<f64> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(TrainError::Diverged { step, task: what(), loss: loss as f32 })
    }
}

pub(crate) fn engine(context: &'static str) -> impl Fn(mixrank_engine::EngineError) -> TrainError {
    move |source| TrainError::Engine { context, source: Box::new(source) }
}

/// [`mixrank_data::atomic::write_atomic`] with the error as a [`TrainError`].
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    mixrank_data::atomic::write_atomic(path, bytes).map_err(|(path, source)| TrainError::Io { path, source })
}
