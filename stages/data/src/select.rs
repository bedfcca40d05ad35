//! The `select` stage kind: the rows of one split (and, optionally, some datasets) of unified
//! tables, in their order.
//!
//! Its use is incrementality: a stage that trains on the `train` rows reads a `select` of them
//! rather than the whole table, so a change to the test rows (more test items, another test
//! condition) changes the selected table's bytes not at all and, by early cutoff, retrains
//! nothing.

use std::collections::BTreeSet;

use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use mipipe_stage_schema::{read_items, read_tables, write_items, Item};

/// Params of the `select` kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    /// The split whose rows are kept (`train`, `val`, `test`, or a converter's own name).
    pub split: String,
    /// Datasets whose rows are kept; every dataset when absent.
    #[serde(default)]
    pub datasets: Option<Vec<String>>,
}

/// The `select` stage kind.
#[derive(Default)]
pub struct SelectStage;

impl Stage for SelectStage {
    type Params = SelectParams;
    const KIND: &'static str = "select";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "Keep the rows of one split (and some datasets) of unified tables, in order";

    fn outputs(_params: &SelectParams) -> Vec<OutputSpec> {
        vec![OutputSpec::file("items", "items.parquet")]
    }

    fn run(&self, params: &SelectParams, ctx: &StageContext) -> Result<(), StageError> {
        let items = read_tables(ctx.input_paths("items")?, read_items)
            .map_err(|e| StageError::failed(e.to_string()))?;
        let selected = select(&items, params)?;
        ctx.log(&format!(
            "{} of {} rows are `{}` rows{}",
            selected.len(),
            items.len(),
            params.split,
            params
                .datasets
                .as_ref()
                .map(|d| format!(" of {}", d.join(", ")))
                .unwrap_or_default()
        ));
        write_items(ctx.output_path("items")?, &selected)
            .map_err(|e| StageError::environment(e.to_string()))
    }
}

/// The rows of `items` that `params` keep, in order. A split or a dataset that no row has is an
/// error naming what the table does have (a typo must not yield an empty table).
fn select(items: &[Item], params: &SelectParams) -> Result<Vec<Item>, StageError> {
    let listed = |names: BTreeSet<&str>| {
        if names.is_empty() {
            "none (the table is empty)".to_string()
        } else {
            names.into_iter().collect::<Vec<_>>().join(", ")
        }
    };
    let in_split: Vec<&Item> = items.iter().filter(|i| i.split == params.split).collect();
    if in_split.is_empty() {
        return Err(StageError::failed(format!(
            "param `split`: no row is in split `{}`; the table's splits: {}",
            params.split,
            listed(items.iter().map(|i| i.split.as_str()).collect())
        )));
    }
    let Some(datasets) = &params.datasets else {
        return Ok(in_split.into_iter().cloned().collect());
    };
    let present: BTreeSet<&str> = in_split.iter().map(|i| i.dataset.as_str()).collect();
    if let Some(missing) = datasets.iter().find(|d| !present.contains(d.as_str())) {
        return Err(StageError::failed(format!(
            "param `datasets`: `{missing}` has no row in split `{}`; its datasets: {}",
            params.split,
            listed(present)
        )));
    }
    Ok(in_split
        .into_iter()
        .filter(|i| datasets.contains(&i.dataset))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mipipe_stage_schema::Task;

    fn item(id: &str, dataset: &str, split: &str) -> Item {
        Item {
            id: id.into(),
            dataset: dataset.into(),
            task: Task::ImageHeavy,
            split: split.into(),
            image: None,
            question: "q".into(),
            options: vec!["a".into(), "b".into()],
            answer: 0,
            perturbation: "none".into(),
            origin_id: id.into(),
            facts: None,
            meta: None,
        }
    }

    fn table() -> Vec<Item> {
        vec![
            item("c1", "colors", "test"),
            item("c2", "colors", "train"),
            item("s1", "shapes", "train"),
            item("c3", "colors", "train"),
            item("s2", "shapes", "test"),
        ]
    }

    fn ids(rows: &[Item]) -> Vec<&str> {
        rows.iter().map(|i| i.id.as_str()).collect()
    }

    fn params(split: &str, datasets: Option<&[&str]>) -> SelectParams {
        SelectParams {
            split: split.into(),
            datasets: datasets.map(|d| d.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn keeps_the_rows_of_the_split_and_datasets_in_their_order() {
        let items = table();
        assert_eq!(
            ids(&select(&items, &params("train", None)).unwrap()),
            ["c2", "s1", "c3"]
        );
        assert_eq!(
            ids(&select(&items, &params("train", Some(&["colors"]))).unwrap()),
            ["c2", "c3"]
        );
        assert_eq!(
            ids(&select(&items, &params("test", Some(&["shapes", "colors"]))).unwrap()),
            ["c1", "s2"]
        );
    }

    #[test]
    fn an_absent_split_or_dataset_is_an_error_naming_what_there_is() {
        let items = table();
        let err = select(&items, &params("trian", None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`split`") && err.contains("`trian`") && err.contains("test, train"),
            "{err}"
        );
        let err = select(&items, &params("train", Some(&["colours"])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`datasets`")
                && err.contains("`colours`")
                && err.contains("colors, shapes"),
            "{err}"
        );
        let err = select(&[], &params("train", None)).unwrap_err().to_string();
        assert!(err.contains("the table is empty"), "{err}");
    }
}
