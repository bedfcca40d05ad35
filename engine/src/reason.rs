//! Why a stage must run ([`Reason`]), in words a person reads. [`crate::key`] explains a cache
//! miss with these against the lockfile's record of the stage's last run.

use std::fmt;

use serde::Serialize;

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
