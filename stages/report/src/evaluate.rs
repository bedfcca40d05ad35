//! The `evaluate` stage kind: predictions -> metrics.
//!
//! Accuracy per (dataset, condition) counts every prediction: an answer that cannot be parsed
//! is wrong and is also counted as `unparseable`, never dropped. "Perturbed" is the configured
//! worst condition (MD for image-heavy, RI for text-heavy, as the paper's tables use it). The
//! causal effect of an intervention is the fraction of items whose parsed answer changes between
//! the clean and the perturbed condition, paired by `origin_id` (an unparseable answer is a value
//! of its own: unparseable in both conditions is no change). VQA Overall is the pooled accuracy
//! over every VQA set, weighted by items, which is what the paper's numbers are.

use std::collections::BTreeMap;

use mipipe_engine::template::value_text;
use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use mipipe_stage_schema::{
    parse_option, read_predictions, read_tables, standalone_letters, write_metrics, MetricRow,
    Prediction,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How answers are read from generated text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Parser {
    /// The first standalone capital option letter within the item's options (A.. up to the
    /// number of options), else the option whose text appears first in the answer.
    Standard,
    /// The authors' parser: any standalone letter (upper-cased) for image-heavy sets, A-D for
    /// the others, no text fallback (their fallback is dead code), so "a dog" reads as A.
    Reference,
}

/// Which condition is "Perturbed" in the tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerturbedConditions {
    /// For image-heavy sets (`worst` takes the lowest accuracy).
    #[serde(default = "default_image_perturbed")]
    pub image_heavy: String,
    /// For text-heavy sets.
    #[serde(default = "default_text_perturbed")]
    pub text_heavy: String,
}

impl Default for PerturbedConditions {
    fn default() -> Self {
        Self {
            image_heavy: default_image_perturbed(),
            text_heavy: default_text_perturbed(),
        }
    }
}

fn default_image_perturbed() -> String {
    "md".into()
}
fn default_text_perturbed() -> String {
    "ri".into()
}

/// Which of a prediction's answers `evaluate` scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnswerFrom {
    /// The generated text, parsed (the paper's evaluation, seed-repo.md §1.8).
    #[default]
    Generated,
    /// The option with the highest log-probability (letter or option words, by the model's
    /// answer format); never unparseable.
    Likelihood,
}

/// Params of the `evaluate` kind. `family`, `size`, `method` and `seed` label the metrics
/// (matrix values usually).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Model family (`llava`, `blip`, `qwen`, ...).
    pub family: Value,
    /// Model size label.
    #[serde(default = "default_size")]
    pub size: Value,
    /// Training method (`vanilla`, `fft_mix`, `ours`, ...).
    pub method: Value,
    /// Training seed.
    #[serde(default = "default_seed")]
    pub seed: Value,
    /// Which answer is scored: `generated` (the paper: the greedy answer, read by `parser`) or
    /// `likelihood` (the option the model gives the highest log-probability, from the
    /// predictions' `option_logprobs`).
    #[serde(default)]
    pub answer_from: AnswerFrom,
    /// Answer parser (of generated answers).
    #[serde(default = "default_parser")]
    pub parser: Parser,
    /// The "Perturbed" condition per task.
    #[serde(default)]
    pub perturbed: PerturbedConditions,
}

fn default_size() -> Value {
    Value::String("s".into())
}
fn default_seed() -> Value {
    Value::from(0)
}
fn default_parser() -> Parser {
    Parser::Standard
}

/// The `evaluate` stage kind.
#[derive(Default)]
pub struct EvaluateStage;

impl Stage for EvaluateStage {
    type Params = EvaluateParams;
    const KIND: &'static str = "evaluate";
    const VERSION: u32 = 4;
    const SUMMARY: &'static str = "Score predictions: accuracy, perturbed accuracy, causal effect, VQA overall, unparseable answers";

    fn outputs(_params: &EvaluateParams) -> Vec<OutputSpec> {
        vec![
            OutputSpec::file("metrics", "metrics.parquet"),
            OutputSpec::file("unparseable", "unparseable.json"),
            OutputSpec::file("samples", "samples.jsonl"),
        ]
    }

    fn run(&self, params: &EvaluateParams, ctx: &StageContext) -> Result<(), StageError> {
        let predictions = read_tables(ctx.input_paths("predictions")?, read_predictions)
            .map_err(|e| StageError::failed(e.to_string()))?;
        let label = Label {
            family: value_text(&params.family),
            size: value_text(&params.size),
            method: value_text(&params.method),
            seed: value_text(&params.seed),
            stage: ctx.stage_name().to_string(),
        };
        let (rows, unparseable) = evaluate(&predictions, params, &label);
        let examples: Vec<Value> = unparseable
            .iter()
            .take(50)
            .map(|p| serde_json::json!({"id": p.id, "dataset": p.dataset, "condition": p.perturbation, "raw_text": p.raw_text}))
            .collect();
        ctx.log(&format!(
            "{} predictions, {} unparseable, {} metric rows",
            predictions.len(),
            unparseable.len(),
            rows.len()
        ));
        write_metrics(ctx.output_path("metrics")?, &rows)
            .map_err(|e| StageError::environment(e.to_string()))?;
        std::fs::write(
            ctx.output_path("samples")?,
            samples_jsonl(&predictions, params),
        )
        .map_err(|e| StageError::environment(e.to_string()))?;
        let report = serde_json::json!({"count": unparseable.len(), "examples": examples});
        std::fs::write(
            ctx.output_path("unparseable")?,
            serde_json::to_vec_pretty(&report).expect("json"),
        )
        .map_err(|e| StageError::environment(e.to_string()))
    }
}

/// Labels of every metric row of one evaluation.
pub struct Label {
    /// Model family.
    pub family: String,
    /// Model size.
    pub size: String,
    /// Method.
    pub method: String,
    /// Seed.
    pub seed: String,
    /// Producing stage.
    pub stage: String,
}

/// The option with the highest log-probability (the first on a tie); none without scores.
pub fn most_likely(p: &Prediction) -> Option<usize> {
    let scores = p.option_logprobs.as_ref()?;
    scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .fold(None, |best: Option<(usize, f64)>, (i, &s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i)
}

/// Parses an answer to an option index (which may be out of range in reference mode, where
/// it counts as wrong), or None.
pub fn parse_answer(raw: &str, options: &[String], task: &str, parser: Parser) -> Option<usize> {
    match parser {
        Parser::Standard => parse_option(raw, options),
        Parser::Reference => {
            let accept =
                |c: &char| task == "image_heavy" || matches!(c.to_ascii_uppercase(), 'A'..='D');
            standalone_letters(raw)
                .find(accept)
                .map(|c| (c.to_ascii_uppercase() as u8 - b'A') as usize)
        }
    }
}

/// (condition, accuracy, items).
type ConditionAccuracy = (String, f64, u64);

/// The option a prediction is scored as having chosen: its parsed generated answer or its
/// most likely option, as `answer_from` says; `None` when the answer cannot be read.
pub fn scored_answer(p: &Prediction, params: &EvaluateParams) -> Option<usize> {
    match params.answer_from {
        AnswerFrom::Generated => parse_answer(&p.raw_text, &p.options, &p.task, params.parser),
        AnswerFrom::Likelihood => most_likely(p),
    }
}

/// lmms-eval's per-sample log (`--log_samples`), one JSON object per line, so a result can be
/// checked against that harness: `doc_id`, `task` (the dataset), `condition`, `target` (the
/// gold letter), `resps` (the raw answer), `filtered_resps` (the letter scored, empty when
/// unreadable), and the metric `accuracy` (1 or 0).
pub fn samples_jsonl(predictions: &[Prediction], params: &EvaluateParams) -> String {
    let letter = |i: usize| ((b'A' + i as u8) as char).to_string();
    let mut out = String::new();
    for p in predictions {
        let answer = scored_answer(p, params);
        let line = serde_json::json!({
            "doc_id": p.id,
            "task": p.dataset,
            "condition": p.perturbation,
            "target": letter(p.answer),
            "resps": [[p.raw_text]],
            "filtered_resps": [answer.map(letter).unwrap_or_default()],
            "accuracy": if answer == Some(p.answer) { 1.0 } else { 0.0 },
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// Computes every metric of one model's predictions.
pub fn evaluate<'p>(
    predictions: &'p [Prediction],
    params: &EvaluateParams,
    label: &Label,
) -> (Vec<MetricRow>, Vec<&'p Prediction>) {
    let row =
        |dataset: &str, task: &str, condition: &str, metric: &str, value: f64, n: u64| MetricRow {
            family: label.family.clone(),
            size: label.size.clone(),
            method: label.method.clone(),
            seed: label.seed.clone(),
            dataset: dataset.to_string(),
            task: task.to_string(),
            condition: condition.to_string(),
            metric: metric.to_string(),
            value,
            n,
            stage: label.stage.clone(),
        };
    // (dataset, condition) -> (task, correct, unparseable, total); parsed answers by origin.
    let mut groups: BTreeMap<(String, String), (String, u64, u64, u64)> = BTreeMap::new();
    let mut parsed: BTreeMap<(String, String), BTreeMap<String, Option<usize>>> = BTreeMap::new();
    let mut unparseable = Vec::new();
    for p in predictions {
        let answer = scored_answer(p, params);
        let entry = groups
            .entry((p.dataset.clone(), p.perturbation.clone()))
            .or_insert((p.task.clone(), 0, 0, 0));
        entry.3 += 1;
        match answer {
            Some(a) if a == p.answer => entry.1 += 1,
            Some(_) => {}
            None => {
                entry.2 += 1;
                unparseable.push(p);
            }
        }
        parsed
            .entry((p.dataset.clone(), p.perturbation.clone()))
            .or_default()
            .insert(p.origin_id.clone(), answer);
    }
    let mut rows = Vec::new();
    // dataset -> (task, [(condition, accuracy, n)])
    let mut by_dataset: BTreeMap<String, (String, Vec<ConditionAccuracy>)> = BTreeMap::new();
    for ((dataset, condition), (task, correct, bad, total)) in &groups {
        let accuracy = *correct as f64 / *total as f64;
        rows.push(row(dataset, task, condition, "accuracy", accuracy, *total));
        rows.push(row(
            dataset,
            task,
            condition,
            "unparseable",
            *bad as f64 / *total as f64,
            *total,
        ));
        by_dataset
            .entry(dataset.clone())
            .or_insert_with(|| (task.clone(), Vec::new()))
            .1
            .push((condition.clone(), accuracy, *total));
    }
    for (dataset, (task, conditions)) in &by_dataset {
        let (clean, wanted) = match task.as_str() {
            "image_heavy" => ("none", params.perturbed.image_heavy.as_str()),
            "text_heavy" => ("rp", params.perturbed.text_heavy.as_str()),
            _ => continue,
        };
        let candidates: Vec<&ConditionAccuracy> =
            conditions.iter().filter(|(c, _, _)| c != clean).collect();
        let perturbed = if wanted == "worst" {
            candidates
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .copied()
        } else {
            candidates.iter().find(|(c, _, _)| c == wanted).copied()
        };
        if let Some((_, accuracy, n)) = perturbed {
            rows.push(row(dataset, task, "perturbed", "accuracy", *accuracy, *n));
        }
        // Causal effect of each intervention against the clean condition.
        let Some(clean_answers) = parsed.get(&(dataset.clone(), clean.to_string())) else {
            continue;
        };
        for (condition, _, _) in candidates {
            let answers = &parsed[&(dataset.clone(), condition.clone())];
            let pairs: Vec<bool> = answers
                .iter()
                .filter_map(|(origin, a)| clean_answers.get(origin).map(|c| c != a))
                .collect();
            if !pairs.is_empty() {
                let changed = pairs.iter().filter(|c| **c).count();
                rows.push(row(
                    dataset,
                    task,
                    condition,
                    "causal_effect",
                    changed as f64 / pairs.len() as f64,
                    pairs.len() as u64,
                ));
            }
        }
    }
    rows.extend(pointing_rows(predictions, params, &row));
    // VQA Overall: pooled over every VQA set, clean condition.
    let (correct, total) = groups
        .iter()
        .filter(|((_, condition), (task, ..))| task == "vqa" && condition == "none")
        .fold((0, 0), |(c, t), (_, (_, correct, _, total))| {
            (c + correct, t + total)
        });
    if total > 0 {
        rows.push(row(
            "vqa_overall",
            "vqa",
            "none",
            "accuracy",
            correct as f64 / total as f64,
            total,
        ));
    }
    (rows, unparseable)
}

/// Metrics of rows whose perturbation points at an option (`points_at`) and of the prompt's
/// unknown tokens, per (dataset, condition):
/// - `follow_rate`: among rows pointing at a *wrong* option, the share answering that option
///   (chance: 1/k of the answers);
/// - `accuracy_points_gold` / `_wrong` / `_none`: accuracy split by what the perturbation
///   points at (an RI sign of the gold, of a wrong option, of no option);
/// - `unknown_tokens`: the mean share of prompt tokens the model's vocabulary lacks.
fn pointing_rows(
    predictions: &[Prediction],
    params: &EvaluateParams,
    row: &impl Fn(&str, &str, &str, &str, f64, u64) -> MetricRow,
) -> Vec<MetricRow> {
    // (dataset, condition) -> task, [(metric, hits, total)], unknown (sum, count)
    type Counts = (String, BTreeMap<&'static str, (u64, u64)>, (f64, u64));
    let mut groups: BTreeMap<(&str, &str), Counts> = BTreeMap::new();
    for p in predictions {
        let answer = scored_answer(p, params);
        let entry = groups
            .entry((p.dataset.as_str(), p.perturbation.as_str()))
            .or_insert_with(|| (p.task.clone(), BTreeMap::new(), (0.0, 0)));
        if let Some(share) = p.unknown_share {
            entry.2 .0 += share;
            entry.2 .1 += 1;
        }
        if p.perturbation == "none" || p.perturbation == "rp" {
            continue;
        }
        let mut count = |metric: &'static str, hit: bool| {
            let c = entry.1.entry(metric).or_insert((0, 0));
            c.0 += hit as u64;
            c.1 += 1;
        };
        let correct = answer == Some(p.answer);
        match p.points_at {
            Some(target) if target == p.answer => count("accuracy_points_gold", correct),
            Some(target) => {
                count("accuracy_points_wrong", correct);
                count("follow_rate", answer == Some(target));
            }
            None if p.perturbation == "ri" => count("accuracy_points_none", correct),
            None => {}
        }
    }
    let mut out = Vec::new();
    for ((dataset, condition), (task, counts, (unknown, n))) in &groups {
        // The thirds only mean something where all three exist (RI of the embedded study).
        let thirds = counts
            .keys()
            .filter(|m| m.starts_with("accuracy_points"))
            .count();
        for (metric, (hits, total)) in counts {
            if metric.starts_with("accuracy_points") && thirds < 2 {
                continue;
            }
            out.push(row(
                dataset,
                task,
                condition,
                metric,
                *hits as f64 / *total as f64,
                *total,
            ));
        }
        if *n > 0 {
            out.push(row(
                dataset,
                task,
                condition,
                "unknown_tokens",
                unknown / *n as f64,
                *n,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("option {i}")).collect()
    }

    #[test]
    fn standard_parser_takes_the_first_option_letter_in_range() {
        let o = options(4);
        assert_eq!(parse_answer("B", &o, "vqa", Parser::Standard), Some(1));
        assert_eq!(
            parse_answer("The answer is (C).", &o, "vqa", Parser::Standard),
            Some(2)
        );
        assert_eq!(
            parse_answer("I think D", &o, "vqa", Parser::Standard),
            Some(3),
            "`I` is out of range"
        );
        assert_eq!(parse_answer("E", &o, "vqa", Parser::Standard), None);
        assert_eq!(
            parse_answer("BAD", &o, "vqa", Parser::Standard),
            None,
            "not standalone"
        );
        let five = options(5);
        assert_eq!(
            parse_answer("E: option 4", &five, "vqa", Parser::Standard),
            Some(4),
            "beyond D"
        );
    }

    #[test]
    fn standard_parser_falls_back_to_option_text() {
        let o: Vec<String> = ["red circle", "red", "blue", "green"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse_answer("it is blue.", &o, "vqa", Parser::Standard),
            Some(2)
        );
        assert_eq!(
            parse_answer("a red circle", &o, "vqa", Parser::Standard),
            Some(0),
            "longest at the same place"
        );
        assert_eq!(parse_answer("no idea", &o, "vqa", Parser::Standard), None);
    }

    #[test]
    fn reference_parser_reproduces_the_authors_quirks() {
        let o = options(4);
        assert_eq!(
            parse_answer("a dog", &o, "image_heavy", Parser::Reference),
            Some(0)
        );
        assert_eq!(
            parse_answer("I think B", &o, "image_heavy", Parser::Reference),
            Some(8),
            "I parses, and is wrong"
        );
        assert_eq!(
            parse_answer("I think B", &o, "vqa", Parser::Reference),
            Some(1)
        );
        assert_eq!(
            parse_answer("E", &options(5), "vqa", Parser::Reference),
            None,
            "ScienceQA E is impossible"
        );
        assert_eq!(
            parse_answer("option 2", &o, "vqa", Parser::Reference),
            None,
            "no text fallback"
        );
    }

    fn prediction(
        origin: &str,
        dataset: &str,
        task: &str,
        condition: &str,
        answer: usize,
        raw: &str,
    ) -> Prediction {
        Prediction {
            id: format!("{origin}#{condition}"),
            origin_id: origin.into(),
            dataset: dataset.into(),
            task: task.into(),
            perturbation: condition.into(),
            answer,
            options: options(4),
            raw_text: raw.into(),
            predicted: None,
            option_logprobs: None,
            points_at: None,
            unknown_share: None,
        }
    }

    /// `evaluate`'s params with only the labels set (every scoring choice at its default).
    fn default_params() -> EvaluateParams {
        serde_json::from_value(serde_json::json!({"family": "llava", "method": "vanilla"})).unwrap()
    }

    fn label() -> Label {
        Label {
            family: "llava".into(),
            size: "s".into(),
            method: "vanilla".into(),
            seed: "0".into(),
            stage: "eval".into(),
        }
    }

    fn metric<'a>(
        rows: &'a [MetricRow],
        dataset: &str,
        condition: &str,
        metric: &str,
    ) -> &'a MetricRow {
        rows.iter()
            .find(|r| r.dataset == dataset && r.condition == condition && r.metric == metric)
            .unwrap_or_else(|| panic!("no {dataset}/{condition}/{metric}"))
    }

    #[test]
    fn accuracy_perturbed_causal_effect_and_pooled_vqa() {
        let preds = vec![
            prediction("a", "shapes", "image_heavy", "none", 0, "A"),
            prediction("b", "shapes", "image_heavy", "none", 1, "B"),
            prediction("a", "shapes", "image_heavy", "md", 0, "C"),
            prediction("b", "shapes", "image_heavy", "md", 1, "B"),
            prediction("a", "shapes", "image_heavy", "uf", 0, "hmm"),
            prediction("b", "shapes", "image_heavy", "uf", 1, "B"),
            prediction("x", "counting", "vqa", "none", 0, "A"),
            prediction("y", "spatial", "vqa", "none", 0, "B"),
            prediction("z", "spatial", "vqa", "none", 0, "A"),
        ];
        let params = default_params();
        let label = label();
        let (rows, unparseable) = evaluate(&preds, &params, &label);
        assert_eq!(metric(&rows, "shapes", "none", "accuracy").value, 1.0);
        assert_eq!(metric(&rows, "shapes", "md", "accuracy").value, 0.5);
        assert_eq!(metric(&rows, "shapes", "perturbed", "accuracy").value, 0.5);
        assert_eq!(metric(&rows, "shapes", "md", "causal_effect").value, 0.5);
        assert_eq!(
            metric(&rows, "shapes", "uf", "causal_effect").value,
            0.5,
            "unparseable counts as a change"
        );
        assert_eq!(metric(&rows, "shapes", "uf", "unparseable").value, 0.5);
        assert_eq!(unparseable.len(), 1);
        // Pooled: 2 of 3, not the mean of per-set accuracies (1.0 and 0.5).
        let overall = metric(&rows, "vqa_overall", "none", "accuracy");
        assert!((overall.value - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(overall.n, 3);
    }

    #[test]
    fn likelihood_scores_the_most_probable_option_whatever_the_text_says() {
        let mut scored = prediction("a", "shapes", "image_heavy", "none", 2, "A");
        scored.option_logprobs = Some(vec![-3.0, -2.0, -0.5, f64::NAN]);
        assert_eq!(most_likely(&scored), Some(2));
        let unscored = prediction("b", "shapes", "image_heavy", "none", 0, "A");
        assert_eq!(most_likely(&unscored), None);
        let params: EvaluateParams = serde_json::from_value(serde_json::json!(
            {"family": "llava", "method": "vanilla", "answer_from": "likelihood"}
        ))
        .unwrap();
        let label = label();
        let predictions = [scored, unscored];
        let (rows, unparseable) = evaluate(&predictions, &params, &label);
        assert_eq!(metric(&rows, "shapes", "none", "accuracy").value, 0.5);
        assert_eq!(
            unparseable.len(),
            1,
            "a prediction without scores has no answer"
        );
    }

    #[test]
    fn samples_are_lmms_eval_lines_scored_as_the_metrics_are() {
        let preds = vec![
            prediction("a", "shapes", "image_heavy", "none", 0, "A"),
            prediction("b", "shapes", "image_heavy", "md", 1, "The answer is C."),
            prediction("c", "shapes", "image_heavy", "uf", 2, "no idea"),
        ];
        let params = default_params();
        let text = samples_jsonl(&preds, &params);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["doc_id"], "a#none");
        assert_eq!(lines[0]["target"], "A");
        assert_eq!(lines[0]["resps"], serde_json::json!([["A"]]));
        assert_eq!(lines[0]["filtered_resps"], serde_json::json!(["A"]));
        assert_eq!(lines[0]["accuracy"], 1.0);
        assert_eq!(lines[1]["filtered_resps"], serde_json::json!(["C"]));
        assert_eq!(lines[1]["accuracy"], 0.0);
        assert_eq!(
            lines[2]["filtered_resps"],
            serde_json::json!([""]),
            "unreadable"
        );
        // The samples' mean accuracy is the metrics table's.
        let (rows, _) = evaluate(&preds, &params, &label());
        let correct: f64 = lines.iter().map(|l| l["accuracy"].as_f64().unwrap()).sum();
        let from_metrics: f64 = ["none", "md", "uf"]
            .iter()
            .map(|c| metric(&rows, "shapes", c, "accuracy").value)
            .sum();
        assert_eq!(correct, from_metrics);
    }
}
