use std::io;
use std::path::{Path, PathBuf};

/// Errors of the cache. All of them are environment errors (disk, permissions) except
/// [`CacheError::Corrupt`], which callers usually turn into a miss plus a warning.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An I/O operation failed.
    #[error("Failed {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done ("reading", "storing an object at", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A cache file exists but cannot be trusted.
    #[error("Corrupt cache entry `{}`: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl CacheError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
