//! `mipipe report [PIPELINE]`: one self-contained HTML file of what the last run left, read from
//! the lockfile and the cache (nothing runs): every `table` stage's table, where a click on a
//! cell shows its stages (kind, key, params, run record, log tail) and the training curves of
//! the fine-tunes upstream of it; the tables' figures; the stages the latest run executed and
//! why; a timeline of that run; and per stage its wall time and peak memory. No file, script or
//! font is fetched: the page opens offline, from a mail attachment as from a disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mipipe_cache::arrow_array::{Array, Float64Array, Int64Array};
use mipipe_cache::arrow_schema::DataType;
use mipipe_cache::{read_table, Cache, ObjectDigest, RunRecord};
use mipipe_engine::{dependency_path, LockEntry, Lockfile};
use mipipe_stage_report::{training_curves, Curve};
use serde_json::{json, Value};

use super::{flatten_params, open_cache};
use crate::cli::ReportArgs;
use crate::CliError;

/// The first line of every report: what lets a later `mipipe report` replace the file, and
/// refuse to replace any other.
const GENERATOR: &str = "<!DOCTYPE html>\n<!-- written by mipipe report -->";

/// Points per training curve: longer logs are thinned evenly (the last step always kept).
const CURVE_POINTS: usize = 400;

/// Characters of each stage's log kept in the page (its end).
const LOG_TAIL: usize = 4000;

pub(super) fn report(
    args: &ReportArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let lock_path = if args.pipeline.extension().is_some_and(|e| e == "lock") {
        args.pipeline.clone()
    } else {
        Lockfile::path_for(&args.pipeline)
    };
    if !lock_path.exists() {
        return Err(CliError::Usage {
            message: format!("no lockfile at {}", lock_path.display()),
            help: Some(format!(
                "`mipipe run {}` writes it; the report shows what the last run recorded",
                args.pipeline.display()
            )),
        });
    }
    let (lock, warning) = Lockfile::read(&lock_path);
    if let Some(w) = warning {
        return Err(CliError::Usage {
            message: w,
            help: None,
        });
    }
    let cache = open_cache(&lock_path, cache_dir)?;
    let output = args.output.clone().unwrap_or_else(|| {
        let stem = lock_path.file_stem().unwrap_or_default().to_string_lossy();
        lock_path.with_file_name(format!("{stem}-report.html"))
    });
    refuse_foreign_file(&output)?;

    let gathered = Gathered::read(&lock, &cache);
    let title = format!("mipipe report: {}", args.pipeline.display());
    let html = page(&title, &lock_path, &gathered);
    mipipe_cache::write_atomic(&output, html.as_bytes())
        .map_err(|e| CliError::Environment(format!("writing {}: {e}", output.display())))?;
    if json {
        super::json_line(&json!({
            "report": output,
            "stages": lock.stages.len(),
            "tables": gathered.tables.len(),
            "cells": gathered.tables.iter().map(|t| t.cells.len()).sum::<usize>(),
            "curves": gathered.curves.len(),
            "last_run_stages": gathered.last_run.len(),
        }));
    } else {
        println!(
            "Wrote {} ({} tables, {} stages, {} training logs)",
            output.display(),
            gathered.tables.len(),
            lock.stages.len(),
            gathered.curves.len()
        );
    }
    Ok(())
}

/// A report replaces only a report: any other existing file is the user's.
fn refuse_foreign_file(path: &Path) -> Result<(), CliError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    if bytes.starts_with(GENERATOR.as_bytes()) {
        return Ok(());
    }
    Err(CliError::Usage {
        message: format!(
            "{} exists and is not a report mipipe wrote; it is left as it is",
            path.display()
        ),
        help: Some("Name another file with `-o PATH`, or move that one away".into()),
    })
}

/// One table stage's cells, pivoted: rows are (model, method), columns (dataset, condition,
/// metric), in the order the CSV lists them.
struct TableView {
    stage: String,
    caption: String,
    rows: Vec<(String, String)>,
    columns: Vec<(String, String, String)>,
    /// (row, column) -> index into `cells`.
    at: BTreeMap<(usize, usize), usize>,
    /// Each cell's numbers (the CSV's columns) and the stages behind it.
    cells: Vec<Value>,
    /// Figures, as (file name, SVG text).
    figures: Vec<(String, String)>,
}

/// Everything the page shows, read from the lockfile and the cache.
struct Gathered {
    tables: Vec<TableView>,
    /// Stage name -> its details (the page's JSON).
    stages: BTreeMap<String, Value>,
    /// Stage name -> its training curves (SVG).
    curves: BTreeMap<String, String>,
    /// The latest recorded attempt per stage.
    records: BTreeMap<String, RunRecord>,
    /// The stages the latest `mipipe run` executed, by start.
    last_run: Vec<String>,
    /// Stages whose outputs the cache no longer holds.
    missing: Vec<String>,
}

impl Gathered {
    fn read(lock: &Lockfile, cache: &Cache) -> Self {
        let producers = super::diff::producers(lock);
        let mut stages = BTreeMap::new();
        let mut curves = BTreeMap::new();
        let mut records = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, entry) in &lock.stages {
            let latest = cache.runs().latest(&entry.key);
            let log = latest
                .as_ref()
                .and_then(|(dir, _)| std::fs::read(dir.join("log")).ok())
                .map(|b| tail(&String::from_utf8_lossy(&b), LOG_TAIL))
                .unwrap_or_default();
            let record = latest.and_then(|(_, r)| r);
            if let Some(stored) = entry.outputs.get("log").filter(|_| entry.kind != "table") {
                match cache.store().materialize(stored) {
                    Ok(path) => {
                        if let Some(svg) = curves_of(name, &path) {
                            curves.insert(name.clone(), svg);
                        }
                    }
                    Err(_) => missing.push(name.clone()),
                }
            }
            stages.insert(
                name.clone(),
                stage_json(name, entry, record.as_ref(), &log, &producers),
            );
            if let Some(r) = record {
                records.insert(name.clone(), r);
            }
        }
        let mut tables = Vec::new();
        for (name, entry) in lock.stages.iter().filter(|(_, e)| e.kind == "table") {
            match table_view(name, entry, cache) {
                Some(view) => tables.push(view),
                None => missing.push(name.clone()),
            }
        }
        let latest_run = records.values().filter_map(|r| r.run.clone()).max();
        let mut last_run: Vec<String> = records
            .iter()
            .filter(|(_, r)| latest_run.is_some() && r.run == latest_run)
            .map(|(n, _)| n.clone())
            .collect();
        last_run.sort_by_key(|n| records[n].started_unix_ms);
        missing.sort();
        missing.dedup();
        Self {
            tables,
            stages,
            curves,
            records,
            last_run,
            missing,
        }
    }
}

/// The last `limit` characters of a log, from a line start.
fn tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    let from = cut.find('\n').map(|i| i + 1).unwrap_or(0);
    format!("[... {} earlier bytes]\n{}", start + from, &cut[from..])
}

fn stage_json(
    name: &str,
    entry: &LockEntry,
    record: Option<&RunRecord>,
    log: &str,
    producers: &BTreeMap<ObjectDigest, String>,
) -> Value {
    let upstream: BTreeSet<&String> = entry
        .inputs
        .iter()
        .filter(|(input, _)| dependency_path(input).is_none())
        .flat_map(|(_, digests)| digests)
        .filter_map(|d| producers.get(d))
        .filter(|p| *p != name)
        .collect();
    let outputs: BTreeMap<&String, String> = entry
        .outputs
        .iter()
        .map(|(o, s)| (o, format!("{} ({} bytes)", s.digest.short(), s.size)))
        .collect();
    json!({
        "kind": format!("{} v{}", entry.kind, entry.kind_version),
        "key": entry.key.to_hex(),
        "params": flatten_params(&entry.params),
        "outputs": outputs,
        "upstream": upstream,
        "run": record.map(|r| json!({
            "outcome": format!("{:?}", r.outcome).to_lowercase(),
            "started_unix_ms": r.started_unix_ms,
            "duration_s": r.duration_ms as f64 / 1000.0,
            "executor": r.executor,
            "peak_rss": r.peak_rss_bytes.map(megabytes),
            "peak_gpu": r.peak_gpu_bytes.map(megabytes),
            "reasons": r.reasons,
            "run": r.run,
        })),
        "log": log,
    })
}

fn megabytes(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A table cell's text for a measured amount of memory, `–` when not measured.
fn memory_cell(bytes: Option<u64>) -> String {
    bytes.map(megabytes).unwrap_or_else(|| "–".into())
}

/// The training curves of a training log (every numeric column with a value, by step).
fn curves_of(stage: &str, path: &Path) -> Option<String> {
    let (schema, batches) = read_table(path).ok()?;
    let step_at = schema.index_of("step").ok()?;
    let mut curves = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        if i == step_at || field.name() == "epoch" {
            continue;
        }
        let mut points = Vec::new();
        for batch in &batches {
            let steps = batch
                .column(step_at)
                .as_any()
                .downcast_ref::<Int64Array>()?;
            let column = batch.column(i);
            let value = |row: usize| -> Option<f64> {
                if column.is_null(row) {
                    return None;
                }
                match field.data_type() {
                    DataType::Float64 => column
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .map(|c| c.value(row)),
                    DataType::Int64 => column
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .map(|c| c.value(row) as f64),
                    _ => None,
                }
            };
            for row in 0..batch.num_rows() {
                if let Some(v) = value(row).filter(|v| v.is_finite()) {
                    points.push((steps.value(row) as f64, v));
                }
            }
        }
        if points.is_empty() {
            continue;
        }
        curves.push(Curve {
            name: field.name().clone(),
            points: thin(points, CURVE_POINTS),
        });
    }
    (!curves.is_empty()).then(|| training_curves(stage, &curves))
}

/// At most `limit` points, evenly spaced, the first and last kept.
fn thin(points: Vec<(f64, f64)>, limit: usize) -> Vec<(f64, f64)> {
    if points.len() <= limit {
        return points;
    }
    let last = points.len() - 1;
    (0..limit).map(|k| points[k * last / (limit - 1)]).collect()
}

/// A table stage's cells, from its CSV and provenance outputs, and its figures.
fn table_view(name: &str, entry: &LockEntry, cache: &Cache) -> Option<TableView> {
    let read = |output: &str| -> Option<String> {
        let path = cache.store().materialize(entry.outputs.get(output)?).ok()?;
        std::fs::read_to_string(path).ok()
    };
    let (csv_text, provenance) = (read("csv")?, read("provenance")?);
    let mut stages_of: BTreeMap<[String; 5], Vec<String>> = BTreeMap::new();
    let mut reader = csv::Reader::from_reader(provenance.as_bytes());
    for record in reader.records().filter_map(Result::ok) {
        if record.len() < 6 {
            continue;
        }
        let cell: [String; 5] = std::array::from_fn(|i| record[i].to_string());
        let list = record[5].split(';').map(str::to_string).collect();
        stages_of.insert(cell, list);
    }
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().ok()?.clone();
    let mut view = TableView {
        stage: name.to_string(),
        caption: entry
            .params
            .get("caption")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string(),
        rows: Vec::new(),
        columns: Vec::new(),
        at: BTreeMap::new(),
        cells: Vec::new(),
        figures: Vec::new(),
    };
    for record in reader.records().filter_map(Result::ok) {
        if record.len() < 6 {
            continue;
        }
        let key: [String; 5] = std::array::from_fn(|i| record[i].to_string());
        let row = (key[0].clone(), key[1].clone());
        let column = (key[2].clone(), key[3].clone(), key[4].clone());
        let r = position_or_push(&mut view.rows, row);
        let c = position_or_push(&mut view.columns, column);
        let mut cell = serde_json::Map::new();
        for (h, v) in headers.iter().zip(record.iter()) {
            cell.insert(h.to_string(), Value::String(v.to_string()));
        }
        cell.insert(
            "stages".into(),
            json!(stages_of.get(&key).cloned().unwrap_or_default()),
        );
        view.at.insert((r, c), view.cells.len());
        view.cells.push(Value::Object(cell));
    }
    if let Some(dir) = entry
        .outputs
        .get("figures")
        .and_then(|s| cache.store().materialize(s).ok())
    {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
            .collect();
        files.sort();
        for file in files {
            if let Ok(svg) = std::fs::read_to_string(&file) {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                view.figures.push((name.to_string(), svg));
            }
        }
    }
    Some(view)
}

fn position_or_push<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    match list.iter().position(|x| *x == item) {
        Some(i) => i,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A cell's text: the value with one decimal, a dagger when it differs from the reference
/// method after Holm's correction.
fn cell_text(cell: &Value) -> String {
    let field = |name: &str| cell.get(name).and_then(Value::as_str).unwrap_or("");
    let value = field("value").parse::<f64>().ok();
    let significant = field("p_holm").parse::<f64>().is_ok_and(|p| p < 0.05)
        && !field("reference").is_empty()
        && field("reference") != field("method");
    match value {
        Some(v) => format!("{v:.1}{}", if significant { "†" } else { "" }),
        None => "–".into(),
    }
}

fn page(title: &str, lock_path: &Path, g: &Gathered) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<header><h1>{}</h1><p>From <code>{}</code>: {} stages; {} tables; generated {}.</p>",
        escape(title),
        escape(&lock_path.display().to_string()),
        g.stages.len(),
        g.tables.len(),
        unix_ms_text(mipipe_cache::now_unix_ms()),
    );
    let _ = writeln!(
        body,
        "<nav><a href=\"#tables\">Tables</a> · <a href=\"#figures\">Figures</a> · \
         <a href=\"#last-run\">Last run</a> · <a href=\"#timeline\">Timeline</a> · \
         <a href=\"#stages\">Stages</a></nav></header>"
    );
    if !g.missing.is_empty() {
        let _ = writeln!(
            body,
            "<p class=\"warn\">Not in the cache any more (run the pipeline again to show them): {}</p>",
            escape(&g.missing.join(", "))
        );
    }
    body.push_str("<main><section id=\"tables\"><h2>Tables</h2>\n<p class=\"hint\">Click a cell for the stages behind it: key, params, run record, log and the training curves upstream. † differs from the table's reference method (paired test, Holm-corrected, p &lt; 0.05).</p>\n");
    for (t, table) in g.tables.iter().enumerate() {
        let _ = writeln!(
            body,
            "<h3 id=\"table-{}\">{} <small>({})</small></h3><div class=\"scroll\"><table class=\"results\"><thead><tr><th>model</th><th>method</th>",
            escape(&table.stage),
            escape(&table.caption),
            escape(&table.stage)
        );
        for (dataset, condition, metric) in &table.columns {
            let _ = write!(
                body,
                "<th>{}<br>{}<br><small>{}</small></th>",
                escape(dataset),
                escape(condition),
                escape(metric)
            );
        }
        body.push_str("</tr></thead><tbody>\n");
        for (r, (model, method)) in table.rows.iter().enumerate() {
            let _ = write!(
                body,
                "<tr><th>{}</th><th>{}</th>",
                escape(model),
                escape(method)
            );
            for c in 0..table.columns.len() {
                match table.at.get(&(r, c)) {
                    Some(&i) => {
                        let cell = &table.cells[i];
                        let field = |n: &str| cell.get(n).and_then(Value::as_str).unwrap_or("");
                        let _ = write!(
                            body,
                            "<td><a class=\"cell\" id=\"cell-{t}-{i}\" href=\"#cell-{t}-{i}\" data-table=\"{t}\" data-cell=\"{i}\" title=\"95% CI [{}, {}], n = {}\">{}</a></td>",
                            escape(field("ci_low")),
                            escape(field("ci_high")),
                            escape(field("n")),
                            escape(&cell_text(cell))
                        );
                    }
                    None => body.push_str("<td></td>"),
                }
            }
            body.push_str("</tr>\n");
        }
        body.push_str("</tbody></table></div>\n");
    }
    body.push_str("</section>\n<section id=\"figures\"><h2>Figures</h2>\n");
    for table in &g.tables {
        for (name, svg) in &table.figures {
            let _ = writeln!(
                body,
                "<figure><div class=\"svg\">{}</div><figcaption>{} / {}</figcaption></figure>",
                strip_xml_prolog(svg),
                escape(&table.stage),
                escape(name)
            );
        }
    }
    body.push_str("</section>\n");
    last_run_section(&mut body, g);
    stages_section(&mut body, g);
    body.push_str("<aside id=\"detail\" hidden><button id=\"close\" type=\"button\">close</button><div id=\"detail-body\"></div></aside></main>\n");

    let tables: Vec<Value> = g.tables.iter().map(|t| json!(t.cells)).collect();
    let data = json!({
        "tables": tables,
        "table_names": g.tables.iter().map(|t| t.stage.clone()).collect::<Vec<_>>(),
        "stages": g.stages,
        "curves": g.curves,
    });
    // Inside a <script> element only `</` could end it early.
    let data = data.to_string().replace("</", "<\\/");
    format!(
        "{GENERATOR}\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"generator\" content=\"mipipe report\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style></head>\n<body>\n{body}<script type=\"application/json\" id=\"data\">{data}</script>\n<script>{SCRIPT}</script>\n</body></html>\n",
        escape(title)
    )
}

fn strip_xml_prolog(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// The stages the latest run executed, why, and its timeline.
fn last_run_section(body: &mut String, g: &Gathered) {
    body.push_str("<section id=\"last-run\"><h2>Last run</h2>\n");
    let Some(first) = g.last_run.first() else {
        body.push_str("<p>No run record of these stages carries a run id (records from before mipipe kept one, or a cleaned cache).</p></section>\n<section id=\"timeline\"></section>\n");
        return;
    };
    let start = g.records[first].started_unix_ms;
    let end = g
        .last_run
        .iter()
        .map(|n| g.records[n].started_unix_ms + g.records[n].duration_ms)
        .max()
        .unwrap_or(start);
    let _ = writeln!(
        body,
        "<p>Run <code>{}</code>, started {}: {} stage(s) executed, {:.1} s from the first start to the last end; the other stages came from the cache.</p>",
        escape(g.records[first].run.as_deref().unwrap_or("")),
        unix_ms_text(start),
        g.last_run.len(),
        (end - start) as f64 / 1000.0
    );
    body.push_str("<table class=\"plain\"><thead><tr><th>stage</th><th>why it ran</th><th>wall (s)</th><th>peak RSS</th><th>peak GPU</th></tr></thead><tbody>\n");
    for name in &g.last_run {
        let r = &g.records[name];
        let why = if r.reasons.is_empty() {
            "(not recorded)".to_string()
        } else {
            r.reasons.join("; ")
        };
        let _ =
            writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            stage_link(name),
            escape(&why),
            r.duration_ms as f64 / 1000.0,
            memory_cell(r.peak_rss_bytes),
            memory_cell(r.peak_gpu_bytes),
        );
    }
    body.push_str("</tbody></table></section>\n");

    // Lanes: each stage in the first lane free at its start (the run's parallelism).
    let span = (end - start).max(1) as f64;
    let mut lanes: Vec<u64> = Vec::new();
    let mut bars = String::new();
    for name in &g.last_run {
        let r = &g.records[name];
        let lane = match lanes.iter().position(|free| *free <= r.started_unix_ms) {
            Some(l) => l,
            None => {
                lanes.push(0);
                lanes.len() - 1
            }
        };
        lanes[lane] = r.started_unix_ms + r.duration_ms;
        let kind = g.stages[name]["kind"].as_str().unwrap_or("");
        let hue = kind
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % 360;
        let _ = writeln!(
            bars,
            "<a class=\"bar\" href=\"#stage-{}\" style=\"left:{:.3}%;width:{:.3}%;top:{}px;background:hsl({hue},55%,62%)\" title=\"{} ({}): {:.1} s\"></a>",
            escape(name),
            (r.started_unix_ms - start) as f64 / span * 100.0,
            (r.duration_ms as f64 / span * 100.0).max(0.2),
            lane * 18,
            escape(name),
            escape(kind),
            r.duration_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        body,
        "<section id=\"timeline\"><h2>Timeline of the last run</h2><p class=\"hint\">One row per slot in use; hover a bar for its stage, click it for its record. {:.1} s in all.</p><div class=\"timeline\" style=\"height:{}px\">{bars}</div></section>",
        span / 1000.0,
        lanes.len() * 18 + 4
    );
}

fn stage_link(name: &str) -> String {
    format!(
        "<a href=\"#stage-{0}\" class=\"stage\" data-stage=\"{0}\">{0}</a>",
        escape(name)
    )
}

/// Every stage: kind, wall time, peak memory, where it ran.
fn stages_section(body: &mut String, g: &Gathered) {
    body.push_str("<section id=\"stages\"><h2>Stages</h2><table class=\"plain\"><thead><tr><th>stage</th><th>kind</th><th>wall (s)</th><th>peak RSS</th><th>peak GPU</th><th>ran on</th><th>started</th></tr></thead><tbody>\n");
    for (name, stage) in &g.stages {
        let record = g.records.get(name);
        let _ = writeln!(
            body,
            "<tr id=\"stage-{}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            stage_link(name),
            escape(stage["kind"].as_str().unwrap_or("")),
            record
                .map(|r| format!("{:.1}", r.duration_ms as f64 / 1000.0))
                .unwrap_or_else(|| "–".into()),
            memory_cell(record.and_then(|r| r.peak_rss_bytes)),
            memory_cell(record.and_then(|r| r.peak_gpu_bytes)),
            escape(record.map(|r| r.executor.as_str()).unwrap_or("–")),
            record
                .map(|r| unix_ms_text(r.started_unix_ms))
                .unwrap_or_else(|| "–".into()),
        );
    }
    body.push_str("</tbody></table></section>\n");
}

/// A UTC time `2026-12-02 23:05:00 UTC`.
fn unix_ms_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header, main > section { padding: 0 24px; }
header { border-bottom: 1px solid #ddd; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } h3 { font-size: 15px; }
nav a { margin-right: 4px; }
.hint { color: #555; } .warn { color: #a40; padding: 0 24px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; }
table.results th, table.results td { border: 1px solid #ddd; padding: 2px 6px; }
table.results td { text-align: right; }
table.results thead th { font-weight: 600; font-size: 12px; }
table.results tbody th { text-align: left; font-weight: normal; white-space: nowrap; }
a.cell { text-decoration: none; color: #036; display: block; }
a.cell:hover, a.cell.selected { background: #ffe9a8; }
table.plain td, table.plain th { padding: 1px 8px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 8px; vertical-align: top; }
figure .svg svg { max-width: 560px; height: auto; }
figcaption { font-size: 12px; color: #555; }
.timeline { position: relative; background: #f6f6f6; border: 1px solid #ddd; }
.timeline .bar { position: absolute; height: 15px; border-radius: 2px; }
#detail { position: fixed; top: 0; right: 0; width: min(760px, 60vw); height: 100vh; overflow: auto;
  background: #fff; border-left: 2px solid #999; box-shadow: -4px 0 12px rgba(0,0,0,.15); padding: 12px 18px; box-sizing: border-box; }
#detail h3 { margin: 14px 0 4px; }
#detail pre { background: #f6f6f6; padding: 6px; overflow-x: auto; font-size: 12px; max-height: 240px; }
#detail dl { display: grid; grid-template-columns: max-content 1fr; gap: 0 12px; margin: 0; font-size: 13px; }
#detail dt { color: #555; } #detail dd { margin: 0; word-break: break-all; }
#detail .curves svg { max-width: 100%; height: auto; }
#close { float: right; }
"#;

/// Opens the detail panel for a cell or a stage: on click, and for `#cell-T-I` or
/// `#stage-NAME` in the address (so a link to a cell opens it), or `?open=cell-T-I` (the same
/// without scrolling to the cell).
const SCRIPT: &str = r##"
const data = JSON.parse(document.getElementById('data').textContent);
const panel = document.getElementById('detail');
const out = document.getElementById('detail-body');
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
function dl(obj) {
  return '<dl>' + Object.entries(obj).map(([k, v]) => '<dt>' + esc(k) + '</dt><dd>' + esc(v) + '</dd>').join('') + '</dl>';
}
function stageHtml(name) {
  const s = data.stages[name];
  if (!s) return '<p>' + esc(name) + ': not in the lockfile</p>';
  let h = '<h3 class="stage-title">' + esc(name) + '</h3>' + dl({kind: s.kind, key: s.key});
  if (s.run) {
    h += '<h4>Run record</h4>' + dl({outcome: s.run.outcome, started: new Date(s.run.started_unix_ms).toISOString(),
      'wall (s)': s.run.duration_s, 'peak RSS': s.run.peak_rss || 'not measured (ran inside mipipe)',
      'peak GPU': s.run.peak_gpu || (s.run.peak_rss ? 'none seen (no GPU used, or NVML unreadable)' : 'not measured (ran inside mipipe)'),
      'ran on': s.run.executor, 'why it ran': (s.run.reasons || []).join('; ') || 'not recorded'});
  }
  h += '<h4>Params</h4>' + dl(s.params) + '<h4>Outputs</h4>' + dl(s.outputs);
  if (s.upstream.length) h += '<h4>Upstream</h4><p>' + s.upstream.map(u => '<a href="#stage-' + esc(u) + '" class="stage" data-stage="' + esc(u) + '">' + esc(u) + '</a>').join(', ') + '</p>';
  if (s.log) h += '<h4>Log (end)</h4><pre>' + esc(s.log) + '</pre>';
  return h;
}
function trainedUpstream(names) {
  const seen = new Set(), found = [], queue = [...names];
  while (queue.length) {
    const n = queue.shift();
    if (seen.has(n) || !data.stages[n]) continue;
    seen.add(n);
    if (data.curves[n]) found.push(n);
    queue.push(...data.stages[n].upstream);
  }
  return found;
}
function show(html) { out.innerHTML = html; panel.hidden = false; panel.scrollTop = 0; }
function showCell(t, i) {
  const c = data.tables[t][i];
  if (!c) return;
  document.querySelectorAll('a.cell.selected').forEach(a => a.classList.remove('selected'));
  const a = document.getElementById('cell-' + t + '-' + i);
  if (a) a.classList.add('selected');
  const numbers = {};
  for (const [k, v] of Object.entries(c)) if (k !== 'stages' && v !== '') numbers[k] = v;
  let h = '<h2 class="cell-title">' + esc(data.table_names[t]) + ': ' + esc([c.model, c.method, c.dataset, c.condition, c.metric].join(' / ')) + '</h2>' + dl(numbers);
  h += '<h3>Stages behind it</h3>' + c.stages.map(stageHtml).join('');
  const trained = trainedUpstream(c.stages);
  if (trained.length) h += '<h3>Training curves upstream</h3>' + trained.map(n => '<div class="curves">' + data.curves[n] + '</div>').join('');
  show(h);
}
function showStage(name) {
  let h = stageHtml(name);
  if (data.curves[name]) h += '<h3>Training curves</h3><div class="curves">' + data.curves[name] + '</div>';
  show(h);
}
document.addEventListener('click', e => {
  const cell = e.target.closest('a.cell');
  if (cell) { e.preventDefault(); history.replaceState(null, '', '#' + cell.id); showCell(+cell.dataset.table, +cell.dataset.cell); return; }
  const stage = e.target.closest('a.stage');
  if (stage) { e.preventDefault(); history.replaceState(null, '', '#stage-' + stage.dataset.stage); showStage(stage.dataset.stage); }
});
document.getElementById('close').addEventListener('click', () => { panel.hidden = true; });
function fromAddress() {
  const h = new URLSearchParams(location.search).get('open') || decodeURIComponent(location.hash.slice(1));
  let m = /^cell-(\d+)-(\d+)$/.exec(h);
  if (m) { showCell(+m[1], +m[2]); return; }
  if (h.startsWith('stage-')) showStage(h.slice(6));
}
window.addEventListener('hashchange', fromAddress);
fromAddress();
"##;
