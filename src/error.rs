//! One error type for the whole library. Every variant carries enough context
//! for the CLI to print a single line that names the problem and the fix.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter found{}: {hint}", backend_note(.backend))]
    NoAdapter {
        backend: Option<String>,
        hint: String,
    },

    #[error("adapter '{wanted}' not found; available adapters: {available}")]
    AdapterNotFound { wanted: String, available: String },

    #[error("could not open the GPU device on '{adapter}': {reason}")]
    DeviceRequest { adapter: String, reason: String },

    #[error("GPU device lost: {0}; rerun the command (a driver reset or out-of-memory usually causes this)")]
    DeviceLost(String),

    #[error("GPU out of memory while {what}: {detail}; use a smaller batch or image size")]
    OutOfMemory { what: String, detail: String },

    #[error("GPU validation error in {what}: {detail}")]
    Validation { what: String, detail: String },

    #[error("shader '{name}' failed to compile: {detail}")]
    Shader { name: String, detail: String },

    #[error("shape error in {op}: {detail}")]
    Shape { op: String, detail: String },

    #[error("{op}: unsupported parameter: {detail}")]
    Unsupported { op: String, detail: String },

    #[error("{what} needs {needed} but the device allows at most {limit} ({name}); {fix}")]
    LimitExceeded {
        what: String,
        needed: u64,
        limit: u64,
        name: &'static str,
        fix: String,
    },

    #[error(
        "training diverged: the loss became {value} at step {step}; lower --lr (or raise --warmup)"
    )]
    Diverged { value: f32, step: u64 },

    /// A broken invariant inside delg-gpu, not a user mistake: the message
    /// asks for a bug report.
    #[error("internal error (please report it): {0}")]
    Internal(String),

    #[error("{}: {reason}", .path.display())]
    File { path: PathBuf, reason: String },

    /// An operating-system error on a file, kept as the source.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A download that failed; `fix` says how to do it by hand.
    #[error("could not download {url}: {reason}; {fix}")]
    Download {
        url: String,
        reason: String,
        fix: String,
    },
}

fn backend_note(backend: &Option<String>) -> String {
    backend
        .as_ref()
        .map(|b| format!(" for backend {b}"))
        .unwrap_or_default()
}

impl Error {
    /// An I/O error on `path`, for `map_err(|e| Error::io(path, e))`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A problem with the content of the file at `path`.
    pub fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            detail: detail.into(),
        }
    }
    pub fn unsupported(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Unsupported {
            op: op.into(),
            detail: detail.into(),
        }
    }
}
