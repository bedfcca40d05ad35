//! One file per subcommand (`run.rs` is `mipipe run`, ...); this module dispatches to them and
//! holds what several share: loading the pipeline, opening the cache, selecting stages, the
//! up-to-date fingerprint and Ctrl-C.

mod cache;
mod compare;
mod dag;
mod diff;
mod exec_stage;
mod log;
mod report;
mod run;
mod show;
mod stages;
mod status;
mod timings;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mipipe_cache::{Cache, StageKey};
use mipipe_engine::{
    did_you_mean, plan, Exit, Fingerprint, LoadOptions, Lockfile, Pipeline, StageStatus,
};

use crate::cli::{Cli, Command, PipelineArgs};
use crate::style::Style;
use crate::{registry, CliError};

pub fn dispatch(cli: Cli, style: Style) -> Result<(), CliError> {
    let cache_dir = cli.cache_dir.clone();
    let json = cli.json;
    match cli.command {
        Command::Run(args) => run::run(args, cache_dir, json, style),
        Command::Status(args) => status::status(&args.pipeline, &args.targets, cache_dir, json),
        Command::Dag(args) => dag::dag(&args.pipeline, args.format, json),
        Command::Show(args) => show::show(&args.stage, &args.pipeline, cache_dir, json),
        Command::Log(args) => log::log(&args.stage, &args.pipeline, cache_dir, json),
        Command::Timings(args) => timings::timings(&args, cache_dir, json),
        Command::Compare(args) => compare::compare(&args, cache_dir, json),
        Command::Diff(args) => diff::diff(&args, cache_dir, json),
        Command::Report(args) => report::report(&args, cache_dir, json),
        Command::Cache(command) => cache::cache_command(command, cache_dir, json),
        Command::Stages(args) => stages::stages(args.kind.as_deref(), json),
        Command::ExecStage(args) => exec_stage::exec_stage(&args.job),
    }
}

fn load(args: &PipelineArgs) -> Result<Pipeline, CliError> {
    let text = Pipeline::read_text(&args.pipeline)?;
    load_text(args, &text)
}

fn load_text(args: &PipelineArgs, text: &str) -> Result<Pipeline, CliError> {
    let options = LoadOptions {
        overrides: args.overrides.clone(),
    };
    Ok(Pipeline::load_text(
        &args.pipeline,
        text,
        &registry(),
        &options,
    )?)
}

/// Identifies this build: its stage kinds and their versions come with it.
fn binary_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| format!("{}:{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    format!("mipipe {} {exe}", env!("CARGO_PKG_VERSION"))
}

/// The fingerprint of resolving `text` with these arguments against the current lockfile.
fn fingerprint(args: &PipelineArgs, text: &str, targets: &[String]) -> Fingerprint {
    let lock_bytes = std::fs::read(Lockfile::path_for(&args.pipeline)).unwrap_or_default();
    let mut arguments = Vec::new();
    for o in &args.overrides {
        arguments.push(format!("--set={o}"));
    }
    for t in targets {
        arguments.push(format!("--target={t}"));
    }
    Fingerprint::new(&binary_identity(), text, &arguments, &lock_bytes)
}

fn open_cache(pipeline_path: &Path, cache_dir: Option<PathBuf>) -> Result<Cache, CliError> {
    let dir = cache_dir.unwrap_or_else(|| {
        let parent = pipeline_path.parent().filter(|p| !p.as_os_str().is_empty());
        parent.unwrap_or(Path::new(".")).join(".mipipe")
    });
    Cache::open(&dir).map_err(|e| CliError::Environment(e.to_string()))
}

/// Stage indices named on the command line (a base name selects every instance).
fn select(pipeline: &Pipeline, names: &[String], flag: &str) -> Result<Vec<usize>, CliError> {
    let mut out = Vec::new();
    for name in names {
        let found = pipeline.select(name);
        if found.is_empty() {
            let names = pipeline.names();
            let help = match did_you_mean(name, names.iter().copied()) {
                Some(best) => format!("Did you mean `{best}`? `mipipe dag` lists every stage"),
                None => "`mipipe dag` lists every stage".to_string(),
            };
            return Err(CliError::Usage {
                message: format!(
                    "`{flag} {name}` names no stage of `{}`",
                    pipeline.path.display()
                ),
                help: Some(help),
            });
        }
        out.extend(found);
    }
    Ok(out)
}

fn selection(pipeline: &Pipeline, targets: &[String]) -> Result<BTreeSet<usize>, CliError> {
    if targets.is_empty() {
        return Ok((0..pipeline.stages.len()).collect());
    }
    Ok(pipeline.closure(&select(pipeline, targets, "--target")?))
}

/// One stage named on the command line (`show`, `log`), with what the cache and the lockfile
/// say about it.
struct NamedStage {
    pipeline: Pipeline,
    index: usize,
    cache: Cache,
    lock: Lockfile,
    /// Its current key (None when an upstream stage must run first).
    key: Option<StageKey>,
    status: StageStatus,
}

impl NamedStage {
    fn find(args: &PipelineArgs, name: &str, cache_dir: Option<PathBuf>) -> Result<Self, CliError> {
        let pipeline = load(args)?;
        let index = match pipeline.index_of(name) {
            Some(i) => i,
            None => match select(&pipeline, &[name.to_string()], "show")?.as_slice() {
                [one] => *one,
                many => {
                    return Err(CliError::Usage {
                        message: format!("`{name}` has {} matrix instances; name one", many.len()),
                        help: Some(format!("For example `{}`", pipeline.stages[many[0]].name)),
                    })
                }
            },
        };
        let cache = open_cache(&args.pipeline, cache_dir)?;
        let (lock, _) = Lockfile::read(&Lockfile::path_for(&args.pipeline));
        let selected = pipeline.closure(&[index]);
        let status = plan(&pipeline, &cache, &lock, &selected, &BTreeSet::new())
            .stages
            .into_iter()
            .find(|(name, _)| *name == pipeline.stages[index].name)
            .map(|(_, s)| s)
            .expect("the stage is in its own closure");
        let key = match &status {
            StageStatus::Cached { key } | StageStatus::WillRun { key, .. } => *key,
        };
        Ok(Self {
            pipeline,
            index,
            cache,
            lock,
            key,
            status,
        })
    }
}

/// Params flattened to dotted names (`pgd.steps`), each leaf as its text.
fn flatten_params(value: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    mipipe_engine::flatten_params(value)
        .into_iter()
        .map(|(name, leaf)| (name, mipipe_engine::template::value_text(leaf)))
        .collect()
}

/// Prints one JSON object on one line of stdout: what `--json` prints, a line per object.
fn json_line(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string(value).expect("JSON values serialise")
    );
}

/// A flag Ctrl-C sets. With `leave_on_second`, a second Ctrl-C ends the process at once
/// (running stages' process groups get the terminal's SIGINT anyway, and nothing partial is
/// ever committed).
fn cancel_on_ctrl_c(leave_on_second: bool) -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) && leave_on_second {
            std::process::exit(i32::from(Exit::Interrupted.code()));
        }
    });
    cancel
}
