//! Errors of model construction and execution.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A layer refused its configuration or inputs.
    #[error("{context}: {source}")]
    Layer {
        context: String,
        #[source]
        source: Box<mixrank_nn::NnError>,
    },
    /// An engine op failed outside any layer (e.g. summing gradients).
    #[error("{context}: {source}")]
    Engine {
        context: String,
        #[source]
        source: Box<mixrank_engine::EngineError>,
    },
    /// The `[model]` section asks for something this build cannot make.
    #[error("model.{key}: {message}")]
    Unsupported { key: String, message: String },
    /// Inputs do not match the model (e.g. the wrong number of task gradients).
    #[error("{0}")]
    Mismatch(String),
    /// Data-parallel training: an exchange with the other ranks failed (the transport's
    /// error, or what a rank sent).
    #[error("{context}: exchanging rows with the other ranks: {message}")]
    Exchange { context: String, message: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Attaches a human-readable location (e.g. `experts[2] (dcnv2)`) to layer errors.
pub(crate) trait Context<T> {
    fn at(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, mixrank_nn::NnError> {
    fn at(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ModelError::Layer { context: context(), source: Box::new(source) })
    }
}

impl<T> Context<T> for std::result::Result<T, mixrank_engine::EngineError> {
    fn at(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ModelError::Engine { context: context(), source: Box::new(source) })
    }
}
