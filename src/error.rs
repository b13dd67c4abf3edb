//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// Messages are lowercase and name the offending file, tensor, field or argument, so that they
/// can be shown to a user as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration file (or value) could not be parsed or is inconsistent.
    #[error("invalid config{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Config {
        /// The file, when the config came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },

    /// The checkpoint asks for a model feature this crate does not implement. Loading it
    /// anyway would silently compute a different model.
    #[error("unsupported model setting `{field}`: {reason}")]
    Unsupported {
        /// The config field.
        field: String,
        /// Why it is not supported.
        reason: String,
    },

    /// A checkpoint file is malformed (bad header, truncated data, inconsistent index).
    #[error("malformed checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The model needs a tensor that the checkpoint does not contain.
    #[error("missing tensor `{name}` in checkpoint")]
    MissingTensor {
        /// Checkpoint name of the tensor.
        name: String,
    },

    /// The checkpoint contains tensors that the model does not use.
    #[error("checkpoint has {} unused tensor(s): {}", names.len(), names.join(", "))]
    UnusedTensors {
        /// Checkpoint names of the unused tensors (sorted).
        names: Vec<String>,
    },

    /// A checkpoint tensor has a different shape than the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Checkpoint name of the tensor.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        found: Vec<usize>,
    },

    /// A checkpoint tensor is stored in a dtype the loader cannot convert.
    #[error("tensor `{name}` has unsupported dtype {dtype} (expected F32, BF16 or F16)")]
    UnsupportedDtype {
        /// Checkpoint name of the tensor.
        name: String,
        /// The dtype found.
        dtype: String,
    },

    /// An argument of a public function (sampler setting, cache setting, tensor shape, ...) is
    /// out of range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument or setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The sequence would be longer than the model supports.
    #[error("sequence of {len} tokens exceeds the model maximum of {max}")]
    SequenceTooLong {
        /// Requested length.
        len: usize,
        /// Model maximum.
        max: usize,
    },

    /// A token id is not in the model's vocabulary.
    #[error(
        "token id {id} at batch row {row}, position {position} is outside the vocabulary of {vocab} entries"
    )]
    TokenOutOfRange {
        /// The token id.
        id: i64,
        /// Batch row.
        row: usize,
        /// Position in the row.
        position: usize,
        /// Vocabulary size (number of embedding rows).
        vocab: usize,
    },

    /// A tokenizer file is malformed, a chat template fails, or encoding/decoding fails.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A cache policy asked for something the feature cache cannot do (for example, to reuse
    /// features that were never computed).
    #[error("cache policy error at layer {layer}: {reason}")]
    Policy {
        /// The layer.
        layer: usize,
        /// What went wrong.
        reason: String,
    },

    /// The tensor backend reported an error (for example when reading a tensor back to the host).
    #[error("backend error: {0}")]
    Backend(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
