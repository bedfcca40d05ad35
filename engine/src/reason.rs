//! Why a stage must run ([`Reason`]), and how a cache miss is explained against the
//! lockfile's record of the stage's last run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use mipipe_cache::StageKey;
use serde::Serialize;
use serde_json::Value;

use crate::key::InputDigests;
use crate::lockfile::LockEntry;
use crate::spec::ResolvedStage;

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
