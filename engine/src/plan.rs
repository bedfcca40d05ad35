//! Planning: which selected stages are cached and which will run, and why, without running
//! anything (`mipipe status`, `run --dry-run`).

use std::collections::{BTreeMap, BTreeSet};

use mipipe_cache::{Cache, StageKey, StoredOutput};
use serde::Serialize;

use crate::key::{key_inputs, lookup_stage, KeyedLookup};
use crate::lockfile::{LockEntry, Lockfile};
use crate::reason::Reason;
use crate::spec::Pipeline;

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
            match key_inputs(stage, pipeline, cache, &outputs) {
                Ok(None) => StageStatus::WillRun {
                    key: None,
                    reasons: vec![Reason::NeverRun],
                },
                Err(reason) => StageStatus::WillRun {
                    key: None,
                    reasons: vec![reason],
                },
                Ok(Some(keyed)) => {
                    let key = keyed.key;
                    match lookup_stage(
                        stage,
                        &keyed,
                        cache,
                        lock,
                        forced.contains(&index),
                        &mut warnings,
                    ) {
                        KeyedLookup::Hit(cached) => {
                            entries.insert(
                                stage.name.clone(),
                                LockEntry::new(stage, key, &keyed.inputs, &cached),
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
