//! The interface to schedulers other than this machine's threads (Slurm): the one scheduling
//! loop of [`crate::execute`] hands a stage to a [`RemoteExecutor`] as a job, follows it by
//! polling, and cancels it on Ctrl-C. The job itself runs `mipipe exec-stage` with a
//! [`crate::PipelineStageJob`]: it resolves the pipeline, finds its upstream stages in the
//! shared cache and commits its outputs there, so whether a job succeeded is decided by the
//! cache, never by what the scheduler says.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mipipe_cache::Cache;
use serde::Serialize;

use crate::spec::Pipeline;
use crate::stage::StageError;

/// A stage handed to a remote scheduler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteJob {
    /// The scheduler's job id.
    pub id: String,
    /// Where the job's standard output and error go.
    pub log: PathBuf,
}

/// What a remote scheduler says about one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteState {
    /// Waiting (for resources, or for the jobs it depends on).
    Queued,
    /// Running.
    Running,
    /// Ended, in the scheduler's words (`COMPLETED`, `FAILED (exit code 1:0)`). Whether the
    /// stage succeeded is read from the cache.
    Ended(String),
    /// Cancelled by the scheduler because a job it depends on failed.
    DependencyFailed(String),
    /// The scheduler has no record of the job any more.
    Lost(String),
}

/// A scheduler that runs stages as jobs (the Slurm executor implements it).
pub trait RemoteExecutor: Send + Sync {
    /// The scheduler's name, for messages (`Slurm`).
    fn name(&self) -> &str;

    /// How long the scheduling loop waits between two [`RemoteExecutor::poll`]s.
    fn poll_interval(&self) -> Duration;

    /// Submits stage `index` as a job that starts once every job in `after` has succeeded,
    /// and that the scheduler cancels if one of them fails.
    fn submit(
        &self,
        pipeline: &Pipeline,
        cache: &Cache,
        index: usize,
        after: &[RemoteJob],
    ) -> Result<RemoteJob, StageError>;

    /// The states of these jobs, by id; a job missing from the answer has no news yet.
    fn poll(&self, jobs: &[RemoteJob]) -> Result<BTreeMap<String, RemoteState>, StageError>;

    /// Cancels these jobs.
    fn cancel(&self, jobs: &[RemoteJob]) -> Result<(), StageError>;
}
