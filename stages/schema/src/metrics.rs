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

use std::path::Path;
use std::sync::Arc;

use mipipe_cache::arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
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
}

const TEXT_COLUMNS: [&str; 8] = [
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
    let mut fields: Vec<Field> = TEXT_COLUMNS
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, false))
        .collect();
    fields.push(Field::new("value", DataType::Float64, false));
    fields.push(Field::new("n", DataType::Int64, false));
    fields.push(Field::new("stage", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
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
    let mut columns: Vec<Arc<dyn mipipe_cache::arrow_array::Array>> = TEXT_COLUMNS
        .iter()
        .map(|name| {
            strings(rows.iter().map(|r| text(r, name))) as Arc<dyn mipipe_cache::arrow_array::Array>
        })
        .collect();
    columns.push(Arc::new(
        rows.iter().map(|r| r.value).collect::<Float64Array>(),
    ));
    columns.push(Arc::new(
        rows.iter().map(|r| r.n as i64).collect::<Int64Array>(),
    ));
    columns.push(strings(rows.iter().map(|r| r.stage.as_str())));
    let batch = RecordBatch::try_new(metrics_schema(), columns).expect("columns match the schema");
    write_table(path, metrics_schema(), &[batch])
}

fn batch_to_metrics(batch: &RecordBatch) -> Result<Vec<MetricRow>, String> {
    let texts: Vec<&StringArray> = TEXT_COLUMNS
        .iter()
        .map(|n| column::<StringArray>(batch, n))
        .collect::<Result<_, _>>()?;
    let value = column::<Float64Array>(batch, "value")?;
    let n = column::<Int64Array>(batch, "n")?;
    let stage = column::<StringArray>(batch, "stage")?;
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
        })
        .collect())
}

/// Reads metrics.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>, TableError> {
    read_rows(path, &metrics_schema(), batch_to_metrics)
}
