//! `mipipe show STAGE`: one stage's key, status, params, inputs, outputs, timing and facts.

use std::fmt::Write as _;
use std::path::PathBuf;

use mipipe_cache::Lookup;
use mipipe_engine::StageStatus;

use super::{json_line, NamedStage};
use crate::cli::PipelineArgs;
use crate::CliError;

pub(super) fn show(
    name: &str,
    args: &PipelineArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let NamedStage {
        pipeline,
        index,
        cache,
        key,
        status,
        ..
    } = NamedStage::find(args, name, cache_dir)?;
    let stage = &pipeline.stages[index];
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
        json_line(&value);
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
