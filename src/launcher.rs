//! Runs a stage in a worker process: `mipipe exec-stage JOB`, or for a kind that names its own
//! worker executable (the libtorch kinds: `mipipe-torch-worker exec-stage JOB`), that program
//! found next to the running `mipipe`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mipipe_engine::{read_progress, Job, ProgressSink, StageError, WorkerLauncher};

/// Spawns `mipipe exec-stage` for each job.
pub struct SubprocessLauncher {
    program: PathBuf,
}

impl SubprocessLauncher {
    /// Uses the running executable.
    pub fn current() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
        })
    }
}

impl WorkerLauncher for SubprocessLauncher {
    fn launch(
        &self,
        job: &Job,
        job_file: &Path,
        cancel: &AtomicBool,
        progress: &dyn ProgressSink,
    ) -> Result<(), StageError> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let log = mipipe_open_append(&job.log)?;
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
        // The job's environment (`CUDA_VISIBLE_DEVICES` of its GPU slots) reaches every worker,
        // so two `gpus: 1` stages never share a device.
        let mut child = Command::new(&program)
            .arg("exec-stage")
            .arg(job_file)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(env)?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                StageError::environment(format!("Cannot start worker `{}`: {e}", program.display()))
            })?;
        let pid = child.id() as libc::pid_t;
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(child.wait());
        });
        let mut signalled = false;
        let mut reported = None;
        // Forwards the worker's latest progress report when it is new.
        let mut forward = || {
            let now = job.progress_file.as_deref().and_then(read_progress);
            if let Some((done, total, message)) =
                now.as_ref().filter(|n| reported.as_ref() != Some(*n))
            {
                progress.progress(*done, *total, message);
                reported = now;
            }
        };
        let status = loop {
            match receiver.recv_timeout(Duration::from_millis(50)) {
                Ok(status) => {
                    // The last report may have come after the previous poll.
                    forward();
                    break status.map_err(env)?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    forward();
                    if cancel.load(Ordering::Relaxed) && !signalled {
                        // SAFETY: signalling our own child's process group.
                        unsafe { libc::kill(-pid, libc::SIGTERM) };
                        signalled = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(StageError::environment("Lost track of the worker process"))
                }
            }
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(3), _) => Err(StageError::environment(
                "The worker hit an environment error; see the log",
            )),
            (Some(code), _) => Err(StageError::failed(format!(
                "Worker exited with status {code}; see the log"
            ))),
            (None, Some(signal)) => Err(StageError::failed(format!(
                "Worker was killed by signal {signal} (crash or out of memory); see the log"
            ))),
            _ => Err(StageError::failed("Worker failed")),
        }
    }
}

fn env(e: std::io::Error) -> StageError {
    StageError::environment(e.to_string())
}

fn mipipe_open_append(path: &Path) -> Result<std::fs::File, StageError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| StageError::environment(format!("Cannot open log `{}`: {e}", path.display())))
}
