//! The job a cluster node runs ([`PipelineStageJob`]): one stage of a pipeline file, whose
//! inputs are known only once its upstream jobs have finished.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mipipe_cache::Cache;
use serde::{Deserialize, Serialize};

use crate::cluster::Executor;
use crate::execute::{execute, RunOptions};
use crate::job::WorkerLauncher;
use crate::lockfile::Lockfile;
use crate::outcome::Outcome;
use crate::reporter::Reporter;
use crate::spec::{LoadError, LoadOptions, Pipeline};
use crate::stage::{visible_devices, Registry};

/// A job that names one stage of a pipeline file rather than resolved paths: what a cluster
/// job runs, since the paths of its inputs are known only once its upstream jobs have
/// finished. The worker resolves the pipeline with the same overrides, finds every upstream
/// stage in the cache, and runs (or, by early cutoff, finds cached) this one stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineStageJob {
    /// Format version (1).
    pub version: u32,
    /// The pipeline file, absolute.
    pub pipeline: PathBuf,
    /// `--set` overrides the submitter used.
    pub overrides: Vec<String>,
    /// The stage instance.
    pub stage: String,
    /// The cache folder, absolute (on storage every node sees).
    pub cache_dir: PathBuf,
    /// CPU slots for the stage on the node.
    pub jobs: usize,
}

/// Runs a [`PipelineStageJob`]: the stage's upstream must be cached. Returns the stage's
/// outcome; the lockfile is left to the submitter.
pub fn run_pipeline_stage(
    registry: &Registry,
    job: &PipelineStageJob,
    cancel: Arc<AtomicBool>,
    launcher: Option<Arc<dyn WorkerLauncher>>,
    reporter: &Arc<dyn Reporter>,
) -> Result<Outcome, PipelineStageJobError> {
    let options = LoadOptions {
        overrides: job.overrides.clone(),
    };
    let pipeline = Pipeline::load(&job.pipeline, registry, &options)?;
    let index = pipeline
        .index_of(&job.stage)
        .ok_or_else(|| PipelineStageJobError::NoSuchStage(job.stage.clone()))?;
    let cache = Cache::open(&job.cache_dir).map_err(PipelineStageJobError::Cache)?;
    let run = RunOptions {
        jobs: job.jobs.max(1),
        gpus: std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| visible_devices(&v))
            .unwrap_or(0)
            .max(pipeline.stages[index].resources.gpus as usize),
        keep_going: false,
        forced: BTreeSet::new(),
        selected: pipeline.closure(&[index]),
        cancel,
        launcher,
        isolate_all: false,
        only: Some(index),
        record_lockfile: false,
        default_executor: Executor::Local,
        remote: None,
        detach: false,
    };
    let lock_path = Lockfile::path_for(&pipeline.path);
    let summary = execute(&pipeline, &cache, &lock_path, &run, reporter);
    summary
        .outcomes
        .into_iter()
        .find(|(name, _)| *name == job.stage)
        .map(|(_, outcome)| outcome)
        .ok_or_else(|| PipelineStageJobError::NoSuchStage(job.stage.clone()))
}

/// Why a [`PipelineStageJob`] could not even start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineStageJobError {
    /// The pipeline no longer loads (edited since submission?).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The stage is gone from the pipeline.
    #[error("The pipeline has no stage `{0}` any more; was it edited after submission?")]
    NoSuchStage(String),
    /// The cache cannot be opened.
    #[error(transparent)]
    Cache(mipipe_cache::CacheError),
}
