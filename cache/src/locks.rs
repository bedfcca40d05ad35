//! Advisory file locks (`flock`) that keep two processes from running the same stage at once.
//!
//! The kernel releases a lock when its holder dies, even by SIGKILL, so a crashed run never
//! leaves a stale lock behind.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::digest::StageKey;
use crate::error::CacheError;

/// The lock every run holds shared and `gc` exclusively.
const IN_USE: &str = "in-use";

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// The "in use" lock held exclusively: no run uses the cache while it lives. [`crate::Cache::gc`]
/// takes one, so that what decides the roots (the lockfiles) is read once no run can change it.
#[derive(Debug)]
pub struct GcGuard(#[allow(dead_code)] LockGuard);

/// Where stage locks live: `<cache>/locks/v1/<key>.lock`.
#[derive(Clone, Debug)]
pub struct Locks {
    root: PathBuf,
}

impl Locks {
    pub(crate) fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("locks").join("v1"),
        }
    }

    fn open(&self, name: &str) -> Result<(File, PathBuf), CacheError> {
        fs::create_dir_all(&self.root).map_err(|e| CacheError::io("creating", &self.root, e))?;
        let path = self.root.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CacheError::io("opening", &path, e))?;
        Ok((file, path))
    }

    /// Takes the lock of a stage key if nobody holds it.
    pub fn try_lock_stage(&self, key: &StageKey) -> Result<Option<LockGuard>, CacheError> {
        self.try_lock(&key.to_hex())
    }

    /// Waits for the lock of a stage key.
    pub fn lock_stage(&self, key: &StageKey) -> Result<LockGuard, CacheError> {
        self.lock(&key.to_hex())
    }

    /// Takes a named lock if free (e.g. `"lockfile"` for the project's `mipipe.lock`).
    pub fn try_lock(&self, name: &str) -> Result<Option<LockGuard>, CacheError> {
        let (file, path) = self.open(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard { file, path })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(CacheError::io("locking", &path, e)),
        }
    }

    /// Waits for the shared "in use" lock that every run holds for its whole duration (any
    /// number of runs at once); only [`Locks::lock_for_gc`] excludes it.
    pub fn lock_in_use(&self) -> Result<LockGuard, CacheError> {
        let (file, path) = self.open(IN_USE)?;
        file.lock_shared()
            .map_err(|e| CacheError::io("locking", &path, e))?;
        Ok(LockGuard { file, path })
    }

    /// Takes the "in use" lock exclusively if no run holds it: `gc` collects only then, so it
    /// never removes what a live run reads or has just written.
    pub fn try_lock_for_gc(&self) -> Result<Option<GcGuard>, CacheError> {
        Ok(self.try_lock(IN_USE)?.map(GcGuard))
    }

    /// Waits until no run holds the "in use" lock, and takes it exclusively.
    pub fn lock_for_gc(&self) -> Result<GcGuard, CacheError> {
        self.lock(IN_USE).map(GcGuard)
    }

    /// Waits for a named lock.
    pub fn lock(&self, name: &str) -> Result<LockGuard, CacheError> {
        let (file, path) = self.open(name)?;
        file.lock()
            .map_err(|e| CacheError::io("locking", &path, e))?;
        Ok(LockGuard { file, path })
    }
}
