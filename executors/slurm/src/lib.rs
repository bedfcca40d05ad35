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
//! Slurm orders the jobs; each job commits its outputs to the shared cache with the same
//! atomic protocol as a local run, so a job killed by Slurm (time limit, preemption,
//! `scancel`) leaves nothing partial and a rerun resumes. Local stages of a mixed pipeline run
//! in this process once their upstream jobs have completed. The submitting process writes the
//! lockfile at the end.

mod cli;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mipipe_cache::{now_unix_ms, write_atomic, Cache, ObjectDigest};
use mipipe_engine::{
    execute, plan, ErrorClass, Executor, Lockfile, Outcome, Pipeline, PipelineStageJob, Reason,
    Reporter, RunOptions, RunSummary, StageStatus,
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
    /// The executor of stages that set none (the pipeline's or `--executor`).
    pub default_executor: Executor,
    /// Submit and return instead of following the jobs.
    pub detach: bool,
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
    cache.root().join("slurm").join("v1")
}

fn record_path(cache: &Cache, pipeline: &Path) -> PathBuf {
    let absolute = fs::canonicalize(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let hex = ObjectDigest::of_bytes(absolute.to_string_lossy().as_bytes()).to_hex();
    slurm_dir(cache)
        .join("submissions")
        .join(format!("{}.json", &hex[..32]))
}

/// The jobs last submitted for a pipeline (stage name -> submission).
pub fn submissions(cache: &Cache, pipeline: &Path) -> BTreeMap<String, Submission> {
    fs::read(record_path(cache, pipeline))
        .ok()
        .and_then(|b| serde_json::from_slice::<SubmissionRecord>(&b).ok())
        .map(|r| r.stages)
        .unwrap_or_default()
}

fn save_submissions(cache: &Cache, pipeline: &Path, stages: &BTreeMap<String, Submission>) {
    let mut record = SubmissionRecord {
        version: 1,
        stages: submissions(cache, pipeline),
    };
    record.stages.extend(stages.clone());
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

enum Track {
    Waiting,
    Submitted {
        job: JobId,
        log: PathBuf,
        started: bool,
        missing_since: Option<Instant>,
    },
    Done(Outcome),
}

/// What [`run`] did.
pub enum SlurmRun {
    /// Every stage ended (possibly failed); the lockfile is updated.
    Finished(RunSummary),
    /// `--detach`: jobs were submitted and are being run by Slurm.
    Detached {
        /// Stage name -> submission.
        submitted: BTreeMap<String, Submission>,
        /// Stages not submitted, with why (cached, or local stages after Slurm ones).
        summary: RunSummary,
    },
}

/// Runs the selected stages, the Slurm ones as jobs; `local` carries the selection, forced
/// stages, cancellation and the options for stages that run here.
pub fn run(
    pipeline: &Pipeline,
    cache: &Cache,
    lock_path: &Path,
    local: &RunOptions,
    settings: &SlurmSettings,
    reporter: &Arc<dyn Reporter>,
) -> Result<SlurmRun, SlurmError> {
    let (lock, warning) = Lockfile::read(lock_path);
    if let Some(w) = warning {
        reporter.on_warning(&w);
    }
    let initial = plan(pipeline, cache, &lock, &local.selected, &local.forced);
    for w in &initial.warnings {
        reporter.on_warning(w);
    }
    reporter.on_run_start(local.selected.len());
    let mut tracks: BTreeMap<usize, Track> = BTreeMap::new();
    let mut reasons: BTreeMap<usize, Vec<Reason>> = BTreeMap::new();
    for (name, status) in &initial.stages {
        let index = pipeline.index_of(name).expect("planned stages exist");
        match status {
            StageStatus::Cached { key } => {
                reporter.on_cached(name, false);
                let key = key.expect("a full plan has keys");
                tracks.insert(
                    index,
                    Track::Done(Outcome::Cached {
                        key,
                        early_cutoff: false,
                    }),
                );
            }
            StageStatus::WillRun { reasons: why, .. } => {
                reasons.insert(index, why.clone());
                tracks.insert(index, Track::Waiting);
            }
        }
    }
    let executor_of = |index: usize| {
        pipeline.stages[index]
            .executor
            .unwrap_or(settings.default_executor)
    };
    let mut newly_submitted: BTreeMap<String, Submission> = BTreeMap::new();
    let started = Instant::now();

    loop {
        if local.cancel.load(Ordering::Relaxed) {
            let running: Vec<JobId> = tracks
                .values()
                .filter_map(|t| match t {
                    Track::Submitted { job, .. } => Some(job.clone()),
                    _ => None,
                })
                .collect();
            cli::scancel(&running)?;
            for (index, track) in tracks.iter_mut() {
                if !matches!(track, Track::Done(_)) {
                    reporter.on_stage_end(
                        &pipeline.stages[*index].name,
                        &Outcome::Cancelled,
                        started.elapsed(),
                    );
                    *track = Track::Done(Outcome::Cancelled);
                }
            }
            break;
        }
        let mut progressed = false;
        let waiting: Vec<usize> = tracks
            .iter()
            .filter(|(_, t)| matches!(t, Track::Waiting))
            .map(|(i, _)| *i)
            .collect();
        for index in waiting {
            let stage = &pipeline.stages[index];
            let upstream: BTreeSet<usize> =
                stage.inputs.values().flatten().map(|u| u.stage).collect();
            let mut blocked_by_failure = None;
            let mut ready_for_submit = true;
            let mut ready_for_local = true;
            let mut after: Vec<JobId> = Vec::new();
            for up in &upstream {
                match tracks.get(up) {
                    None | Some(Track::Done(Outcome::Executed { .. } | Outcome::Cached { .. })) => {
                    }
                    Some(Track::Done(_)) => blocked_by_failure = Some(*up),
                    Some(Track::Submitted { job, .. }) => {
                        after.push(job.clone());
                        ready_for_local = false;
                    }
                    Some(Track::Waiting) => {
                        ready_for_submit = false;
                        ready_for_local = false;
                    }
                }
            }
            if let Some(up) = blocked_by_failure {
                let outcome = Outcome::Skipped {
                    cause: format!("`{}` failed", pipeline.stages[up].name),
                };
                reporter.on_stage_end(&stage.name, &outcome, Duration::ZERO);
                tracks.insert(index, Track::Done(outcome));
                progressed = true;
                continue;
            }
            match executor_of(index) {
                Executor::Slurm if ready_for_submit => {
                    let submission = submit(pipeline, cache, index, &after, settings, local.jobs)?;
                    reporter.on_submitted(&stage.name, "Slurm", &submission.job, &submission.log);
                    newly_submitted.insert(stage.name.clone(), submission.clone());
                    tracks.insert(
                        index,
                        Track::Submitted {
                            job: submission.job,
                            log: submission.log,
                            started: false,
                            missing_since: None,
                        },
                    );
                    progressed = true;
                }
                Executor::Local if ready_for_local => {
                    reporter.on_stage_start(&stage.name, reasons.get(&index).map_or(&[], |r| r));
                    let begun = Instant::now();
                    let options = RunOptions {
                        selected: pipeline.closure(&[index]),
                        only: Some(index),
                        record_lockfile: false,
                        ..local.clone()
                    };
                    let quiet: Arc<dyn Reporter> = Arc::new(mipipe_engine::SilentReporter);
                    let summary = execute(pipeline, cache, lock_path, &options, &quiet);
                    let outcome = summary
                        .outcomes
                        .into_iter()
                        .find(|(name, _)| *name == stage.name)
                        .map(|(_, o)| o)
                        .unwrap_or(Outcome::Skipped {
                            cause: "not run".into(),
                        });
                    reporter.on_stage_end(&stage.name, &outcome, begun.elapsed());
                    tracks.insert(index, Track::Done(outcome));
                    progressed = true;
                }
                _ => {}
            }
        }
        if settings.detach {
            // Submit everything that can be (local stages upstream of jobs run first), then go.
            if progressed {
                continue;
            }
            break;
        }
        // Follow the submitted jobs.
        let submitted: Vec<JobId> = tracks
            .values()
            .filter_map(|t| match t {
                Track::Submitted { job, .. } => Some(job.clone()),
                _ => None,
            })
            .collect();
        if submitted.is_empty() && !progressed {
            break;
        }
        let states = cli::squeue(&submitted)?;
        let indices: Vec<usize> = tracks
            .iter()
            .filter(|(_, t)| matches!(t, Track::Submitted { .. }))
            .map(|(i, _)| *i)
            .collect();
        for index in indices {
            let Some(Track::Submitted {
                job,
                log,
                started: was_started,
                missing_since,
            }) = tracks.get_mut(&index)
            else {
                continue;
            };
            let name = &pipeline.stages[index].name;
            let state = match states.get(job.as_str()) {
                Some(state) => Some(state.clone()),
                // Gone from the queue (MinJobAge passed, or the controller lost it): ask
                // accounting, and give a just-finished job a moment to show up there.
                None => cli::final_state(job).or_else(|| {
                    let since = *missing_since.get_or_insert_with(Instant::now);
                    (since.elapsed() > Duration::from_secs(10)).then(|| JobState {
                        state: "LOST".into(),
                        reason: "Slurm no longer lists the job and has no record of it".into(),
                    })
                }),
            };
            let Some(state) = state else { continue };
            if state.state == "RUNNING" && !*was_started {
                *was_started = true;
                reporter.on_stage_start(name, reasons.get(&index).map_or(&[], |r| r));
            }
            if !state.is_finished() {
                continue;
            }
            let job = job.clone();
            let log = log.clone();
            let outcome = finished_outcome(
                pipeline, cache, &lock, index, &job, &log, &state, &tracks, &reasons,
            );
            reporter.on_stage_end(name, &outcome, started.elapsed());
            tracks.insert(index, Track::Done(outcome));
        }
        std::thread::sleep(settings.poll_interval);
    }

    if !newly_submitted.is_empty() {
        save_submissions(cache, &pipeline.path, &newly_submitted);
    }
    // Record whatever is now in the cache.
    let (lock_now, _) = Lockfile::read(lock_path);
    let after = plan(
        pipeline,
        cache,
        &lock_now,
        &local.selected,
        &BTreeSet::new(),
    );
    let names = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    let lockfile_updated = Lockfile::update(lock_path, &names, &after.entries, &lock_now)
        .unwrap_or_else(|e| {
            reporter.on_warning(&format!("Cannot write `{}`: {e}", lock_path.display()));
            false
        });
    let outcomes = local
        .selected
        .iter()
        .map(|&i| {
            let outcome = match tracks.remove(&i) {
                Some(Track::Done(o)) => o,
                Some(Track::Submitted { job, .. }) => Outcome::Skipped {
                    cause: format!("submitted as Slurm job {job}"),
                },
                _ if settings.detach => Outcome::Skipped {
                    cause:
                        "runs locally after Slurm stages; run `mipipe run` again when they are done"
                            .into(),
                },
                _ => Outcome::Skipped {
                    cause: "not run".into(),
                },
            };
            (pipeline.stages[i].name.clone(), outcome)
        })
        .collect();
    let summary = RunSummary {
        outcomes,
        lockfile_updated,
    };
    Ok(if settings.detach {
        SlurmRun::Detached {
            submitted: newly_submitted,
            summary,
        }
    } else {
        SlurmRun::Finished(summary)
    })
}

#[allow(clippy::too_many_arguments)]
fn finished_outcome(
    pipeline: &Pipeline,
    cache: &Cache,
    lock: &Lockfile,
    index: usize,
    job: &JobId,
    log: &Path,
    state: &JobState,
    tracks: &BTreeMap<usize, Track>,
    reasons: &BTreeMap<usize, Vec<Reason>>,
) -> Outcome {
    let name = &pipeline.stages[index].name;
    // A job whose upstream job failed is cancelled by `--kill-on-invalid-dep=yes`.
    if state.state == "CANCELLED" && state.reason.contains("Dependency") {
        let failed = pipeline.stages[index]
            .inputs
            .values()
            .flatten()
            .find(|u| matches!(tracks.get(&u.stage), Some(Track::Done(o)) if !o.is_success()))
            .map(|u| pipeline.stages[u.stage].name.clone());
        return Outcome::Skipped {
            cause: match failed {
                Some(up) => format!("`{up}` failed"),
                None => format!("Slurm cancelled job {job}: {}", state.reason),
            },
        };
    }
    // Whatever Slurm says, the cache decides whether the stage's result exists.
    let check = plan(
        pipeline,
        cache,
        lock,
        &pipeline.closure(&[index]),
        &BTreeSet::new(),
    );
    let cached_key = check
        .stages
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, s)| match s {
            StageStatus::Cached { key } => *key,
            StageStatus::WillRun { .. } => None,
        });
    match (state.state.as_str(), cached_key) {
        (_, Some(key)) => Outcome::Executed {
            key,
            reasons: reasons.get(&index).cloned().unwrap_or_default(),
        },
        (other, None) => Outcome::Failed {
            key: None,
            error: match other {
                "COMPLETED" => format!("Slurm job {job} completed but left no result in the cache"),
                "LOST" => format!("Slurm job {job} was lost: {}", state.reason),
                _ => format!("Slurm job {job} ended {other} ({})", state.reason),
            },
            class: ErrorClass::Stage,
            log: Some(log.to_path_buf()),
        },
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
    default_jobs: usize,
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
        jobs: cpus.min(default_jobs.max(1)).max(1),
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
