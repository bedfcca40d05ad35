//! `format: hf_parquet`: a Hugging Face dataset's Parquet export (what `datasets` writes and the
//! Hub serves), read by a column mapping, with presets for the lmms-lab copies of MMBench,
//! ScienceQA and SEED-Bench. Images are a `{bytes, path}` struct (the `datasets` Image
//! feature), a list of them (the first is taken), or plain binary.

use std::sync::Arc;

use mipipe_cache::arrow_array::cast::AsArray;
use mipipe_cache::arrow_array::types::Int64Type;
use mipipe_cache::arrow_array::{Array, ArrayRef, RecordBatch};
use mipipe_cache::arrow_schema::{DataType, Field};
use mipipe_engine::StageError;
use mipipe_stage_schema::{lossless_cast, Task};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{letter_index, letters, normalize_image, Sink};

/// A known export's column layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HfPreset {
    /// `lmms-lab/MMBench`: `index`, `question`, `hint`, `A`-`D`, `answer` letter, `image`.
    Mmbench,
    /// `lmms-lab/ScienceQA` (ScienceQA-IMG): `question`, `choices` list, `answer` index,
    /// `hint`, `image`.
    Scienceqa,
    /// `lmms-lab/SEED-Bench`: `question_id`, `question`, `choice_a`-`choice_d`, `answer`
    /// letter, `image` (a list of images).
    Seedbench,
}

/// Which column holds what; unset fields take the preset's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HfColumns {
    /// The item id [default: the row number].
    #[serde(default)]
    pub id: Option<String>,
    /// The question text.
    #[serde(default)]
    pub question: Option<String>,
    /// A list column of option texts (or use `option_columns`).
    #[serde(default)]
    pub options: Option<String>,
    /// One column per option, in order (`[A, B, C, D]`); empty cells and `nan` are absent.
    #[serde(default)]
    pub option_columns: Option<Vec<String>>,
    /// The answer: a letter (string column) or a 0-based index (integer column).
    #[serde(default)]
    pub answer: Option<String>,
    /// The image; rows without one are left out.
    #[serde(default)]
    pub image: Option<String>,
    /// A hint kept in `meta`.
    #[serde(default)]
    pub hint: Option<String>,
}

impl HfPreset {
    fn columns(self) -> HfColumns {
        let some = |s: &str| Some(s.to_string());
        let list = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
        match self {
            Self::Mmbench => HfColumns {
                id: some("index"),
                question: some("question"),
                options: None,
                option_columns: list(&["A", "B", "C", "D"]),
                answer: some("answer"),
                image: some("image"),
                hint: some("hint"),
            },
            Self::Scienceqa => HfColumns {
                id: None,
                question: some("question"),
                options: some("choices"),
                option_columns: None,
                answer: some("answer"),
                image: some("image"),
                hint: some("hint"),
            },
            Self::Seedbench => HfColumns {
                id: some("question_id"),
                question: some("question"),
                options: None,
                option_columns: list(&["choice_a", "choice_b", "choice_c", "choice_d"]),
                answer: some("answer"),
                image: some("image"),
                hint: None,
            },
        }
    }

    /// The dataset name of the preset's rows.
    pub(super) fn dataset(self) -> &'static str {
        match self {
            Self::Mmbench => "mmbench-en",
            Self::Scienceqa => "scienceqa-img",
            Self::Seedbench => "seed-bench-img",
        }
    }
}

/// The mapping in use: the params' columns over the preset's.
fn mapping(sink: &Sink) -> HfColumns {
    let base = sink
        .params
        .preset
        .map(HfPreset::columns)
        .unwrap_or_default();
    let over = sink.params.columns.clone().unwrap_or_default();
    HfColumns {
        id: over.id.or(base.id),
        question: over.question.or(base.question),
        options: over.options.or(base.options),
        option_columns: over.option_columns.or(base.option_columns),
        answer: over.answer.or(base.answer),
        image: over.image.or(base.image),
        hint: over.hint.or(base.hint),
    }
}

pub(super) fn hf_parquet(sink: &mut Sink) -> Result<(), StageError> {
    let path = sink.root.clone();
    let shown = sink.shown(&path);
    let columns = mapping(sink);
    let fail = |message: String| StageError::failed(format!("`{shown}`: {message}"));
    let (Some(question_col), Some(answer_col)) = (&columns.question, &columns.answer) else {
        return Err(fail(
            "`hf_parquet` needs a `preset` or `columns` naming at least `question` and `answer`"
                .into(),
        ));
    };
    if columns.options.is_none() && columns.option_columns.is_none() {
        return Err(fail(
            "`hf_parquet` needs `columns.options` (a list column) or `columns.option_columns`"
                .into(),
        ));
    }
    let (_, batches) = mipipe_cache::read_table(&path).map_err(|e| fail(e.message))?;
    let split = sink.split();
    let mut row_number = 0usize;
    for batch in &batches {
        let questions = texts(batch, question_col).map_err(fail)?;
        let answers = answers(batch, answer_col).map_err(fail)?;
        let ids = match &columns.id {
            Some(name) => Some(texts(batch, name).map_err(fail)?),
            None => None,
        };
        let images = match &columns.image {
            Some(name) => Some(images(batch, name).map_err(fail)?),
            None => None,
        };
        let hints = match &columns.hint {
            Some(name) => Some(texts(batch, name).map_err(fail)?),
            None => None,
        };
        let option_lists = match (&columns.options, &columns.option_columns) {
            (Some(name), _) => lists(batch, name).map_err(fail)?,
            (None, Some(names)) => {
                let cols = names
                    .iter()
                    .map(|n| texts(batch, n))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(fail)?;
                (0..batch.num_rows())
                    .map(|row| {
                        Some(
                            cols.iter()
                                .map(|c| c[row].clone().unwrap_or_default())
                                .take_while(|o| !o.trim().is_empty() && o != "nan")
                                .collect(),
                        )
                    })
                    .collect()
            }
            (None, None) => unreachable!("checked above"),
        };
        for row in 0..batch.num_rows() {
            let number = row_number;
            row_number += 1;
            let id = ids
                .as_ref()
                .and_then(|ids| ids[row].clone())
                .unwrap_or_else(|| number.to_string());
            let record = format!("row {number} (id {id})");
            let image = match images.as_ref().map(|i| i[row].clone()) {
                // Rows without an image (ScienceQA's text-only questions) are not image items.
                Some(None) => continue,
                Some(Some(bytes)) => match normalize_image(&bytes) {
                    Ok(image) => Some(image),
                    Err(e) => {
                        sink.bad(&path, &record, format!("image: {e}"))?;
                        continue;
                    }
                },
                None => None,
            };
            let options: Vec<String> = option_lists[row].clone().unwrap_or_default();
            if options.len() < 2 {
                sink.bad(&path, &record, "fewer than two options")?;
                continue;
            }
            let answer = match &answers[row] {
                Some(Answer::Letter(letter)) => letter_index(letter, options.len()),
                Some(Answer::Index(i)) => usize::try_from(*i).ok().filter(|&i| i < options.len()),
                None => None,
            };
            let Some(answer) = answer else {
                let given = answers[row]
                    .as_ref()
                    .map_or("none".into(), |a| a.to_string());
                sink.bad(
                    &path,
                    &record,
                    format!(
                        "answer `{given}` is not one of {} (or an index below {})",
                        letters(options.len()),
                        options.len()
                    ),
                )?;
                continue;
            };
            let question = questions[row].clone().unwrap_or_default();
            let hint = hints
                .as_ref()
                .and_then(|h| h[row].clone())
                .filter(|h| !h.is_empty() && h != "nan");
            let meta = serde_json::json!({"id": id, "hint": hint});
            sink.push(
                &id,
                Task::Vqa,
                &split,
                image,
                &question,
                options,
                answer,
                meta,
            );
        }
    }
    Ok(())
}

fn column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef, String> {
    let found: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect();
    batch.column_by_name(name).ok_or_else(|| {
        format!(
            "no column `{name}` (columns: {}); set `columns.*` to map them",
            found.join(", ")
        )
    })
}

/// A text column (integers as their digits: ids are often numbers).
fn texts(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let array = column(batch, name)?;
    text_values(array)
        .ok_or_else(|| format!("column `{name}` is {}, expected text", array.data_type()))
}

/// Text of any string type, or the digits of any integer type.
fn text_values(array: &ArrayRef) -> Option<Vec<Option<String>>> {
    if let Some(numbers) = integers(array) {
        return Some(
            numbers
                .into_iter()
                .map(|v| v.map(|v| v.to_string()))
                .collect(),
        );
    }
    let strings = lossless_cast(array, &DataType::Utf8)?;
    Some(
        strings
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
    )
}

/// The values of an integer column of any width.
fn integers(array: &ArrayRef) -> Option<Vec<Option<i64>>> {
    if !array.data_type().is_integer() {
        return None;
    }
    let numbers = lossless_cast(array, &DataType::Int64)?;
    Some(numbers.as_primitive::<Int64Type>().iter().collect())
}

/// An answer cell: a letter or an index.
enum Answer {
    Letter(String),
    Index(i64),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Letter(l) => f.write_str(l),
            Self::Index(i) => write!(f, "{i}"),
        }
    }
}

/// An answer column: integers are indices, text is letters.
fn answers(batch: &RecordBatch, name: &str) -> Result<Vec<Option<Answer>>, String> {
    let array = column(batch, name)?;
    if let Some(numbers) = integers(array) {
        return Ok(numbers.into_iter().map(|v| v.map(Answer::Index)).collect());
    }
    Ok(texts(batch, name)?
        .into_iter()
        .map(|v| v.map(|l| Answer::Letter(l.trim().to_string())))
        .collect())
}

/// A list-of-text column.
fn lists(batch: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<String>>>, String> {
    let array = column(batch, name)?;
    let item = Arc::new(Field::new("item", DataType::Utf8, true));
    let lists = lossless_cast(array, &DataType::List(item)).ok_or_else(|| {
        format!(
            "column `{name}` is {}, expected a list of text",
            array.data_type()
        )
    })?;
    let lists = lists.as_list::<i32>();
    Ok((0..lists.len())
        .map(|row| {
            (!lists.is_null(row)).then(|| {
                lists
                    .value(row)
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap_or_default().to_string())
                    .collect()
            })
        })
        .collect())
}

/// An image column: binary, a `{bytes, path}` struct, or a list of them (the first).
fn images(batch: &RecordBatch, name: &str) -> Result<Vec<Option<Vec<u8>>>, String> {
    let array = column(batch, name)?;
    (0..array.len())
        .map(|row| image_at(array, row))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            format!(
                "column `{name}` is {}, expected image bytes, a `{{bytes, path}}` struct or a list of them",
                array.data_type()
            )
        })
}

/// The image bytes at `row` (`Some(None)`: no image), or `None` for an unusable type.
fn image_at(array: &ArrayRef, row: usize) -> Option<Option<Vec<u8>>> {
    if array.is_null(row) {
        return Some(None);
    }
    match array.data_type() {
        DataType::Binary => Some(Some(array.as_binary::<i32>().value(row).to_vec())),
        DataType::LargeBinary => Some(Some(array.as_binary::<i64>().value(row).to_vec())),
        DataType::BinaryView => Some(Some(array.as_binary_view().value(row).to_vec())),
        DataType::Struct(_) => {
            let bytes = array.as_struct().column_by_name("bytes")?;
            image_at(bytes, row)
        }
        DataType::List(_) | DataType::LargeList(_) => {
            let values = match array.data_type() {
                DataType::List(_) => array.as_list::<i32>().value(row),
                _ => array.as_list::<i64>().value(row),
            };
            if values.is_empty() {
                Some(None)
            } else {
                image_at(&values, 0)
            }
        }
        _ => None,
    }
}
