//! Per-item scores: the values whose mean over items is a metric, one row per (model, method,
//! seed, dataset, condition, metric, item). Tables resample items from them for paired
//! bootstrap intervals and test methods against each other on the same items (exact McNemar).
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `family`, `size`, `method`, `seed`, `dataset`, `task`, `condition`, `metric` | utf8 | as in [`crate::metrics`] |
//! | `origin_id` | utf8 | the clean item the row is about (the unit of resampling and pairing) |
//! | `value` | float64 | the item's value: 1 or 0 for accuracy, a changed answer, a followed hint; a share for `unknown_tokens` |

use std::path::Path;
use std::sync::Arc;

use mipipe_cache::arrow_array::{Float64Array, RecordBatch, StringArray};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};
use mipipe_cache::{write_table, TableError};

use crate::columns::{column, read_rows, strings};
use crate::metrics::{label_columns, label_fields, read_label_columns};

/// One item's value of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemScore {
    /// Model family.
    pub family: String,
    /// Model size.
    pub size: String,
    /// Training method.
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
    /// The clean item.
    pub origin_id: String,
    /// The item's value.
    pub value: f64,
}

fn text<'a>(row: &'a ItemScore, name: &str) -> &'a str {
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

/// The Arrow schema of scores.
pub fn scores_schema() -> Arc<Schema> {
    let mut fields = label_fields();
    fields.push(Field::new("origin_id", DataType::Utf8, false));
    fields.push(Field::new("value", DataType::Float64, false));
    Arc::new(Schema::new(fields))
}

/// Writes scores.
pub fn write_scores(path: &Path, rows: &[ItemScore]) -> Result<(), TableError> {
    let mut columns = label_columns(rows, text);
    columns.push(strings(rows.iter().map(|r| r.origin_id.as_str())));
    columns.push(Arc::new(
        rows.iter().map(|r| r.value).collect::<Float64Array>(),
    ));
    let batch = RecordBatch::try_new(scores_schema(), columns).expect("columns match the schema");
    write_table(path, scores_schema(), &[batch])
}

fn batch_to_scores(batch: &RecordBatch) -> Result<Vec<ItemScore>, String> {
    let texts = read_label_columns(batch)?;
    let origin = column::<StringArray>(batch, "origin_id")?;
    let value = column::<Float64Array>(batch, "value")?;
    Ok((0..batch.num_rows())
        .map(|row| ItemScore {
            family: texts[0].value(row).to_string(),
            size: texts[1].value(row).to_string(),
            method: texts[2].value(row).to_string(),
            seed: texts[3].value(row).to_string(),
            dataset: texts[4].value(row).to_string(),
            task: texts[5].value(row).to_string(),
            condition: texts[6].value(row).to_string(),
            metric: texts[7].value(row).to_string(),
            origin_id: origin.value(row).to_string(),
            value: value.value(row),
        })
        .collect())
}

/// Reads scores.
pub fn read_scores(path: &Path) -> Result<Vec<ItemScore>, TableError> {
    read_rows(path, &scores_schema(), batch_to_scores)
}
