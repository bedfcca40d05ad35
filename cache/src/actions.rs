//! The action cache: stage key -> manifest of the outputs that stage produced.
//!
//! ```text
//! <cache>/actions/v1/ab/<key-hex>.json
//! ```
//! An entry is written only after every output is in the object store, and atomically, so an
//! entry that exists always describes a complete, successful run. A failed stage writes none.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{ObjectDigest, StageKey};
use crate::error::CacheError;
use crate::fsutil::write_atomic;
use crate::store::{ObjectStore, StoredOutput};

/// What a successful stage run produced, and what it was computed from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionEntry {
    /// Format version (1).
    pub version: u32,
    /// The key this entry is filed under.
    pub key: StageKey,
    /// Stage kind name.
    pub kind: String,
    /// Stage kind version.
    pub kind_version: u32,
    /// The stage name that first produced it (informational: keys do not contain names).
    pub stage: String,
    /// The canonical resolved params.
    pub params: serde_json::Value,
    /// Digests of inputs and workspace dependencies, by name.
    pub inputs: BTreeMap<String, Vec<ObjectDigest>>,
    /// The outputs, by declared name.
    pub outputs: BTreeMap<String, StoredOutput>,
    /// Seconds since the Unix epoch when the entry was written.
    pub created_unix: u64,
    /// How long the stage ran.
    pub duration_ms: u64,
    /// What the stage recorded about its run (`device`: where a torch stage computed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

/// The result of looking a key up.
#[derive(Debug)]
pub enum Lookup {
    /// A complete entry whose objects all exist.
    Hit(Box<ActionEntry>),
    /// No entry.
    Miss,
    /// An entry exists but cannot be used; treat as a miss and tell the user why.
    Corrupt(String),
}

/// Reads and writes action-cache entries.
#[derive(Clone, Debug)]
pub struct ActionCache {
    root: PathBuf,
}

impl ActionCache {
    pub(crate) fn new(cache_root: &Path) -> Self {
        Self {
            root: cache_root.join("actions").join("v1"),
        }
    }

    /// The entry file for a key.
    pub fn path_of(&self, key: &StageKey) -> PathBuf {
        let hex = key.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.json"))
    }

    /// The folder holding every entry.
    pub fn entries_root(&self) -> &Path {
        &self.root
    }

    /// Looks up a key, checking that the entry parses, is filed under the right key and that
    /// every object it names is present.
    pub fn lookup(&self, key: &StageKey, store: &ObjectStore) -> Lookup {
        let path = self.path_of(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Corrupt(format!("cannot read `{}`: {e}", path.display())),
        };
        let entry: ActionEntry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return Lookup::Corrupt(format!("`{}` does not parse: {e}", path.display())),
        };
        if entry.key != *key {
            return Lookup::Corrupt(format!("`{}` is filed under the wrong key", path.display()));
        }
        for (name, output) in &entry.outputs {
            if !store.contains(&output.digest) {
                return Lookup::Corrupt(format!(
                    "output `{name}` of cached stage `{}` is missing from the object store \
                     (object {})",
                    entry.stage,
                    output.digest.short()
                ));
            }
        }
        Lookup::Hit(Box::new(entry))
    }

    /// Records a successful run. Call only after every output is in the object store.
    pub fn insert(&self, entry: &ActionEntry) -> Result<(), CacheError> {
        let path = self.path_of(&entry.key);
        let bytes = serde_json::to_vec_pretty(entry).expect("action entries always serialise");
        write_atomic(&path, &bytes).map_err(|e| CacheError::io("writing", &path, e))
    }

    /// Reads every entry that parses (for `gc`, `du`).
    pub fn all_entries(&self) -> Vec<(PathBuf, Option<ActionEntry>)> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(&self.root) else {
            return out;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let entry = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                out.push((path, entry));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
