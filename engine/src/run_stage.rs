//! Running one stage on this machine: under its key's lock, in a scratch folder (in this
//! process or through a [`WorkerLauncher`]), then checking, committing and materializing its
//! outputs. The scheduling loop of [`crate::execute`] calls [`run_one`] on a worker thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mipipe_cache::{
    now_unix_ms, ActionEntry, Cache, Lookup, OutputKind, RunOutcome, RunRecord, StageKey,
    StoredOutput,
};

use crate::child::PeakMemory;
use crate::job::{open_log, Job, WorkerLauncher};
use crate::key::{stage_seed, InputDigests};
use crate::reporter::Reporter;
use crate::spec::{Pipeline, ResolvedStage};
use crate::stage::{ProgressSink, StageError};

/// What a stage that ran (or that another process completed meanwhile) left in the cache.
pub(crate) struct Finished {
    /// Its outputs.
    pub outputs: BTreeMap<String, StoredOutput>,
    /// Another process completed the same key while we waited for its lock.
    pub found_in_cache: bool,
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

/// The store paths of a ready stage's inputs.
pub(crate) fn input_paths(
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

/// One stage to run, with everything it needs.
pub(crate) struct RunOne<'a> {
    pub pipeline: &'a Pipeline,
    pub cache: &'a Cache,
    pub stage: &'a ResolvedStage,
    pub key: StageKey,
    pub digests: InputDigests,
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    pub cpus: usize,
    pub gpus: &'a [usize],
    pub cancel: Arc<AtomicBool>,
    pub launcher: Option<Arc<dyn WorkerLauncher>>,
    pub reporter: Arc<dyn Reporter>,
    /// `--force`: run even if another process completed the same key meanwhile.
    pub forced: bool,
    /// The invocation, for the run record.
    pub run_id: String,
    /// Why it runs, in words, for the run record.
    pub reasons: Vec<String>,
}

fn env_error(e: impl std::fmt::Display) -> (Option<PathBuf>, StageError) {
    (None, StageError::environment(e.to_string()))
}

/// Runs one stage under its key's lock and commits its outputs.
pub(crate) fn run_one(job: RunOne<'_>) -> Result<Finished, (Option<PathBuf>, StageError)> {
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
        forced,
        run_id,
        reasons,
    } = job;
    let _guard = match cache.locks().try_lock_stage(&key).map_err(env_error)? {
        Some(guard) => guard,
        None => {
            reporter.on_waiting_for_lock(&stage.name);
            cache.locks().lock_stage(&key).map_err(env_error)?
        }
    };
    // The stage was looked up when it became ready; since then it may have waited for a slot
    // or for this lock while another process (another `-j`, another run) did the very same
    // work. Under the lock the answer is final.
    if stage.cache && !forced {
        if let Lookup::Hit(entry) = cache.actions().lookup(&key, cache.store()) {
            materialize(pipeline, cache, stage, &entry.outputs, true).map_err(|e| (None, e))?;
            return Ok(Finished {
                outputs: entry.outputs,
                found_in_cache: true,
            });
        }
    }
    let started_ms = now_unix_ms();
    let started = Instant::now();
    let run_dir = cache.runs().start(&key).map_err(env_error)?;
    let log_path = run_dir.log_path();
    let peak_memory = Arc::new(PeakMemory::default());
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
            run: Some(run_id.clone()),
            reasons: reasons.clone(),
            peak_rss_bytes: peak_memory.rss_bytes(),
            peak_gpu_bytes: peak_memory.gpu_bytes(),
        });
    };
    let result = execute_in_scratch(
        pipeline,
        cache,
        stage,
        key,
        &digests,
        inputs,
        cpus,
        gpus,
        &cancel,
        launcher,
        &log_path,
        reporter,
        &peak_memory,
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
    peak_memory: &Arc<PeakMemory>,
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
            launcher.launch(&job, &job_file, cancel, &progress, peak_memory)
        }
        None => {
            let log = open_log(log_path).map_err(|e| {
                StageError::environment(format!("Cannot open log `{}`: {e}", log_path.display()))
            })?;
            let ctx = job.context(
                log,
                cancel.clone(),
                Some(Arc::new(progress)),
                peak_memory.clone(),
            );
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
