//! Predictions: one row per (item, condition) a model answered.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `id` | utf8 | the item row's id (with `#condition` for perturbed rows) |
//! | `origin_id` | utf8 | the clean item |
//! | `dataset`, `task`, `perturbation` | utf8 | copied from the item |
//! | `answer` | int32 | gold option index |
//! | `options` | list<utf8> | option texts (the evaluator's text fallback matches them) |
//! | `raw_text` | utf8 | the generated text (greedy decoding) |
//! | `predicted` | utf8, nullable | the letter the predicting stage parsed, if it did |
//! | `option_logprobs` | list<float64>, nullable | log-probability of each option letter |
//! | `points_at` | int32, nullable | the option the row's perturbation points at |
//! | `unknown_share` | float64, nullable | share of the prompt's tokens that are `<unk>` |
//! | `references` | list<utf8>, nullable | an open-ended row's reference answers |
//!
//! `references` is written only when some row is open-ended (answered in words, scored against
//! its references by `evaluate`), so the tables of multiple-choice predictions keep the
//! columns, and the bytes, they had before it existed; readers treat a missing column as no
//! references. An open-ended row has null `predicted` and `option_logprobs`.

use std::path::Path;
use std::sync::Arc;

use mipipe_cache::arrow_array::builder::{Float64Builder, ListBuilder, StringBuilder};
use mipipe_cache::arrow_array::{
    Array, ArrayRef, Float64Array, Int32Array, ListArray, RecordBatch, StringArray,
};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};
use mipipe_cache::{write_table, TableError};

use crate::columns::{column, optional_str, read_rows, strings};

/// One prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Item row id.
    pub id: String,
    /// Clean item id.
    pub origin_id: String,
    /// Dataset.
    pub dataset: String,
    /// `image_heavy`, `text_heavy` or `vqa`.
    pub task: String,
    /// Condition.
    pub perturbation: String,
    /// Gold option index.
    pub answer: usize,
    /// Option texts.
    pub options: Vec<String>,
    /// Generated text.
    pub raw_text: String,
    /// Parsed letter, if any.
    pub predicted: Option<String>,
    /// Log-probability per option letter.
    pub option_logprobs: Option<Vec<f64>>,
    /// The option the row's perturbation points at (a misleading description's option, an
    /// irrelevant image's sign; `meta.points_at` of the item), for follow rates.
    pub points_at: Option<usize>,
    /// Share of the prompt's tokens the model's tokenizer does not know (`<unk>`), where the
    /// model has a word vocabulary.
    pub unknown_share: Option<f64>,
    /// An open-ended row's reference answers (free-form VQA); `None` for a multiple-choice row.
    pub references: Option<Vec<String>>,
}

fn list(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

/// The Arrow schema of predictions, with the `references` column (see the module doc for when
/// it is written).
pub fn predictions_schema() -> Arc<Schema> {
    let mut fields = multiple_choice_fields();
    fields.push(Field::new("references", list(DataType::Utf8), true));
    Arc::new(Schema::new(fields))
}

/// The columns every predictions table has.
fn multiple_choice_fields() -> Vec<Field> {
    vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("origin_id", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("perturbation", DataType::Utf8, false),
        Field::new("answer", DataType::Int32, false),
        Field::new("options", list(DataType::Utf8), false),
        Field::new("raw_text", DataType::Utf8, false),
        Field::new("predicted", DataType::Utf8, true),
        Field::new("option_logprobs", list(DataType::Float64), true),
        Field::new("points_at", DataType::Int32, true),
        Field::new("unknown_share", DataType::Float64, true),
    ]
}

/// Writes predictions.
pub fn write_predictions(path: &Path, rows: &[Prediction]) -> Result<(), TableError> {
    let open_ended = rows.iter().any(|r| r.references.is_some());
    let schema = if open_ended {
        predictions_schema()
    } else {
        Arc::new(Schema::new(multiple_choice_fields()))
    };
    let batches: Vec<RecordBatch> = rows
        .chunks(4096)
        .map(|chunk| {
            let mut columns = prediction_columns(chunk);
            if open_ended {
                let mut references = ListBuilder::new(StringBuilder::new());
                for row in chunk {
                    match &row.references {
                        Some(values) => {
                            for v in values {
                                references.values().append_value(v);
                            }
                            references.append(true);
                        }
                        None => references.append(false),
                    }
                }
                columns.push(Arc::new(references.finish()));
            }
            RecordBatch::try_new(schema.clone(), columns).expect("columns match the schema")
        })
        .collect();
    write_table(path, schema, &batches)
}

/// The columns of [`multiple_choice_fields`] for `chunk`.
fn prediction_columns(chunk: &[Prediction]) -> Vec<ArrayRef> {
    let mut options = ListBuilder::new(StringBuilder::new());
    let mut logprobs = ListBuilder::new(Float64Builder::new());
    for row in chunk {
        for o in &row.options {
            options.values().append_value(o);
        }
        options.append(true);
        match &row.option_logprobs {
            Some(values) => {
                for v in values {
                    logprobs.values().append_value(*v);
                }
                logprobs.append(true);
            }
            None => logprobs.append(false),
        }
    }
    let predicted: StringArray = chunk.iter().map(|r| r.predicted.as_deref()).collect();
    vec![
        strings(chunk.iter().map(|r| r.id.as_str())),
        strings(chunk.iter().map(|r| r.origin_id.as_str())),
        strings(chunk.iter().map(|r| r.dataset.as_str())),
        strings(chunk.iter().map(|r| r.task.as_str())),
        strings(chunk.iter().map(|r| r.perturbation.as_str())),
        Arc::new(
            chunk
                .iter()
                .map(|r| r.answer as i32)
                .collect::<Int32Array>(),
        ),
        Arc::new(options.finish()),
        strings(chunk.iter().map(|r| r.raw_text.as_str())),
        Arc::new(predicted),
        Arc::new(logprobs.finish()),
        Arc::new(
            chunk
                .iter()
                .map(|r| r.points_at.map(|p| p as i32))
                .collect::<Int32Array>(),
        ),
        Arc::new(
            chunk
                .iter()
                .map(|r| r.unknown_share)
                .collect::<Float64Array>(),
        ),
    ]
}

fn batch_to_predictions(batch: &RecordBatch) -> Result<Vec<Prediction>, String> {
    let id = column::<StringArray>(batch, "id")?;
    let origin = column::<StringArray>(batch, "origin_id")?;
    let dataset = column::<StringArray>(batch, "dataset")?;
    let task = column::<StringArray>(batch, "task")?;
    let perturbation = column::<StringArray>(batch, "perturbation")?;
    let answer = column::<Int32Array>(batch, "answer")?;
    let options = column::<ListArray>(batch, "options")?;
    let raw = column::<StringArray>(batch, "raw_text")?;
    let predicted = column::<StringArray>(batch, "predicted")?;
    let logprobs = column::<ListArray>(batch, "option_logprobs")?;
    let points_at = column::<Int32Array>(batch, "points_at")?;
    let unknown = column::<Float64Array>(batch, "unknown_share")?;
    let references = match batch.column_by_name("references") {
        Some(_) => Some(column::<ListArray>(batch, "references")?),
        None => None,
    };
    (0..batch.num_rows())
        .map(|row| {
            let lp = (!logprobs.is_null(row))
                .then(|| {
                    let values = logprobs.value(row);
                    values
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .map(|a| a.values().to_vec())
                })
                .flatten();
            Ok(Prediction {
                id: id.value(row).to_string(),
                origin_id: origin.value(row).to_string(),
                dataset: dataset.value(row).to_string(),
                task: task.value(row).to_string(),
                perturbation: perturbation.value(row).to_string(),
                answer: answer.value(row) as usize,
                options: string_list(options, row, "options")?,
                raw_text: raw.value(row).to_string(),
                predicted: optional_str(predicted, row),
                option_logprobs: lp,
                points_at: (!points_at.is_null(row)).then(|| points_at.value(row) as usize),
                unknown_share: (!unknown.is_null(row)).then(|| unknown.value(row)),
                references: references
                    .filter(|r| !r.is_null(row))
                    .map(|r| string_list(r, row, "references"))
                    .transpose()?,
            })
        })
        .collect()
}

/// Row `row` of a list-of-strings column.
fn string_list(list: &ListArray, row: usize, name: &str) -> Result<Vec<String>, String> {
    let values = list.value(row);
    let values = values
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| format!("`{name}` is not a list of strings"))?;
    Ok((0..values.len())
        .map(|i| values.value(i).to_string())
        .collect())
}

/// Reads predictions.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>, TableError> {
    read_rows(path, &predictions_schema(), batch_to_predictions)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Standalone letters of a text (word boundaries on both sides), in order.
pub fn standalone_letters(text: &str) -> impl Iterator<Item = char> + '_ {
    let chars: Vec<char> = text.chars().collect();
    (0..chars.len()).filter_map(move |i| {
        let c = chars[i];
        let before = i == 0 || !is_word(chars[i - 1]);
        let after = i + 1 == chars.len() || !is_word(chars[i + 1]);
        (c.is_ascii_alphabetic() && before && after).then_some(c)
    })
}

/// The option an answer names (the standard parser, shared by the `predict` kind's
/// `predicted` column and the `evaluate` kind): the first standalone option letter within the
/// options' range, else the option whose text appears first in the answer (the longest at the
/// same place), else none.
pub fn parse_option(raw: &str, options: &[String]) -> Option<usize> {
    if options.is_empty() {
        return None;
    }
    let last = (b'A' + options.len().min(26) as u8 - 1) as char;
    if let Some(letter) = standalone_letters(raw).find(|c| ('A'..=last).contains(c)) {
        return Some((letter as u8 - b'A') as usize);
    }
    let lower = raw.to_lowercase();
    options
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.trim().is_empty())
        .filter_map(|(i, o)| {
            find_words(&lower, &o.trim().to_lowercase())
                .map(|at| (at, std::cmp::Reverse(o.len()), i))
        })
        .min()
        .map(|(_, _, i)| i)
}

/// The first place `needle` occurs in `text` as whole words: neither end inside a word (`12`
/// is not found in `112`, nor `cat` in `cats`).
fn find_words(text: &str, needle: &str) -> Option<usize> {
    let is_word = |c: char| c.is_alphanumeric();
    text.match_indices(needle).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + needle.len()..].chars().next();
        let starts_word = needle.chars().next().is_some_and(is_word);
        let ends_word = needle.chars().next_back().is_some_and(is_word);
        let glued_before = starts_word && before.is_some_and(is_word);
        let glued_after = ends_word && after.is_some_and(is_word);
        !(glued_before || glued_after)
    })
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn answers_are_parsed_by_letter_first_then_by_option_words() {
        let options: Vec<String> = ["circle", "red square", "star"].map(String::from).to_vec();
        assert_eq!(parse_option("B", &options), Some(1));
        assert_eq!(parse_option("the answer is C .", &options), Some(2));
        assert_eq!(
            parse_option("D", &options),
            None,
            "D is beyond three options"
        );
        assert_eq!(parse_option("Red Square", &options), Some(1));
        assert_eq!(parse_option("square", &options), None);
        assert_eq!(parse_option("anything", &[]), None);
        let many: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
        assert_eq!(parse_option("J", &many), Some(9), "letters beyond D");
    }

    #[test]
    fn option_words_match_on_word_boundaries_only() {
        let numbers: Vec<String> = ["12", "112", "7"].map(String::from).to_vec();
        assert_eq!(
            parse_option("112", &numbers),
            Some(1),
            "112 is not option 12"
        );
        assert_eq!(parse_option("it is 12 .", &numbers), Some(0));
        assert_eq!(parse_option("1127", &numbers), None);
        let animals: Vec<String> = ["cat", "dog"].map(String::from).to_vec();
        assert_eq!(parse_option("cats", &animals), None);
        assert_eq!(
            parse_option("a dog, then a cat", &animals),
            Some(1),
            "the first mention"
        );
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    fn row(id: &str, references: Option<Vec<String>>) -> Prediction {
        Prediction {
            id: id.into(),
            origin_id: id.into(),
            dataset: "counting".into(),
            task: "vqa".into(),
            perturbation: "none".into(),
            answer: 0,
            options: vec!["3".into()],
            raw_text: "3".into(),
            predicted: None,
            option_logprobs: references.is_none().then(|| vec![-0.5]),
            points_at: None,
            unknown_share: Some(0.0),
            references,
        }
    }

    #[test]
    fn references_are_written_only_for_open_ended_predictions_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let columns = |path: &Path| {
            let (schema, _) = mipipe_cache::read_table(path).unwrap();
            schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        let choice = dir.path().join("choice.parquet");
        write_predictions(&choice, &[row("a", None)]).unwrap();
        assert!(!columns(&choice).contains(&"references".to_string()));
        assert_eq!(columns(&choice).len(), 12, "the multiple-choice columns");
        assert_eq!(read_predictions(&choice).unwrap(), vec![row("a", None)]);

        let open = dir.path().join("open.parquet");
        let rows = vec![
            row("a", None),
            row("b", Some(vec!["3".into(), "three".into()])),
        ];
        write_predictions(&open, &rows).unwrap();
        assert_eq!(columns(&open).last().unwrap(), "references");
        assert_eq!(read_predictions(&open).unwrap(), rows);
    }
}
