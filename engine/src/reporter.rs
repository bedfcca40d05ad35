//! Events the engine emits. The binary draws them; libraries never print.

use std::path::Path;
use std::time::Duration;

use crate::outcome::{Outcome, RunSummary};
use crate::reason::Reason;

/// Receives engine events. Every method has a no-op default.
pub trait Reporter: Send + Sync {
    /// The run is about to start `total` selected stages.
    fn on_run_start(&self, _total: usize) {}
    /// A stage was found in the cache.
    fn on_cached(&self, _stage: &str, _early_cutoff: bool) {}
    /// A stage started, with why it runs.
    fn on_stage_start(&self, _stage: &str, _reasons: &[Reason]) {}
    /// Another process holds the stage's lock; this run waits for it.
    fn on_waiting_for_lock(&self, _stage: &str) {}
    /// Progress inside a running stage.
    fn on_progress(&self, _stage: &str, _done: u64, _total: u64, _message: &str) {}
    /// A stage ended (executed, failed, skipped or cancelled).
    fn on_stage_end(&self, _stage: &str, _outcome: &Outcome, _elapsed: Duration) {}
    /// A stage was handed to a scheduler (`executor` is e.g. `Slurm`) as job `job`.
    fn on_submitted(&self, _stage: &str, _executor: &str, _job: &str, _log: &Path) {}
    /// Something worth knowing that is not an error.
    fn on_warning(&self, _message: &str) {}
    /// The run ended (every selected stage has an outcome; the lockfile is written).
    fn on_run_end(&self, _summary: &RunSummary) {}
}

/// A reporter that ignores everything.
pub struct SilentReporter;

impl Reporter for SilentReporter {}
