//! A stat cache for workspace files that stages depend on, so a no-op run re-hashes nothing.
//!
//! An entry is trusted while the file's size, modification time (ns), inode and change time
//! are unchanged. Files modified in the last two seconds are never recorded, since a write in
//! the same timestamp tick could leave the stat unchanged (the "racy git" problem).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::digest::ObjectDigest;
use crate::error::CacheError;
use crate::fsutil::{hash_file, write_atomic};
use crate::runs::now_unix_ms;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    digest: ObjectDigest,
}

#[derive(Default, Serialize, Deserialize)]
struct Table {
    version: u32,
    files: BTreeMap<PathBuf, Stamp>,
}

/// Digests of workspace files, remembered by stat.
pub struct FileDigests {
    path: PathBuf,
    table: Mutex<(Table, bool)>,
}

impl FileDigests {
    pub(crate) fn open(cache_root: &Path) -> Self {
        let path = cache_root
            .join("state")
            .join("v1")
            .join("file-digests.json");
        let table = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Table>(&b).ok())
            .filter(|t| t.version == 1)
            .unwrap_or(Table {
                version: 1,
                files: BTreeMap::new(),
            });
        Self {
            path,
            table: Mutex::new((table, false)),
        }
    }

    /// The digest of a file, from the stat cache when its stat is unchanged.
    pub fn digest(&self, file: &Path) -> std::io::Result<ObjectDigest> {
        let absolute = fs::canonicalize(file)?;
        let meta = fs::metadata(&absolute)?;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let ctime_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        {
            let guard = self.table.lock().expect("file digest table poisoned");
            if let Some(stamp) = guard.0.files.get(&absolute) {
                if stamp.size == meta.len()
                    && stamp.mtime_ns == mtime_ns
                    && stamp.ctime_ns == ctime_ns
                    && stamp.inode == meta.ino()
                {
                    return Ok(stamp.digest);
                }
            }
        }
        let digest = hash_file(&absolute)?;
        let now_ns = i128::from(now_unix_ms()) * 1_000_000;
        if now_ns - mtime_ns.max(ctime_ns) > 2_000_000_000 {
            let mut guard = self.table.lock().expect("file digest table poisoned");
            guard.0.files.insert(
                absolute,
                Stamp {
                    size: meta.len(),
                    mtime_ns,
                    ctime_ns,
                    inode: meta.ino(),
                    digest,
                },
            );
            guard.1 = true;
        }
        Ok(digest)
    }

    /// Writes the table back if anything was added.
    pub fn save(&self) -> Result<(), CacheError> {
        let guard = self.table.lock().expect("file digest table poisoned");
        if !guard.1 {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&guard.0).expect("the table always serialises");
        write_atomic(&self.path, &bytes).map_err(|e| CacheError::io("writing", &self.path, e))
    }
}
