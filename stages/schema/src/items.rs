//! The unified multiple-choice VQA table (DESIGN.md §5) and the pretraining corpus table.
//! Reading and writing go through [`crate::items`] helpers so every stage agrees on columns.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `id` | utf8 | stable id: source + original id (+ condition for perturbed rows) |
//! | `dataset` | utf8 | dataset name |
//! | `task` | utf8 | `image_heavy`, `text_heavy` or `vqa` |
//! | `split` | utf8 | `train` or `test` |
//! | `image` | binary, nullable | PNG bytes |
//! | `question` | utf8 | the question, without options |
//! | `options` | list<utf8> | option texts, lettered A.. in order |
//! | `answer` | int32 | index of the gold option |
//! | `perturbation` | utf8 | `none`, `uf`, `md`, `rp`, `ri`, `fb`, `fw`, `ocr`, `screenshot`, ... |
//! | `origin_id` | utf8 | the clean item this row is (or perturbs) |
//! | `facts` | list<utf8 nullable>, nullable | per option, a description of it (null for the gold) |
//! | `meta` | utf8, nullable | JSON with anything else |
//!
//! An **open-ended** row (free-form VQA: LLaVA-Instruct, TextCaps) has `meta.answers`, the
//! list of its reference answers; its single option is the answer it is trained on and is never
//! shown as an option ([`Item::reference_answers`]).

use std::path::Path;
use std::sync::Arc;

use mipipe_cache::arrow_array::builder::{BinaryBuilder, Int32Builder, ListBuilder, StringBuilder};
use mipipe_cache::arrow_array::{
    Array, BinaryArray, Int32Array, ListArray, RecordBatch, StringArray,
};
use mipipe_cache::arrow_schema::{DataType, Field, Schema};
use mipipe_cache::{write_table, TableError};

use crate::columns::{column, strings};

/// What an item needs from each modality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// The answer is visible only in the image.
    ImageHeavy,
    /// The answer follows from the text alone.
    TextHeavy,
    /// The answer needs both.
    Vqa,
}

impl Task {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::ImageHeavy => "image_heavy",
            Task::TextHeavy => "text_heavy",
            Task::Vqa => "vqa",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "image_heavy" => Some(Task::ImageHeavy),
            "text_heavy" => Some(Task::TextHeavy),
            "vqa" => Some(Task::Vqa),
            _ => None,
        }
    }
}

/// One row of the unified table.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Stable id.
    pub id: String,
    /// Dataset name.
    pub dataset: String,
    /// Task type.
    pub task: Task,
    /// `train` or `test`.
    pub split: String,
    /// PNG bytes.
    pub image: Option<Vec<u8>>,
    /// The question.
    pub question: String,
    /// Option texts.
    pub options: Vec<String>,
    /// Gold option index.
    pub answer: usize,
    /// Condition.
    pub perturbation: String,
    /// The clean item.
    pub origin_id: String,
    /// Per option, a description of it (None for the gold option).
    pub facts: Option<Vec<Option<String>>>,
    /// JSON metadata.
    pub meta: Option<String>,
}

impl Item {
    /// For an open-ended row, its reference answers (`meta.answers`); `None` for a
    /// multiple-choice row.
    pub fn reference_answers(&self) -> Option<Vec<String>> {
        let meta: serde_json::Value = serde_json::from_str(self.meta.as_deref()?).ok()?;
        let answers = meta.get("answers")?.as_array()?;
        Some(
            answers
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Whether the row is open-ended (free-form): answered in words, not by an option.
    pub fn is_open_ended(&self) -> bool {
        self.reference_answers().is_some()
    }

    /// The row as an open-ended one: a multiple-choice row becomes its question without
    /// options, with the gold option's words as its one reference answer (in `meta.answers`,
    /// beside what `meta` held) and as its single option; an open-ended row stays as it is.
    pub fn into_open_ended(mut self) -> Item {
        if self.is_open_ended() {
            return self;
        }
        let gold = self.options.get(self.answer).cloned().unwrap_or_default();
        let mut meta = self
            .meta
            .as_deref()
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        meta["answers"] = serde_json::json!([gold]);
        self.meta = Some(meta.to_string());
        self.options = vec![gold];
        self.answer = 0;
        self.facts = None;
        self
    }
}

/// The Arrow schema of the unified table.
pub fn items_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("task", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("image", DataType::Binary, true),
        Field::new("question", DataType::Utf8, false),
        Field::new(
            "options",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("answer", DataType::Int32, false),
        Field::new("perturbation", DataType::Utf8, false),
        Field::new("origin_id", DataType::Utf8, false),
        Field::new(
            "facts",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new("meta", DataType::Utf8, true),
    ]))
}

/// Builds a record batch from items.
pub fn items_to_batch(items: &[Item]) -> RecordBatch {
    let mut image = BinaryBuilder::new();
    let mut options = ListBuilder::new(StringBuilder::new());
    let mut facts = ListBuilder::new(StringBuilder::new());
    let mut answer = Int32Builder::new();
    for item in items {
        image.append_option(item.image.as_deref());
        for option in &item.options {
            options.values().append_value(option);
        }
        options.append(true);
        match &item.facts {
            Some(list) => {
                for fact in list {
                    facts.values().append_option(fact.as_deref());
                }
                facts.append(true);
            }
            None => facts.append(false),
        }
        answer.append_value(item.answer as i32);
    }
    let meta: StringArray = items.iter().map(|i| i.meta.as_deref()).collect();
    RecordBatch::try_new(
        items_schema(),
        vec![
            strings(items.iter().map(|i| i.id.as_str())),
            strings(items.iter().map(|i| i.dataset.as_str())),
            strings(items.iter().map(|i| i.task.as_str())),
            strings(items.iter().map(|i| i.split.as_str())),
            Arc::new(image.finish()),
            strings(items.iter().map(|i| i.question.as_str())),
            Arc::new(options.finish()),
            Arc::new(answer.finish()),
            strings(items.iter().map(|i| i.perturbation.as_str())),
            strings(items.iter().map(|i| i.origin_id.as_str())),
            Arc::new(facts.finish()),
            Arc::new(meta),
        ],
    )
    .expect("columns match the schema")
}

fn list_strings(list: &ListArray, row: usize) -> Vec<Option<String>> {
    let values = list.value(row);
    let strings = values
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("list of utf8");
    (0..strings.len())
        .map(|i| (!strings.is_null(i)).then(|| strings.value(i).to_string()))
        .collect()
}

/// Reads items back from a batch of the unified schema.
pub fn batch_to_items(batch: &RecordBatch) -> Result<Vec<Item>, String> {
    let id = column::<StringArray>(batch, "id")?;
    let dataset = column::<StringArray>(batch, "dataset")?;
    let task = column::<StringArray>(batch, "task")?;
    let split = column::<StringArray>(batch, "split")?;
    let image = column::<BinaryArray>(batch, "image")?;
    let question = column::<StringArray>(batch, "question")?;
    let options = column::<ListArray>(batch, "options")?;
    let answer = column::<Int32Array>(batch, "answer")?;
    let perturbation = column::<StringArray>(batch, "perturbation")?;
    let origin_id = column::<StringArray>(batch, "origin_id")?;
    let facts = column::<ListArray>(batch, "facts")?;
    let meta = column::<StringArray>(batch, "meta")?;
    (0..batch.num_rows())
        .map(|row| {
            Ok(Item {
                id: id.value(row).to_string(),
                dataset: dataset.value(row).to_string(),
                task: Task::parse(task.value(row))
                    .ok_or_else(|| format!("row {row}: unknown task `{}`", task.value(row)))?,
                split: split.value(row).to_string(),
                image: (!image.is_null(row)).then(|| image.value(row).to_vec()),
                question: question.value(row).to_string(),
                options: list_strings(options, row).into_iter().flatten().collect(),
                answer: answer.value(row) as usize,
                perturbation: perturbation.value(row).to_string(),
                origin_id: origin_id.value(row).to_string(),
                facts: (!facts.is_null(row)).then(|| list_strings(facts, row)),
                meta: (!meta.is_null(row)).then(|| meta.value(row).to_string()),
            })
        })
        .collect()
}

/// Writes items as a unified table.
pub fn write_items(path: &Path, items: &[Item]) -> Result<(), TableError> {
    let batches: Vec<RecordBatch> = items.chunks(1024).map(items_to_batch).collect();
    write_table(path, items_schema(), &batches)
}

/// Reads a unified table.
pub fn read_items(path: &Path) -> Result<Vec<Item>, TableError> {
    crate::columns::read_rows(path, &items_schema(), batch_to_items)
}

/// One row of the pretraining corpus: an image with text about it, or text alone.
#[derive(Clone, Debug, PartialEq)]
pub struct CorpusRow {
    /// Stable id.
    pub id: String,
    /// PNG bytes, if the row has an image.
    pub image: Option<Vec<u8>>,
    /// The text.
    pub text: String,
}

/// The Arrow schema of the corpus table.
pub fn corpus_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image", DataType::Binary, true),
        Field::new("text", DataType::Utf8, false),
    ]))
}

/// Writes corpus rows.
pub fn write_corpus(path: &Path, rows: &[CorpusRow]) -> Result<(), TableError> {
    let batches: Vec<RecordBatch> = rows
        .chunks(1024)
        .map(|chunk| {
            let images: BinaryArray = chunk.iter().map(|r| r.image.as_deref()).collect();
            RecordBatch::try_new(
                corpus_schema(),
                vec![
                    strings(chunk.iter().map(|r| r.id.as_str())),
                    Arc::new(images),
                    strings(chunk.iter().map(|r| r.text.as_str())),
                ],
            )
            .expect("columns match the schema")
        })
        .collect();
    write_table(path, corpus_schema(), &batches)
}

/// Reads a corpus table.
pub fn read_corpus(path: &Path) -> Result<Vec<CorpusRow>, TableError> {
    crate::columns::read_rows(path, &corpus_schema(), |batch| {
        let id = column::<StringArray>(batch, "id")?;
        let image = column::<BinaryArray>(batch, "image")?;
        let text = column::<StringArray>(batch, "text")?;
        Ok((0..batch.num_rows())
            .map(|row| CorpusRow {
                id: id.value(row).to_string(),
                image: (!image.is_null(row)).then(|| image.value(row).to_vec()),
                text: text.value(row).to_string(),
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multiple_choice_row_becomes_its_question_with_the_gold_as_reference() {
        let item = Item {
            id: "x".into(),
            dataset: "counting".into(),
            task: Task::Vqa,
            split: "test".into(),
            image: None,
            question: "How many circles are in the picture?".into(),
            options: vec!["2".into(), "3".into(), "4".into()],
            answer: 1,
            perturbation: "none".into(),
            origin_id: "x".into(),
            facts: Some(vec![Some("two".into()), None, Some("four".into())]),
            meta: Some(r#"{"points_at": 2}"#.into()),
        };
        assert!(!item.is_open_ended());
        let open = item.into_open_ended();
        assert_eq!(open.reference_answers(), Some(vec!["3".to_string()]));
        assert_eq!(
            (open.options.clone(), open.answer),
            (vec!["3".to_string()], 0)
        );
        assert_eq!(open.facts, None);
        let meta: serde_json::Value = serde_json::from_str(open.meta.as_deref().unwrap()).unwrap();
        assert_eq!(meta["points_at"], 2, "the rest of meta stays");
        assert_eq!(
            open.clone().into_open_ended(),
            open,
            "an open-ended row stays as it is"
        );
    }
}
