//! Runs a stage in a worker process: `mipipe exec-stage JOB`, or for a kind that names its own
//! worker executable (the libtorch kinds: `mipipe-torch-worker exec-stage JOB`), that program
//! found next to the running `mipipe`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use mipipe_engine::{
    describe_exit, read_progress, run_child, ErrorClass, Exit, Job, PeakMemory, ProgressSink,
    StageError, WorkerLauncher,
};

/// Spawns `mipipe exec-stage` for each job.
pub struct SubprocessLauncher {
    program: PathBuf,
}

impl SubprocessLauncher {
    /// Runs jobs with `program` (the running `mipipe`), or a kind's worker next to it.
    pub fn new(program: PathBuf) -> Self {
        Self { program }
    }
}

impl WorkerLauncher for SubprocessLauncher {
    fn launch(
        &self,
        job: &Job,
        job_file: &Path,
        cancel: &AtomicBool,
        progress: &dyn ProgressSink,
        peak_memory: &PeakMemory,
    ) -> Result<(), StageError> {
        let log = open_append(&job.log)?;
        let program = match &job.worker {
            None => self.program.clone(),
            Some(name) => {
                let path = self.program.with_file_name(name);
                if !path.is_file() {
                    return Err(StageError::environment(format!(
                        "Stage kind `{}` runs in `{name}`, which is not next to `{}`; build it with `cargo build --release` at the repository root (it needs libtorch: `bash scripts/setup-libtorch.sh`)",
                        job.kind,
                        self.program.display()
                    )));
                }
                path
            }
        };
        let mut command = Command::new(&program);
        command
            .arg("exec-stage")
            .arg(job_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(env)?)
            .stderr(log);
        // Forwards the worker's latest progress report when it is new.
        let mut reported = None;
        let forward = || {
            let now = job.progress_file.as_deref().and_then(read_progress);
            if let Some((done, total, message)) =
                now.as_ref().filter(|n| reported.as_ref() != Some(*n))
            {
                progress.progress(*done, *total, message);
                reported = now;
            }
        };
        // The job's environment (`CUDA_VISIBLE_DEVICES` of its GPU slots) reaches every worker,
        // so two `gpus: 1` stages never share a device.
        let exit = run_child(&mut command, &job.env, cancel, forward)
            .map_err(|e| StageError::environment(format!("Worker `{}`: {e}", program.display())))?;
        peak_memory.record(&exit);
        let status = exit.status;
        let Some(code) = status.code() else {
            return Err(StageError::failed(format!(
                "Worker {} (crash or out of memory); see the log",
                describe_exit(status)
            )));
        };
        match Exit::class_of_worker(code) {
            None => Ok(()),
            Some(ErrorClass::Environment) => Err(StageError::environment(
                "The worker hit an environment error; see the log",
            )),
            Some(ErrorClass::Internal) => Err(StageError::with_class(
                format!("The worker exited with status {code}, a bug in mipipe; see the log"),
                ErrorClass::Internal,
            )),
            Some(ErrorClass::Stage) => Err(StageError::failed(format!(
                "Worker exited with status {code}; see the log"
            ))),
        }
    }
}

fn env(e: std::io::Error) -> StageError {
    StageError::environment(e.to_string())
}

fn open_append(path: &Path) -> Result<std::fs::File, StageError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| StageError::environment(format!("Cannot open log `{}`: {e}", path.display())))
}
