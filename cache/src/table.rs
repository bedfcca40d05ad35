//! Parquet tables with pinned writer settings.
//!
//! Every table mipipe writes goes through [`write_table`], whose settings (Snappy compression,
//! row groups of at most 1,024 rows, a fixed `created_by`, no timestamps) are fixed here and
//! nowhere else, so the same rows give the same bytes, and so the same digest, across runs and
//! crate upgrades that keep the format. pyarrow and DuckDB read the files as they are.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

/// The `created_by` string in every file mipipe writes.
pub const PARQUET_CREATED_BY: &str = "mipipe table v1";
/// Rows per row group: small enough that image tables stay streamable.
const ROW_GROUP_ROWS: usize = 1024;

/// A Parquet read or write failure.
#[derive(Debug, thiserror::Error)]
#[error("Parquet table `{path}`: {message}")]
pub struct TableError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn table_error(path: &Path, e: impl std::fmt::Display) -> TableError {
    TableError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(PARQUET_CREATED_BY.to_string())
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .build()
}

/// Writes record batches to a new Parquet file (the caller's scratch path; the engine commits
/// it to the store).
pub fn write_table(
    path: &Path,
    schema: Arc<Schema>,
    batches: &[RecordBatch],
) -> Result<(), TableError> {
    let file = File::create(path).map_err(|e| table_error(path, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
        .map_err(|e| table_error(path, e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| table_error(path, e))?;
    }
    let file = writer.into_inner().map_err(|e| table_error(path, e))?;
    file.sync_all().map_err(|e| table_error(path, e))
}

/// Reads a whole Parquet file.
pub fn read_table(path: &Path) -> Result<(Arc<Schema>, Vec<RecordBatch>), TableError> {
    let file = File::open(path).map_err(|e| table_error(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| table_error(path, e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| table_error(path, e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| table_error(path, e))?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::{DataType, Field};

    #[test]
    fn the_same_rows_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let a = dir.path().join("a.parquet");
        let b = dir.path().join("b.parquet");
        write_table(&a, schema.clone(), std::slice::from_ref(&batch)).unwrap();
        write_table(&b, schema, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let (_, read) = read_table(&a).unwrap();
        assert_eq!(read, vec![batch]);
    }
}
