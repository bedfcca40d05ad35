//! `mipipe run`: answers a no-op run from the up-to-date memo, or resolves the pipeline and
//! hands it to the engine's scheduler, with the Slurm executor when some selected stage runs
//! there; the reporter draws the run and its summary, this command picks the exit code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mipipe_engine::{
    check_up_to_date, execute, plan, record_up_to_date, visible_devices, Executor, Exit, Lockfile,
    Outcome, Pipeline, RemoteExecutor, Reporter, RunOptions, RunSummary,
};
use mipipe_executor_slurm::{SlurmExecutor, SlurmSettings};

use super::status::print_plan;
use super::{cancel_on_ctrl_c, fingerprint, load_text, open_cache, select, selection};
use crate::cli::{ExecutorArg, RunArgs};
use crate::launcher::SubprocessLauncher;
use crate::reporter::TerminalReporter;
use crate::style::Style;
use crate::CliError;

pub(super) fn run(
    args: RunArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
    style: Style,
) -> Result<(), CliError> {
    let text = Pipeline::read_text(&args.pipeline.pipeline)?;
    if args.force.is_none() && !args.dry_run {
        let cache = open_cache(&args.pipeline.pipeline, cache_dir.clone())?;
        let print = fingerprint(&args.pipeline, &text, &args.targets);
        let memo = check_up_to_date(&cache, &args.pipeline.pipeline, &print);
        if let Some(summary) = memo.and_then(|stages| memo_summary(&args.pipeline.pipeline, stages))
        {
            let reporter = TerminalReporter::new(json, style);
            reporter.on_run_start(summary.outcomes.len());
            for (stage, _) in &summary.outcomes {
                reporter.on_cached(stage, false);
            }
            reporter.on_run_end(&summary);
            return Ok(());
        }
    }
    let pipeline = load_text(&args.pipeline, &text)?;
    let selected = selection(&pipeline, &args.targets)?;
    let forced: BTreeSet<usize> = match &args.force {
        None => BTreeSet::new(),
        Some(names) if names.is_empty() => selected.clone(),
        Some(names) => select(&pipeline, names, "--force")?.into_iter().collect(),
    };
    let cache = open_cache(&args.pipeline.pipeline, cache_dir)?;
    let lock_path = Lockfile::path_for(&args.pipeline.pipeline);
    if args.dry_run {
        let (lock, warning) = Lockfile::read(&lock_path);
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        let plan = plan(&pipeline, &cache, &lock, &selected, &forced);
        return print_plan(&plan, &BTreeMap::new(), json);
    }
    let default_executor = match args.executor {
        Some(ExecutorArg::Local) => Executor::Local,
        Some(ExecutorArg::Slurm) => Executor::Slurm,
        None => pipeline.executor,
    };
    let uses_slurm = selected
        .iter()
        .any(|&i| pipeline.stages[i].executor.unwrap_or(default_executor) == Executor::Slurm);
    if args.detach && !uses_slurm {
        return Err(CliError::Usage {
            message: "`--detach` needs stages that run on Slurm".into(),
            help: Some("Pass `--executor slurm`, or set `executor: slurm` in the pipeline".into()),
        });
    }
    let this_program = std::env::current_exe()
        .map_err(|e| CliError::Environment(format!("Cannot locate the mipipe executable: {e}")))?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let remote = uses_slurm.then(|| {
        Arc::new(SlurmExecutor::new(SlurmSettings {
            mipipe_bin: this_program.clone(),
            overrides: args.pipeline.overrides.clone(),
            max_jobs: jobs,
            poll_interval: Duration::from_millis(300),
        })) as Arc<dyn RemoteExecutor>
    });
    let cancel = cancel_on_ctrl_c(true);
    let options = RunOptions {
        jobs,
        gpus: args.gpus.unwrap_or_else(default_gpus),
        keep_going: args.keep_going,
        forced,
        selected,
        cancel: cancel.clone(),
        launcher: Some(Arc::new(SubprocessLauncher::new(this_program))),
        isolate_all: args.isolate,
        only: None,
        record_lockfile: true,
        default_executor,
        remote,
        detach: args.detach,
    };
    let reporter: Arc<dyn Reporter> = Arc::new(TerminalReporter::new(json, style));
    let summary = execute(&pipeline, &cache, &lock_path, &options, &reporter);
    let exit = Exit::of_run(&summary, cancel.load(Ordering::SeqCst));
    if exit == Exit::Success && options.forced.is_empty() && summary.submitted.is_empty() {
        let selected: Vec<usize> = options.selected.iter().copied().collect();
        let print = fingerprint(&args.pipeline, &text, &args.targets);
        record_up_to_date(&cache, &pipeline, &selected, &print);
    }
    match exit {
        Exit::Success => Ok(()),
        Exit::Interrupted => Err(CliError::StagesFailed(
            "Interrupted; nothing partial was cached".into(),
            exit,
        )),
        _ => {
            let (_, _, failed, _) = summary.counts();
            Err(CliError::StagesFailed(
                format!("{failed} stage(s) failed"),
                exit,
            ))
        }
    }
}

/// The summary of a run the up-to-date memo answered: every stage cached under the key its
/// lockfile records (`None` if one is missing there, and the run takes the full path).
fn memo_summary(pipeline: &Path, stages: Vec<String>) -> Option<RunSummary> {
    let (lock, _) = Lockfile::read(&Lockfile::path_for(pipeline));
    let outcomes = stages
        .into_iter()
        .map(|name| {
            let key = lock.stages.get(&name)?.key;
            let cached = Outcome::Cached {
                key,
                early_cutoff: false,
            };
            Some((name, cached))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RunSummary {
        outcomes,
        lockfile_updated: false,
        submitted: Vec::new(),
    })
}

/// GPU slots when `--gpus` is not given: the devices `CUDA_VISIBLE_DEVICES` names, else the
/// NVIDIA device files.
fn default_gpus() -> usize {
    if let Some(visible) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        return visible_devices(&visible.to_string_lossy());
    }
    std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("nvidia")
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}
