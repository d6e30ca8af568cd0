//! One error type for the whole crate: every failure a user can cause (no adapter, out of GPU
//! memory, a bad file, a shape that does not fit) becomes a variant that says what and where.

use std::path::PathBuf;

/// Everything that can go wrong in plumb.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No GPU adapter matched (or none exists at all).
    #[error(
        "no GPU adapter found{0}. Install a GPU driver; on a headless Linux machine install Debian's \
         `mesa-vulkan-drivers` (lavapipe, a Vulkan driver that runs on the CPU). `plumb info` lists \
         what wgpu can see; PLUMB_BACKEND=vulkan|metal|dx12|gl and PLUMB_ADAPTER=<name> choose one"
    )]
    NoAdapter(String),
    /// The adapter refused to open a device.
    #[error("could not open a device on adapter `{adapter}`: {msg}")]
    Device { adapter: String, msg: String },
    /// A GPU allocation failed: the tensor, its size, what plumb already held, and the run's
    /// memory plan (see `plumb info --model`).
    #[error(
        "out of GPU memory allocating `{what}` ({bytes} bytes, with {held} bytes already in use); \
         try a smaller batch, `--checkpoint-activations`, LoRA or a smaller model. Memory plan:\n{plan}"
    )]
    OutOfMemory { what: String, bytes: u64, held: u64, plan: String },
    /// A tensor is larger than one buffer or one binding may be on this adapter.
    #[error("`{what}` needs {bytes} bytes but this adapter allows at most {limit} bytes per {kind}")]
    TooLarge { what: String, bytes: u64, limit: u64, kind: &'static str },
    /// Shapes or dtypes passed to an op do not fit together.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// wgpu reported a validation or internal error.
    #[error("GPU error in {context}: {msg}")]
    Gpu { context: String, msg: String },
    /// A loss or metric became NaN or infinite.
    #[error("non-finite value in {what}: {value}")]
    NonFinite { what: String, value: f64 },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but its content is wrong (bad header, truncated, wrong tensor, bad JSON).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A configuration or argument value is invalid.
    #[error("invalid {what}: {msg}")]
    Config { what: String, msg: String },
}

/// Result with plumb's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a [`Error::Shape`] error.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    /// Shorthand for an [`Error::Io`] error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// Shorthand for an [`Error::Format`] error at `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
    /// Shorthand for an [`Error::Config`] error.
    pub fn config(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { what: what.into(), msg: msg.into() }
    }
}
