//! `mipipe.lock`: per stage, the key and output digests of its last successful run.
//!
//! Pretty JSON with sorted keys, one field per line, so a diff shows what changed. It sits
//! beside the pipeline (`mipipe.yaml` -> `mipipe.lock`, `ablation.yaml` -> `ablation.lock`)
//! and is meant to be committed: it records which exact results the tables came from, gives
//! `status` the previous params to explain a rerun ("param `lr` changed 0.1 -> 0.01"), and
//! tells `cache gc` what to keep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mipipe_cache::{write_atomic, ObjectDigest, StageKey, StoredOutput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::ResolvedStage;

/// One stage's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    /// Stage kind.
    pub kind: String,
    /// Stage kind version.
    pub kind_version: u32,
    /// Stage key.
    pub key: StageKey,
    /// Canonical params.
    pub params: Value,
    /// Input and dependency digests.
    pub inputs: BTreeMap<String, Vec<ObjectDigest>>,
    /// Outputs.
    pub outputs: BTreeMap<String, StoredOutput>,
}

impl LockEntry {
    /// The record of a stage whose key, inputs and outputs are known.
    pub fn new(
        stage: &ResolvedStage,
        key: StageKey,
        inputs: &BTreeMap<String, Vec<ObjectDigest>>,
        outputs: &BTreeMap<String, StoredOutput>,
    ) -> Self {
        Self {
            kind: stage.kind.kind().to_string(),
            kind_version: stage.kind.version(),
            key,
            params: stage.params.clone(),
            inputs: inputs.clone(),
            outputs: outputs.clone(),
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lockfile {
    /// Format version (1).
    pub version: u32,
    /// Stage instance name -> record.
    pub stages: BTreeMap<String, LockEntry>,
}

impl Lockfile {
    /// Where the lockfile of a pipeline lives.
    pub fn path_for(pipeline: &Path) -> PathBuf {
        pipeline.with_extension("lock")
    }

    /// Reads a lockfile; a missing or unreadable one is empty (it is a record, not an input).
    pub fn read(path: &Path) -> (Self, Option<String>) {
        match std::fs::read(path) {
            Err(_) => (Self::empty(), None),
            Ok(bytes) => match serde_json::from_slice::<Lockfile>(&bytes) {
                Ok(lock) if lock.version == 1 => (lock, None),
                Ok(lock) => (
                    Self::empty(),
                    Some(format!(
                        "Ignoring `{}`: lockfile version {} is not supported",
                        path.display(),
                        lock.version
                    )),
                ),
                Err(e) => (
                    Self::empty(),
                    Some(format!("Ignoring unreadable `{}`: {e}", path.display())),
                ),
            },
        }
    }

    fn empty() -> Self {
        Self {
            version: 1,
            stages: BTreeMap::new(),
        }
    }

    /// The text written to disk.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("lockfiles always serialise");
        text.push('\n');
        text
    }

    /// Writes the file atomically, only if its content changed.
    pub fn write(&self, path: &Path) -> std::io::Result<bool> {
        let text = self.to_text();
        if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
            return Ok(false);
        }
        write_atomic(path, text.as_bytes())?;
        Ok(true)
    }

    /// Records `entries` (stage name -> current record) in the lockfile at `path`, dropping
    /// stages not in `names`. `known` is the lockfile as read at the start of the run: when
    /// applying the records to it changes nothing, nothing is read or written again (the no-op
    /// path); otherwise the file is re-read and rewritten under a lock on the lockfile's folder,
    /// so concurrent runs merge their records, whichever cache each uses. Returns whether the
    /// file changed.
    pub fn update(
        path: &Path,
        names: &BTreeSet<&str>,
        entries: &BTreeMap<String, LockEntry>,
        known: &Lockfile,
    ) -> std::io::Result<bool> {
        let apply = |lock: &mut Lockfile| {
            lock.stages.retain(|name, _| names.contains(name.as_str()));
            for (name, entry) in entries {
                lock.stages.insert(name.clone(), entry.clone());
            }
        };
        let mut updated = known.clone();
        apply(&mut updated);
        if updated == *known && path.exists() {
            return Ok(false);
        }
        // The folder, not a file in it: the lockfile itself is replaced by each write (a lock on
        // it would be a lock on the old inode), and a lock in the cache folder would not be seen
        // by runs with another `--cache-dir`.
        let folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let guard = std::fs::File::open(folder)?;
        guard.lock()?;
        let (mut fresh, _) = Lockfile::read(path);
        apply(&mut fresh);
        fresh.write(path)
    }
}
