//! One function per subcommand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mipipe_cache::{Cache, GcPolicy, Lookup, StageKey};
use mipipe_engine::{
    check_up_to_date, did_you_mean, execute, plan, record_up_to_date, ErrorClass, Executor,
    Fingerprint, LoadOptions, Lockfile, Outcome, Pipeline, Reporter, RunOptions, StageStatus,
};
use mipipe_executor_slurm::{SlurmRun, SlurmSettings};

use crate::cli::{CacheCommand, Cli, Command, DagFormat, ExecutorArg, PipelineArgs};
use crate::launcher::SubprocessLauncher;
use crate::reporter::TerminalReporter;
use crate::style::Style;
use crate::{registry, CliError};

pub fn dispatch(cli: Cli, style: Style) -> Result<(), CliError> {
    let cache_dir = cli.cache_dir.clone();
    let json = cli.json;
    match cli.command {
        Command::Run(args) => run(args, cache_dir, json, style),
        Command::Status(args) => status(&args.pipeline, &args.targets, cache_dir, json, style),
        Command::Dag(args) => dag(&args.pipeline, args.format),
        Command::Show(args) => show(&args.stage, &args.pipeline, cache_dir, json),
        Command::Log(args) => log(&args.stage, &args.pipeline, cache_dir),
        Command::Cache(command) => cache_command(command, cache_dir, json),
        Command::Stages(args) => stages(args.kind.as_deref(), json),
        Command::ExecStage(args) => exec_stage(&args.job),
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

fn default_gpus() -> usize {
    if let Some(visible) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        let visible = visible.to_string_lossy().to_string();
        return visible
            .split(',')
            .filter(|s| !s.trim().is_empty() && s.trim() != "-1")
            .count();
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

fn run(
    args: crate::cli::RunArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
    style: Style,
) -> Result<(), CliError> {
    let text = Pipeline::read_text(&args.pipeline.pipeline)?;
    if args.force.is_none() && !args.dry_run {
        let cache = open_cache(&args.pipeline.pipeline, cache_dir.clone())?;
        let print = fingerprint(&args.pipeline, &text, &args.targets);
        if let Some(stages) = check_up_to_date(&cache, &args.pipeline.pipeline, &print) {
            let reporter = TerminalReporter::new(json, style);
            reporter.on_run_start(stages.len());
            for stage in &stages {
                reporter.on_cached(stage, false);
            }
            reporter.finish();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "summary", "ran": 0, "cached": stages.len(), "failed": 0, "not_run": 0})
                );
            } else {
                eprintln!("0 ran, {} cached", stages.len());
            }
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
        return print_plan(&plan, &BTreeMap::new(), json, style);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                // Second Ctrl-C: leave now; running stages' process groups get SIGTERM from
                // the terminal anyway, and nothing partial was committed.
                std::process::exit(130);
            }
        });
    }
    let launcher = SubprocessLauncher::current()
        .map_err(|e| CliError::Environment(format!("Cannot locate the mipipe executable: {e}")))?;
    let options = RunOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        gpus: args.gpus.unwrap_or_else(default_gpus),
        keep_going: args.keep_going,
        forced,
        selected,
        cancel: cancel.clone(),
        launcher: Some(Arc::new(launcher)),
        isolate_all: args.isolate,
        only: None,
        record_lockfile: true,
    };
    let reporter = Arc::new(TerminalReporter::new(json, style));
    let dyn_reporter: Arc<dyn Reporter> = reporter.clone();
    let default_executor = match args.executor {
        Some(ExecutorArg::Local) => Executor::Local,
        Some(ExecutorArg::Slurm) => Executor::Slurm,
        None => pipeline.executor,
    };
    let uses_slurm = options
        .selected
        .iter()
        .any(|&i| pipeline.stages[i].executor.unwrap_or(default_executor) == Executor::Slurm);
    if args.detach && !uses_slurm {
        return Err(CliError::Usage {
            message: "`--detach` needs stages that run on Slurm".into(),
            help: Some("Pass `--executor slurm`, or set `executor: slurm` in the pipeline".into()),
        });
    }
    let summary = if uses_slurm {
        let settings = SlurmSettings {
            mipipe_bin: std::env::current_exe().map_err(|e| {
                CliError::Environment(format!("Cannot locate the mipipe executable: {e}"))
            })?,
            overrides: args.pipeline.overrides.clone(),
            default_executor,
            detach: args.detach,
            poll_interval: Duration::from_millis(300),
        };
        let result = mipipe_executor_slurm::run(
            &pipeline,
            &cache,
            &lock_path,
            &options,
            &settings,
            &dyn_reporter,
        )
        .map_err(|e| CliError::Environment(e.to_string()))?;
        match result {
            SlurmRun::Finished(summary) => summary,
            SlurmRun::Detached { submitted, .. } => {
                reporter.finish();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "detached", "submitted": submitted})
                    );
                } else {
                    eprintln!(
                        "{} stage(s) submitted to Slurm; `mipipe status` follows them, `mipipe run` records their results",
                        submitted.len()
                    );
                }
                return Ok(());
            }
        }
    } else {
        execute(&pipeline, &cache, &lock_path, &options, &dyn_reporter)
    };
    reporter.finish();
    let all_succeeded = summary.outcomes.iter().all(|(_, o)| o.is_success());
    if all_succeeded && options.forced.is_empty() {
        let selected: Vec<usize> = options.selected.iter().copied().collect();
        let print = fingerprint(&args.pipeline, &text, &args.targets);
        record_up_to_date(&cache, &pipeline, &selected, &print);
    }
    let (executed, cached, failed, skipped) = summary.counts();
    if !json {
        let mut line = format!("{executed} ran, {cached} cached");
        if failed > 0 {
            let _ = write!(line, ", {failed} failed");
        }
        if skipped > 0 {
            let _ = write!(line, ", {skipped} not run");
        }
        eprintln!("{line}");
        for (name, outcome) in &summary.outcomes {
            if let Outcome::Failed {
                error,
                log: Some(log),
                ..
            } = outcome
            {
                eprintln!("\n{} {name}: {error}", style.red("FAILED"));
                print_log_tail(log, 20);
            }
        }
    } else {
        println!(
            "{}",
            serde_json::json!({"event": "summary", "ran": executed, "cached": cached, "failed": failed, "not_run": skipped})
        );
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(CliError::StagesFailed(
            "Interrupted; nothing partial was cached".into(),
            130,
        ));
    }
    if failed > 0 {
        let classes: Vec<ErrorClass> = summary
            .outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Failed { class, .. } => Some(*class),
                _ => None,
            })
            .collect();
        let code = if classes.contains(&ErrorClass::Stage) {
            1
        } else if classes.contains(&ErrorClass::Internal) {
            70
        } else {
            3
        };
        return Err(CliError::StagesFailed(
            format!("{failed} stage(s) failed"),
            code,
        ));
    }
    Ok(())
}

fn print_log_tail(log: &Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if start > 0 {
        eprintln!("  ... ({start} earlier lines in {})", log.display());
    }
    for line in &all[start..] {
        eprintln!("  | {line}");
    }
}

fn print_plan(
    plan: &mipipe_engine::Plan,
    notes: &BTreeMap<String, String>,
    json: bool,
    style: Style,
) -> Result<(), CliError> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(plan).expect("plans serialise")
        );
        return Ok(());
    }
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let width = plan.stages.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, status) in &plan.stages {
        match status {
            StageStatus::Cached { .. } => {
                let _ = writeln!(out, "  {}  {name}", style.dim("cached  "));
            }
            StageStatus::WillRun { reasons, .. } => {
                let mut why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                if let Some(note) = notes.get(name) {
                    why.insert(0, note.clone());
                }
                let _ = writeln!(
                    out,
                    "  {}  {name:<width$}  {}",
                    style.yellow("will run"),
                    why.join("; ")
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "{} of {} stages will run",
        plan.to_run(),
        plan.stages.len()
    );
    print!("{out}");
    Ok(())
}

fn status(
    args: &PipelineArgs,
    targets: &[String],
    cache_dir: Option<PathBuf>,
    json: bool,
    style: Style,
) -> Result<(), CliError> {
    let text = Pipeline::read_text(&args.pipeline)?;
    let cache = open_cache(&args.pipeline, cache_dir)?;
    let print = fingerprint(args, &text, targets);
    if let Some(stages) = check_up_to_date(&cache, &args.pipeline, &print) {
        return print_plan(
            &mipipe_engine::Plan::all_cached(stages),
            &BTreeMap::new(),
            json,
            style,
        );
    }
    let pipeline = load_text(args, &text)?;
    let selected = selection(&pipeline, targets)?;
    let (lock, warning) = Lockfile::read(&Lockfile::path_for(&args.pipeline));
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let plan = plan(&pipeline, &cache, &lock, &selected, &BTreeSet::new());
    let waiting: Vec<String> = plan
        .stages
        .iter()
        .filter(|(_, s)| matches!(s, StageStatus::WillRun { .. }))
        .map(|(n, _)| n.clone())
        .collect();
    let notes = mipipe_executor_slurm::describe_submitted(&cache, &args.pipeline, &waiting);
    print_plan(&plan, &notes, json, style)
}

fn node_id(index: usize) -> String {
    format!("s{index}")
}

fn dag(args: &PipelineArgs, format: DagFormat) -> Result<(), CliError> {
    let pipeline = load(args)?;
    let mut out = String::new();
    match format {
        DagFormat::Text => {
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let _ = writeln!(out, "{} ({})", stage.name, stage.kind.kind());
                for (from, _, input, output) in pipeline.edges().filter(|e| e.1 == i) {
                    let _ = writeln!(
                        out,
                        "    {input} <- {}.{output}",
                        pipeline.stages[from].name
                    );
                }
            }
        }
        DagFormat::Dot => {
            out.push_str("digraph mipipe {\n  rankdir=LR;\n  node [shape=box];\n");
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let label = stage.name.replace('"', "\\\"");
                let _ = writeln!(out, "  {} [label=\"{label}\"];", node_id(i));
            }
            for (from, to, input, _) in pipeline.edges() {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label=\"{input}\"];",
                    node_id(from),
                    node_id(to)
                );
            }
            out.push_str("}\n");
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let label = stage.name.replace('"', "#quot;");
                let _ = writeln!(out, "  {}[\"{label}\"]", node_id(i));
            }
            for (from, to, input, _) in pipeline.edges() {
                let _ = writeln!(out, "  {} -->|{input}| {}", node_id(from), node_id(to));
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// The current key of one stage (None when an upstream stage must run first).
fn current_key(
    pipeline: &Pipeline,
    cache: &Cache,
    lock: &Lockfile,
    index: usize,
) -> (Option<StageKey>, StageStatus) {
    let selected = pipeline.closure(&[index]);
    let plan = plan(pipeline, cache, lock, &selected, &BTreeSet::new());
    let status = plan
        .stages
        .into_iter()
        .find(|(name, _)| *name == pipeline.stages[index].name)
        .map(|(_, s)| s)
        .expect("the stage is in its own closure");
    let key = match &status {
        StageStatus::Cached { key } => *key,
        StageStatus::WillRun { key, .. } => *key,
    };
    (key, status)
}

fn one_stage(pipeline: &Pipeline, name: &str) -> Result<usize, CliError> {
    if let Some(i) = pipeline.index_of(name) {
        return Ok(i);
    }
    let found = select(pipeline, &[name.to_string()], "show")?;
    match found.as_slice() {
        [one] => Ok(*one),
        many => Err(CliError::Usage {
            message: format!("`{name}` has {} matrix instances; name one", many.len()),
            help: Some(format!("For example `{}`", pipeline.stages[many[0]].name)),
        }),
    }
}

fn show(
    name: &str,
    args: &PipelineArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let pipeline = load(args)?;
    let index = one_stage(&pipeline, name)?;
    let stage = &pipeline.stages[index];
    let cache = open_cache(&args.pipeline, cache_dir)?;
    let (lock, _) = Lockfile::read(&Lockfile::path_for(&args.pipeline));
    let (key, status) = current_key(&pipeline, &cache, &lock, index);
    let entry = key.and_then(|k| match cache.actions().lookup(&k, cache.store()) {
        Lookup::Hit(entry) => Some(entry),
        _ => None,
    });
    let last_run = key.and_then(|k| cache.runs().latest(&k));
    if json {
        let value = serde_json::json!({
            "stage": stage.name,
            "kind": stage.kind.kind(),
            "kind_version": stage.kind.version(),
            "key": key,
            "status": status,
            "params": stage.params,
            "entry": entry,
            "last_run": last_run.as_ref().and_then(|(_, r)| r.clone()),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(out, "stage    {}", stage.name);
    let _ = writeln!(
        out,
        "kind     {} v{}",
        stage.kind.kind(),
        stage.kind.version()
    );
    if let Some(d) = &stage.description {
        let _ = writeln!(out, "about    {d}");
    }
    let _ = writeln!(
        out,
        "key      {}",
        key.map_or("(known once upstream stages run)".into(), |k| k.to_hex())
    );
    let state = match &status {
        StageStatus::Cached { .. } => "cached".to_string(),
        StageStatus::WillRun { reasons, .. } => format!(
            "will run: {}",
            reasons
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    let _ = writeln!(out, "status   {state}");
    let _ = writeln!(out, "params");
    for line in serde_json::to_string_pretty(&stage.params)
        .unwrap_or_default()
        .lines()
    {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "inputs");
    for (input, ups) in &stage.inputs {
        for up in ups {
            let digest = entry
                .as_ref()
                .and_then(|e| e.inputs.get(input))
                .map(|d| d.iter().map(|d| d.short()).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                out,
                "  {input:<12} {}.{}  {digest}",
                pipeline.stages[up.stage].name, up.output
            );
        }
    }
    for dep in &stage.workspace_deps {
        let digest = entry
            .as_ref()
            .and_then(|e| e.inputs.get(&mipipe_engine::dependency_input_name(dep)))
            .and_then(|d| d.first())
            .map_or("?".into(), |d| d.short());
        let _ = writeln!(out, "  dep          {dep}  {digest}");
    }
    let _ = writeln!(out, "outputs");
    for spec in &stage.outputs {
        match entry.as_ref().and_then(|e| e.outputs.get(&spec.name)) {
            Some(o) => {
                let _ = writeln!(
                    out,
                    "  {:<12} {}  {} bytes  {}",
                    spec.name,
                    o.digest.to_hex(),
                    o.size,
                    cache
                        .store()
                        .materialize(o)
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(out, "  {:<12} (not computed)", spec.name);
            }
        }
    }
    if let Some(entry) = &entry {
        let _ = writeln!(
            out,
            "timing   {:.2}s (computed at unix time {})",
            entry.duration_ms as f64 / 1000.0,
            entry.created_unix
        );
        if !entry.facts.is_empty() {
            let facts: Vec<String> = entry
                .facts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "facts    {}", facts.join(", "));
        }
    }
    if let Some((dir, record)) = &last_run {
        let outcome = record
            .as_ref()
            .map_or("unfinished (killed?)".to_string(), |r| {
                format!("{:?}", r.outcome).to_lowercase()
            });
        let _ = writeln!(out, "last run {outcome}, log {}", dir.join("log").display());
    }
    print!("{out}");
    Ok(())
}

fn log(name: &str, args: &PipelineArgs, cache_dir: Option<PathBuf>) -> Result<(), CliError> {
    let pipeline = load(args)?;
    let index = one_stage(&pipeline, name)?;
    let cache = open_cache(&args.pipeline, cache_dir)?;
    let (lock, _) = Lockfile::read(&Lockfile::path_for(&args.pipeline));
    let (key, _) = current_key(&pipeline, &cache, &lock, index);
    let stage_name = &pipeline.stages[index].name;
    let candidates = key
        .into_iter()
        .chain(lock.stages.get(stage_name).map(|e| e.key));
    for key in candidates {
        if let Some((dir, _)) = cache.runs().latest(&key) {
            let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            print!("{text}");
            return Ok(());
        }
    }
    Err(CliError::Usage {
        message: format!("No run of `{stage_name}` is recorded in this cache"),
        help: Some("Stages served from another cache folder keep their logs there; run the stage with `mipipe run --force`".into()),
    })
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn cache_command(
    command: CacheCommand,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    match command {
        CacheCommand::Du(args) => {
            let cache = open_cache(&args.pipeline, cache_dir)?;
            let usage = cache.disk_usage();
            if json {
                let areas: Vec<_> = usage
                    .areas
                    .iter()
                    .map(|(a, f, b)| serde_json::json!({"area": a, "files": f, "bytes": b}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"cache": cache.root(), "areas": areas})
                );
                return Ok(());
            }
            println!("cache {}", cache.root().display());
            let mut total = 0;
            for (area, files, bytes) in &usage.areas {
                total += bytes;
                println!("  {area:<11} {files:>8} files  {:>10}", human_bytes(*bytes));
            }
            println!(
                "  {:<11} {:>8}        {:>10}",
                "total",
                "",
                human_bytes(total)
            );
            Ok(())
        }
        CacheCommand::Gc(args) => {
            let first = args
                .pipelines
                .first()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("mipipe.yaml"));
            let cache = open_cache(&first, cache_dir)?;
            let mut roots = BTreeSet::new();
            for pipeline in &args.pipelines {
                let lock_path = Lockfile::path_for(pipeline);
                if !lock_path.exists() {
                    return Err(CliError::Usage {
                        message: format!("`{}` has no lockfile `{}`", pipeline.display(), lock_path.display()),
                        help: Some("Name the pipelines whose results to keep; gc keeps what their lockfiles record".into()),
                    });
                }
                let (lock, _) = Lockfile::read(&lock_path);
                roots.extend(lock.stages.values().map(|e| e.key));
            }
            let policy = GcPolicy {
                roots,
                keep_recent: Duration::from_secs_f64(args.keep_recent.max(0.0) * 86_400.0),
                dry_run: args.dry_run,
            };
            let report = cache.gc(&policy);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"dry_run": args.dry_run, "entries": report.entries, "objects": report.objects, "runs": report.runs, "bytes": report.bytes})
                );
            } else {
                let verb = if args.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                println!(
                    "{verb} {} cache entries, {} objects, {} run folders ({})",
                    report.entries,
                    report.objects,
                    report.runs,
                    human_bytes(report.bytes)
                );
            }
            Ok(())
        }
        CacheCommand::Hash(args) => {
            for file in &args.files {
                let digest = mipipe_cache::hash_file(file).map_err(|e| {
                    CliError::Environment(format!("Cannot hash `{}`: {e}", file.display()))
                })?;
                println!("{digest}  {}", file.display());
            }
            Ok(())
        }
        CacheCommand::Verify(args) => {
            let cache = open_cache(&args.pipeline, cache_dir)?;
            let report = cache.verify();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"objects_checked": report.objects_checked, "quarantined": report.quarantined, "bad_entries": report.bad_entries.iter().map(|(p, r)| serde_json::json!({"path": p, "problem": r})).collect::<Vec<_>>()})
                );
            } else {
                println!("checked {} objects", report.objects_checked);
                for path in &report.quarantined {
                    println!("  corrupt object moved to {}", path.display());
                }
                for (path, problem) in &report.bad_entries {
                    println!("  removed entry {}: {problem}", path.display());
                }
                if report.quarantined.is_empty() && report.bad_entries.is_empty() {
                    println!("cache is clean");
                }
            }
            if report.quarantined.is_empty() && report.bad_entries.is_empty() {
                Ok(())
            } else {
                Err(CliError::StagesFailed(
                    "The cache had corrupt entries (now removed; affected stages will rerun)"
                        .into(),
                    1,
                ))
            }
        }
    }
}

fn stages(kind: Option<&str>, json: bool) -> Result<(), CliError> {
    let registry = registry();
    let kinds: Vec<_> = match kind {
        None => registry.kinds().collect(),
        Some(name) => match registry.get(name) {
            Some(k) => vec![k],
            None => {
                let names: Vec<&str> = registry.kinds().map(|k| k.kind()).collect();
                return Err(CliError::Usage {
                    message: format!("Unknown stage kind `{name}`"),
                    help: Some(format!("Kinds: {}", names.join(", "))),
                });
            }
        },
    };
    if json {
        let value: Vec<_> = kinds
            .iter()
            .map(|k| serde_json::json!({"kind": k.kind(), "version": k.version(), "summary": k.summary(), "params": k.params(), "accepts_extra_params": k.accepts_extra_params()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serialises")
        );
        return Ok(());
    }
    for k in kinds {
        println!("{} (v{}): {}", k.kind(), k.version(), k.summary());
        if kind.is_some() {
            for p in k.params() {
                let requirement = if p.required {
                    "required".to_string()
                } else {
                    match &p.default {
                        Some(d) => format!("default {d}"),
                        None => "optional".to_string(),
                    }
                };
                println!("  {:<10} {} ({requirement})", p.name, p.type_name);
                for line in p.doc.lines() {
                    println!("             {line}");
                }
            }
            if k.accepts_extra_params() {
                println!("  any other key is a free param, usable as ${{params.NAME}}");
            }
        }
    }
    Ok(())
}

fn exec_stage(job_file: &Path) -> Result<(), CliError> {
    let bytes = std::fs::read(job_file).map_err(|e| {
        CliError::Environment(format!("Cannot read job `{}`: {e}", job_file.display()))
    })?;
    /// The two kinds of job description.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum AnyJob {
        /// One stage of a pipeline file (cluster jobs).
        Stage(mipipe_engine::PipelineStageJob),
        /// A stage with resolved input and output paths (worker processes).
        Resolved(mipipe_engine::Job),
    }
    let job: AnyJob = serde_json::from_slice(&bytes).map_err(|e| CliError::Usage {
        message: format!(
            "`{}` is not a mipipe job description: {e}",
            job_file.display()
        ),
        help: None,
    })?;
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    match job {
        AnyJob::Resolved(job) => {
            mipipe_engine::run_job(&registry(), &job, cancel).map_err(|e| match e.class() {
                ErrorClass::Environment => CliError::Environment(e.message().to_string()),
                _ => CliError::StagesFailed(e.message().to_string(), 1),
            })
        }
        AnyJob::Stage(job) => {
            let launcher = SubprocessLauncher::current().map_err(|e| {
                CliError::Environment(format!("Cannot locate the mipipe executable: {e}"))
            })?;
            let reporter: Arc<dyn Reporter> =
                Arc::new(TerminalReporter::new(false, Style::detect()));
            let outcome = mipipe_engine::run_pipeline_stage(
                &registry(),
                &job,
                cancel,
                Some(Arc::new(launcher)),
                &reporter,
            )
            .map_err(|e| CliError::Environment(e.to_string()))?;
            match outcome {
                Outcome::Executed { .. } | Outcome::Cached { .. } => Ok(()),
                Outcome::Failed {
                    error, class, log, ..
                } => {
                    if let Some(log) = &log {
                        eprintln!("stage log ({}):", log.display());
                        print_log_tail(log, 30);
                    }
                    match class {
                        ErrorClass::Environment => Err(CliError::Environment(error)),
                        _ => Err(CliError::StagesFailed(error, 1)),
                    }
                }
                Outcome::Skipped { cause } => {
                    Err(CliError::StagesFailed(format!("Not run: {cause}"), 1))
                }
                Outcome::Cancelled => Err(CliError::StagesFailed("Cancelled".into(), 130)),
            }
        }
    }
}
