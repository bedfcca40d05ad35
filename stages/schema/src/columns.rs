//! Small helpers to build and read Arrow columns.

use std::sync::Arc;

use mipipe_cache::arrow_array::{Array, RecordBatch, StringArray};

/// A non-null string column.
pub(crate) fn strings<'a>(values: impl Iterator<Item = &'a str>) -> Arc<StringArray> {
    Arc::new(values.map(Some).collect::<StringArray>())
}

/// A column by name, downcast to its array type.
pub(crate) fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column `{name}`"))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| format!("column `{name}` has the wrong type"))
}

/// Reads every batch of a table into rows with `convert`, naming the file in errors.
pub(crate) fn read_rows<T>(
    path: &std::path::Path,
    convert: impl Fn(&RecordBatch) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, mipipe_cache::TableError> {
    let (_, batches) = mipipe_cache::read_table(path)?;
    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(convert(batch).map_err(|message| mipipe_cache::TableError {
            path: path.display().to_string(),
            message,
        })?);
    }
    Ok(rows)
}

/// The value at `row`, or None if null.
pub(crate) fn optional_str(array: &StringArray, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array.value(row).to_string())
}
