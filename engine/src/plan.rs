//! Stage keys and the reasons a stage must run.
//!
//! `key = blake3-derive-key("mipipe stage-key v1"; kind, kind version, canonical params,
//! sorted (input name, content digests))`. Workspace dependencies enter as inputs named
//! `dep:PATH`. Inputs enter by *content*, so an upstream rerun that writes identical bytes
//! leaves every downstream key unchanged (early cutoff). The stage name does not enter: renaming
//! a stage keeps its cache.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mipipe_cache::{
    Cache, Lookup, ObjectDigest, StableHasher, StageKey, StoredOutput, TreeManifest,
};
use serde::Serialize;
use serde_json::Value;

use crate::lockfile::{LockEntry, Lockfile};
use crate::pipeline::{Pipeline, ResolvedStage};

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

/// Why a stage must run, in words a person reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// `--force`.
    Forced,
    /// `cache: false`.
    CachingDisabled,
    /// No record of this stage in the lockfile and no cache entry.
    NeverRun,
    /// A param differs from the last recorded run.
    ParamChanged {
        /// Dotted path of the param.
        name: String,
        /// Old value (`unset` if absent).
        old: String,
        /// New value.
        new: String,
    },
    /// An upstream output's content differs from the last recorded run.
    InputChanged {
        /// Input name.
        name: String,
    },
    /// A workspace file's content changed.
    DependencyChanged {
        /// Path.
        path: String,
    },
    /// A workspace dependency cannot be read.
    DependencyMissing {
        /// Path.
        path: String,
        /// The error.
        error: String,
    },
    /// The stage kind's version changed.
    KindVersionChanged {
        /// Old version.
        old: u32,
        /// New version.
        new: u32,
    },
    /// The same key ran before but its entry is gone (gc, or another cache folder).
    CacheEntryMissing,
    /// The cache entry exists but is unusable.
    CorruptEntry {
        /// What is wrong.
        problem: String,
    },
    /// Upstream stages will run first; the key is known only after them.
    UpstreamWillRun {
        /// Their names.
        stages: Vec<String>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forced => write!(f, "forced with `--force`"),
            Self::CachingDisabled => write!(f, "`cache: false`"),
            Self::NeverRun => write!(f, "never run"),
            Self::ParamChanged { name, old, new } => {
                write!(f, "param `{name}` changed {old} -> {new}")
            }
            Self::InputChanged { name } => write!(f, "input `{name}` changed"),
            Self::DependencyChanged { path } => write!(f, "dependency `{path}` changed"),
            Self::DependencyMissing { path, error } => {
                write!(f, "dependency `{path}` cannot be read: {error}")
            }
            Self::KindVersionChanged { old, new } => {
                write!(f, "stage kind version changed {old} -> {new}")
            }
            Self::CacheEntryMissing => write!(
                f,
                "cache entry missing (removed by gc, or another cache folder)"
            ),
            Self::CorruptEntry { problem } => write!(f, "cache entry unusable: {problem}"),
            Self::UpstreamWillRun { stages } => {
                let shown: Vec<String> = stages.iter().take(3).map(|s| format!("`{s}`")).collect();
                let more = stages.len().saturating_sub(3);
                write!(f, "upstream {} will run", shown.join(", "))?;
                if more > 0 {
                    write!(f, " (+{more} more)")?;
                }
                Ok(())
            }
        }
    }
}

/// Explains a cache miss by comparing with the stage's lockfile record.
pub fn explain_miss(
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
    flatten("", &previous.params, &mut old_flat);
    flatten("", &stage.params, &mut new_flat);
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
            reasons.push(match name.strip_prefix("dep:") {
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

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        other => {
            let text = match other {
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
            out.insert(prefix.to_string(), text);
        }
    }
}

/// What `status` and `run --dry-run` show for one stage.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StageStatus {
    /// Up to date.
    Cached {
        /// Key (absent when the up-to-date memo answered without computing keys).
        key: Option<StageKey>,
    },
    /// Must run.
    WillRun {
        /// Key, when all inputs are known.
        key: Option<StageKey>,
        /// Why.
        reasons: Vec<Reason>,
    },
}

/// The plan of a whole pipeline (or of the selected part).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// `(stage name, status)` in order, for the selected stages.
    pub stages: Vec<(String, StageStatus)>,
    /// Warnings (corrupt entries, unreadable lockfile).
    pub warnings: Vec<String>,
    /// The lockfile record of every cached stage.
    #[serde(skip)]
    pub entries: BTreeMap<String, LockEntry>,
}

impl Plan {
    /// A plan in which every stage is cached (from the up-to-date memo, which knows names only).
    pub fn all_cached(stages: Vec<String>) -> Self {
        Self {
            stages: stages
                .into_iter()
                .map(|name| (name, StageStatus::Cached { key: None }))
                .collect(),
            warnings: Vec::new(),
            entries: BTreeMap::new(),
        }
    }

    /// How many stages will run.
    pub fn to_run(&self) -> usize {
        self.stages
            .iter()
            .filter(|(_, s)| matches!(s, StageStatus::WillRun { .. }))
            .count()
    }
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
    inputs: &InputDigests,
    key: &StageKey,
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

/// Plans the selected stages without running anything.
pub fn plan(
    pipeline: &Pipeline,
    cache: &Cache,
    lock: &Lockfile,
    selected: &BTreeSet<usize>,
    forced: &BTreeSet<usize>,
) -> Plan {
    let mut outputs: Vec<Option<BTreeMap<String, StoredOutput>>> =
        vec![None; pipeline.stages.len()];
    let mut will_run = vec![false; pipeline.stages.len()];
    let mut warnings = Vec::new();
    let mut stages = Vec::new();
    let mut entries = BTreeMap::new();
    for (index, stage) in pipeline.stages.iter().enumerate() {
        if !selected.contains(&index) {
            continue;
        }
        let upstream_running: Vec<String> = stage
            .inputs
            .values()
            .flatten()
            .filter(|u| will_run[u.stage])
            .map(|u| pipeline.stages[u.stage].name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let status = if !upstream_running.is_empty() {
            StageStatus::WillRun {
                key: None,
                reasons: vec![Reason::UpstreamWillRun {
                    stages: upstream_running,
                }],
            }
        } else {
            let inputs = upstream_digests(stage, &outputs).map(|mut d| {
                dependency_digests(stage, pipeline, cache).map(|deps| {
                    d.extend(deps);
                    d
                })
            });
            match inputs {
                None => StageStatus::WillRun {
                    key: None,
                    reasons: vec![Reason::NeverRun],
                },
                Some(Err(reason)) => StageStatus::WillRun {
                    key: None,
                    reasons: vec![reason],
                },
                Some(Ok(inputs)) => {
                    let key = stage_key(stage, &inputs);
                    match lookup_stage(
                        stage,
                        &inputs,
                        &key,
                        cache,
                        lock,
                        forced.contains(&index),
                        &mut warnings,
                    ) {
                        KeyedLookup::Hit(cached) => {
                            entries.insert(
                                stage.name.clone(),
                                LockEntry::new(stage, key, &inputs, &cached),
                            );
                            outputs[index] = Some(cached);
                            StageStatus::Cached { key: Some(key) }
                        }
                        KeyedLookup::Miss(reasons) => StageStatus::WillRun {
                            key: Some(key),
                            reasons,
                        },
                    }
                }
            }
        };
        if matches!(status, StageStatus::WillRun { .. }) {
            will_run[index] = true;
        }
        stages.push((stage.name.clone(), status));
    }
    let _ = cache.file_digests().save();
    Plan {
        stages,
        warnings,
        entries,
    }
}
