//! The up-to-date memo: how a no-op `run` or `status` answers without resolving the pipeline.
//!
//! Like ninja's log, after a run in which every selected stage ended cached or executed, the
//! engine records a *fingerprint* of everything resolution depends on (the pipeline text, the
//! `--set` overrides and targets, the lockfile bytes, the binary) plus the stat of every
//! workspace file a key or a `materialize:` copy depends on, and the paths of the entries and
//! objects the lockfile names. The next invocation that computes the same fingerprint and finds
//! every stat unchanged and every path present knows that all stages are cached, without parsing
//! YAML or reading an entry. Anything else falls back to the full plan.
//!
//! A stat taken less than two seconds after the file changed is not trusted (a rewrite in the
//! same timestamp tick could go unseen), so no memo is written then.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use mipipe_cache::{now_unix_ms, write_atomic, Cache, ObjectDigest, StableHasher};
use serde::{Deserialize, Serialize};

use crate::lockfile::Lockfile;
use crate::spec::Pipeline;

/// What identifies one resolution of a pipeline.
pub struct Fingerprint(ObjectDigest);

impl Fingerprint {
    /// Hashes the inputs of resolution. `binary` identifies the running program (its stage
    /// kinds and their versions); `arguments` are the overrides and targets as given.
    pub fn new(
        binary: &str,
        pipeline_text: &str,
        arguments: &[String],
        lockfile_bytes: &[u8],
    ) -> Self {
        let mut hasher = StableHasher::new("mipipe up-to-date v1");
        hasher
            .write(binary)
            .write(pipeline_text)
            .write(arguments)
            .write(&ObjectDigest::of_bytes(lockfile_bytes));
        Self(ObjectDigest::from_bytes(hasher.finish()))
    }
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
struct FileStamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

#[derive(Serialize, Deserialize)]
struct Memo {
    version: u32,
    fingerprint: ObjectDigest,
    stages: Vec<String>,
    files: Vec<FileStamp>,
    present: Vec<PathBuf>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    Some(FileStamp {
        path: path.to_path_buf(),
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        inode: meta.ino(),
    })
}

fn memo_path(cache: &Cache, pipeline_path: &Path) -> PathBuf {
    Cache::pipeline_file(&cache.area("state").join("up-to-date"), pipeline_path)
}

/// The names of the selected stages, if the memo proves every one of them cached.
pub fn check_up_to_date(
    cache: &Cache,
    pipeline_path: &Path,
    fingerprint: &Fingerprint,
) -> Option<Vec<String>> {
    let bytes = fs::read(memo_path(cache, pipeline_path)).ok()?;
    let memo: Memo = serde_json::from_slice(&bytes).ok()?;
    if memo.version != 1 || memo.fingerprint != fingerprint.0 {
        return None;
    }
    let files_unchanged = memo
        .files
        .iter()
        .all(|recorded| stamp(&recorded.path).as_ref() == Some(recorded));
    let all_present = memo.present.iter().all(|p| p.exists());
    (files_unchanged && all_present).then_some(memo.stages)
}

/// Records the memo after a run in which every selected stage ended cached or executed.
/// Returns whether it was written.
pub fn record_up_to_date(
    cache: &Cache,
    pipeline: &Pipeline,
    selected: &[usize],
    fingerprint: &Fingerprint,
) -> bool {
    let (lock, warning) = Lockfile::read(&Lockfile::path_for(&pipeline.path));
    if warning.is_some() {
        return false;
    }
    let mut files = Vec::new();
    let mut present = Vec::new();
    let mut stages = Vec::new();
    for &index in selected {
        let stage = &pipeline.stages[index];
        let Some(entry) = lock.stages.get(&stage.name) else {
            return false; // `cache: false`, or not recorded: must run or be re-planned
        };
        if !stage.cache {
            return false;
        }
        stages.push(stage.name.clone());
        present.push(cache.actions().path_of(&entry.key));
        for output in entry.outputs.values() {
            present.push(cache.store().path_of(&output.digest));
        }
        let mut paths: Vec<PathBuf> = stage
            .workspace_deps
            .iter()
            .map(|d| pipeline.workspace.join(d))
            .collect();
        paths.extend(
            stage
                .materialize
                .values()
                .map(|d| pipeline.workspace.join(d)),
        );
        for path in paths {
            if path.is_dir() {
                // A directory's listing and each file in it.
                let Ok(walk) = walk_files(&path) else {
                    return false;
                };
                for p in std::iter::once(path.clone()).chain(walk) {
                    match stamp(&p) {
                        Some(s) => files.push(s),
                        None => return false,
                    }
                }
            } else {
                match stamp(&path) {
                    Some(s) => files.push(s),
                    None => return false,
                }
            }
        }
    }
    let now_ns = i128::from(now_unix_ms()) * 1_000_000;
    if files
        .iter()
        .any(|f| now_ns - f.mtime_ns.max(f.ctime_ns) < 2_000_000_000)
    {
        return false;
    }
    let memo = Memo {
        version: 1,
        fingerprint: fingerprint.0,
        stages,
        files,
        present,
    };
    let bytes = serde_json::to_vec(&memo).expect("memos serialise");
    write_atomic(&memo_path(cache, &pipeline.path), &bytes).is_ok()
}

fn walk_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            out.push(path.clone());
            out.extend(walk_files(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
