//! The one scheduling loop: ready stages start as soon as their inputs exist, on this machine
//! within CPU and GPU slots, or as jobs of a [`RemoteExecutor`] (Slurm) that wait for their
//! upstream jobs on the scheduler's side.
//!
//! The main thread owns all scheduling state. Each local stage gets a scoped worker thread that
//! reports back over a channel ([`crate::run_stage`]); remote jobs are polled between those
//! reports. Keys of stages downstream of a running stage are computed when their inputs exist,
//! so an identical upstream output is a cache hit (early cutoff). A stage's failure skips what
//! depends on it, naming the stage at fault. With `-j 1` local stages start one at a time in
//! pipeline order: the deterministic sequential executor used for debugging.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mipipe_cache::{Cache, Lookup, StoredOutput};

use crate::cluster::Executor;
use crate::job::WorkerLauncher;
use crate::key::{key_inputs, lookup_stage, Keyed, KeyedLookup};
use crate::lockfile::{LockEntry, Lockfile};
use crate::outcome::{Outcome, RunSummary};
use crate::reason::Reason;
use crate::remote::{RemoteExecutor, RemoteJob, RemoteState};
use crate::reporter::Reporter;
use crate::run_stage::{input_paths, materialize, run_one, Finished, RunOne};
use crate::spec::Pipeline;
use crate::stage::{ErrorClass, StageError};

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
    /// The executor of stages that name none (the pipeline's, or `--executor`).
    pub default_executor: Executor,
    /// Runs the stages whose executor is a cluster scheduler; `None`: every stage runs here
    /// (what a cluster job does with the one stage it was given).
    pub remote: Option<Arc<dyn RemoteExecutor>>,
    /// Submit what can be submitted (running the local stages upstream of it first), then
    /// return without following the jobs.
    pub detach: bool,
}

/// A local stage's worker thread, done.
struct Done {
    index: usize,
    result: Result<Finished, (Option<PathBuf>, StageError)>,
    gpus: Vec<usize>,
    elapsed: Duration,
}

/// A stage handed to the remote executor.
struct Submitted {
    job: RemoteJob,
    at: Instant,
    running_since: Option<Instant>,
}

/// Where a pending stage stands.
enum Readiness {
    /// Something it needs has not finished yet.
    Waiting,
    /// Something it needs failed or was not run.
    Blocked,
    /// Every input exists: it can be keyed, looked up and run.
    Ready,
    /// A remote stage whose upstream jobs are submitted: it can be submitted after them.
    AfterJobs(Vec<RemoteJob>),
}

/// The scheduling state of one run, owned by the main thread.
struct Scheduler<'a> {
    pipeline: &'a Pipeline,
    cache: &'a Cache,
    options: &'a RunOptions,
    reporter: &'a Arc<dyn Reporter>,
    lock: Lockfile,
    outputs: Vec<Option<BTreeMap<String, StoredOutput>>>,
    outcomes: Vec<Option<Outcome>>,
    keyed: Vec<Option<Keyed>>,
    reasons: Vec<Vec<Reason>>,
    ran_this_time: Vec<bool>,
    pending: BTreeSet<usize>,
    running: usize,
    submitted: BTreeMap<usize, Submitted>,
    cpu_free: usize,
    gpu_free: Vec<usize>,
    stop_cause: Option<String>,
    /// Ctrl-C was seen (and the remote jobs cancelled).
    cancelled: bool,
    /// This invocation's id in the run records (`<unix-millis>-<pid>`).
    run_id: String,
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
    // Held for the whole run: `cache gc` waits for it, so it never collects what this run
    // reads or has just written.
    let _in_use = match cache.locks().lock_in_use() {
        Ok(guard) => Some(guard),
        Err(e) => {
            reporter.on_warning(&format!(
                "{e}; a `cache gc` now could remove what this run uses"
            ));
            None
        }
    };
    let n = pipeline.stages.len();
    let mut scheduler = Scheduler {
        pipeline,
        cache,
        options,
        reporter,
        lock,
        outputs: vec![None; n],
        outcomes: vec![None; n],
        keyed: (0..n).map(|_| None).collect(),
        reasons: vec![Vec::new(); n],
        ran_this_time: vec![false; n],
        pending: options.selected.clone(),
        running: 0,
        submitted: BTreeMap::new(),
        cpu_free: options.jobs.max(1),
        gpu_free: (0..options.gpus).collect(),
        stop_cause: None,
        cancelled: false,
        run_id: format!("{:013}-{}", mipipe_cache::now_unix_ms(), std::process::id()),
    };
    reporter.on_run_start(scheduler.pending.len());
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<Done>();
        let mut last_poll: Option<Instant> = None;
        loop {
            scheduler.notice_cancel();
            while scheduler.start_ready(scope, &sender) {}
            let following = !scheduler.submitted.is_empty() && !options.detach;
            if scheduler.running == 0 && !following {
                break;
            }
            if !following {
                match receiver.recv() {
                    Ok(done) => scheduler.finish_local(done),
                    Err(_) => break,
                }
                continue;
            }
            let remote = options
                .remote
                .as_ref()
                .expect("submitted stages have an executor");
            let interval = remote.poll_interval();
            let wait = last_poll.map_or(Duration::ZERO, |t| interval.saturating_sub(t.elapsed()));
            match receiver.recv_timeout(wait) {
                Ok(done) => scheduler.finish_local(done),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    last_poll = Some(Instant::now());
                    scheduler.poll_remote(remote.as_ref());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    });
    scheduler.finish(lock_path)
}

impl<'a> Scheduler<'a> {
    fn stage_name(&self, index: usize) -> &'a str {
        &self.pipeline.stages[index].name
    }

    fn is_remote(&self, index: usize) -> bool {
        self.options.remote.is_some()
            && self.pipeline.stages[index]
                .executor
                .unwrap_or(self.options.default_executor)
                != Executor::Local
    }

    fn end(&mut self, index: usize, outcome: Outcome, elapsed: Duration) {
        self.pending.remove(&index);
        self.reporter
            .on_stage_end(self.stage_name(index), &outcome, elapsed);
        self.outcomes[index] = Some(outcome);
    }

    fn fail(&mut self, index: usize, outcome: Outcome, elapsed: Duration) {
        if !self.options.keep_going && self.stop_cause.is_none() {
            self.stop_cause = Some(format!("`{}` failed", self.stage_name(index)));
        }
        self.end(index, outcome, elapsed);
    }

    /// After Ctrl-C: start nothing more, and cancel the remote jobs (local stages see the flag),
    /// also when an earlier failure had already stopped new starts.
    fn notice_cancel(&mut self) {
        if !self.options.cancel.load(Ordering::Relaxed) || self.cancelled {
            return;
        }
        self.cancelled = true;
        self.stop_cause
            .get_or_insert_with(|| "the run was cancelled".into());
        let submitted = std::mem::take(&mut self.submitted);
        if let Some(remote) = &self.options.remote {
            let jobs: Vec<RemoteJob> = submitted.values().map(|s| s.job.clone()).collect();
            if let Err(e) = remote.cancel(&jobs) {
                self.reporter
                    .on_warning(&format!("Cannot cancel the {} jobs: {e}", remote.name()));
            }
        }
        for (index, job) in submitted {
            self.end(index, Outcome::Cancelled, job.at.elapsed());
        }
    }

    fn readiness(&self, index: usize) -> Readiness {
        let mut after = Vec::new();
        for up in self.pipeline.stages[index].inputs.values().flatten() {
            match &self.outcomes[up.stage] {
                Some(outcome) if outcome.is_success() => {}
                Some(_) => return Readiness::Blocked,
                None => match self.submitted.get(&up.stage) {
                    Some(job) if self.is_remote(index) => after.push(job.job.clone()),
                    _ if self.options.selected.contains(&up.stage) => return Readiness::Waiting,
                    _ => return Readiness::Blocked,
                },
            }
        }
        if after.is_empty() {
            Readiness::Ready
        } else {
            // One producer may feed several inputs: each job once.
            after.sort_by(|a, b| a.id.cmp(&b.id));
            after.dedup();
            Readiness::AfterJobs(after)
        }
    }

    /// One pass over the pending stages in pipeline order: starts (or resolves from the cache,
    /// submits or skips) every one that can move; false when none could.
    fn start_ready<'scope>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        sender: &mpsc::Sender<Done>,
    ) -> bool
    where
        'a: 'scope,
    {
        let mut any = false;
        let pending: Vec<usize> = self.pending.iter().copied().collect();
        for index in pending {
            if self.stop_cause.is_some() {
                break;
            }
            let moved = match self.readiness(index) {
                Readiness::Waiting => false,
                Readiness::Blocked => {
                    let cause = self.blocked_cause(index);
                    self.end(index, Outcome::Skipped { cause }, Duration::ZERO);
                    true
                }
                Readiness::AfterJobs(after) => {
                    let upstream = self.pipeline.stages[index]
                        .inputs
                        .values()
                        .flatten()
                        .filter(|u| self.submitted.contains_key(&u.stage))
                        .map(|u| self.stage_name(u.stage).to_string())
                        .collect::<BTreeSet<_>>();
                    self.reasons[index] = vec![Reason::UpstreamWillRun {
                        stages: upstream.into_iter().collect(),
                    }];
                    self.submit(index, &after);
                    true
                }
                Readiness::Ready => self.start(index, scope, sender),
            };
            any |= moved;
        }
        any
    }

    /// Keys and looks up a ready stage, then runs it here or submits it; false when it must
    /// wait for slots.
    fn start<'scope>(
        &mut self,
        index: usize,
        scope: &'scope std::thread::Scope<'scope, '_>,
        sender: &mpsc::Sender<Done>,
    ) -> bool
    where
        'a: 'scope,
    {
        let pipeline = self.pipeline;
        let stage = &pipeline.stages[index];
        if self.keyed[index].is_none() {
            let keyed = match key_inputs(stage, pipeline, self.cache, &self.outputs) {
                Ok(Some(keyed)) => keyed,
                Ok(None) => unreachable!("a ready stage's inputs exist"),
                Err(reason) => {
                    let error = format!("Cannot run `{}`: {reason}", stage.name);
                    self.fail(
                        index,
                        failed(None, error, ErrorClass::Stage),
                        Duration::ZERO,
                    );
                    return true;
                }
            };
            let mut warnings = Vec::new();
            let forced = self.options.forced.contains(&index);
            let lookup = lookup_stage(stage, &keyed, self.cache, &self.lock, forced, &mut warnings);
            for w in &warnings {
                self.reporter.on_warning(w);
            }
            let key = keyed.key;
            self.keyed[index] = Some(keyed);
            match lookup {
                KeyedLookup::Hit(cached) => {
                    let early_cutoff = stage
                        .inputs
                        .values()
                        .flatten()
                        .any(|u| self.ran_this_time[u.stage]);
                    self.reporter.on_cached(&stage.name, early_cutoff);
                    if let Err(e) = materialize(pipeline, self.cache, stage, &cached, true) {
                        self.reporter
                            .on_warning(&format!("Stage `{}`: {e}", stage.name));
                    }
                    self.outputs[index] = Some(cached);
                    self.pending.remove(&index);
                    self.outcomes[index] = Some(Outcome::Cached { key, early_cutoff });
                    return true;
                }
                KeyedLookup::Miss(reasons) => self.reasons[index] = reasons,
            }
        }
        let key = self.keyed[index].as_ref().map(|k| k.key);
        if self.is_remote(index) {
            self.submit(index, &[]);
            return true;
        }
        if self.options.only.is_some_and(|only| only != index) {
            let error = format!(
                "Upstream stage `{}` is not in the cache; its job did not complete",
                stage.name
            );
            self.fail(index, failed(key, error, ErrorClass::Stage), Duration::ZERO);
            return true;
        }
        let jobs = self.options.jobs.max(1);
        let want_cpus = (stage.resources.cpus as usize).clamp(1, jobs);
        let want_gpus = stage.resources.gpus as usize;
        if want_gpus > self.options.gpus {
            let error = format!(
                "Stage `{}` needs {want_gpus} GPU(s) but this run has {} (`--gpus`)",
                stage.name, self.options.gpus
            );
            self.fail(
                index,
                failed(key, error, ErrorClass::Environment),
                Duration::ZERO,
            );
            return true;
        }
        if want_cpus > self.cpu_free || want_gpus > self.gpu_free.len() {
            return false;
        }
        self.cpu_free -= want_cpus;
        let gpus: Vec<usize> = self.gpu_free.drain(..want_gpus).collect();
        self.pending.remove(&index);
        self.running += 1;
        self.reporter
            .on_stage_start(&stage.name, &self.reasons[index]);
        let keyed = self.keyed[index].as_ref().expect("keyed above");
        let (key, digests) = (keyed.key, keyed.inputs.clone());
        let inputs = input_paths(stage, &self.outputs, self.cache);
        let launcher = if self.options.isolate_all || stage.kind.wants_worker_process(&stage.params)
        {
            self.options.launcher.clone()
        } else {
            None
        };
        let cache = self.cache;
        let forced = self.options.forced.contains(&index);
        let cancel = self.options.cancel.clone();
        let reporter = self.reporter.clone();
        let sender = sender.clone();
        let reasons: Vec<String> = self.reasons[index].iter().map(|r| r.to_string()).collect();
        let run_id = self.run_id.clone();
        scope.spawn(move || {
            let started = Instant::now();
            let run = || {
                inputs.and_then(|inputs| {
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
                        forced,
                        run_id,
                        reasons,
                    })
                })
            };
            // A panic is a bug in mipipe (stage kinds are part of it): the stage fails with
            // an internal error instead of taking the run down with it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|panic| Err((None, StageError::internal_panic(&panic))));
            let _ = sender.send(Done {
                index,
                result,
                gpus,
                elapsed: started.elapsed(),
            });
        });
        true
    }

    fn submit(&mut self, index: usize, after: &[RemoteJob]) {
        let remote = self
            .options
            .remote
            .clone()
            .expect("remote stages have an executor");
        self.pending.remove(&index);
        match remote.submit(self.pipeline, self.cache, index, after) {
            Ok(job) => {
                self.reporter.on_submitted(
                    self.stage_name(index),
                    remote.name(),
                    &job.id,
                    &job.log,
                );
                let at = Instant::now();
                self.submitted.insert(
                    index,
                    Submitted {
                        job,
                        at,
                        running_since: None,
                    },
                );
            }
            Err(e) => {
                let key = self.keyed[index].as_ref().map(|k| k.key);
                let error = format!(
                    "Cannot submit `{}` to {}: {e}",
                    self.stage_name(index),
                    remote.name()
                );
                self.fail(index, failed(key, error, e.class()), Duration::ZERO);
            }
        }
    }

    fn finish_local(&mut self, done: Done) {
        self.running -= 1;
        let stage = &self.pipeline.stages[done.index];
        self.cpu_free += (stage.resources.cpus as usize).clamp(1, self.options.jobs.max(1));
        self.gpu_free.extend(done.gpus);
        self.gpu_free.sort_unstable();
        let key = self.keyed[done.index]
            .as_ref()
            .expect("running stages have keys")
            .key;
        match done.result {
            Ok(finished) => {
                self.outputs[done.index] = Some(finished.outputs);
                let outcome = if finished.found_in_cache {
                    Outcome::Cached {
                        key,
                        early_cutoff: false,
                    }
                } else {
                    self.ran_this_time[done.index] = true;
                    Outcome::Executed {
                        key,
                        reasons: self.reasons[done.index].clone(),
                    }
                };
                self.end(done.index, outcome, done.elapsed);
            }
            Err(_) if self.options.cancel.load(Ordering::Relaxed) => {
                self.end(done.index, Outcome::Cancelled, done.elapsed);
            }
            Err((log, error)) => {
                let outcome = Outcome::Failed {
                    key: Some(key),
                    error: error.message().to_string(),
                    class: error.class(),
                    log,
                };
                self.fail(done.index, outcome, done.elapsed);
            }
        }
    }

    /// Asks the remote executor about its jobs and ends those that ended, in pipeline order
    /// (a job's outcome needs its upstream stages' outputs).
    fn poll_remote(&mut self, remote: &dyn RemoteExecutor) {
        let jobs: Vec<RemoteJob> = self.submitted.values().map(|s| s.job.clone()).collect();
        let states = match remote.poll(&jobs) {
            Ok(states) => states,
            Err(e) => {
                // Without the scheduler's answers the run cannot follow its jobs; they keep
                // running, and a later `mipipe run` records what they commit.
                let submitted = std::mem::take(&mut self.submitted);
                for (index, job) in submitted {
                    let error = format!(
                        "Lost track of {} job {}: {e}; a later `mipipe run` records its result",
                        remote.name(),
                        job.job.id
                    );
                    let outcome = Outcome::Failed {
                        key: None,
                        error,
                        class: ErrorClass::Environment,
                        log: Some(job.job.log.clone()),
                    };
                    self.fail(index, outcome, job.at.elapsed());
                }
                return;
            }
        };
        let indices: Vec<usize> = self.submitted.keys().copied().collect();
        for index in indices {
            let Some(state) = states.get(&self.submitted[&index].job.id) else {
                continue;
            };
            let job = self.submitted.get_mut(&index).expect("listed above");
            match state {
                RemoteState::Queued => {}
                RemoteState::Running => {
                    if job.running_since.is_none() {
                        job.running_since = Some(Instant::now());
                        self.reporter
                            .on_stage_start(self.stage_name(index), &self.reasons[index]);
                    }
                }
                RemoteState::DependencyFailed(why) => {
                    let job = self.submitted.remove(&index).expect("listed above");
                    let cause = self.failed_upstream(index).map_or_else(
                        || format!("{} cancelled job {}: {why}", remote.name(), job.job.id),
                        |up| format!("`{up}` failed"),
                    );
                    self.end(index, Outcome::Skipped { cause }, Duration::ZERO);
                }
                RemoteState::Ended(words) | RemoteState::Lost(words) => {
                    let lost = matches!(state, RemoteState::Lost(_));
                    let words = words.clone();
                    self.finish_remote(index, remote.name(), &words, lost);
                }
            }
        }
    }

    /// Ends a remote job's stage by what the cache holds for its key.
    fn finish_remote(&mut self, index: usize, scheduler: &str, words: &str, lost: bool) {
        let upstream_ready = self.pipeline.stages[index]
            .inputs
            .values()
            .flatten()
            .all(|u| {
                self.outcomes[u.stage]
                    .as_ref()
                    .is_some_and(Outcome::is_success)
            });
        if !upstream_ready {
            // An upstream job ended in the same poll but is later in the map: next poll.
            if self.pipeline.stages[index]
                .inputs
                .values()
                .flatten()
                .any(|u| self.submitted.contains_key(&u.stage))
            {
                return;
            }
        }
        let job = self.submitted.remove(&index).expect("submitted");
        let elapsed = job.running_since.unwrap_or(job.at).elapsed();
        let stage = &self.pipeline.stages[index];
        let keyed = if upstream_ready {
            key_inputs(stage, self.pipeline, self.cache, &self.outputs)
                .ok()
                .flatten()
        } else {
            None
        };
        let hit = keyed.as_ref().and_then(|k| {
            match self.cache.actions().lookup(&k.key, self.cache.store()) {
                Lookup::Hit(entry) => Some(entry.outputs),
                _ => None,
            }
        });
        match (keyed, hit) {
            (Some(keyed), Some(outputs)) => {
                let key = keyed.key;
                self.keyed[index] = Some(keyed);
                self.outputs[index] = Some(outputs);
                self.ran_this_time[index] = true;
                let reasons = self.reasons[index].clone();
                self.end(index, Outcome::Executed { key, reasons }, elapsed);
            }
            (keyed, _) => {
                let id = &job.job.id;
                let error = if lost {
                    format!("{scheduler} job {id} was lost: {words}")
                } else if words == "COMPLETED" {
                    format!("{scheduler} job {id} completed but left no result in the cache")
                } else {
                    format!("{scheduler} job {id} ended {words}")
                };
                let outcome = Outcome::Failed {
                    key: keyed.map(|k| k.key),
                    error,
                    class: ErrorClass::Stage,
                    log: Some(job.job.log),
                };
                self.fail(index, outcome, elapsed);
            }
        }
    }

    /// The failed stage upstream of `index`, if any.
    fn failed_upstream(&self, index: usize) -> Option<String> {
        let mut stack = vec![index];
        let mut seen = BTreeSet::new();
        while let Some(i) = stack.pop() {
            for u in self.pipeline.stages[i].inputs.values().flatten() {
                if !seen.insert(u.stage) {
                    continue;
                }
                match &self.outcomes[u.stage] {
                    Some(Outcome::Failed { .. }) => return Some(self.stage_name(u.stage).into()),
                    Some(Outcome::Skipped { .. }) | None => stack.push(u.stage),
                    _ => {}
                }
            }
        }
        None
    }

    /// Why a stage that will not run does not: the failure under it, or why the run stopped.
    fn blocked_cause(&self, index: usize) -> String {
        match self.failed_upstream(index) {
            Some(name) => format!("`{name}` failed"),
            None => self
                .stop_cause
                .as_ref()
                .map(|c| format!("the run stopped because {c}"))
                .unwrap_or_else(|| "not run".into()),
        }
    }

    /// Ends what did not run, records the lockfile and summarises.
    fn finish(mut self, lock_path: &Path) -> RunSummary {
        let cancelled = self.options.cancel.load(Ordering::Relaxed);
        let scheduler = self.options.remote.as_ref().map_or("", |r| r.name());
        let mut submitted = Vec::new();
        for (index, job) in std::mem::take(&mut self.submitted) {
            let cause = format!("submitted as {scheduler} job {}", job.job.id);
            self.outcomes[index] = Some(Outcome::Skipped { cause });
            submitted.push((self.stage_name(index).to_string(), job.job));
        }
        let pending: Vec<usize> = self.pending.iter().copied().collect();
        for index in pending {
            let outcome = if cancelled {
                Outcome::Cancelled
            } else if self.options.detach && self.stop_cause.is_none() {
                Outcome::Skipped {
                    cause: format!(
                        "runs locally after {scheduler} stages; run `mipipe run` again when they are done"
                    ),
                }
            } else {
                Outcome::Skipped {
                    cause: self.blocked_cause(index),
                }
            };
            self.end(index, outcome, Duration::ZERO);
        }
        let _ = self.cache.file_digests().save();
        let mut lockfile_updated = false;
        if self.options.record_lockfile {
            let mut entries = BTreeMap::new();
            for (index, stage) in self.pipeline.stages.iter().enumerate() {
                if !self.outcomes[index]
                    .as_ref()
                    .is_some_and(Outcome::is_success)
                    || !stage.cache
                {
                    continue;
                }
                if let (Some(keyed), Some(outs)) = (&self.keyed[index], &self.outputs[index]) {
                    let entry = LockEntry::new(stage, keyed.key, &keyed.inputs, outs);
                    entries.insert(stage.name.clone(), entry);
                }
            }
            let names = self
                .pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            match Lockfile::update(lock_path, &names, &entries, &self.lock) {
                Ok(changed) => lockfile_updated = changed,
                Err(e) => self
                    .reporter
                    .on_warning(&format!("Cannot write `{}`: {e}", lock_path.display())),
            }
        }
        let summary = RunSummary {
            outcomes: self
                .options
                .selected
                .iter()
                .map(|&i| {
                    let outcome = self.outcomes[i].clone().unwrap_or(Outcome::Skipped {
                        cause: "not run".into(),
                    });
                    (self.stage_name(i).to_string(), outcome)
                })
                .collect(),
            lockfile_updated,
            submitted,
        };
        self.reporter.on_run_end(&summary);
        summary
    }
}

fn failed(key: Option<mipipe_cache::StageKey>, error: String, class: ErrorClass) -> Outcome {
    Outcome::Failed {
        key,
        error,
        class,
        log: None,
    }
}
