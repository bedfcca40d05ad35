//! Small helpers to build and read Arrow columns, and the reading side's tolerance: tables
//! written by other tools (polars, pandas, pyarrow defaults) are accepted when each column's
//! type converts to ours without loss (large or view strings and binaries, any integer width
//! whose values fit, 32-bit floats, lists of those); otherwise the error names the column with
//! the expected and the found type.

use std::sync::Arc;

use mipipe_cache::arrow_array::builder::{ListBuilder, StringBuilder};
use mipipe_cache::arrow_array::cast::AsArray;
use mipipe_cache::arrow_array::types::{
    Float32Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use mipipe_cache::arrow_array::{
    Array, ArrayRef, BinaryArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};

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

/// Reads every batch of a table into rows with `convert`, first bringing each column of
/// `expected` to its type (see the module doc); errors name the file.
pub(crate) fn read_rows<T>(
    path: &std::path::Path,
    expected: &Schema,
    convert: impl Fn(&RecordBatch) -> Result<Vec<T>, String>,
) -> Result<Vec<T>, mipipe_cache::TableError> {
    let error = |message| mipipe_cache::TableError {
        path: path.display().to_string(),
        message,
    };
    let (_, batches) = mipipe_cache::read_table(path)?;
    let mut rows = Vec::new();
    for batch in &batches {
        let batch = conform(batch, expected).map_err(error)?;
        rows.extend(convert(&batch).map_err(error)?);
    }
    Ok(rows)
}

/// `batch` with every column that `expected` names converted to the expected type.
fn conform(batch: &RecordBatch, expected: &Schema) -> Result<RecordBatch, String> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match expected.field_with_name(field.name()) {
            Ok(want) if want.data_type() != field.data_type() => {
                let converted = lossless_cast(column, want.data_type()).ok_or_else(|| {
                    format!(
                        "column `{}` is {}, expected {} (or a type that converts to it without loss)",
                        field.name(),
                        field.data_type(),
                        want.data_type()
                    )
                })?;
                fields.push(Field::new(field.name(), want.data_type().clone(), true));
                columns.push(converted);
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// A column converted to `to` without loss (see the module doc), or `None` when it does not
/// convert; a column already of type `to` is returned as it is.
pub fn lossless_cast(column: &ArrayRef, to: &DataType) -> Option<ArrayRef> {
    if column.data_type() == to {
        return Some(column.clone());
    }
    let from = column.data_type();
    let converted: ArrayRef = match (from, to) {
        (DataType::LargeUtf8, DataType::Utf8) => {
            Arc::new(column.as_string::<i64>().iter().collect::<StringArray>())
        }
        (DataType::Utf8View, DataType::Utf8) => {
            Arc::new(column.as_string_view().iter().collect::<StringArray>())
        }
        (DataType::LargeBinary, DataType::Binary) => {
            Arc::new(column.as_binary::<i64>().iter().collect::<BinaryArray>())
        }
        (DataType::BinaryView, DataType::Binary) => {
            Arc::new(column.as_binary_view().iter().collect::<BinaryArray>())
        }
        (DataType::Float32, DataType::Float64) => Arc::new(
            column
                .as_primitive::<Float32Type>()
                .iter()
                .map(|v| v.map(f64::from))
                .collect::<Float64Array>(),
        ),
        (_, DataType::Int32) => Arc::new(
            integers(column)?
                .into_iter()
                .map(|v| v.map(i32::try_from).transpose())
                .collect::<Result<Int32Array, _>>()
                .ok()?,
        ),
        (_, DataType::Int64) => Arc::new(Int64Array::from(integers(column)?)),
        (DataType::List(_) | DataType::LargeList(_), DataType::List(item))
            if item.data_type() == &DataType::Utf8 =>
        {
            let mut builder = ListBuilder::new(StringBuilder::new()).with_field(item.clone());
            for row in 0..column.len() {
                let values = match from {
                    DataType::List(_) => {
                        (!column.is_null(row)).then(|| column.as_list::<i32>().value(row))
                    }
                    _ => (!column.is_null(row)).then(|| column.as_list::<i64>().value(row)),
                };
                match values {
                    None => builder.append_null(),
                    Some(values) => {
                        let strings = lossless_cast(&values, &DataType::Utf8)?;
                        for value in strings.as_string::<i32>().iter() {
                            builder.values().append_option(value);
                        }
                        builder.append(true);
                    }
                }
            }
            Arc::new(builder.finish())
        }
        _ => return None,
    };
    Some(converted)
}

/// An integer column of any width as `i64`s (`None` for another type, or a `u64` past
/// `i64::MAX`).
fn integers(column: &ArrayRef) -> Option<Vec<Option<i64>>> {
    macro_rules! widen {
        ($t:ty) => {
            column
                .as_primitive::<$t>()
                .iter()
                .map(|v| {
                    v.map(|v| i64::try_from(v).ok())
                        .map_or(Some(None), |v| v.map(Some))
                })
                .collect::<Option<Vec<_>>>()
        };
    }
    match column.data_type() {
        DataType::Int8 => widen!(Int8Type),
        DataType::Int16 => widen!(Int16Type),
        DataType::Int32 => widen!(Int32Type),
        DataType::Int64 => widen!(Int64Type),
        DataType::UInt8 => widen!(UInt8Type),
        DataType::UInt16 => widen!(UInt16Type),
        DataType::UInt32 => widen!(UInt32Type),
        DataType::UInt64 => widen!(UInt64Type),
        _ => None,
    }
}

/// The value at `row`, or None if null.
pub(crate) fn optional_str(array: &StringArray, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array.value(row).to_string())
}
