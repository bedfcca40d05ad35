//! Metrics in long format: one row per (model, method, seed, dataset, condition, metric).
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `family`, `size`, `method`, `seed` | utf8 | which model and training run |
//! | `dataset`, `task` | utf8 | dataset (or `vqa_overall`) and its task |
//! | `condition` | utf8 | `none`, `uf`, ..., or `perturbed` (the configured worst case) |
//! | `metric` | utf8 | `accuracy`, `causal_effect`, `unparseable` |
//! | `value` | float64 | the value (a fraction, not a percentage) |
//! | `n` | int64 | how many items it is over |
//! | `stage` | utf8 | the stage that computed it (provenance) |
//! | `ci_low`, `ci_high` | float64, nullable | its 95% percentile bootstrap interval over the items (null where none was computed) |
//!
//! The per-item values behind every metric that is a mean over items are in the `scores`
//! table ([`crate::scores`]), from which tables compute paired intervals and tests.

use std::path::Path;
use std::sync::Arc;

use mipipe_cache::arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};
use mipipe_cache::{write_table, TableError};

use crate::columns::{column, read_rows, strings};

/// One metric value.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    /// Model family.
    pub family: String,
    /// Model size.
    pub size: String,
    /// Training method (`vanilla`, `fft_mix`, ...).
    pub method: String,
    /// Training seed.
    pub seed: String,
    /// Dataset.
    pub dataset: String,
    /// Task of the dataset.
    pub task: String,
    /// Condition.
    pub condition: String,
    /// Metric name.
    pub metric: String,
    /// Value.
    pub value: f64,
    /// Items counted.
    pub n: u64,
    /// Producing stage.
    pub stage: String,
    /// 95% bootstrap interval of `value` over the items, where computed.
    pub ci: Option<(f64, f64)>,
}

/// The label columns metrics and scores share, in order.
pub(crate) const TEXT_COLUMNS: [&str; 8] = [
    "family",
    "size",
    "method",
    "seed",
    "dataset",
    "task",
    "condition",
    "metric",
];

/// The Arrow schema of metrics.
pub fn metrics_schema() -> Arc<Schema> {
    let mut fields = label_fields();
    fields.push(Field::new("value", DataType::Float64, false));
    fields.push(Field::new("n", DataType::Int64, false));
    fields.push(Field::new("stage", DataType::Utf8, false));
    fields.push(Field::new("ci_low", DataType::Float64, true));
    fields.push(Field::new("ci_high", DataType::Float64, true));
    Arc::new(Schema::new(fields))
}

/// The fields of [`TEXT_COLUMNS`].
pub(crate) fn label_fields() -> Vec<Field> {
    TEXT_COLUMNS
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, false))
        .collect()
}

/// The label columns of `rows`, by a row's text for a column name.
pub(crate) fn label_columns<'a, R>(
    rows: &'a [R],
    text: impl Fn(&'a R, &str) -> &'a str,
) -> Vec<Arc<dyn Array>> {
    TEXT_COLUMNS
        .iter()
        .map(|name| strings(rows.iter().map(|r| text(r, name))) as Arc<dyn Array>)
        .collect()
}

/// The label columns of a batch, in [`TEXT_COLUMNS`] order.
pub(crate) fn read_label_columns(batch: &RecordBatch) -> Result<Vec<&StringArray>, String> {
    TEXT_COLUMNS
        .iter()
        .map(|n| column::<StringArray>(batch, n))
        .collect()
}

fn text<'a>(row: &'a MetricRow, name: &str) -> &'a str {
    match name {
        "family" => &row.family,
        "size" => &row.size,
        "method" => &row.method,
        "seed" => &row.seed,
        "dataset" => &row.dataset,
        "task" => &row.task,
        "condition" => &row.condition,
        _ => &row.metric,
    }
}

/// Writes metrics.
pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<(), TableError> {
    let mut columns = label_columns(rows, text);
    columns.push(Arc::new(
        rows.iter().map(|r| r.value).collect::<Float64Array>(),
    ));
    columns.push(Arc::new(
        rows.iter().map(|r| r.n as i64).collect::<Int64Array>(),
    ));
    columns.push(strings(rows.iter().map(|r| r.stage.as_str())));
    columns.push(Arc::new(
        rows.iter()
            .map(|r| r.ci.map(|c| c.0))
            .collect::<Float64Array>(),
    ));
    columns.push(Arc::new(
        rows.iter()
            .map(|r| r.ci.map(|c| c.1))
            .collect::<Float64Array>(),
    ));
    let batch = RecordBatch::try_new(metrics_schema(), columns).expect("columns match the schema");
    write_table(path, metrics_schema(), &[batch])
}

fn batch_to_metrics(batch: &RecordBatch) -> Result<Vec<MetricRow>, String> {
    let texts = read_label_columns(batch)?;
    let value = column::<Float64Array>(batch, "value")?;
    let n = column::<Int64Array>(batch, "n")?;
    let stage = column::<StringArray>(batch, "stage")?;
    let low = column::<Float64Array>(batch, "ci_low")?;
    let high = column::<Float64Array>(batch, "ci_high")?;
    Ok((0..batch.num_rows())
        .map(|row| MetricRow {
            family: texts[0].value(row).to_string(),
            size: texts[1].value(row).to_string(),
            method: texts[2].value(row).to_string(),
            seed: texts[3].value(row).to_string(),
            dataset: texts[4].value(row).to_string(),
            task: texts[5].value(row).to_string(),
            condition: texts[6].value(row).to_string(),
            metric: texts[7].value(row).to_string(),
            value: value.value(row),
            n: n.value(row) as u64,
            stage: stage.value(row).to_string(),
            ci: (low.is_valid(row) && high.is_valid(row))
                .then(|| (low.value(row), high.value(row))),
        })
        .collect())
}

/// Reads metrics.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>, TableError> {
    read_rows(path, &metrics_schema(), batch_to_metrics)
}
