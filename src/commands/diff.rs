//! `mipipe diff OLD NEW`: what changed between two recorded runs (two lockfiles, or a lockfile
//! at two git revisions). Per stage: params old -> new, kind version, which inputs and outputs
//! changed. Per table cell whose value changed: old and new value and the chain of stages that
//! explains it, from the cell's evaluate stage up to the stages whose own params changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mipipe_cache::ObjectDigest;
use mipipe_engine::{dependency_path, LockEntry, Lockfile};

use super::{flatten_params, open_cache};
use crate::cli::DiffArgs;
use crate::CliError;

/// One side of the comparison.
struct Side {
    /// How the user named it (`old.lock`, `HEAD~1`).
    label: String,
    lock: Lockfile,
}

/// What changed in one stage present on both sides.
#[derive(Debug, serde::Serialize)]
struct StageChange {
    stage: String,
    /// `kind vOLD -> vNEW` when the kind's version changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind_version: Option<(u32, u32)>,
    /// Flattened param name -> (old, new); a missing side is `None`.
    params: BTreeMap<String, (Option<String>, Option<String>)>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A table cell whose value changed, and why.
#[derive(Debug, serde::Serialize)]
struct CellChange {
    table: String,
    /// model, method, dataset, condition, metric.
    cell: [String; 5],
    old: Option<String>,
    new: Option<String>,
    /// From the cell's stages upstream: each changed stage, the causes last.
    chain: Vec<String>,
    /// The changed stages at the root of the chain with their param changes.
    causes: Vec<String>,
}

pub(super) fn diff(
    args: &DiffArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let old = read_side(&args.old, &args.lockfile)?;
    let new = read_side(&args.new, &args.lockfile)?;
    let cache = open_cache(&args.lockfile, cache_dir)?;

    let only_in = |a: &Side, b: &Side| -> Vec<String> {
        let names = a.lock.stages.keys();
        names
            .filter(|s| !b.lock.stages.contains_key(*s))
            .cloned()
            .collect()
    };
    let (added, removed) = (only_in(&new, &old), only_in(&old, &new));
    let changes: BTreeMap<String, StageChange> = new
        .lock
        .stages
        .iter()
        .filter_map(|(name, n)| {
            let o = old.lock.stages.get(name)?;
            stage_change(name, o, n)
        })
        .map(|c| (c.stage.clone(), c))
        .collect();
    let unchanged = new.lock.stages.len() - added.len() - changes.len();
    let producers = producers(&new.lock);
    let mut cells = Vec::new();
    let mut unreadable = Vec::new();
    for (name, change) in &changes {
        let entry = &new.lock.stages[name];
        if entry.kind != "table" || !change.outputs.iter().any(|o| o == "csv") {
            continue;
        }
        let old_entry = &old.lock.stages[name];
        let read = |e: &LockEntry, output: &str| -> Option<String> {
            let stored = e.outputs.get(output)?;
            std::fs::read_to_string(cache.store().materialize(stored).ok()?).ok()
        };
        let (Some(old_csv), Some(new_csv), Some(provenance)) = (
            read(old_entry, "csv"),
            read(entry, "csv"),
            read(entry, "provenance"),
        ) else {
            unreadable.push(name.clone());
            continue;
        };
        cells.extend(cell_changes(
            name,
            &old_csv,
            &new_csv,
            &provenance,
            &changes,
            &producers,
            &new.lock,
        ));
    }

    if json {
        let value = serde_json::json!({
            "old": old.label,
            "new": new.label,
            "added": added,
            "removed": removed,
            "unchanged": unchanged,
            "changed": changes.values().collect::<Vec<_>>(),
            "cells": cells,
            "cells_unreadable": unreadable,
        });
        println!("{value}");
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {}: {} stage(s) changed, {} added, {} removed, {unchanged} unchanged",
        old.label,
        new.label,
        changes.len(),
        added.len(),
        removed.len()
    );
    for name in &added {
        let _ = writeln!(out, "+ {name}");
    }
    for name in &removed {
        let _ = writeln!(out, "- {name}");
    }
    for change in changes.values() {
        let _ = writeln!(out, "~ {}", change.stage);
        if let Some((o, n)) = change.kind_version {
            let _ = writeln!(out, "    kind version {o} -> {n}");
        }
        for (param, values) in &change.params {
            let _ = writeln!(out, "    {param}: {}", param_change(values));
        }
        if !change.inputs.is_empty() {
            let _ = writeln!(out, "    inputs changed: {}", change.inputs.join(", "));
        }
        if !change.outputs.is_empty() {
            let _ = writeln!(out, "    outputs changed: {}", change.outputs.join(", "));
        }
    }
    let mut by_table: BTreeMap<&str, Vec<&CellChange>> = BTreeMap::new();
    for cell in &cells {
        by_table.entry(&cell.table).or_default().push(cell);
    }
    for (table, changed) in by_table {
        let _ = writeln!(out, "\ncells of {table} ({} changed):", changed.len());
        for cell in changed {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            let _ = writeln!(
                out,
                "  {} | {} | {} {} {}: {} -> {}",
                cell.cell[0],
                cell.cell[1],
                cell.cell[2],
                cell.cell[3],
                cell.cell[4],
                show(&cell.old),
                show(&cell.new)
            );
            if !cell.chain.is_empty() {
                let _ = writeln!(out, "      via {}", cell.chain.join(" <- "));
            }
            for cause in &cell.causes {
                let _ = writeln!(out, "      because {cause}");
            }
        }
    }
    for table in &unreadable {
        let _ = writeln!(
            out,
            "\ncells of {table}: not compared, its old or new CSV is no longer in the cache"
        );
    }
    print!("{out}");
    Ok(())
}

/// A lockfile path that exists, else `REV:PATH`, else a git revision of `lockfile`.
fn read_side(spec: &str, lockfile: &Path) -> Result<Side, CliError> {
    let path = Path::new(spec);
    let text = if path.is_file() {
        std::fs::read(path).map_err(|e| CliError::Environment(format!("{spec}: {e}")))?
    } else {
        // A bare revision names the lockfile relative to its own folder, where git runs.
        let (folder, object) = match spec.split_once(':') {
            Some(_) => (Path::new("."), spec.to_string()),
            None => {
                let folder = lockfile.parent().filter(|p| !p.as_os_str().is_empty());
                let name = lockfile.file_name().unwrap_or_default().to_string_lossy();
                (folder.unwrap_or(Path::new(".")), format!("{spec}:./{name}"))
            }
        };
        let output = std::process::Command::new("git")
            .args(["show", "--no-textconv", "--end-of-options", &object])
            .current_dir(folder)
            .output()
            .map_err(|e| CliError::Environment(format!("running git: {e}")))?;
        if !output.status.success() {
            return Err(CliError::Usage {
                message: format!(
                    "`{spec}` is neither a lockfile nor a git revision holding one ({})",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                help: Some(
                    "Name a lockfile (`old.lock`), a revision (`HEAD~1`, with `--lockfile` \
                     naming the lockfile's path) or `REV:PATH`"
                        .into(),
                ),
            });
        }
        output.stdout
    };
    let lock: Lockfile = serde_json::from_slice(&text).map_err(|e| CliError::Usage {
        message: format!("`{spec}` is not a mipipe lockfile: {e}"),
        help: None,
    })?;
    Ok(Side {
        label: spec.to_string(),
        lock,
    })
}

fn stage_change(name: &str, old: &LockEntry, new: &LockEntry) -> Option<StageChange> {
    if old.key == new.key && old.outputs == new.outputs {
        return None;
    }
    let (o, n) = (flatten_params(&old.params), flatten_params(&new.params));
    let names: BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    let params = names
        .into_iter()
        .filter(|p| o.get(*p) != n.get(*p))
        .map(|p| (p.clone(), (o.get(p).cloned(), n.get(p).cloned())))
        .collect();
    let inputs = changed_names(&old.inputs, &new.inputs);
    let outputs = changed_names(&old.outputs, &new.outputs);
    Some(StageChange {
        stage: name.to_string(),
        kind_version: (old.kind_version != new.kind_version)
            .then_some((old.kind_version, new.kind_version)),
        params,
        inputs,
        outputs,
    })
}

/// Names whose values differ between two maps (or that only one has).
fn changed_names<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn param_change((old, new): &(Option<String>, Option<String>)) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
    format!("{} -> {}", show(old), show(new))
}

/// Output digest -> the stage that produced it, in one lockfile.
pub(super) fn producers(lock: &Lockfile) -> BTreeMap<ObjectDigest, String> {
    let mut map = BTreeMap::new();
    for (name, entry) in &lock.stages {
        for output in entry.outputs.values() {
            map.entry(output.digest).or_insert_with(|| name.clone());
        }
    }
    map
}

/// The changed stages upstream of `start` (itself included), nearest first, and among them
/// the causes: those whose params or kind version changed, or whose changed inputs no stage
/// of the lockfile produced (a file of the workspace).
fn explain(
    start: &str,
    changes: &BTreeMap<String, StageChange>,
    producers: &BTreeMap<ObjectDigest, String>,
    lock: &Lockfile,
) -> (Vec<String>, Vec<String>) {
    let (mut chain, mut causes) = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(change) = changes.get(&name) else {
            continue;
        };
        chain.push(name.clone());
        let Some(entry) = lock.stages.get(&name) else {
            continue;
        };
        let mut own: Vec<String> = change
            .params
            .iter()
            .map(|(p, v)| format!("{p}: {}", param_change(v)))
            .collect();
        if let Some((o, n)) = change.kind_version {
            own.push(format!("{} kind version {o} -> {n}", entry.kind));
        }
        for input in &change.inputs {
            let ups: Vec<&String> = entry
                .inputs
                .get(input)
                .filter(|_| dependency_path(input).is_none())
                .into_iter()
                .flatten()
                .filter_map(|d| producers.get(d))
                .collect();
            if ups.is_empty() {
                own.push(format!("input `{input}` (a workspace file) changed"));
            }
            queue.extend(ups.into_iter().cloned());
        }
        if !own.is_empty() {
            causes.push(format!("{name}: {}", own.join("; ")));
        }
    }
    (chain, causes)
}

/// Cells of one table whose value differs between its two CSVs (by model, method, dataset,
/// condition and metric), each with the chain from its provenance stages.
fn cell_changes(
    table: &str,
    old_csv: &str,
    new_csv: &str,
    provenance: &str,
    changes: &BTreeMap<String, StageChange>,
    producers: &BTreeMap<ObjectDigest, String>,
    lock: &Lockfile,
) -> Vec<CellChange> {
    type Cell = [String; 5];
    let values = |text: &str, column: &str| -> BTreeMap<Cell, String> {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().cloned().unwrap_or_default();
        let Some(at) = headers.iter().position(|h| h == column) else {
            return BTreeMap::new();
        };
        reader
            .records()
            .filter_map(Result::ok)
            .filter(|r| r.len() > at)
            .map(|r| {
                let cell: Cell = std::array::from_fn(|i| r[i].to_string());
                (cell, r[at].to_string())
            })
            .collect()
    };
    let (old, new) = (values(old_csv, "value"), values(new_csv, "value"));
    let stages = values(provenance, "stages");
    let keys: BTreeSet<&Cell> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|cell| {
            let (mut chain, mut causes) = (Vec::new(), Vec::new());
            for stage in stages.get(cell).into_iter().flat_map(|s| s.split(';')) {
                let (c, k) = explain(stage, changes, producers, lock);
                for stage in c {
                    if !chain.contains(&stage) {
                        chain.push(stage);
                    }
                }
                causes.extend(k);
            }
            causes.sort();
            causes.dedup();
            CellChange {
                table: table.to_string(),
                cell: cell.clone(),
                old: old.get(cell).cloned(),
                new: new.get(cell).cloned(),
                chain,
                causes,
            }
        })
        .collect()
}
