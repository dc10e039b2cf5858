//! The tool's error type: what can stop a benchmark before or after it runs
//! (bad input, bad flags, unreadable catalog, files that cannot be written).
//!
//! Failed calls are not errors here: a benchmark counts them by code and goes on.

use std::path::PathBuf;

/// Why a benchmark could not run or could not save its results.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A line of the latency input that is not a valid prompt; `line` counts from 1.
    #[error("{path}: line {line}: {message}")]
    Input {
        path: String,
        line: usize,
        message: String,
    },
    /// Flags that contradict each other or are out of range.
    #[error("invalid options: {0}")]
    Options(String),
    /// The model catalog could not be read or has no usable price.
    #[error("model catalog: {0}")]
    Catalog(String),
    /// The credentials or the HTTP client could not be set up.
    #[error("client setup: {0}")]
    Client(String),
    /// Reading an input or writing a result file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A baseline server could not start.
    #[error("{0}")]
    Listen(String),
    /// A histogram could not be built or merged.
    #[error("histogram: {0}")]
    Histogram(String),
}

impl BenchError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}
