//! The key recipe: what a stage's key is made of, and the one place that digests a stage's
//! inputs, derives its key and looks it up ([`key_inputs`], [`lookup_stage`]), shared by
//! [`crate::plan`] and [`crate::execute`].
//!
//! `key = blake3-derive-key("mipipe stage-key v1"; kind, kind version, canonical params,
//! sorted (input name, content digests))`. Workspace dependencies enter as inputs named
//! `dep:PATH`. Inputs enter by *content*, so an upstream rerun that writes identical bytes
//! leaves every downstream key unchanged (early cutoff). The stage name does not enter: renaming
//! a stage keeps its cache.

use std::collections::{BTreeMap, BTreeSet};

use mipipe_cache::{
    Cache, Lookup, ObjectDigest, StableHasher, StageKey, StoredOutput, TreeManifest,
};
use serde_json::Value;

use crate::lockfile::{LockEntry, Lockfile};
use crate::reason::Reason;
use crate::spec::{Pipeline, ResolvedStage};

/// Domain of stage keys; bump the suffix if the key recipe ever changes.
const STAGE_KEY_CONTEXT: &str = "mipipe stage-key v1";
/// Domain of derived seeds.
const SEED_CONTEXT: &str = "mipipe stage-seed v1";

/// Input and dependency digests of one stage, by name.
pub type InputDigests = BTreeMap<String, Vec<ObjectDigest>>;

/// Computes a stage key.
pub fn stage_key(stage: &ResolvedStage, inputs: &InputDigests) -> StageKey {
    let mut hasher = StableHasher::new(STAGE_KEY_CONTEXT);
    hasher
        .write(stage.kind.kind())
        .write(&stage.kind.version())
        .write(&stage.params)
        .write(inputs);
    StageKey::from_bytes(hasher.finish())
}

/// A seed derived from a stage key.
pub fn stage_seed(key: &StageKey) -> u64 {
    let mut hasher = StableHasher::new(SEED_CONTEXT);
    hasher.write(key);
    let bytes = hasher.finish();
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// The name under which a workspace dependency enters the key.
pub fn dependency_input_name(path: &str) -> String {
    format!("dep:{path}")
}

/// The workspace path of an input named by [`dependency_input_name`]; `None` for an input that
/// is another stage's output. A dependency is nobody's output, even when a stage wrote the same
/// bytes.
pub fn dependency_path(input_name: &str) -> Option<&str> {
    input_name.strip_prefix("dep:")
}

/// Hashes a stage's workspace dependencies (through the stat cache).
pub fn dependency_digests(
    stage: &ResolvedStage,
    pipeline: &Pipeline,
    cache: &Cache,
) -> Result<InputDigests, Reason> {
    let mut out = InputDigests::new();
    for dep in &stage.workspace_deps {
        let path = pipeline.workspace.join(dep);
        let digest = if path.is_dir() {
            dir_digest(&path, cache)
        } else {
            cache.file_digests().digest(&path)
        }
        .map_err(|e| Reason::DependencyMissing {
            path: dep.clone(),
            error: e.to_string(),
        })?;
        out.insert(dependency_input_name(dep), vec![digest]);
    }
    Ok(out)
}

/// A directory dependency's digest: that of its tree manifest, as if it were an output.
fn dir_digest(dir: &std::path::Path, cache: &Cache) -> std::io::Result<ObjectDigest> {
    TreeManifest::describe(dir, |p| cache.file_digests().digest(p)).map(|m| m.digest())
}

/// The cache lookup of one stage whose inputs are known.
pub(crate) enum KeyedLookup {
    /// The outputs of the cached run.
    Hit(BTreeMap<String, StoredOutput>),
    Miss(Vec<Reason>),
}

/// Looks a stage up, explaining a miss.
pub(crate) fn lookup_stage(
    stage: &ResolvedStage,
    keyed: &Keyed,
    cache: &Cache,
    lock: &Lockfile,
    forced: bool,
    warnings: &mut Vec<String>,
) -> KeyedLookup {
    if forced {
        return KeyedLookup::Miss(vec![Reason::Forced]);
    }
    if !stage.cache {
        return KeyedLookup::Miss(vec![Reason::CachingDisabled]);
    }
    let Keyed { inputs, key } = keyed;
    // Fast path for no-op runs: the lockfile already holds this key's outputs, so checking
    // that the entry and its objects still exist is enough (no entry file is parsed).
    if let Some(previous) = lock.stages.get(&stage.name).filter(|p| p.key == *key) {
        let present = cache.actions().path_of(key).is_file()
            && previous
                .outputs
                .values()
                .all(|o| cache.store().contains(&o.digest));
        if present {
            return KeyedLookup::Hit(previous.outputs.clone());
        }
    }
    match cache.actions().lookup(key, cache.store()) {
        Lookup::Hit(entry) => KeyedLookup::Hit(entry.outputs),
        Lookup::Miss => KeyedLookup::Miss(explain_miss(
            stage,
            inputs,
            key,
            lock.stages.get(&stage.name),
        )),
        Lookup::Corrupt(problem) => {
            warnings.push(format!(
                "Stage `{}`: {problem}; it will run again",
                stage.name
            ));
            KeyedLookup::Miss(vec![Reason::CorruptEntry { problem }])
        }
    }
}

/// Input digests of a stage from its producers' outputs (None when a producer's are unknown).
pub(crate) fn upstream_digests(
    stage: &ResolvedStage,
    outputs: &[Option<BTreeMap<String, StoredOutput>>],
) -> Option<InputDigests> {
    let mut digests = InputDigests::new();
    for (name, ups) in &stage.inputs {
        let mut list = Vec::with_capacity(ups.len());
        for up in ups {
            list.push(outputs[up.stage].as_ref()?.get(&up.output)?.digest);
        }
        digests.insert(name.clone(), list);
    }
    Some(digests)
}

/// A stage's key with the digests it was derived from.
pub(crate) struct Keyed {
    /// Input and dependency digests, by name.
    pub inputs: InputDigests,
    /// The key.
    pub key: StageKey,
}

/// Digests a stage's inputs (its producers' outputs, then its workspace dependencies) and
/// derives its key. `Ok(None)`: some producer's outputs are not known yet.
pub(crate) fn key_inputs(
    stage: &ResolvedStage,
    pipeline: &Pipeline,
    cache: &Cache,
    outputs: &[Option<BTreeMap<String, StoredOutput>>],
) -> Result<Option<Keyed>, Reason> {
    let Some(mut inputs) = upstream_digests(stage, outputs) else {
        return Ok(None);
    };
    inputs.extend(dependency_digests(stage, pipeline, cache)?);
    let key = stage_key(stage, &inputs);
    Ok(Some(Keyed { inputs, key }))
}

/// Explains a cache miss by comparing with the stage's lockfile record.
fn explain_miss(
    stage: &ResolvedStage,
    inputs: &InputDigests,
    key: &StageKey,
    previous: Option<&LockEntry>,
) -> Vec<Reason> {
    let Some(previous) = previous else {
        return vec![Reason::NeverRun];
    };
    if previous.key == *key {
        return vec![Reason::CacheEntryMissing];
    }
    let mut reasons = Vec::new();
    if previous.kind_version != stage.kind.version() || previous.kind != stage.kind.kind() {
        reasons.push(Reason::KindVersionChanged {
            old: previous.kind_version,
            new: stage.kind.version(),
        });
    }
    let mut old_flat = BTreeMap::new();
    let mut new_flat = BTreeMap::new();
    flatten(&previous.params, &mut old_flat);
    flatten(&stage.params, &mut new_flat);
    let names: BTreeSet<&String> = old_flat.keys().chain(new_flat.keys()).collect();
    for name in names {
        let old = old_flat.get(name);
        let new = new_flat.get(name);
        if old != new {
            reasons.push(Reason::ParamChanged {
                name: name.clone(),
                old: old.cloned().unwrap_or_else(|| "unset".into()),
                new: new.cloned().unwrap_or_else(|| "unset".into()),
            });
        }
    }
    let names: BTreeSet<&String> = previous.inputs.keys().chain(inputs.keys()).collect();
    for name in names {
        if previous.inputs.get(name) != inputs.get(name) {
            reasons.push(match dependency_path(name) {
                Some(path) => Reason::DependencyChanged {
                    path: path.to_string(),
                },
                None => Reason::InputChanged { name: name.clone() },
            });
        }
    }
    if reasons.is_empty() {
        reasons.push(Reason::CacheEntryMissing);
    }
    reasons
}

/// A stage's params as dotted names (`pgd.steps`) and their leaf values: nested objects are
/// opened, lists and scalars (and empty objects) are leaves.
pub fn flatten_params(value: &Value) -> BTreeMap<String, &Value> {
    fn walk<'a>(prefix: &str, value: &'a Value, out: &mut BTreeMap<String, &'a Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_string(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// Params as reasons print them: strings quoted, long values cut at 60 characters.
fn flatten(value: &Value, out: &mut BTreeMap<String, String>) {
    for (name, leaf) in flatten_params(value) {
        let text = match leaf {
            Value::String(s) if s.len() > 60 => {
                format!("\"{}…\"", &s[..s.floor_char_boundary(57)])
            }
            Value::String(s) => format!("\"{s}\""),
            v => {
                let t = v.to_string();
                if t.len() > 60 {
                    format!("{}…", &t[..t.floor_char_boundary(57)])
                } else {
                    t
                }
            }
        };
        out.insert(name, text);
    }
}
