//! The `evaluate` stage kind: predictions -> metrics.
//!
//! Accuracy per (dataset, condition) counts every prediction: an answer that cannot be parsed
//! is wrong and is also counted as `unparseable`, never dropped. "Perturbed" is the configured
//! worst condition (MD for image-heavy, RI for text-heavy, as the paper's tables use it). The
//! causal effect of an intervention is the fraction of items whose parsed answer changes between
//! the clean and the perturbed condition, paired by `origin_id` (an unparseable answer is a value
//! of its own: unparseable in both conditions is no change). VQA Overall is the pooled accuracy
//! over every VQA set, weighted by items, which is what the paper's numbers are.
//!
//! An open-ended prediction (one with `references`: free-form VQA, the paper's Table 10) is
//! scored in words instead: `exact_match` (the normalised answer equals a normalised
//! reference) and `vqa_accuracy` (the VQA benchmark's formula, [`vqa_accuracy`]); it has no
//! `accuracy`, `unparseable` or causal effect.

use std::collections::BTreeMap;

use mipipe_engine::template::value_text;
use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};
use mipipe_stage_schema::{
    parse_option, read_predictions, read_tables, standalone_letters, write_metrics, write_scores,
    ItemScore, MetricRow, Prediction,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats;

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
    const VERSION: u32 = 5;
    const SUMMARY: &'static str = "Score predictions: accuracy, perturbed accuracy, causal effect, VQA overall, unparseable answers";

    fn outputs(_params: &EvaluateParams) -> Vec<OutputSpec> {
        vec![
            OutputSpec::file("metrics", "metrics.parquet"),
            OutputSpec::file("unparseable", "unparseable.json"),
            OutputSpec::file("samples", "samples.jsonl"),
            OutputSpec::file("scores", "scores.parquet"),
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
        let Evaluation {
            metrics: rows,
            scores,
            unparseable,
        } = evaluate(&predictions, params, &label);
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
        write_scores(ctx.output_path("scores")?, &scores)
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
/// unreadable), and the metric `accuracy` (1 or 0). An open-ended row has its references as
/// `target`, the normalised answer as `filtered_resps`, `exact_match`, and its VQA accuracy as
/// `accuracy`.
pub fn samples_jsonl(predictions: &[Prediction], params: &EvaluateParams) -> String {
    let letter = |i: usize| ((b'A' + i as u8) as char).to_string();
    let mut out = String::new();
    for p in predictions {
        if let Some(references) = &p.references {
            let scored = FreeForm::score(&p.raw_text, references);
            let line = serde_json::json!({
                "doc_id": p.id,
                "task": p.dataset,
                "condition": p.perturbation,
                "target": references,
                "resps": [[p.raw_text]],
                "filtered_resps": [scored.answer],
                "exact_match": scored.exact_match,
                "accuracy": scored.vqa_accuracy,
            });
            out.push_str(&line.to_string());
            out.push('\n');
            continue;
        }
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

/// What [`evaluate`] computes from one model's predictions.
pub struct Evaluation<'p> {
    /// One row per (dataset, condition, metric): the mean over items, with its interval.
    pub metrics: Vec<MetricRow>,
    /// The per-item values behind every metric.
    pub scores: Vec<ItemScore>,
    /// Predictions whose answer could not be read.
    pub unparseable: Vec<&'p Prediction>,
}

/// Computes every metric of one model's predictions: first each item's value of each metric
/// (the `scores`), then each metric as the mean of its items' values with a 95% bootstrap
/// interval over them, so that the metrics and the scores cannot disagree.
pub fn evaluate<'p>(
    predictions: &'p [Prediction],
    params: &EvaluateParams,
    label: &Label,
) -> Evaluation<'p> {
    let score = |p: &Prediction, condition: &str, metric: &str, value: f64| ItemScore {
        family: label.family.clone(),
        size: label.size.clone(),
        method: label.method.clone(),
        seed: label.seed.clone(),
        dataset: p.dataset.clone(),
        task: p.task.clone(),
        condition: condition.to_string(),
        metric: metric.to_string(),
        origin_id: p.origin_id.clone(),
        value,
    };
    let mut scores = Vec::new();
    let mut unparseable = Vec::new();
    // (dataset, condition) -> origin -> (prediction, scored answer)
    type Answers<'a> = BTreeMap<&'a str, (&'a Prediction, Option<usize>)>;
    let mut answers: BTreeMap<(&str, &str), Answers> = BTreeMap::new();
    for p in predictions {
        let condition = p.perturbation.as_str();
        if let Some(references) = &p.references {
            let scored = FreeForm::score(&p.raw_text, references);
            scores.push(score(p, condition, "exact_match", scored.exact_match));
            scores.push(score(p, condition, "vqa_accuracy", scored.vqa_accuracy));
            continue;
        }
        let answer = scored_answer(p, params);
        scores.push(score(
            p,
            condition,
            "accuracy",
            hit(answer == Some(p.answer)),
        ));
        scores.push(score(p, condition, "unparseable", hit(answer.is_none())));
        if answer.is_none() {
            unparseable.push(p);
        }
        answers
            .entry((p.dataset.as_str(), condition))
            .or_default()
            .insert(p.origin_id.as_str(), (p, answer));
    }
    let datasets: BTreeMap<&str, &str> = predictions
        .iter()
        .map(|p| (p.dataset.as_str(), p.task.as_str()))
        .collect();
    for (&dataset, &task) in &datasets {
        let (clean, wanted) = match task {
            "image_heavy" => ("none", params.perturbed.image_heavy.as_str()),
            "text_heavy" => ("rp", params.perturbed.text_heavy.as_str()),
            _ => continue,
        };
        let candidates: Vec<(&str, &Answers)> = answers
            .iter()
            .filter(|((d, c), _)| *d == dataset && *c != clean)
            .map(|((_, c), a)| (*c, a))
            .collect();
        let accuracy = |a: &Answers| {
            a.values().filter(|(p, x)| *x == Some(p.answer)).count() as f64 / a.len() as f64
        };
        let perturbed = if wanted == "worst" {
            candidates
                .iter()
                .min_by(|a, b| accuracy(a.1).total_cmp(&accuracy(b.1)))
        } else {
            candidates.iter().find(|(c, _)| *c == wanted)
        };
        if let Some((_, items)) = perturbed {
            for (p, answer) in items.values() {
                scores.push(score(
                    p,
                    "perturbed",
                    "accuracy",
                    hit(*answer == Some(p.answer)),
                ));
            }
        }
        // Causal effect of each intervention against the clean condition, paired by origin
        // (an unparseable answer is a value of its own: unparseable in both is no change).
        let Some(clean_answers) = answers.get(&(dataset, clean)) else {
            continue;
        };
        for (condition, items) in &candidates {
            for (origin, (p, answer)) in items.iter() {
                if let Some((_, before)) = clean_answers.get(origin) {
                    scores.push(score(p, condition, "causal_effect", hit(before != answer)));
                }
            }
        }
    }
    scores.extend(pointing_scores(predictions, params, &score));
    // VQA Overall: pooled over every VQA set, clean condition; an item is named with its set.
    let overall: Vec<ItemScore> = scores
        .iter()
        .filter(|s| {
            s.task == "vqa"
                && s.condition == "none"
                && ["accuracy", "exact_match", "vqa_accuracy"].contains(&s.metric.as_str())
        })
        .map(|s| ItemScore {
            origin_id: format!("{}/{}", s.dataset, s.origin_id),
            dataset: "vqa_overall".into(),
            ..s.clone()
        })
        .collect();
    scores.extend(overall);
    Evaluation {
        metrics: metrics_of(&scores, &label.stage),
        scores,
        unparseable,
    }
}

/// How an open-ended answer scores against its references.
struct FreeForm {
    /// The normalised answer ([`normalize_answer`]).
    answer: String,
    /// 1 when it equals a normalised reference.
    exact_match: f64,
    /// [`vqa_accuracy`] against the normalised references.
    vqa_accuracy: f64,
}

impl FreeForm {
    fn score(raw: &str, references: &[String]) -> FreeForm {
        let answer = normalize_answer(raw);
        let references: Vec<String> = references.iter().map(|r| normalize_answer(r)).collect();
        FreeForm {
            exact_match: hit(references.contains(&answer)),
            vqa_accuracy: vqa_accuracy(&answer, &references),
            answer,
        }
    }
}

/// An answer as the VQA benchmark's evaluation script compares it: lower case; punctuation
/// removed (a period between digits kept, a comma between digits dropped); the number words
/// zero to ten as digits; the articles `a`, `an`, `the` dropped; single spaces. (The script's
/// table of contractions, "dont" -> "don't", is not applied: no embedded answer has one.)
pub fn normalize_answer(text: &str) -> String {
    let lower = text.trim().to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut kept = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let between_digits = i > 0
            && i + 1 < chars.len()
            && chars[i - 1].is_ascii_digit()
            && chars[i + 1].is_ascii_digit();
        if c.is_alphanumeric() || c.is_whitespace() || (c == '.' && between_digits) {
            kept.push(c);
        } else if !(c == ',' && between_digits) && c != '\'' {
            kept.push(' ');
        }
    }
    const NUMBERS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    kept.split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| match NUMBERS.iter().position(|n| *n == w) {
            Some(n) => n.to_string(),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The VQA accuracy of a normalised answer against normalised references: for each reference,
/// min(1, (how many of the *other* references equal the answer) / 3), averaged over the
/// references, as the benchmark's script computes it over its ten annotators. A single
/// reference stands for ten unanimous annotators, for whom the formula is the exact match.
pub fn vqa_accuracy(answer: &str, references: &[String]) -> f64 {
    if references.len() < 2 {
        return hit(references.iter().any(|r| r == answer));
    }
    let matches = references.iter().filter(|r| *r == answer).count();
    let total: f64 = references
        .iter()
        .map(|r| {
            let others = matches - usize::from(r == answer);
            (others as f64 / 3.0).min(1.0)
        })
        .sum();
    total / references.len() as f64
}

fn hit(yes: bool) -> f64 {
    if yes {
        1.0
    } else {
        0.0
    }
}

/// Each (dataset, condition, metric)'s mean over its items, their number and a 95% bootstrap
/// interval over them (seeded by the stage and the metric's names), in the order the scores
/// first name them.
fn metrics_of(scores: &[ItemScore], stage: &str) -> Vec<MetricRow> {
    let mut order: Vec<(&str, &str, &str)> = Vec::new();
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&ItemScore>> = BTreeMap::new();
    for s in scores {
        let key = (s.dataset.as_str(), s.condition.as_str(), s.metric.as_str());
        let group = groups.entry(key).or_default();
        if group.is_empty() {
            order.push(key);
        }
        group.push(s);
    }
    order
        .into_iter()
        .map(|key| {
            let group = &groups[&key];
            let values: Vec<f64> = group.iter().map(|s| s.value).collect();
            let first = group[0];
            MetricRow {
                family: first.family.clone(),
                size: first.size.clone(),
                method: first.method.clone(),
                seed: first.seed.clone(),
                dataset: first.dataset.clone(),
                task: first.task.clone(),
                condition: first.condition.clone(),
                metric: first.metric.clone(),
                value: values.iter().sum::<f64>() / values.len() as f64,
                n: values.len() as u64,
                stage: stage.to_string(),
                ci: stats::mean_interval(&values, &[stage, key.0, key.1, key.2]),
            }
        })
        .collect()
}

/// Per-item values of rows whose perturbation points at an option (`points_at`) and of the
/// prompt's unknown tokens, per (dataset, condition):
/// - `follow_rate`: among rows pointing at a *wrong* option, whether the answer is that option
///   (chance: 1/k of the answers);
/// - `accuracy_points_gold` / `_wrong` / `_none`: accuracy split by what the perturbation
///   points at (an RI sign of the gold, of a wrong option, of no option), kept only where at
///   least two of the three exist (RI of the embedded study);
/// - `unknown_tokens`: the share of prompt tokens the model's vocabulary lacks.
fn pointing_scores(
    predictions: &[Prediction],
    params: &EvaluateParams,
    score: &impl Fn(&Prediction, &str, &str, f64) -> ItemScore,
) -> Vec<ItemScore> {
    let mut out = Vec::new();
    let mut thirds: BTreeMap<(&str, &str), Vec<ItemScore>> = BTreeMap::new();
    for p in predictions {
        let condition = p.perturbation.as_str();
        if let Some(share) = p.unknown_share {
            out.push(score(p, condition, "unknown_tokens", share));
        }
        if condition == "none" || condition == "rp" || p.references.is_some() {
            continue;
        }
        let answer = scored_answer(p, params);
        let correct = hit(answer == Some(p.answer));
        let third = match p.points_at {
            Some(target) if target == p.answer => "accuracy_points_gold",
            Some(target) => {
                out.push(score(
                    p,
                    condition,
                    "follow_rate",
                    hit(answer == Some(target)),
                ));
                "accuracy_points_wrong"
            }
            None if condition == "ri" || condition == "ri_seen" => "accuracy_points_none",
            None => continue,
        };
        thirds
            .entry((p.dataset.as_str(), condition))
            .or_default()
            .push(score(p, condition, third, correct));
    }
    for rows in thirds.into_values() {
        let kinds: std::collections::BTreeSet<&str> =
            rows.iter().map(|s| s.metric.as_str()).collect();
        if kinds.len() >= 2 {
            out.extend(rows);
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
            references: None,
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
    fn pictures_that_point_give_follow_rates_and_accuracy_by_third() {
        // Six items under `ri` and `ri_seen` alike: the picture points at the gold (answered
        // right), at a wrong option (followed twice, resisted once) or at no option (right).
        let mut preds = Vec::new();
        for condition in ["ri", "ri_seen"] {
            for (i, (points_at, said)) in [
                (Some(0), "A"),
                (Some(2), "C"),
                (Some(3), "D"),
                (Some(1), "A"),
                (None, "A"),
                (None, "B"),
            ]
            .into_iter()
            .enumerate()
            {
                let mut p = prediction(
                    &format!("q{i}"),
                    "arithmetic",
                    "text_heavy",
                    condition,
                    0,
                    said,
                );
                p.points_at = points_at;
                preds.push(p);
            }
        }
        let out = evaluate(&preds, &default_params(), &label());
        for condition in ["ri", "ri_seen"] {
            let value = |m: &str| metric(&out.metrics, "arithmetic", condition, m).value;
            assert!(
                (value("follow_rate") - 2.0 / 3.0).abs() < 1e-12,
                "{condition}"
            );
            assert_eq!(value("accuracy_points_gold"), 1.0, "{condition}");
            assert!((value("accuracy_points_wrong") - 1.0 / 3.0).abs() < 1e-12);
            assert_eq!(value("accuracy_points_none"), 0.5, "{condition}");
            assert_eq!(
                metric(&out.metrics, "arithmetic", condition, "follow_rate").n,
                3
            );
        }
    }

    #[test]
    fn answers_are_normalised_as_the_vqa_script_does() {
        assert_eq!(normalize_answer("  The Red, circle! "), "red circle");
        assert_eq!(normalize_answer("Three"), "3");
        assert_eq!(normalize_answer("an apple"), "apple");
        assert_eq!(normalize_answer("3.5"), "3.5", "a decimal point stays");
        assert_eq!(normalize_answer("1,000"), "1000", "a thousands comma goes");
        assert_eq!(normalize_answer("end."), "end");
        assert_eq!(normalize_answer("red-brown"), "red brown");
    }

    #[test]
    fn vqa_accuracy_is_the_benchmarks_leave_one_out_formula() {
        let refs = |answers: &[(&str, usize)]| -> Vec<String> {
            answers
                .iter()
                .flat_map(|(a, n)| std::iter::repeat_n(a.to_string(), *n))
                .collect()
        };
        // Ten annotators: an answer four of them gave scores 1 (three others in every subset).
        assert_eq!(vqa_accuracy("red", &refs(&[("red", 4), ("blue", 6)])), 1.0);
        // Three of ten: 7 subsets keep all three (1), 3 subsets keep two (2/3): 0.9.
        let three = vqa_accuracy("red", &refs(&[("red", 3), ("blue", 7)]));
        assert!((three - 0.9).abs() < 1e-12, "{three}");
        // One of ten: 9 subsets keep it (1/3), one loses it: 0.3.
        let one = vqa_accuracy("red", &refs(&[("red", 1), ("blue", 9)]));
        assert!((one - 0.3).abs() < 1e-12, "{one}");
        assert_eq!(vqa_accuracy("green", &refs(&[("red", 10)])), 0.0);
        // A single reference is ten unanimous annotators.
        assert_eq!(vqa_accuracy("red", &refs(&[("red", 1)])), 1.0);
        assert_eq!(vqa_accuracy("blue", &refs(&[("red", 1)])), 0.0);
    }

    #[test]
    fn open_ended_predictions_are_scored_in_words_and_pooled() {
        let open = |origin: &str, dataset: &str, raw: &str, references: &[&str]| Prediction {
            references: Some(references.iter().map(|r| r.to_string()).collect()),
            options: vec![references[0].to_string()],
            ..prediction(origin, dataset, "vqa", "none", 0, raw)
        };
        let preds = vec![
            open("a", "counting", "Three", &["3"]),
            open("b", "counting", "4", &["3"]),
            open("c", "spatial", "the star.", &["star"]),
            open("d", "spatial", "ring", &["star"]),
        ];
        let out = evaluate(&preds, &default_params(), &label());
        let rows = &out.metrics;
        assert_eq!(metric(rows, "counting", "none", "exact_match").value, 0.5);
        assert_eq!(metric(rows, "spatial", "none", "vqa_accuracy").value, 0.5);
        let overall = metric(rows, "vqa_overall", "none", "vqa_accuracy");
        assert_eq!((overall.value, overall.n), (0.5, 4));
        assert!(
            rows.iter()
                .all(|r| r.metric != "accuracy" && r.metric != "unparseable"),
            "open-ended rows have no multiple-choice metrics"
        );
        assert!(out.unparseable.is_empty());
        let samples = samples_jsonl(&preds, &default_params());
        let first: serde_json::Value =
            serde_json::from_str(samples.lines().next().unwrap()).unwrap();
        assert_eq!(first["filtered_resps"][0], "3");
        assert_eq!(first["target"][0], "3");
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
        let Evaluation {
            metrics: rows,
            unparseable,
            ..
        } = evaluate(&preds, &params, &label);
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
        let Evaluation {
            metrics: rows,
            unparseable,
            ..
        } = evaluate(&predictions, &params, &label);
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
        let rows = evaluate(&preds, &params, &label()).metrics;
        let correct: f64 = lines.iter().map(|l| l["accuracy"].as_f64().unwrap()).sum();
        let from_metrics: f64 = ["none", "md", "uf"]
            .iter()
            .map(|c| metric(&rows, "shapes", c, "accuracy").value)
            .sum();
        assert_eq!(correct, from_metrics);
    }

    #[test]
    fn every_metric_is_the_mean_of_its_item_scores_with_an_interval() {
        let mut preds = Vec::new();
        for i in 0..40 {
            let origin = format!("o{i}");
            let right = if i % 4 == 0 { "B" } else { "A" };
            preds.push(prediction(
                &origin,
                "shapes",
                "image_heavy",
                "none",
                0,
                right,
            ));
            preds.push(prediction(&origin, "shapes", "image_heavy", "md", 0, "A"));
            preds.push(prediction(&origin, "counting", "vqa", "none", 0, right));
        }
        let evaluation = evaluate(&preds, &default_params(), &label());
        for row in &evaluation.metrics {
            let values: Vec<f64> = evaluation
                .scores
                .iter()
                .filter(|s| {
                    s.dataset == row.dataset
                        && s.condition == row.condition
                        && s.metric == row.metric
                })
                .map(|s| s.value)
                .collect();
            assert_eq!(values.len() as u64, row.n, "{row:?}");
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            assert!((mean - row.value).abs() < 1e-12, "{row:?}");
            let (lo, hi) = row.ci.unwrap();
            assert!(lo <= row.value && row.value <= hi, "{row:?}");
        }
        let clean = metric(&evaluation.metrics, "shapes", "none", "accuracy");
        assert_eq!(clean.value, 0.75);
        let (lo, hi) = clean.ci.unwrap();
        assert!(lo > 0.55 && hi < 0.92 && hi - lo > 0.15, "{lo} {hi}");
        // Pooled VQA items are named with their set, so they stay distinct units.
        assert!(evaluation
            .scores
            .iter()
            .any(|s| s.dataset == "vqa_overall" && s.origin_id == "counting/o3"));
        let change = metric(&evaluation.metrics, "shapes", "md", "causal_effect");
        assert_eq!(change.value, 0.25);
    }
}
