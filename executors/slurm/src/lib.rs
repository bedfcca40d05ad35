//! mipipe-executor-slurm: stages as Slurm jobs.
//!
//! ```text
//!  plan ──> stages to run ──> sbatch (one job per stage, afterok on upstream jobs,
//!                                     --kill-on-invalid-dep=yes)      ┐
//!                                                                     │ each job:
//!  follow: squeue / sacct ──> outcome per stage ──> lockfile          │ mipipe exec-stage JOB.json
//!                                                                     ┘ (resolve, find upstream in
//!                                                                        the shared cache, run, commit)
//! ```
//!
//! [`SlurmExecutor`] is the engine's [`RemoteExecutor`] for Slurm: the engine's one scheduling
//! loop submits, polls and cancels through it, and runs the local stages of a mixed pipeline in
//! parallel with the jobs. Slurm orders the jobs; each job commits its outputs to the shared
//! cache with the same atomic protocol as a local run, so a job killed by Slurm (time limit,
//! preemption, `scancel`) leaves nothing partial and a rerun resumes. The submitting process
//! writes the lockfile at the end.

mod cli;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mipipe_cache::{now_unix_ms, write_atomic, Cache};
use mipipe_engine::{
    Pipeline, PipelineStageJob, RemoteExecutor, RemoteJob, RemoteState, StageError,
};
use serde::{Deserialize, Serialize};

pub use cli::{JobId, JobState, SlurmError};

/// How to submit.
#[derive(Clone, Debug)]
pub struct SlurmSettings {
    /// The mipipe binary the jobs run; it must be reachable from every node.
    pub mipipe_bin: PathBuf,
    /// `--set` overrides, passed on to every job.
    pub overrides: Vec<String>,
    /// The most CPU slots a job's stage gets on its node (`-j`).
    pub max_jobs: usize,
    /// How often to ask Slurm about running jobs.
    pub poll_interval: Duration,
}

/// One submitted stage, as recorded for `--detach` and `mipipe status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Submission {
    /// Slurm job id.
    pub job: JobId,
    /// The job's stdout/stderr file.
    pub log: PathBuf,
    /// When it was submitted (ms since the epoch).
    pub submitted_unix_ms: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct SubmissionRecord {
    version: u32,
    stages: BTreeMap<String, Submission>,
}

fn slurm_dir(cache: &Cache) -> PathBuf {
    cache.area("slurm")
}

fn record_path(cache: &Cache, pipeline: &Path) -> PathBuf {
    Cache::pipeline_file(&slurm_dir(cache).join("submissions"), pipeline)
}

/// The jobs last submitted for a pipeline (stage name -> submission).
pub fn submissions(cache: &Cache, pipeline: &Path) -> BTreeMap<String, Submission> {
    fs::read(record_path(cache, pipeline))
        .ok()
        .and_then(|b| serde_json::from_slice::<SubmissionRecord>(&b).ok())
        .map(|r| r.stages)
        .unwrap_or_default()
}

fn save_submission(cache: &Cache, pipeline: &Path, stage: String, submission: &Submission) {
    let mut record = SubmissionRecord {
        version: 1,
        stages: submissions(cache, pipeline),
    };
    record.stages.insert(stage, submission.clone());
    let bytes = serde_json::to_vec_pretty(&record).expect("records serialise");
    let _ = write_atomic(&record_path(cache, pipeline), &bytes);
}

/// For `mipipe status`: what Slurm says about stages that still have to run and were
/// submitted (stage name -> "queued on Slurm as job 12 (PENDING: Dependency)").
pub fn describe_submitted(
    cache: &Cache,
    pipeline: &Path,
    stages: &[String],
) -> BTreeMap<String, String> {
    let submitted = submissions(cache, pipeline);
    let relevant: Vec<(&String, &Submission)> = stages
        .iter()
        .filter_map(|s| submitted.get(s).map(|sub| (s, sub)))
        .collect();
    let ids: Vec<JobId> = relevant.iter().map(|(_, s)| s.job.clone()).collect();
    let states = cli::squeue(&ids).unwrap_or_default();
    relevant
        .into_iter()
        .filter_map(|(stage, sub)| {
            let state = states.get(&sub.job)?;
            let text = match state.state.as_str() {
                "PENDING" => format!("queued on Slurm as job {} ({})", sub.job, state.reason),
                "RUNNING" => format!("running on Slurm as job {}", sub.job),
                other => format!(
                    "Slurm job {} ended {other}; log {}",
                    sub.job,
                    sub.log.display()
                ),
            };
            Some((stage.clone(), text))
        })
        .collect()
}

/// Runs stages as Slurm jobs: one `sbatch` per stage, `afterok` dependencies on upstream jobs
/// with `--kill-on-invalid-dep=yes`, followed with `squeue` (and `sacct` once the queue forgets
/// a job), cancelled with `scancel`. Every submission is recorded for `mipipe status`.
pub struct SlurmExecutor {
    settings: SlurmSettings,
    /// When a polled job was first missing from both the queue and accounting.
    missing_since: Mutex<BTreeMap<JobId, Instant>>,
}

impl SlurmExecutor {
    /// An executor that submits with these settings.
    pub fn new(settings: SlurmSettings) -> Self {
        Self {
            settings,
            missing_since: Mutex::new(BTreeMap::new()),
        }
    }
}

fn slurm_failure(e: SlurmError) -> StageError {
    StageError::environment(e.to_string())
}

impl RemoteExecutor for SlurmExecutor {
    fn name(&self) -> &str {
        "Slurm"
    }

    fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
    }

    fn submit(
        &self,
        pipeline: &Pipeline,
        cache: &Cache,
        index: usize,
        after: &[RemoteJob],
    ) -> Result<RemoteJob, StageError> {
        let after: Vec<JobId> = after.iter().map(|j| j.id.clone()).collect();
        let submission =
            submit(pipeline, cache, index, &after, &self.settings).map_err(slurm_failure)?;
        let stage = pipeline.stages[index].name.clone();
        save_submission(cache, &pipeline.path, stage, &submission);
        Ok(RemoteJob {
            id: submission.job,
            log: submission.log,
        })
    }

    fn poll(&self, jobs: &[RemoteJob]) -> Result<BTreeMap<String, RemoteState>, StageError> {
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        let queue = cli::squeue(&ids).map_err(slurm_failure)?;
        let mut missing = self.missing_since.lock().expect("not poisoned");
        let mut states = BTreeMap::new();
        for id in ids {
            let state = match queue.get(&id) {
                Some(state) => state.clone(),
                // Gone from the queue (MinJobAge passed, or the controller lost it): ask
                // accounting, and give a just-finished job a moment to show up there.
                None => match cli::final_state(&id) {
                    Some(state) => state,
                    None => {
                        let since = *missing.entry(id.clone()).or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(10) {
                            let why = "Slurm no longer lists the job and has no record of it";
                            states.insert(id, RemoteState::Lost(why.into()));
                        }
                        continue;
                    }
                },
            };
            states.insert(id, remote_state(&state));
        }
        Ok(states)
    }

    fn cancel(&self, jobs: &[RemoteJob]) -> Result<(), StageError> {
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        cli::scancel(&ids).map_err(slurm_failure)
    }
}

/// A Slurm job state as the engine reads it.
fn remote_state(state: &JobState) -> RemoteState {
    if !state.is_finished() {
        return if state.state == "RUNNING" {
            RemoteState::Running
        } else {
            RemoteState::Queued
        };
    }
    // A job whose upstream job failed is cancelled by `--kill-on-invalid-dep=yes`.
    if state.state == "CANCELLED" && state.reason.contains("Dependency") {
        return RemoteState::DependencyFailed(state.reason.clone());
    }
    if state.state == "COMPLETED" {
        RemoteState::Ended(state.state.clone())
    } else {
        RemoteState::Ended(format!("{} ({})", state.state, state.reason))
    }
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn submit(
    pipeline: &Pipeline,
    cache: &Cache,
    index: usize,
    after: &[JobId],
    settings: &SlurmSettings,
) -> Result<Submission, SlurmError> {
    let stage = &pipeline.stages[index];
    let dir = slurm_dir(cache);
    let stamp = format!("{}-{}", now_unix_ms(), file_safe(&stage.name));
    let jobs_dir = dir.join("jobs");
    let logs_dir = dir.join("logs");
    let io = |e: std::io::Error| SlurmError::Failed {
        command: "writing the job description".into(),
        stderr: e.to_string(),
    };
    fs::create_dir_all(&jobs_dir).map_err(io)?;
    fs::create_dir_all(&logs_dir).map_err(io)?;
    let cpus = (stage.resources.cpus as usize).max(1);
    let job = PipelineStageJob {
        version: 1,
        pipeline: fs::canonicalize(&pipeline.path).unwrap_or_else(|_| pipeline.path.clone()),
        overrides: settings.overrides.clone(),
        stage: stage.name.clone(),
        cache_dir: cache.root().to_path_buf(),
        jobs: cpus.min(settings.max_jobs.max(1)).max(1),
    };
    let job_file = jobs_dir.join(format!("{stamp}.json"));
    write_atomic(
        &job_file,
        &serde_json::to_vec_pretty(&job).expect("jobs serialise"),
    )
    .map_err(io)?;
    let script = jobs_dir.join(format!("{stamp}.sh"));
    let quote = |p: &Path| format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"));
    write_atomic(
        &script,
        format!(
            "#!/bin/sh\nexec {} exec-stage {}\n",
            quote(&settings.mipipe_bin),
            quote(&job_file)
        )
        .as_bytes(),
    )
    .map_err(io)?;
    let log_pattern = logs_dir.join(format!("{}-%j.out", file_safe(&stage.name)));
    let mut args = vec![
        format!("--job-name=mipipe:{}", stage.name),
        format!("--output={}", log_pattern.display()),
        format!("--chdir={}", pipeline.workspace.display()),
        format!("--cpus-per-task={cpus}"),
    ];
    if stage.resources.gpus > 0 {
        args.push(format!("--gres=gpu:{}", stage.resources.gpus));
    }
    let cluster = &stage.cluster;
    for (flag, value) in [
        ("--partition", &cluster.partition),
        ("--account", &cluster.account),
        ("--qos", &cluster.qos),
        ("--time", &cluster.time),
        ("--mem", &cluster.mem),
    ] {
        if let Some(value) = value {
            args.push(format!("{flag}={value}"));
        }
    }
    if !after.is_empty() {
        args.push(format!("--dependency=afterok:{}", after.join(":")));
        args.push("--kill-on-invalid-dep=yes".into());
    }
    args.extend(cluster.extra_args.iter().cloned());
    args.push(script.to_string_lossy().into_owned());
    let id = cli::sbatch(&args)?;
    let log = PathBuf::from(log_pattern.to_string_lossy().replace("%j", &id));
    Ok(Submission {
        job: id,
        log,
        submitted_unix_ms: now_unix_ms(),
    })
}
