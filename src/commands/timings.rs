//! `mipipe timings PIPELINE`: the wall time the engine recorded for each cached stage, summed
//! per stage kind, or per kind and the value of one param (`--by method`: the paper's Table 14,
//! training cost per method), with each group's mean against a baseline group's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use mipipe_cache::Lookup;
use mipipe_engine::{plan, Lockfile, StageStatus};

use super::{flatten_params, json_line, load, open_cache};
use crate::cli::TimingsArgs;
use crate::CliError;

/// One group's recorded times.
#[derive(Debug, Default, serde::Serialize)]
struct Group {
    kind: String,
    /// The `--by` param's value ("" without `--by`).
    value: String,
    stages: usize,
    total_s: f64,
    mean_s: f64,
    /// Mean over the baseline group's mean of the same kind.
    vs_baseline: Option<f64>,
}

pub(super) fn timings(
    args: &TimingsArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let pipeline = load(&args.pipeline)?;
    let cache = open_cache(&args.pipeline.pipeline, cache_dir)?;
    let (lock, _) = Lockfile::read(&Lockfile::path_for(&args.pipeline.pipeline));
    let all: BTreeSet<usize> = (0..pipeline.stages.len()).collect();
    let planned = plan(&pipeline, &cache, &lock, &all, &BTreeSet::new());
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut missing = 0;
    for (name, status) in &planned.stages {
        let StageStatus::Cached { key: Some(key) } = status else {
            missing += 1;
            continue;
        };
        let Lookup::Hit(entry) = cache.actions().lookup(key, cache.store()) else {
            missing += 1;
            continue;
        };
        let Some(index) = pipeline.index_of(name) else {
            continue;
        };
        let stage = &pipeline.stages[index];
        let kind = stage.kind.kind().to_string();
        if !args.kinds.is_empty() && !args.kinds.contains(&kind) {
            continue;
        }
        if !args.stages.is_empty() && !args.stages.contains(&stage.base) {
            continue;
        }
        // A matrix value (also of an axis the stage only joins on), else the param, dotted
        // for a field of a mapping (`pgd.steps`).
        let value = args
            .by
            .as_ref()
            .and_then(|by| {
                stage
                    .matrix
                    .iter()
                    .find(|(axis, _)| axis == by)
                    .map(|(_, v)| v.clone())
                    .or_else(|| flatten_params(&stage.params).remove(by.as_str()))
            })
            .unwrap_or_default();
        let group = groups
            .entry((kind.clone(), value.clone()))
            .or_insert_with(|| Group {
                kind,
                value,
                ..Group::default()
            });
        group.stages += 1;
        group.total_s += entry.duration_ms as f64 / 1000.0;
    }
    for group in groups.values_mut() {
        group.mean_s = group.total_s / group.stages as f64;
    }
    if let Some(baseline) = &args.baseline {
        let means: BTreeMap<String, f64> = groups
            .values()
            .filter(|g| g.value == *baseline && g.mean_s > 0.0)
            .map(|g| (g.kind.clone(), g.mean_s))
            .collect();
        for group in groups.values_mut() {
            group.vs_baseline = means.get(&group.kind).map(|m| group.mean_s / m);
        }
    }
    if json {
        for group in groups.values() {
            json_line(group);
        }
        return Ok(());
    }
    let by = args.by.as_deref().unwrap_or("");
    let mut out = String::new();
    let ratio = args
        .baseline
        .as_ref()
        .map(|b| format!(" vs {by}={b} |"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| kind |{} stages | total (s) | mean (s) |{ratio}",
        if by.is_empty() {
            String::new()
        } else {
            format!(" {by} |")
        }
    );
    let columns = 4 + usize::from(!by.is_empty()) + usize::from(args.baseline.is_some());
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns - 1));
    let mut total = 0.0;
    for g in groups.values() {
        total += g.total_s;
        let value = if by.is_empty() {
            String::new()
        } else {
            format!(" {} |", g.value)
        };
        let ratio = match (&args.baseline, g.vs_baseline) {
            (Some(_), Some(r)) => format!(" {r:.2} |"),
            (Some(_), None) => " – |".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} |{value} {} | {:.1} | {:.1} |{ratio}",
            g.kind, g.stages, g.total_s, g.mean_s
        );
    }
    let _ = writeln!(
        out,
        "\nSum of the recorded stage times: {total:.1} s (stages run in parallel, so a run's wall \
         time is less); {missing} stage(s) have no cached result and are not counted."
    );
    print!("{out}");
    Ok(())
}
