//! `mipipe status` (and `run --dry-run`'s plan): what is cached, what will run and why, and
//! where submitted Slurm jobs stand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use mipipe_engine::{plan, Lockfile, Pipeline, StageStatus};

use super::{fingerprint, json_line, load_text, open_cache, selection};
use crate::cli::PipelineArgs;
use crate::style::Style;
use crate::CliError;
use mipipe_engine::check_up_to_date;

pub(super) fn status(
    args: &PipelineArgs,
    targets: &[String],
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let text = Pipeline::read_text(&args.pipeline)?;
    let cache = open_cache(&args.pipeline, cache_dir)?;
    let print = fingerprint(args, &text, targets);
    if let Some(stages) = check_up_to_date(&cache, &args.pipeline, &print) {
        return print_plan(
            &mipipe_engine::Plan::all_cached(stages),
            &BTreeMap::new(),
            json,
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
    print_plan(&plan, &notes, json)
}

pub(super) fn print_plan(
    plan: &mipipe_engine::Plan,
    notes: &BTreeMap<String, String>,
    json: bool,
) -> Result<(), CliError> {
    let style = Style::stdout();
    if json {
        json_line(plan);
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
