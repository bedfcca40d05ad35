//! mipipe-cache: where stage results live.
//!
//! A cache folder (`.mipipe/` in the project, or a shared path for a cluster) holds:
//!
//! ```text
//! <cache>/
//!   objects/v1/ab/cdef..        content-addressed files (blake3), read-only
//!   actions/v1/ab/<key>.json    stage key -> manifest of output digests (ActionEntry)
//!   trees/v1/<digest>/          read-only checkouts of directory outputs
//!   runs/v1/<key>/<id>/         one folder per attempt: `log` and `record.json`
//!   locks/v1/<name>.lock        flock(2) locks: one per stage key being computed
//!   state/v1/file-digests.json  stat cache of workspace files
//!   tmp/                        stage scratch folders, same filesystem as objects/
//!   quarantine/v1/              objects `verify` found corrupt
//! ```
//!
//! Tables (datasets, predictions, metrics) are Parquet files written by [`write_table`] with
//! pinned settings, so identical rows give identical bytes and identical digests.
//!
//! Protocol: a stage writes into a folder under `tmp/`; its outputs are hashed and renamed
//! into `objects/`; only then is the action entry written, atomically. So an action entry
//! always describes a complete success, a crash leaves at worst unreferenced temp files, and
//! a failure is never cached. Every format carries a version in its path.
//!
//! This crate depends on no other mipipe crate.

mod actions;
mod digest;
mod error;
mod file_digests;
mod fsutil;
mod locks;
mod maintenance;
mod runs;
mod store;
mod table;

use std::fs;
use std::path::{Path, PathBuf};

pub use actions::{ActionCache, ActionEntry, Lookup};
/// Arrow types used by tables, re-exported so stage crates use the same versions.
pub use arrow_array;
/// Arrow schema types.
pub use arrow_schema;
pub use digest::{ObjectDigest, StableHash, StableHasher, StageKey, Tag};
pub use error::CacheError;
pub use file_digests::FileDigests;
pub use fsutil::{hash_file, remove_all, unique_temp_name, write_atomic};
pub use locks::{GcGuard, LockGuard, Locks};
pub use maintenance::{DiskUsage, GcPolicy, GcReport, VerifyReport};
pub use runs::{now_unix_ms, RunDir, RunOutcome, RunRecord, Runs};
pub use store::{ObjectStore, OutputKind, StoredOutput, TreeEntry, TreeManifest};
pub use table::{read_table, write_table, TableError, PARQUET_CREATED_BY};

/// A cache folder and its parts.
pub struct Cache {
    root: PathBuf,
    store: ObjectStore,
    actions: ActionCache,
    locks: Locks,
    runs: Runs,
    file_digests: FileDigests,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        fs::create_dir_all(root.join("tmp")).map_err(|e| CacheError::Io {
            action: "creating the cache folder",
            path: root.to_path_buf(),
            source: e,
        })?;
        let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        Ok(Self {
            store: ObjectStore::new(&root),
            actions: ActionCache::new(&root),
            locks: Locks::new(&root),
            runs: Runs::new(&root),
            file_digests: FileDigests::open(&root),
            root,
        })
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of one area of the cache at its format version, `<root>/<name>/v1`: where
    /// the other crates keep what they store here (`state` for the up-to-date memo, `slurm`
    /// for the Slurm executor), so that every path under the root is decided in this crate.
    pub fn area(&self, name: &str) -> PathBuf {
        self.root.join(name).join("v1")
    }

    /// The file in `dir` that holds a record about one pipeline: named by the first 32 hex
    /// digits of the blake3 of the pipeline file's canonical path, `.json`.
    pub fn pipeline_file(dir: &Path, pipeline: &Path) -> PathBuf {
        let absolute = fs::canonicalize(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
        let hex = ObjectDigest::of_bytes(absolute.to_string_lossy().as_bytes()).to_hex();
        dir.join(format!("{}.json", &hex[..32]))
    }

    /// The object store.
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// The action cache.
    pub fn actions(&self) -> &ActionCache {
        &self.actions
    }

    /// Stage and named locks.
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    /// Run records and logs.
    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The stat cache of workspace file digests.
    pub fn file_digests(&self) -> &FileDigests {
        &self.file_digests
    }

    /// Whether `dest` in the workspace already holds exactly this output (checked through the
    /// stat cache, so a no-op run re-hashes nothing).
    pub fn is_copy_current(&self, output: &StoredOutput, dest: &Path) -> bool {
        match output.kind {
            OutputKind::File => {
                dest.is_file() && self.file_digests.digest(dest).ok() == Some(output.digest)
            }
            OutputKind::Dir => {
                dest.is_dir()
                    && TreeManifest::describe(dest, |p| self.file_digests.digest(p))
                        .is_ok_and(|m| m.digest() == output.digest)
            }
        }
    }

    /// Whether `dest` may be replaced by a materialized output: it does not exist, or it is an
    /// earlier copy of some stored output (a file whose bytes are an object here, or a folder
    /// whose whole tree is), so replacing it loses nothing. A symlink never is.
    pub fn is_earlier_copy(&self, dest: &Path) -> bool {
        let Ok(meta) = fs::symlink_metadata(dest) else {
            return true;
        };
        if meta.is_file() {
            return self
                .file_digests
                .digest(dest)
                .is_ok_and(|d| self.store.path_of(&d).is_file());
        }
        meta.is_dir()
            && TreeManifest::describe(dest, |p| self.file_digests.digest(p))
                .is_ok_and(|m| self.store.read_tree(&m.digest()).is_ok())
    }

    /// A fresh scratch folder on the cache's filesystem, named so `gc` can tell whether its
    /// owner is still alive.
    pub fn scratch_dir(&self, label: &str) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("tmp").join(format!(
            "{}-{label}",
            unique_temp_name("stage").trim_start_matches('.')
        ));
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("creating", &dir, e))?;
        Ok(dir)
    }
}
