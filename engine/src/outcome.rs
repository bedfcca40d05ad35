//! How stages end ([`Outcome`]) and what a run did ([`RunSummary`]).

use std::path::PathBuf;

use mipipe_cache::StageKey;
use serde::Serialize;

use crate::reason::Reason;
use crate::remote::RemoteJob;
use crate::stage::ErrorClass;

/// How one stage ended.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Ran and succeeded.
    Executed {
        /// Key.
        key: StageKey,
        /// Why it ran.
        reasons: Vec<Reason>,
    },
    /// Found in the cache.
    Cached {
        /// Key.
        key: StageKey,
        /// Whether an upstream stage ran this time and produced identical output.
        early_cutoff: bool,
    },
    /// Ran and failed; nothing cached.
    Failed {
        /// Key, if it was known.
        key: Option<StageKey>,
        /// The error message.
        error: String,
        /// Error class (decides the exit code).
        class: ErrorClass,
        /// The attempt's log, if one was written.
        log: Option<PathBuf>,
    },
    /// Not run because something it needs failed or the run stopped.
    Skipped {
        /// Why, naming the stage at fault.
        cause: String,
    },
    /// Stopped by Ctrl-C.
    Cancelled,
}

impl Outcome {
    /// Whether the stage's outputs are available.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Executed { .. } | Self::Cached { .. })
    }
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// `(stage name, outcome)` for every selected stage, in pipeline order.
    pub outcomes: Vec<(String, Outcome)>,
    /// Whether the lockfile changed.
    pub lockfile_updated: bool,
    /// Stages handed to a remote scheduler and still running there (`--detach`), with their
    /// jobs.
    pub submitted: Vec<(String, RemoteJob)>,
}

impl RunSummary {
    /// Counts of (executed, cached, failed, skipped or cancelled).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for (_, outcome) in &self.outcomes {
            match outcome {
                Outcome::Executed { .. } => counts.0 += 1,
                Outcome::Cached { .. } => counts.1 += 1,
                Outcome::Failed { .. } => counts.2 += 1,
                Outcome::Skipped { .. } | Outcome::Cancelled => counts.3 += 1,
            }
        }
        counts
    }
}
