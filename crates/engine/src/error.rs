//! Engine errors: each names the file, tensor or limit involved.

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The GGUF file itself is malformed or unreadable.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// `general.architecture` names an architecture we do not implement.
    #[error("unsupported architecture '{0}' (supported: {1})")]
    UnsupportedArchitecture(String, String),
    /// A required metadata key is missing or has the wrong type.
    #[error("metadata key '{0}' is missing or has the wrong type")]
    MissingKey(String),
    /// A metadata value is out of range or inconsistent.
    #[error("invalid model metadata: {0}")]
    BadMetadata(String),
    /// A required tensor is missing.
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    /// A tensor's shape or type does not fit the architecture.
    #[error("tensor '{name}': {what}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong with it.
        what: String,
    },
    /// The prompt (plus what is already cached) does not fit in the context.
    #[error("prompt has {tokens} tokens but the context holds {ctx} (raise -c or shorten the prompt)")]
    ContextFull {
        /// Tokens wanted in the context.
        tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {0} is outside the vocabulary ({1} tokens)")]
    BadToken(u32, usize),
    /// A file of tandem's own (calibration, cache) cannot be read or written.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        what: String,
    },
    /// Anything else the caller asked for that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

/// Engine result.
pub type Result<T> = std::result::Result<T, EngineError>;
