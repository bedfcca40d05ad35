//! Running a plan: ready stages start as soon as their inputs exist, within CPU and GPU slots.
//!
//! The main thread owns all scheduling state; each running stage gets a scoped worker thread
//! that reports back over a channel. Keys of stages downstream of a running stage are computed
//! when their inputs exist, so an identical upstream output is a cache hit (early cutoff).
//! With `-j 1` stages start one at a time in pipeline order: the deterministic sequential
//! executor used for debugging.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mipipe_cache::{
    now_unix_ms, ActionEntry, Cache, Lookup, OutputKind, RunOutcome, RunRecord, StageKey,
    StoredOutput,
};
use serde::Serialize;

use crate::job::{open_log, Job, WorkerLauncher};
use crate::lockfile::{LockEntry, Lockfile};
use crate::pipeline::{Pipeline, ResolvedStage};
use crate::plan::{
    dependency_digests, lookup_stage, stage_key, stage_seed, upstream_digests, InputDigests,
    KeyedLookup, Reason,
};
use crate::reporter::Reporter;
use crate::stage::{ErrorClass, ProgressSink, StageError};

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

/// Options of one run.
#[derive(Clone)]
pub struct RunOptions {
    /// CPU slots (`-j`).
    pub jobs: usize,
    /// GPU device slots (`--gpus`), device ids `0..gpus`.
    pub gpus: usize,
    /// Run what does not depend on a failure.
    pub keep_going: bool,
    /// Stages to run even if cached.
    pub forced: BTreeSet<usize>,
    /// Stages selected (targets and their dependencies).
    pub selected: BTreeSet<usize>,
    /// Set to stop (Ctrl-C).
    pub cancel: Arc<AtomicBool>,
    /// Runs stages that want a worker process (and every stage, with `isolate_all`).
    pub launcher: Option<Arc<dyn WorkerLauncher>>,
    /// Run every stage in a worker process.
    pub isolate_all: bool,
    /// Run only this stage: every other selected stage must already be cached (a cluster job
    /// runs one stage whose upstream jobs have completed).
    pub only: Option<usize>,
    /// Update the pipeline's lockfile at the end (a cluster job leaves that to the submitter).
    pub record_lockfile: bool,
}

/// The result of a run.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    /// `(stage name, outcome)` for every selected stage, in pipeline order.
    pub outcomes: Vec<(String, Outcome)>,
    /// Whether the lockfile changed.
    pub lockfile_updated: bool,
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

struct Done {
    index: usize,
    result: Result<Finished, (Option<PathBuf>, StageError)>,
    gpus: Vec<usize>,
    elapsed: Duration,
}

struct Finished {
    outputs: BTreeMap<String, StoredOutput>,
    /// Another process completed the same key while we waited for its lock.
    found_in_cache: bool,
}

struct ProgressForward {
    stage: String,
    reporter: Arc<dyn Reporter>,
}

impl ProgressSink for ProgressForward {
    fn progress(&self, done: u64, total: u64, message: &str) {
        self.reporter.on_progress(&self.stage, done, total, message);
    }
}

/// Runs the selected stages of a pipeline and updates its lockfile.
pub fn execute(
    pipeline: &Pipeline,
    cache: &Cache,
    lock_path: &Path,
    options: &RunOptions,
    reporter: &Arc<dyn Reporter>,
) -> RunSummary {
    let (lock, warning) = Lockfile::read(lock_path);
    if let Some(w) = warning {
        reporter.on_warning(&w);
    }
    let n = pipeline.stages.len();
    let mut outputs: Vec<Option<BTreeMap<String, StoredOutput>>> = vec![None; n];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut inputs_of: Vec<Option<InputDigests>> = vec![None; n];
    let mut keys: Vec<Option<StageKey>> = vec![None; n];
    let mut reasons_of: Vec<Vec<Reason>> = vec![Vec::new(); n];
    let mut pending: BTreeSet<usize> = options.selected.clone();
    let mut running = 0usize;
    let mut cpu_free = options.jobs.max(1);
    let mut gpu_free: Vec<usize> = (0..options.gpus).collect();
    let mut stop_cause: Option<String> = None;
    let mut ran_this_time = vec![false; n];
    reporter.on_run_start(pending.len());

    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<Done>();
        loop {
            if options.cancel.load(Ordering::Relaxed) && stop_cause.is_none() {
                stop_cause = Some("the run was cancelled".into());
            }
            // Start (or resolve from cache) every ready stage that fits.
            let mut progressed = true;
            while progressed && stop_cause.is_none() {
                progressed = false;
                // A stage that cannot even start: (index, key, message, class).
                let mut early_failure: Option<(usize, Option<StageKey>, String, ErrorClass)> = None;
                let ready: Vec<usize> =
                    pending
                        .iter()
                        .copied()
                        .filter(|&i| {
                            pipeline.stages[i].inputs.values().flatten().all(|u| {
                                outcomes[u.stage].as_ref().is_some_and(Outcome::is_success)
                            })
                        })
                        .collect();
                for index in ready {
                    let stage = &pipeline.stages[index];
                    if keys[index].is_none() {
                        let digests = upstream_digests(stage, &outputs)
                            .ok_or(Reason::NeverRun)
                            .and_then(|mut d| {
                                d.extend(dependency_digests(stage, pipeline, cache)?);
                                Ok(d)
                            });
                        let digests = match digests {
                            Ok(d) => d,
                            Err(reason) => {
                                early_failure = Some((
                                    index,
                                    None,
                                    format!("Cannot run `{}`: {reason}", stage.name),
                                    ErrorClass::Stage,
                                ));
                                break;
                            }
                        };
                        let key = stage_key(stage, &digests);
                        let mut warnings = Vec::new();
                        let lookup = lookup_stage(
                            stage,
                            &digests,
                            &key,
                            cache,
                            &lock,
                            options.forced.contains(&index),
                            &mut warnings,
                        );
                        for w in &warnings {
                            reporter.on_warning(w);
                        }
                        keys[index] = Some(key);
                        inputs_of[index] = Some(digests);
                        match lookup {
                            KeyedLookup::Hit(cached) => {
                                let early_cutoff = stage
                                    .inputs
                                    .values()
                                    .flatten()
                                    .any(|u| ran_this_time[u.stage]);
                                reporter.on_cached(&stage.name, early_cutoff);
                                if let Err(e) = materialize(pipeline, cache, stage, &cached, true) {
                                    reporter.on_warning(&format!("Stage `{}`: {e}", stage.name));
                                }
                                outputs[index] = Some(cached);
                                outcomes[index] = Some(Outcome::Cached { key, early_cutoff });
                                pending.remove(&index);
                                progressed = true;
                                continue;
                            }
                            KeyedLookup::Miss(reasons) => reasons_of[index] = reasons,
                        }
                    }
                    if options.only.is_some_and(|only| only != index) {
                        early_failure = Some((
                            index,
                            keys[index],
                            format!(
                                "Upstream stage `{}` is not in the cache; its job did not complete",
                                stage.name
                            ),
                            ErrorClass::Stage,
                        ));
                        break;
                    }
                    let want_cpus = (stage.resources.cpus as usize).clamp(1, options.jobs.max(1));
                    let want_gpus = stage.resources.gpus as usize;
                    if want_gpus > options.gpus {
                        early_failure = Some((
                            index,
                            keys[index],
                            format!(
                                "Stage `{}` needs {want_gpus} GPU(s) but this run has {} (`--gpus`)",
                                stage.name, options.gpus
                            ),
                            ErrorClass::Environment,
                        ));
                        break;
                    }
                    if want_cpus > cpu_free || want_gpus > gpu_free.len() {
                        continue;
                    }
                    cpu_free -= want_cpus;
                    let gpus: Vec<usize> = gpu_free.drain(..want_gpus).collect();
                    pending.remove(&index);
                    running += 1;
                    progressed = true;
                    reporter.on_stage_start(&stage.name, &reasons_of[index]);
                    let key = keys[index].expect("key computed above");
                    let inputs = input_paths(stage, &outputs, cache);
                    let sender = sender.clone();
                    let cancel = options.cancel.clone();
                    let launcher =
                        if options.isolate_all || stage.kind.wants_worker_process(&stage.params) {
                            options.launcher.clone()
                        } else {
                            None
                        };
                    let digests = inputs_of[index].clone().unwrap_or_default();
                    let reporter = reporter.clone();
                    scope.spawn(move || {
                        let started = Instant::now();
                        let result = inputs.and_then(|inputs| {
                            run_one(RunOne {
                                pipeline,
                                cache,
                                stage,
                                key,
                                digests,
                                inputs,
                                cpus: want_cpus,
                                gpus: &gpus,
                                cancel,
                                launcher,
                                reporter,
                            })
                        });
                        let _ = sender.send(Done {
                            index,
                            result,
                            gpus,
                            elapsed: started.elapsed(),
                        });
                    });
                }
                if let Some((index, key, error, class)) = early_failure {
                    let name = &pipeline.stages[index].name;
                    pending.remove(&index);
                    let outcome = Outcome::Failed {
                        key,
                        error,
                        class,
                        log: None,
                    };
                    reporter.on_stage_end(name, &outcome, Duration::ZERO);
                    outcomes[index] = Some(outcome);
                    progressed = true;
                    if !options.keep_going {
                        stop_cause = Some(format!("`{name}` failed"));
                    }
                }
            }
            if running == 0 {
                break;
            }
            let Ok(done) = receiver.recv() else { break };
            running -= 1;
            let stage = &pipeline.stages[done.index];
            cpu_free += (stage.resources.cpus as usize).clamp(1, options.jobs.max(1));
            gpu_free.extend(done.gpus);
            gpu_free.sort_unstable();
            let key = keys[done.index].expect("running stages have keys");
            let outcome = match done.result {
                Ok(finished) => {
                    outputs[done.index] = Some(finished.outputs);
                    if finished.found_in_cache {
                        Outcome::Cached {
                            key,
                            early_cutoff: false,
                        }
                    } else {
                        ran_this_time[done.index] = true;
                        Outcome::Executed {
                            key,
                            reasons: reasons_of[done.index].clone(),
                        }
                    }
                }
                Err(_) if options.cancel.load(Ordering::Relaxed) => Outcome::Cancelled,
                Err((log, error)) => {
                    if !options.keep_going && stop_cause.is_none() {
                        stop_cause = Some(format!("`{}` failed", stage.name));
                    }
                    Outcome::Failed {
                        key: Some(key),
                        error: error.message().to_string(),
                        class: error.class(),
                        log,
                    }
                }
            };
            reporter.on_stage_end(&stage.name, &outcome, done.elapsed);
            outcomes[done.index] = Some(outcome);
        }
    });

    // Whatever did not run: name the failure that blocked it.
    for index in pending {
        let stage = &pipeline.stages[index];
        let failed_upstream = first_failed_upstream(pipeline, index, &outcomes);
        let outcome = if options.cancel.load(Ordering::Relaxed) {
            Outcome::Cancelled
        } else {
            Outcome::Skipped {
                cause: match failed_upstream {
                    Some(name) => format!("`{name}` failed"),
                    None => stop_cause
                        .clone()
                        .map(|c| format!("the run stopped because {c}"))
                        .unwrap_or_else(|| "not run".into()),
                },
            }
        };
        reporter.on_stage_end(&stage.name, &outcome, Duration::ZERO);
        outcomes[index] = Some(outcome);
    }

    // Record what is now known to be current.
    let _ = cache.file_digests().save();
    let mut lockfile_updated = false;
    if options.record_lockfile {
        let mut entries = BTreeMap::new();
        for (index, stage) in pipeline.stages.iter().enumerate() {
            if !outcomes[index].as_ref().is_some_and(Outcome::is_success) || !stage.cache {
                continue;
            }
            if let (Some(key), Some(inputs), Some(outs)) =
                (keys[index], &inputs_of[index], &outputs[index])
            {
                entries.insert(stage.name.clone(), LockEntry::new(stage, key, inputs, outs));
            }
        }
        let names = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        match Lockfile::update(lock_path, &names, &entries, &lock) {
            Ok(changed) => lockfile_updated = changed,
            Err(e) => reporter.on_warning(&format!("Cannot write `{}`: {e}", lock_path.display())),
        }
    }

    RunSummary {
        outcomes: options
            .selected
            .iter()
            .map(|&i| {
                (
                    pipeline.stages[i].name.clone(),
                    outcomes[i].clone().unwrap_or(Outcome::Skipped {
                        cause: "not run".into(),
                    }),
                )
            })
            .collect(),
        lockfile_updated,
    }
}

fn first_failed_upstream(
    pipeline: &Pipeline,
    index: usize,
    outcomes: &[Option<Outcome>],
) -> Option<String> {
    let mut stack = vec![index];
    let mut seen = BTreeSet::new();
    while let Some(i) = stack.pop() {
        for u in pipeline.stages[i].inputs.values().flatten() {
            if !seen.insert(u.stage) {
                continue;
            }
            match &outcomes[u.stage] {
                Some(Outcome::Failed { .. }) => return Some(pipeline.stages[u.stage].name.clone()),
                Some(Outcome::Skipped { .. }) | None => stack.push(u.stage),
                _ => {}
            }
        }
    }
    None
}

fn input_paths(
    stage: &ResolvedStage,
    outputs: &[Option<BTreeMap<String, StoredOutput>>],
    cache: &Cache,
) -> Result<BTreeMap<String, Vec<PathBuf>>, (Option<PathBuf>, StageError)> {
    let mut paths = BTreeMap::new();
    for (name, ups) in &stage.inputs {
        let mut list = Vec::new();
        for up in ups {
            let output = outputs[up.stage]
                .as_ref()
                .and_then(|o| o.get(&up.output))
                .expect("inputs of a started stage exist");
            let path = cache
                .store()
                .materialize(output)
                .map_err(|e| (None, StageError::environment(e.to_string())))?;
            list.push(path);
        }
        paths.insert(name.clone(), list);
    }
    Ok(paths)
}

struct RunOne<'a> {
    pipeline: &'a Pipeline,
    cache: &'a Cache,
    stage: &'a ResolvedStage,
    key: StageKey,
    digests: InputDigests,
    inputs: BTreeMap<String, Vec<PathBuf>>,
    cpus: usize,
    gpus: &'a [usize],
    cancel: Arc<AtomicBool>,
    launcher: Option<Arc<dyn WorkerLauncher>>,
    reporter: Arc<dyn Reporter>,
}

fn env_error(e: impl std::fmt::Display) -> (Option<PathBuf>, StageError) {
    (None, StageError::environment(e.to_string()))
}

/// Runs one stage under its key's lock and commits its outputs.
fn run_one(job: RunOne<'_>) -> Result<Finished, (Option<PathBuf>, StageError)> {
    let RunOne {
        pipeline,
        cache,
        stage,
        key,
        digests,
        inputs,
        cpus,
        gpus,
        cancel,
        launcher,
        reporter,
    } = job;
    let _guard = match cache.locks().try_lock_stage(&key).map_err(env_error)? {
        Some(guard) => guard,
        None => {
            reporter.on_waiting_for_lock(&stage.name);
            let guard = cache.locks().lock_stage(&key).map_err(env_error)?;
            // The other process may have finished the very same work.
            if stage.cache {
                if let Lookup::Hit(entry) = cache.actions().lookup(&key, cache.store()) {
                    materialize(pipeline, cache, stage, &entry.outputs, true)
                        .map_err(|e| (None, e))?;
                    return Ok(Finished {
                        outputs: entry.outputs,
                        found_in_cache: true,
                    });
                }
            }
            guard
        }
    };
    let started_ms = now_unix_ms();
    let started = Instant::now();
    let run_dir = cache.runs().start(&key).map_err(env_error)?;
    let log_path = run_dir.log_path();
    let finish = |outcome: RunOutcome, error: Option<String>| {
        let _ = run_dir.finish(&RunRecord {
            version: 1,
            stage: stage.name.clone(),
            key,
            outcome,
            error,
            started_unix_ms: started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            executor: "local".into(),
        });
    };
    let result = execute_in_scratch(
        pipeline, cache, stage, key, &digests, inputs, cpus, gpus, &cancel, launcher, &log_path,
        reporter,
    );
    match result {
        Ok(outputs) => {
            finish(RunOutcome::Succeeded, None);
            Ok(Finished {
                outputs,
                found_in_cache: false,
            })
        }
        Err(error) => {
            let cancelled = cancel.load(Ordering::Relaxed);
            finish(
                if cancelled {
                    RunOutcome::Cancelled
                } else {
                    RunOutcome::Failed
                },
                Some(error.message().to_string()),
            );
            Err((Some(log_path), error))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_in_scratch(
    pipeline: &Pipeline,
    cache: &Cache,
    stage: &ResolvedStage,
    key: StageKey,
    digests: &InputDigests,
    inputs: BTreeMap<String, Vec<PathBuf>>,
    cpus: usize,
    gpus: &[usize],
    cancel: &Arc<AtomicBool>,
    launcher: Option<Arc<dyn WorkerLauncher>>,
    log_path: &Path,
    reporter: Arc<dyn Reporter>,
) -> Result<BTreeMap<String, StoredOutput>, StageError> {
    let started = Instant::now();
    let scratch = cache
        .scratch_dir(&key.short())
        .map_err(|e| StageError::environment(e.to_string()))?;
    let cleanup = ScratchGuard(scratch.clone());
    let out_dir = scratch.join("out");
    fs::create_dir_all(&out_dir).map_err(|e| {
        StageError::environment(format!("Cannot create `{}`: {e}", out_dir.display()))
    })?;
    let mut outputs = BTreeMap::new();
    for spec in &stage.outputs {
        let path = out_dir.join(&spec.file_name);
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if spec.kind == OutputKind::Dir {
            let _ = fs::create_dir_all(&path);
        }
        outputs.insert(spec.name.clone(), path);
    }
    // The CPU slots granted: thread pools of the stage (libtorch's) size themselves by it.
    let mut env = vec![("MIPIPE_THREADS".to_string(), cpus.to_string())];
    if stage.resources.gpus > 0 {
        let ids: Vec<String> = gpus.iter().map(usize::to_string).collect();
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), ids.join(",")));
    }
    let job = Job {
        version: 1,
        stage: stage.name.clone(),
        kind: stage.kind.kind().to_string(),
        kind_version: stage.kind.version(),
        params: stage.params.clone(),
        inputs,
        outputs: outputs.clone(),
        workspace: pipeline.workspace.clone(),
        seed: stage_seed(&key),
        env,
        log: log_path.to_path_buf(),
        worker: stage.kind.worker_binary().map(str::to_string),
        progress_file: launcher.is_some().then(|| scratch.join("progress")),
        facts_file: Some(scratch.join("facts.json")),
    };
    let progress = ProgressForward {
        stage: stage.name.clone(),
        reporter,
    };
    let watched = InputSnapshot::of(&job.inputs);
    let ran = match launcher {
        Some(launcher) => {
            let job_file = scratch.join("job.json");
            fs::write(
                &job_file,
                serde_json::to_vec_pretty(&job).expect("jobs serialise"),
            )
            .map_err(|e| {
                StageError::environment(format!("Cannot write `{}`: {e}", job_file.display()))
            })?;
            launcher.launch(&job, &job_file, cancel, &progress)
        }
        None => {
            let log = open_log(log_path).map_err(|e| {
                StageError::environment(format!("Cannot open log `{}`: {e}", log_path.display()))
            })?;
            let ctx = job.context(log, cancel.clone(), Some(Arc::new(progress)));
            stage.kind.run(&stage.params, &ctx)
        }
    };
    // Inputs are cached objects shared with every other stage: one the stage wrote into (as
    // root the read-only bits protect nothing) must not stay cached as if intact.
    if let Some((input, path)) = watched.first_changed() {
        let removed = cache.store().discard_damaged(&path);
        return Err(StageError::failed(format!(
            "The stage changed its input `{input}` (`{}`); stages must only read their inputs. {}",
            path.display(),
            if removed.is_empty() {
                "The cached copy it was given is discarded and will be rebuilt".to_string()
            } else {
                format!(
                    "The damaged cached object is removed, so the stage that made it runs again ({})",
                    removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            }
        )));
    }
    ran?;
    if cancel.load(Ordering::Relaxed) {
        return Err(StageError::failed("Cancelled"));
    }
    check_outputs(stage, &out_dir)?;
    let mut stored = BTreeMap::new();
    for spec in &stage.outputs {
        let path = &outputs[&spec.name];
        let (digest, size) = match spec.kind {
            OutputKind::File => cache.store().ingest_file(path),
            OutputKind::Dir => cache.store().ingest_dir(path),
        }
        .map_err(|e| StageError::environment(e.to_string()))?;
        stored.insert(
            spec.name.clone(),
            StoredOutput {
                kind: spec.kind,
                digest,
                size,
            },
        );
    }
    if stage.cache {
        let entry = ActionEntry {
            version: 1,
            key,
            kind: stage.kind.kind().to_string(),
            kind_version: stage.kind.version(),
            stage: stage.name.clone(),
            params: stage.params.clone(),
            inputs: digests.clone(),
            outputs: stored.clone(),
            created_unix: now_unix_ms() / 1000,
            duration_ms: started.elapsed().as_millis() as u64,
            facts: crate::stage::read_facts(&scratch.join("facts.json")),
        };
        cache
            .actions()
            .insert(&entry)
            .map_err(|e| StageError::environment(e.to_string()))?;
    }
    materialize(pipeline, cache, stage, &stored, false)?;
    drop(cleanup);
    Ok(stored)
}

/// Checks that exactly the declared outputs exist, each of the declared type.
fn check_outputs(stage: &ResolvedStage, out_dir: &Path) -> Result<(), StageError> {
    for spec in &stage.outputs {
        let path = out_dir.join(&spec.file_name);
        let ok = match spec.kind {
            OutputKind::File => path.is_file(),
            OutputKind::Dir => path.is_dir(),
        };
        if !ok {
            let what = if spec.kind == OutputKind::File {
                "file"
            } else {
                "directory"
            };
            return Err(StageError::failed(format!(
                "Stage `{}` did not write its declared output `{}` (a {what} named `{}`)",
                stage.name, spec.name, spec.file_name
            )));
        }
    }
    let declared: BTreeSet<PathBuf> = stage
        .outputs
        .iter()
        .map(|o| out_dir.join(&o.file_name))
        .collect();
    let mut stray = Vec::new();
    collect_stray(out_dir, &declared, &mut stray);
    if let Some(first) = stray.first() {
        return Err(StageError::failed(format!(
            "Stage `{}` wrote `{}`, which is not a declared output; declare it in `outs` or write it elsewhere",
            stage.name,
            first.strip_prefix(out_dir).unwrap_or(first).display()
        )));
    }
    Ok(())
}

fn collect_stray(dir: &Path, declared: &BTreeSet<PathBuf>, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if declared.contains(&path) {
            continue;
        }
        if path.is_dir() && declared.iter().any(|d| d.starts_with(&path)) {
            collect_stray(&path, declared, out);
        } else {
            out.push(path);
        }
    }
}

/// Copies outputs named in `materialize:` into the workspace; with `only_if_stale`, leaves
/// copies that already match alone (a cached stage whose copy was deleted gets it back).
///
/// Never loses a user's file: a destination that exists is replaced only when it is an earlier
/// copy of a stored output (its bytes, or its whole folder, are in the cache), never through a
/// symlinked folder, and never when it is or holds the pipeline file or the cache.
pub(crate) fn materialize(
    pipeline: &Pipeline,
    cache: &Cache,
    stage: &ResolvedStage,
    outputs: &BTreeMap<String, StoredOutput>,
    only_if_stale: bool,
) -> Result<(), StageError> {
    for (name, relative) in &stage.materialize {
        if let Some(output) = outputs.get(name) {
            let dest = pipeline.workspace.join(relative);
            if only_if_stale && cache.is_copy_current(output, &dest) {
                continue;
            }
            let refuse = |why: String| {
                StageError::failed(format!(
                    "Not materializing `{name}` at `{}`: {why}",
                    relative.display()
                ))
            };
            confined(&pipeline.workspace, relative).map_err(refuse)?;
            for protected in [&pipeline.path, &cache.root().to_path_buf()] {
                let protected = fs::canonicalize(protected).unwrap_or_else(|_| protected.clone());
                let target = fs::canonicalize(&dest).unwrap_or_else(|_| dest.clone());
                if protected.starts_with(&target) {
                    return Err(refuse(format!(
                        "it holds `{}`, which mipipe never replaces; choose a folder of its own for `{name}`",
                        protected.display()
                    )));
                }
            }
            if !cache.is_earlier_copy(&dest) {
                return Err(refuse(format!(
                    "it holds something mipipe did not put there (or a copy edited since); move it away or give `{name}` another path"
                )));
            }
            cache
                .store()
                .copy_out(output, &dest)
                .map_err(|e| StageError::environment(e.to_string()))?;
        }
    }
    Ok(())
}

/// Whether every folder between the workspace and `relative` is a real folder, not a symlink
/// (a link would let a copy land outside the workspace).
fn confined(workspace: &Path, relative: &Path) -> Result<(), String> {
    let mut at = workspace.to_path_buf();
    for component in relative.components() {
        at.push(component);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "`{}` is a symlink, and mipipe writes only inside the workspace",
                at.display()
            ));
        }
    }
    Ok(())
}

/// What every file a stage reads looked like before it ran (inode, size, modification time,
/// permissions), to notice a stage that wrote into one.
struct InputSnapshot(Vec<(String, PathBuf, Option<FileState>)>);

/// Inode, size, modification time (seconds, nanoseconds) and mode of a file.
type FileState = (u64, u64, i64, i64, u32);

impl InputSnapshot {
    fn of(inputs: &BTreeMap<String, Vec<PathBuf>>) -> Self {
        let mut files = Vec::new();
        for (name, paths) in inputs {
            for path in paths {
                collect_input_files(name, path, &mut files);
            }
        }
        Self(
            files
                .into_iter()
                .map(|(name, path)| {
                    let state = file_state(&path);
                    (name, path, state)
                })
                .collect(),
        )
    }

    /// The first input file that is not as it was: `(input name, path)`.
    fn first_changed(&self) -> Option<(String, PathBuf)> {
        self.0
            .iter()
            .find(|(_, path, before)| file_state(path) != *before)
            .map(|(name, path, _)| (name.clone(), path.clone()))
    }
}

fn file_state(path: &Path) -> Option<FileState> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.mode()))
}

fn collect_input_files(name: &str, path: &Path, out: &mut Vec<(String, PathBuf)>) {
    if path.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                collect_input_files(name, &entry.path(), out);
            }
        }
    } else {
        out.push((name.to_string(), path.to_path_buf()));
    }
}

struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let _ = mipipe_cache::remove_all(&self.0);
    }
}
