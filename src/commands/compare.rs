//! `mipipe compare [PIPELINE|LOCKFILE]... --stage NAME`: one table of every instance of a stage
//! as the last run left it (the lockfile's records and the cached outputs; nothing runs), with
//! the params as columns and, where the stage has a `metrics` output in the `evaluate` schema,
//! each metric as a column. `--group-by all-but-seed` pools the seeds of each configuration into
//! mean, standard deviation and a 95% interval over seeds.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mipipe_engine::{did_you_mean, Lockfile};
use mipipe_stage_report::stats;
use mipipe_stage_schema::metrics::read_metrics;

use super::{flatten_params, open_cache};
use crate::cli::{CompareArgs, CompareFormat};
use crate::CliError;

/// One instance of the stage (or, grouped, one configuration and its instances).
#[derive(Debug)]
struct Row {
    /// The pipeline or lockfile it came from (shown when several are compared).
    source: String,
    /// Instance name; grouped, with the pooled param's value as `*`.
    stage: String,
    /// Params flattened to dotted names, as text.
    params: BTreeMap<String, String>,
    /// Metric values by `dataset/condition/metric`: one per instance, several when grouped.
    metrics: BTreeMap<String, Vec<f64>>,
}

impl Row {
    fn mean(&self, metric: &str) -> Option<f64> {
        stats::mean(self.metrics.get(metric)?)
    }
}

pub(super) fn compare(
    args: &CompareArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let sources = if args.sources.is_empty() {
        vec![PathBuf::from("mipipe.yaml")]
    } else {
        args.sources.clone()
    };
    let mut rows = Vec::new();
    for source in &sources {
        rows.extend(read_source(source, args, cache_dir.clone())?);
    }
    if let Some(pooled) = &args.group_by {
        let param = pooled
            .strip_prefix("all-but-")
            .ok_or_else(|| CliError::Usage {
                message: format!("`--group-by {pooled}` is not a grouping mipipe knows"),
                help: Some(
                    "Write `--group-by all-but-seed` (or all-but-PARAM for another param): \
                     rows that differ only in that param are pooled"
                        .into(),
                ),
            })?;
        rows = group(rows, param);
    }
    let params = columns(rows.iter().map(|r| r.params.keys()), args, |name| {
        distinct(rows.iter().map(|r| r.params.get(name).cloned()))
    });
    let metrics = columns(rows.iter().map(|r| r.metrics.keys()), args, |name| {
        distinct(rows.iter().map(|r| r.mean(name).map(|v| format!("{v:.6}"))))
    });
    if let Some(by) = &args.sort_by {
        sort(&mut rows, by, &params, &metrics)?;
        if args.desc {
            rows.reverse();
        }
    }
    let table = Rendered {
        rows: &rows,
        params: &params,
        metrics: &metrics,
        sources: sources.len() > 1,
        grouped: args.group_by.is_some(),
    };
    let format = if json {
        CompareFormat::Json
    } else {
        args.format
    };
    print!(
        "{}",
        match format {
            CompareFormat::Md => table.markdown(),
            CompareFormat::Csv => table.csv()?,
            CompareFormat::Json => table.json(),
            CompareFormat::Tex => table.latex(),
        }
    );
    Ok(())
}

/// The rows of one pipeline's (or lockfile's) instances of `--stage`.
fn read_source(
    source: &Path,
    args: &CompareArgs,
    cache_dir: Option<PathBuf>,
) -> Result<Vec<Row>, CliError> {
    let lock_path = if source.extension().is_some_and(|e| e == "lock") {
        source.to_path_buf()
    } else {
        Lockfile::path_for(source)
    };
    if !lock_path.exists() {
        return Err(CliError::Usage {
            message: format!("no lockfile at {}", lock_path.display()),
            help: Some(format!(
                "`mipipe run {}` writes it; compare reads what the last run recorded",
                source.display()
            )),
        });
    }
    let (lock, problem) = Lockfile::read(&lock_path);
    if let Some(problem) = problem {
        return Err(CliError::Environment(format!(
            "{}: {problem}",
            lock_path.display()
        )));
    }
    let cache = open_cache(&lock_path, cache_dir)?;
    let instance_prefix = format!("{}[", args.stage);
    let chosen: Vec<_> = lock
        .stages
        .iter()
        .filter(|(name, _)| **name == args.stage || name.starts_with(&instance_prefix))
        .collect();
    if chosen.is_empty() {
        let bases: BTreeSet<&str> = lock
            .stages
            .keys()
            .map(|n| n.split('[').next().unwrap_or(n))
            .collect();
        let help = match did_you_mean(&args.stage, bases.iter().copied()) {
            Some(best) => format!("Did you mean `{best}`?"),
            None => format!(
                "The lockfile records: {}",
                bases.into_iter().collect::<Vec<_>>().join(", ")
            ),
        };
        return Err(CliError::Usage {
            message: format!("{} records no stage `{}`", lock_path.display(), args.stage),
            help: Some(help),
        });
    }
    let patterns: Vec<Vec<&str>> = args
        .metrics
        .iter()
        .map(|p| p.split('*').collect())
        .collect();
    let mut rows = Vec::new();
    for (name, entry) in chosen {
        let params = flatten_params(&entry.params);
        let mut metrics: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        if let Some(output) = entry.outputs.get("metrics") {
            let path = cache
                .store()
                .materialize(output)
                .ok()
                .filter(|p| p.exists())
                .ok_or_else(|| {
                    CliError::Environment(format!(
                        "the metrics of {name} are no longer in the cache ({}); `mipipe run` \
                         computes them again",
                        lock_path.display()
                    ))
                })?;
            let table = read_metrics(&path).map_err(|e| {
                CliError::Environment(format!(
                    "the `metrics` output of {name} is not a metrics table: {e}"
                ))
            })?;
            for row in table {
                let metric = format!("{}/{}/{}", row.dataset, row.condition, row.metric);
                if patterns.is_empty() || patterns.iter().any(|p| matches(p, &metric)) {
                    metrics.entry(metric).or_insert_with(|| vec![row.value]);
                }
            }
        }
        rows.push(Row {
            source: source.display().to_string(),
            stage: name.clone(),
            params,
            metrics,
        });
    }
    Ok(rows)
}

/// Whether `text` matches a glob split at its `*`s.
fn matches(parts: &[&str], text: &str) -> bool {
    let (first, rest) = match parts {
        [] => return text.is_empty(),
        [only] => return *only == text,
        [first, rest @ ..] => (first, rest),
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let (last, middle) = rest.split_last().expect("two parts or more");
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Rows equal in every param but `param` (and from the same source) pooled into one.
fn group(rows: Vec<Row>, param: &str) -> Vec<Row> {
    let mut groups: BTreeMap<(String, BTreeMap<String, String>), Row> = BTreeMap::new();
    for row in rows {
        let mut params = row.params.clone();
        let pooled = params.remove(param);
        let stage = match &pooled {
            Some(value) => row
                .stage
                .replace(&format!("{param}={value}"), &format!("{param}=*")),
            None => row.stage.clone(),
        };
        let entry = groups
            .entry((row.source.clone(), params.clone()))
            .or_insert_with(|| Row {
                source: row.source.clone(),
                stage,
                params,
                metrics: BTreeMap::new(),
            });
        for (metric, values) in row.metrics {
            entry.metrics.entry(metric).or_default().extend(values);
        }
    }
    groups.into_values().collect()
}

/// Column names in first-seen order (sorted), keeping with `--only-changed` those whose values
/// differ between rows.
fn columns<'a>(
    names: impl Iterator<Item = impl Iterator<Item = &'a String>>,
    args: &CompareArgs,
    differs: impl Fn(&str) -> bool,
) -> Vec<String> {
    let all: BTreeSet<String> = names.flatten().cloned().collect();
    all.into_iter()
        .filter(|name| !args.only_changed || differs(name))
        .collect()
}

fn distinct(values: impl Iterator<Item = Option<String>>) -> bool {
    values.collect::<BTreeSet<_>>().len() > 1
}

fn sort(rows: &mut [Row], by: &str, params: &[String], metrics: &[String]) -> Result<(), CliError> {
    let known = by == "stage" || params.iter().chain(metrics).any(|c| c == by);
    if !known {
        let all: Vec<&str> = params.iter().chain(metrics).map(String::as_str).collect();
        let help = match did_you_mean(by, all.iter().copied()) {
            Some(best) => format!("Did you mean `{best}`?"),
            None => "Sort by `stage`, a param (dotted, `pgd.steps`) or a metric \
                     (`dataset/condition/metric`) shown in the table"
                .into(),
        };
        return Err(CliError::Usage {
            message: format!("`--sort-by {by}` names no column of the table"),
            help: Some(help),
        });
    }
    let key = |row: &Row| -> (Option<f64>, String) {
        if let Some(value) = row.params.get(by) {
            return (value.parse().ok(), value.clone());
        }
        if by == "stage" {
            return (None, row.stage.clone());
        }
        (row.mean(by), String::new())
    };
    rows.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        match (ka.0, kb.0) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => ka.1.cmp(&kb.1),
        }
    });
    Ok(())
}

/// The table in every output format.
struct Rendered<'a> {
    rows: &'a [Row],
    params: &'a [String],
    metrics: &'a [String],
    /// Whether several sources are compared (a `source` column).
    sources: bool,
    /// Whether rows pool instances (std, interval and instance count per metric).
    grouped: bool,
}

impl Rendered<'_> {
    /// The headers of the columns before the metrics: source, stage, instances, params.
    fn leading_headers(&self) -> Vec<String> {
        let mut headers = Vec::new();
        if self.sources {
            headers.push("source".to_string());
        }
        headers.push("stage".to_string());
        if self.grouped {
            headers.push("instances".to_string());
        }
        headers.extend(self.params.iter().cloned());
        headers
    }

    /// A row's cells before its metrics, as [`Self::leading_headers`] names them.
    fn leading(&self, row: &Row) -> Vec<String> {
        let mut cells = Vec::new();
        if self.sources {
            cells.push(row.source.clone());
        }
        cells.push(row.stage.clone());
        if self.grouped {
            let n = row.metrics.values().map(Vec::len).max().unwrap_or(0);
            cells.push(n.to_string());
        }
        for p in self.params {
            cells.push(row.params.get(p).cloned().unwrap_or_default());
        }
        cells
    }

    /// Headers and, per row, the display text of every cell.
    fn text_cells(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut headers = self.leading_headers();
        headers.extend(self.metrics.iter().cloned());
        let body = self
            .rows
            .iter()
            .map(|row| {
                let mut cells = self.leading(row);
                for m in self.metrics {
                    let values = row.metrics.get(m).map(Vec::as_slice).unwrap_or(&[]);
                    cells.push(match (stats::mean(values), stats::sample_std(values)) {
                        (Some(mean), Some(std)) => format!("{mean:.4} ± {std:.4}"),
                        (Some(mean), None) => format!("{mean:.4}"),
                        _ => String::new(),
                    });
                }
                cells
            })
            .collect();
        (headers, body)
    }

    fn markdown(&self) -> String {
        let (headers, body) = self.text_cells();
        let mut out = String::new();
        let cell = |s: &str| s.replace('|', "\\|");
        let line = |cells: &[String]| {
            format!(
                "| {} |",
                cells
                    .iter()
                    .map(|c| cell(c))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        };
        let _ = writeln!(out, "{}", line(&headers));
        let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
        for cells in &body {
            let _ = writeln!(out, "{}", line(cells));
        }
        out
    }

    fn latex(&self) -> String {
        let (headers, body) = self.text_cells();
        let text = |s: &str| mipipe_stage_report::latex_text(s).replace('±', "$\\pm$");
        let mut out = String::new();
        let _ = writeln!(out, "\\begin{{tabular}}{{{}}}", "l".repeat(headers.len()));
        let _ = writeln!(out, "\\toprule");
        let row = |cells: &[String]| {
            cells
                .iter()
                .map(|c| text(c))
                .collect::<Vec<_>>()
                .join(" & ")
        };
        let _ = writeln!(out, "{} \\\\", row(&headers));
        let _ = writeln!(out, "\\midrule");
        for cells in &body {
            let _ = writeln!(out, "{} \\\\", row(cells));
        }
        let _ = writeln!(out, "\\bottomrule\n\\end{{tabular}}");
        out
    }

    /// Numbers as columns: per metric its mean and, grouped, `.std`, `.ci_low`, `.ci_high`.
    fn csv(&self) -> Result<String, CliError> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let mut headers = self.leading_headers();
        for m in self.metrics {
            headers.push(m.clone());
            if self.grouped {
                for suffix in ["std", "ci_low", "ci_high"] {
                    headers.push(format!("{m}.{suffix}"));
                }
            }
        }
        let failed = |e: csv::Error| CliError::Environment(format!("writing CSV: {e}"));
        writer.write_record(&headers).map_err(failed)?;
        let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for row in self.rows {
            let mut record = self.leading(row);
            for m in self.metrics {
                let values = row.metrics.get(m).map(Vec::as_slice).unwrap_or(&[]);
                record.push(number(stats::mean(values)));
                if self.grouped {
                    let interval = stats::t_interval(values);
                    record.push(number(stats::sample_std(values)));
                    record.push(number(interval.map(|i| i.0)));
                    record.push(number(interval.map(|i| i.1)));
                }
            }
            writer.write_record(&record).map_err(failed)?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|e| CliError::Environment(format!("writing CSV: {e}")))?;
        Ok(String::from_utf8(bytes).expect("CSV of UTF-8 fields"))
    }

    /// One JSON object per row.
    fn json(&self) -> String {
        let mut out = String::new();
        for row in self.rows {
            let params: serde_json::Map<String, serde_json::Value> = self
                .params
                .iter()
                .filter_map(|p| Some((p.clone(), row.params.get(p)?.clone().into())))
                .collect();
            let metrics: serde_json::Map<String, serde_json::Value> = self
                .metrics
                .iter()
                .filter_map(|m| {
                    let values = row.metrics.get(m)?;
                    let value = if self.grouped {
                        let interval = stats::t_interval(values);
                        serde_json::json!({
                            "mean": stats::mean(values),
                            "std": stats::sample_std(values),
                            "ci_low": interval.map(|i| i.0),
                            "ci_high": interval.map(|i| i.1),
                            "values": values,
                        })
                    } else {
                        serde_json::json!(values.first())
                    };
                    Some((m.clone(), value))
                })
                .collect();
            let value = serde_json::json!({
                "source": row.source,
                "stage": row.stage,
                "params": params,
                "metrics": metrics,
            });
            let _ = writeln!(out, "{value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_metric_names() {
        let glob = |p: &str, t: &str| matches(&p.split('*').collect::<Vec<_>>(), t);
        assert!(glob("shapes/*/accuracy", "shapes/md/accuracy"));
        assert!(!glob("shapes/*/accuracy", "shapes/md/follow_rate"));
        assert!(glob("*/none/*", "colors/none/accuracy"));
        assert!(glob("*", "anything"));
        assert!(glob(
            "vqa_overall/none/accuracy",
            "vqa_overall/none/accuracy"
        ));
        assert!(!glob("a*a", "a"), "the two parts may not overlap");
    }

    #[test]
    fn grouping_pools_the_named_param_and_keeps_the_rest_apart() {
        let row = |method: &str, seed: &str, value: f64| Row {
            source: "p.yaml".into(),
            stage: format!("evaluate[method={method},seed={seed}]"),
            params: [("method", method), ("seed", seed)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics: [("shapes/none/accuracy".to_string(), vec![value])].into(),
        };
        let rows = group(
            vec![
                row("kl", "0", 0.5),
                row("kl", "1", 0.7),
                row("js", "0", 0.9),
            ],
            "seed",
        );
        let names: Vec<&str> = rows.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(
            names,
            ["evaluate[method=js,seed=*]", "evaluate[method=kl,seed=*]"]
        );
        assert_eq!(rows[1].metrics["shapes/none/accuracy"], [0.5, 0.7]);
        assert!(!rows[1].params.contains_key("seed"));
    }
}
