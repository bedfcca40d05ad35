//! The resolved job description ([`Job`]): how a stage runs in another process
//! (`mipipe exec-stage`, or the kind's own worker executable) for crash isolation, and the
//! [`WorkerLauncher`] that starts that process.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::child::PeakMemory;
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
    /// The executable that runs this job (next to `mipipe`); `None`: `mipipe exec-stage`.
    #[serde(default)]
    pub worker: Option<String>,
    /// Where a worker process reports its progress for the launcher to forward
    /// ([`read_progress`]); `None`: not reported.
    #[serde(default)]
    pub progress_file: Option<PathBuf>,
    /// Where the stage records facts about its run (`StageContext::record_fact`); `None`: not
    /// recorded.
    #[serde(default)]
    pub facts_file: Option<PathBuf>,
}

impl Job {
    pub(crate) fn context(
        &self,
        log: File,
        cancel: Arc<AtomicBool>,
        progress: Option<Arc<dyn ProgressSink>>,
        peak_memory: Arc<PeakMemory>,
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
            facts_file: self.facts_file.clone(),
            peak_memory,
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
    let progress = job.progress_file.clone().map(|path| {
        Arc::new(FileProgress {
            path,
            last: Mutex::new(None),
        }) as Arc<dyn ProgressSink>
    });
    let ctx = job.context(log, cancel, progress, Arc::new(PeakMemory::default()));
    kind.run(&job.params, &ctx)
}

/// Progress of a worker process, written to a small file the launcher polls: one line
/// `DONE TOTAL MESSAGE`, replaced atomically, at most ten times a second.
struct FileProgress {
    path: PathBuf,
    last: Mutex<Option<std::time::Instant>>,
}

impl ProgressSink for FileProgress {
    fn progress(&self, done: u64, total: u64, message: &str) {
        let mut last = self.last.lock().expect("progress poisoned");
        let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100));
        if !due && done < total {
            return;
        }
        *last = Some(std::time::Instant::now());
        let tmp = self.path.with_extension("tmp");
        let line = format!("{done} {total} {}\n", message.replace('\n', " "));
        if std::fs::write(&tmp, line).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

/// Reads what a worker last reported through [`Job::progress_file`]: `(done, total, message)`.
pub fn read_progress(path: &Path) -> Option<(u64, u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.trim_end().splitn(3, ' ');
    let done = parts.next()?.parse().ok()?;
    let total = parts.next()?.parse().ok()?;
    Some((done, total, parts.next().unwrap_or_default().to_string()))
}

pub(crate) fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Runs a job in another process; the binary provides one that spawns `mipipe exec-stage`.
pub trait WorkerLauncher: Send + Sync {
    /// Runs the job to completion, or stops it when `cancel` becomes true; forwards what the
    /// worker reports in `job.progress_file` (see [`read_progress`]) to `progress`, and the
    /// worker's peak memory to `peak_memory` once it has ended (also when it failed).
    fn launch(
        &self,
        job: &Job,
        job_file: &Path,
        cancel: &AtomicBool,
        progress: &dyn ProgressSink,
        peak_memory: &PeakMemory,
    ) -> Result<(), StageError>;
}
