//! Serialised job descriptions: how a stage runs in another process (`mipipe exec-stage`),
//! locally for crash isolation or on a cluster node.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stage::{ProgressSink, Registry, StageContext, StageError};

/// Everything a worker needs to run one stage; paths are absolute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// Format version (1).
    pub version: u32,
    /// Stage instance name.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// Kind version the job was made for; a worker of another version refuses it.
    pub kind_version: u32,
    /// Canonical params.
    pub params: Value,
    /// Input paths by name.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Output paths by name.
    pub outputs: BTreeMap<String, PathBuf>,
    /// The workspace folder.
    pub workspace: PathBuf,
    /// Derived seed.
    pub seed: u64,
    /// Extra environment for child processes.
    pub env: Vec<(String, String)>,
    /// Where the stage's log goes (appended).
    pub log: PathBuf,
}

impl Job {
    pub(crate) fn context(
        &self,
        log: File,
        cancel: Arc<AtomicBool>,
        progress: Option<Arc<dyn ProgressSink>>,
    ) -> StageContext {
        StageContext {
            stage_name: self.stage.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            workspace: self.workspace.clone(),
            seed: self.seed,
            env: self.env.clone(),
            log: Mutex::new(log),
            cancel,
            progress,
        }
    }
}

/// Runs a job in this process (what `mipipe exec-stage` does).
pub fn run_job(registry: &Registry, job: &Job, cancel: Arc<AtomicBool>) -> Result<(), StageError> {
    let kind = registry.get(&job.kind).ok_or_else(|| {
        StageError::environment(format!("This mipipe has no stage kind `{}`", job.kind))
    })?;
    if kind.version() != job.kind_version {
        return Err(StageError::environment(format!(
            "Stage kind `{}` is version {} here but the job was made for version {}; use the same mipipe build",
            job.kind,
            kind.version(),
            job.kind_version
        )));
    }
    let log = open_log(&job.log).map_err(|e| {
        StageError::environment(format!("Cannot open log `{}`: {e}", job.log.display()))
    })?;
    let ctx = job.context(log, cancel, None);
    kind.run(&job.params, &ctx)
}

pub(crate) fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Runs a job in another process; the binary provides one that spawns `mipipe exec-stage`.
pub trait WorkerLauncher: Send + Sync {
    /// Runs the job to completion, or stops it when `cancel` becomes true.
    fn launch(&self, job: &Job, job_file: &Path, cancel: &AtomicBool) -> Result<(), StageError>;
}
