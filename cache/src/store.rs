//! The content-addressed object store.
//!
//! ```text
//! <cache>/objects/v1/ab/cdef...   file content, read-only, named by its blake3 digest
//! ```
//! A directory output is stored as its files plus a *tree manifest* object (JSON listing each
//! relative path, digest and executable bit); the directory's digest is the manifest's digest.
//! Trees are checked out, read-only, under `<cache>/trees/v1/<digest>/` when a stage needs a
//! directory input as a path.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::ObjectDigest;
use crate::error::CacheError;
use crate::fsutil::{self, hash_file, make_read_only, sync_dir, unique_temp_name};

/// Whether an output is one file or a directory tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A single file.
    File,
    /// A directory, stored as a tree manifest.
    Dir,
}

/// A stored output: what an action-cache entry and the lockfile record for each output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutput {
    /// File or directory.
    pub kind: OutputKind,
    /// The object digest (of the file, or of the tree manifest).
    pub digest: ObjectDigest,
    /// Total size in bytes of the file, or of every file in the tree.
    pub size: u64,
}

/// One file of a tree manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the tree root, `/`-separated.
    pub path: String,
    /// The file's object digest.
    pub digest: ObjectDigest,
    /// Size in bytes.
    pub size: u64,
    /// Whether any execute bit was set.
    pub executable: bool,
}

/// The manifest of a directory output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeManifest {
    /// Format version of this manifest.
    pub version: u32,
    /// Files sorted by path; empty directories are not recorded.
    pub entries: Vec<TreeEntry>,
}

impl TreeManifest {
    /// The canonical bytes stored as the tree's object.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("tree manifests always serialise")
    }

    /// The tree's digest: the digest of its canonical bytes.
    pub fn digest(&self) -> ObjectDigest {
        ObjectDigest::of_bytes(&self.to_bytes())
    }

    /// Describes a directory on disk, taking file digests from `digest_of` (e.g. a stat
    /// cache). Equal to the manifest `ingest_dir` would store for the same files.
    pub fn describe(
        dir: &Path,
        mut digest_of: impl FnMut(&Path) -> io::Result<ObjectDigest>,
    ) -> io::Result<Self> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        for relative in files {
            let path = dir.join(&relative);
            let meta = fs::metadata(&path)?;
            entries.push(TreeEntry {
                digest: digest_of(&path)?,
                size: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
                path: relative,
            });
        }
        Ok(Self {
            version: 1,
            entries,
        })
    }
}

/// Content-addressed storage of files and trees.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
    trees_root: PathBuf,
    tmp: PathBuf,
}

impl ObjectStore {
    pub(crate) fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("objects").join("v1"),
            trees_root: cache_root.join("trees").join("v1"),
            tmp: cache_root.join("tmp"),
        }
    }

    /// Where the object with this digest lives (whether or not it exists).
    pub fn path_of(&self, digest: &ObjectDigest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Whether the object exists.
    pub fn contains(&self, digest: &ObjectDigest) -> bool {
        self.path_of(digest).is_file()
    }

    /// The root folder of all objects (for `du`, `gc`, `verify`).
    pub fn objects_root(&self) -> &Path {
        &self.root
    }

    /// Stores bytes held in memory.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<ObjectDigest, CacheError> {
        let digest = ObjectDigest::of_bytes(bytes);
        let dest = self.path_of(&digest);
        if !dest.is_file() {
            let dir = fsutil::parent_of(&dest);
            fs::create_dir_all(&dir).map_err(|e| CacheError::io("creating", &dir, e))?;
            write_object(&dest, |tmp| fs::write(tmp, bytes))?;
        }
        Ok(digest)
    }

    /// Moves a file the caller owns (a stage's fresh output) into the store. The source is
    /// consumed: renamed when the object is new, removed when it already exists.
    ///
    /// A symlink, or a file with other hard links (a command that did `ln -s "$PWD/data/big.bin"
    /// ${outs.o}` or `ln`), is someone else's file: its bytes are copied into the store and only
    /// the link is removed, so the user's file is never moved, made read-only or tied to the
    /// cached object.
    pub fn ingest_file(&self, source: &Path) -> Result<(ObjectDigest, u64), CacheError> {
        let link =
            fs::symlink_metadata(source).map_err(|e| CacheError::io("reading", source, e))?;
        let borrowed = link.file_type().is_symlink() || link.nlink() > 1;
        let size = fs::metadata(source)
            .map_err(|e| CacheError::io("reading", source, e))?
            .len();
        let digest = hash_file(source).map_err(|e| CacheError::io("hashing", source, e))?;
        let dest = self.path_of(&digest);
        if dest.is_file() {
            let _ = fs::remove_file(source);
            return Ok((digest, size));
        }
        let dir = fsutil::parent_of(&dest);
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("creating", &dir, e))?;
        if borrowed {
            write_object(&dest, |tmp| fs::copy(source, tmp).map(|_| ()))?;
            let _ = fs::remove_file(source);
            return Ok((digest, size));
        }
        let commit = (|| {
            fs::File::open(source)?.sync_all()?;
            make_read_only(source)?;
            match fs::rename(source, &dest) {
                Ok(()) => {}
                // Different filesystems (the cache on NFS, say): copy into a temp then rename.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    let tmp = dir.join(unique_temp_name("object"));
                    fs::copy(source, &tmp)?;
                    fs::File::open(&tmp)?.sync_all()?;
                    make_read_only(&tmp)?;
                    fs::rename(&tmp, &dest)?;
                    let _ = fs::remove_file(source);
                }
                Err(e) => return Err(e),
            }
            sync_dir(&dir)
        })();
        commit.map_err(|e| CacheError::io("storing an object at", &dest, e))?;
        Ok((digest, size))
    }

    /// Stores every file under `dir` and a tree manifest describing them; consumes `dir`. A
    /// directory output that is a symlink is refused: its files are someone else's.
    pub fn ingest_dir(&self, dir: &Path) -> Result<(ObjectDigest, u64), CacheError> {
        if fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(CacheError::io(
                "storing",
                dir,
                io::Error::other(
                    "the directory output is a symlink; write (or copy) the files into it instead",
                ),
            ));
        }
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files).map_err(|e| CacheError::io("listing", dir, e))?;
        files.sort();
        let mut entries = Vec::with_capacity(files.len());
        let mut total = 0;
        for relative in files {
            let path = dir.join(&relative);
            let mode = fs::metadata(&path)
                .map_err(|e| CacheError::io("reading", &path, e))?
                .permissions()
                .mode();
            let (digest, size) = self.ingest_file(&path)?;
            total += size;
            entries.push(TreeEntry {
                path: relative,
                digest,
                size,
                executable: mode & 0o111 != 0,
            });
        }
        let manifest = TreeManifest {
            version: 1,
            entries,
        };
        let digest = self.put_bytes(&manifest.to_bytes())?;
        let _ = fsutil::remove_all(dir);
        Ok((digest, total))
    }

    /// After a stage changed a file it was given to read (`path`: an object, or a file of a tree
    /// checkout), removes what no longer holds the bytes its name promises: the checkout
    /// (rebuilt on demand) and any object whose content changed, so the entries that name it
    /// become misses and their stages run again. Returns the objects removed.
    pub fn discard_damaged(&self, path: &Path) -> Vec<PathBuf> {
        let mut objects = Vec::new();
        if let Ok(relative) = path.strip_prefix(&self.trees_root) {
            let mut parts = relative.components();
            let tree = parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let inner = parts.as_path().to_string_lossy().replace('\\', "/");
            if let Some(tree) = tree {
                let _ = fsutil::remove_all(&self.trees_root.join(&tree));
                let entry = tree
                    .parse::<ObjectDigest>()
                    .ok()
                    .and_then(|d| self.read_tree(&d).ok())
                    .and_then(|m| m.entries.into_iter().find(|e| e.path == inner));
                if let Some(entry) = entry {
                    objects.push(self.path_of(&entry.digest));
                }
            }
        } else if path.starts_with(&self.root) {
            objects.push(path.to_path_buf());
        }
        objects.retain(|object| {
            let named = object
                .strip_prefix(&self.root)
                .ok()
                .map(|r| r.to_string_lossy().replace(['/', '\\'], ""));
            let intact = hash_file(object)
                .ok()
                .is_some_and(|d| Some(d.to_hex()) == named);
            !intact && fs::remove_file(object).is_ok()
        });
        objects
    }

    /// Reads a tree manifest object.
    pub fn read_tree(&self, digest: &ObjectDigest) -> Result<TreeManifest, CacheError> {
        let path = self.path_of(digest);
        let bytes = fs::read(&path).map_err(|e| CacheError::io("reading", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
            path: path.clone(),
            reason: format!("not a tree manifest: {e}"),
        })
    }

    /// A read-only path where the output can be read: the object itself for a file, a checked
    /// out copy (hard links into the store) for a tree.
    pub fn materialize(&self, output: &StoredOutput) -> Result<PathBuf, CacheError> {
        match output.kind {
            OutputKind::File => Ok(self.path_of(&output.digest)),
            OutputKind::Dir => self.checkout_tree(&output.digest),
        }
    }

    fn checkout_tree(&self, digest: &ObjectDigest) -> Result<PathBuf, CacheError> {
        let dest = self.trees_root.join(digest.to_hex());
        if dest.is_dir() {
            return Ok(dest);
        }
        // (A checkout is a cache of the manifest; `gc` removes those of dead trees.)
        let manifest = self.read_tree(digest)?;
        fs::create_dir_all(&self.tmp).map_err(|e| CacheError::io("creating", &self.tmp, e))?;
        let staging = self.tmp.join(unique_temp_name("tree"));
        let build = (|| -> io::Result<()> {
            fs::create_dir_all(&staging)?;
            for entry in &manifest.entries {
                let target = staging.join(&entry.path);
                fs::create_dir_all(fsutil::parent_of(&target))?;
                let object = self.path_of(&entry.digest);
                if fs::hard_link(&object, &target).is_err() {
                    fs::copy(&object, &target)?;
                    make_read_only(&target)?;
                }
            }
            fs::create_dir_all(&self.trees_root)?;
            match fs::rename(&staging, &dest) {
                Ok(()) => Ok(()),
                // Another process checked out the same tree first: theirs is identical.
                Err(_) if dest.is_dir() => fsutil::remove_all(&staging),
                Err(e) => Err(e),
            }
        })();
        if let Err(e) = build {
            let _ = fsutil::remove_all(&staging);
            return Err(CacheError::io("checking out a tree at", &dest, e));
        }
        Ok(dest)
    }

    /// Copies an output to a workspace path (`materialize:` in a pipeline), replacing what is
    /// there atomically.
    pub fn copy_out(&self, output: &StoredOutput, dest: &Path) -> Result<(), CacheError> {
        let dir = fsutil::parent_of(dest);
        fs::create_dir_all(&dir).map_err(|e| CacheError::io("creating", &dir, e))?;
        // Copies of earlier runs that were killed mid-copy (their process is gone).
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if fsutil::is_orphaned_temp(&entry.path(), "materialize") {
                let _ = fsutil::remove_all(&entry.path());
            }
        }
        let tmp = dir.join(unique_temp_name("materialize"));
        let copy = (|| -> io::Result<()> {
            match output.kind {
                OutputKind::File => {
                    fs::copy(self.path_of(&output.digest), &tmp)?;
                    let mut perms = fs::metadata(&tmp)?.permissions();
                    perms.set_mode(0o644);
                    fs::set_permissions(&tmp, perms)?;
                }
                OutputKind::Dir => {
                    let manifest = self
                        .read_tree(&output.digest)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    for entry in &manifest.entries {
                        let target = tmp.join(&entry.path);
                        fs::create_dir_all(fsutil::parent_of(&target))?;
                        fs::copy(self.path_of(&entry.digest), &target)?;
                        let mode = if entry.executable { 0o755 } else { 0o644 };
                        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
                    }
                    fs::create_dir_all(&tmp)?;
                }
            }
            if dest.is_dir() {
                fsutil::remove_all(dest)?;
            }
            fs::rename(&tmp, dest)
        })();
        if let Err(e) = copy {
            let _ = fsutil::remove_all(&tmp);
            return Err(CacheError::io("materializing an output at", dest, e));
        }
        Ok(())
    }
}

/// Writes an object at `dest` through a temp file beside it (`fill` writes the bytes): synced,
/// read-only, renamed into place, the folder synced.
fn write_object(dest: &Path, fill: impl FnOnce(&Path) -> io::Result<()>) -> Result<(), CacheError> {
    let dir = fsutil::parent_of(dest);
    let tmp = dir.join(unique_temp_name("object"));
    let write = (|| {
        fill(&tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        make_read_only(&tmp)?;
        fs::rename(&tmp, dest)?;
        sync_dir(&dir)
    })();
    if let Err(e) = write {
        let _ = fs::remove_file(&tmp);
        return Err(CacheError::io("storing an object at", dest, e));
    }
    Ok(())
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_files(root, &path, out)?;
        } else if file_type.is_file() {
            let relative = path
                .strip_prefix(root)
                .expect("walked paths are under the root");
            let text = relative.to_string_lossy().replace('\\', "/");
            out.push(text);
        } else {
            return Err(io::Error::other(format!(
                "`{}` is neither a regular file nor a directory (symlinks are not stored)",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingesting_a_file_twice_dedups_and_keeps_it_read_only() {
        let cache = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(cache.path());
        fs::create_dir_all(cache.path().join("tmp")).unwrap();
        let a = cache.path().join("tmp/a");
        let b = cache.path().join("tmp/b");
        fs::write(&a, b"same").unwrap();
        fs::write(&b, b"same").unwrap();
        let (da, _) = store.ingest_file(&a).unwrap();
        let (db, size) = store.ingest_file(&b).unwrap();
        assert_eq!(da, db);
        assert_eq!(size, 4);
        assert!(!a.exists() && !b.exists());
        let stored = store.path_of(&da);
        assert!(fs::metadata(&stored).unwrap().permissions().readonly());
        assert_eq!(hash_file(&stored).unwrap(), da);
    }

    #[test]
    fn trees_round_trip_through_checkout_and_copy_out() {
        let cache = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(cache.path());
        let dir = cache.path().join("tmp/out");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("x.txt"), b"x").unwrap();
        fs::write(dir.join("sub/y.txt"), b"yy").unwrap();
        let (digest, size) = store.ingest_dir(&dir).unwrap();
        assert_eq!(size, 3);
        let output = StoredOutput {
            kind: OutputKind::Dir,
            digest,
            size,
        };
        let checkout = store.materialize(&output).unwrap();
        assert_eq!(fs::read(checkout.join("sub/y.txt")).unwrap(), b"yy");
        let dest = cache.path().join("work/copy");
        store.copy_out(&output, &dest).unwrap();
        store.copy_out(&output, &dest).unwrap();
        assert_eq!(fs::read(dest.join("x.txt")).unwrap(), b"x");
    }
}
