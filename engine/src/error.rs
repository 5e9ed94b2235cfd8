//! The engine's error type.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

/// A connector's error, kept whole (its type and its own causes) inside [`EngineError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the engine: loading SQL, compiling views,
/// running micro-batches, and reading or writing checkpoints.
///
/// As with DataFusion's errors, a variant's message includes its cause's, and
/// `source()` hands out the cause itself, for code that inspects it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A SQL file could not be read, parsed or planned. `line` is 1-based; 0 when the
    /// problem is the file itself (missing, unreadable).
    #[error("{}{}: {message}", file.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
    Sql { file: PathBuf, line: usize, message: String },
    /// A view uses a construct the incremental engine cannot maintain.
    #[error("{}:{line}: view `{view}` cannot be maintained incrementally: {construct}", file.display())]
    Unsupported { file: PathBuf, line: usize, view: String, construct: String },
    /// A view failed while processing a micro-batch or restoring its state.
    #[error("{}:{line}: view `{view}`: {source}", file.display())]
    View {
        file: PathBuf,
        line: usize,
        view: String,
        #[source]
        source: Box<EngineError>,
    },
    /// A run-time binding (`--source name=...`) names an unknown table or is malformed.
    #[error("source binding `{binding}`: {message}")]
    Binding { binding: String, message: String },
    /// A checkpoint could not be written or read back.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// A source failed while producing a micro-batch; `cause` is the connector's own error.
    #[error("source `{source_name}`: {cause}")]
    Source {
        source_name: String,
        #[source]
        cause: BoxError,
    },
    /// A sink failed to apply or flush a changeset; the cause is the connector's own error.
    #[error("sink: {0}")]
    Sink(#[source] BoxError),
    /// DataFusion failed while executing a plan.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed while assembling batches.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl EngineError {
    /// A broken invariant of the engine (a bug, not bad input), as DataFusion reports its own.
    pub(crate) fn internal(message: &str) -> Self {
        Self::DataFusion(DataFusionError::Internal(message.into()))
    }
}

/// Result alias used across the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
