//! Phase 4, references: each input's `stage.output` / `stage[*].output` /
//! `stage[k=v].output` is parsed and bound to producer instances (explicit selectors, fan-in, or
//! a join on shared matrix keys).

use std::collections::{BTreeMap, BTreeSet};

use super::check::{err, Checker};
use super::model::{ResolvedStage, Upstream};
use super::raw::RawInputs;
use super::raw::RawStage;
use super::resolve::StageInstances;
use crate::diagnostic::{suggestion_help, SpecErrorKind};
use crate::span::Span;
use crate::template;
use crate::yaml::Node;

/// One input reference, parsed: `stage[selector].output`.
pub(super) struct Reference {
    pub(super) stage: String,
    pub(super) selector: Selector,
    pub(super) output: String,
    pub(super) span: Span,
}

pub(super) enum Selector {
    /// `stage.output`: the stage, or the instance matching the consumer's matrix values.
    Implicit,
    /// `stage[*].output`: every instance.
    All,
    /// `stage[k=v,...].output`: instances with these values.
    Values(Vec<(String, String)>),
}

/// Binds every instance's inputs to producer instances: all instances in one list, and the span
/// of the reference behind each edge `(producer, consumer)`.
#[allow(clippy::type_complexity)]
pub(super) fn bind_all(
    check: &mut Checker<'_>,
    raw_stages: &[RawStage],
    instances_by_stage: StageInstances,
) -> Option<(Vec<ResolvedStage>, BTreeMap<(usize, usize), Span>)> {
    let mut stages: Vec<ResolvedStage> = Vec::new();
    let mut ranges: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut stage_inputs: Vec<(usize, RawInputs)> = Vec::new();
    for (index, resolved, inputs) in instances_by_stage {
        let start = stages.len();
        let count = resolved.len();
        stages.extend(resolved);
        stage_inputs.push((count, inputs));
        ranges.insert(raw_stages[index].name.clone(), (start, stages.len()));
    }
    let mut edge_spans: BTreeMap<(usize, usize), Span> = BTreeMap::new();
    let mut consumer = 0;
    for (count, inputs) in &stage_inputs {
        for _ in 0..*count {
            // Instances were appended in this same order.
            consumer += 1;
            let consumer = consumer - 1;
            for (input_key, refs) in inputs {
                let input_name = input_key.scalar_text().unwrap_or_default();
                let mut bound = Vec::new();
                for ref_node in refs {
                    let Some(reference) = parse_reference(check, ref_node, &stages[consumer])
                    else {
                        continue;
                    };
                    for producer in bind(check, &reference, &stages, &ranges, consumer) {
                        edge_spans.insert((producer, consumer), reference.span);
                        bound.push(Upstream {
                            stage: producer,
                            output: reference.output.clone(),
                        });
                    }
                }
                stages[consumer].inputs.insert(input_name, bound);
            }
        }
    }
    if !check.errors.is_empty() {
        return None;
    }
    Some((stages, edge_spans))
}

pub(super) fn parse_reference(
    check: &mut Checker<'_>,
    node: &Node,
    consumer: &ResolvedStage,
) -> Option<Reference> {
    let Some(text) = node.as_str() else {
        check.push(
            err(
                SpecErrorKind::Schema,
                "An input reference is a string `stage.output`",
                node.span,
                "not a string",
            )
            .with_help("Write e.g. `data: prepare.table` or `models: \"train[*].model\"`"),
        );
        return None;
    };
    let malformed = |this: &mut Checker<'_>| {
        this.push(
            err(
                SpecErrorKind::Schema,
                format!("`{text}` is not a stage output reference"),
                node.span,
                "malformed reference",
            )
            .with_help("Write `stage.output`, `stage[*].output` (every matrix instance) or `stage[key=value,...].output`"),
        );
    };
    let (head, output) = match text.rsplit_once('.') {
        Some((h, o)) if !o.is_empty() && !o.contains(']') => (h, o),
        _ => {
            malformed(check);
            return None;
        }
    };
    let (stage, selector) = match head.split_once('[') {
        None => (head, Selector::Implicit),
        Some((stage, rest)) => {
            let Some(inner) = rest.strip_suffix(']') else {
                malformed(check);
                return None;
            };
            if inner.trim() == "*" {
                (stage, Selector::All)
            } else {
                let mut values = Vec::new();
                for pair in inner.split(',') {
                    let Some((k, v)) = pair.split_once('=') else {
                        malformed(check);
                        return None;
                    };
                    // Selector values may use the consumer's own params: `[model=${params.model}]`.
                    let value = template::expand(v.trim(), false, |ns, name| {
                        (ns == "params")
                            .then(|| {
                                consumer
                                    .matrix
                                    .iter()
                                    .find(|(a, _)| a == name)
                                    .map(|(_, v)| v.clone())
                            })
                            .flatten()
                            .or_else(|| {
                                (ns == "params")
                                    .then(|| consumer.params.get(name).map(template::value_text))
                                    .flatten()
                            })
                    })
                    .unwrap_or_else(|_| v.trim().to_string());
                    values.push((k.trim().to_string(), value));
                }
                (stage, Selector::Values(values))
            }
        }
    };
    Some(Reference {
        stage: stage.to_string(),
        selector,
        output: output.to_string(),
        span: node.span,
    })
}

pub(super) fn bind(
    check: &mut Checker<'_>,
    reference: &Reference,
    stages: &[ResolvedStage],
    ranges: &BTreeMap<String, (usize, usize)>,
    consumer: usize,
) -> Vec<usize> {
    let Some(&(start, end)) = ranges.get(&reference.stage) else {
        check.push(
            err(
                SpecErrorKind::UnknownReference,
                format!("Input refers to unknown stage `{}`", reference.stage),
                reference.span,
                "no such stage",
            )
            .with_help(suggestion_help(
                &reference.stage,
                "stages",
                ranges.keys().map(String::as_str),
            )),
        );
        return Vec::new();
    };
    let candidates: Vec<usize> = (start..end).collect();
    let has_matrix = candidates.iter().any(|&i| !stages[i].matrix.is_empty());
    let selected: Vec<usize> = match &reference.selector {
        Selector::All => candidates.clone(),
        Selector::Implicit if !has_matrix => candidates.clone(),
        Selector::Implicit => {
            // Join on shared matrix axes: `finetune[family=x]` reads `pretrain[family=x]`.
            let consumer_stage = &stages[consumer];
            let consumer_value = |axis: &str| {
                consumer_stage
                    .matrix
                    .iter()
                    .find(|(a, _)| a == axis)
                    .map(|(_, v)| v.clone())
                    .or_else(|| consumer_stage.params.get(axis).map(template::value_text))
            };
            let joinable = candidates.iter().all(|&i| {
                stages[i]
                    .matrix
                    .iter()
                    .all(|(a, _)| consumer_value(a).is_some())
            });
            if !joinable {
                let example = stages[start].name.clone();
                check.push(
                    err(
                        SpecErrorKind::UnknownReference,
                        format!(
                            "`{}.{}` is ambiguous: stage `{}` has a matrix",
                            reference.stage, reference.output, reference.stage
                        ),
                        reference.span,
                        "which instance?",
                    )
                    .with_help(format!(
                        "Write `{}[*].{}` for every instance, or name one, e.g. `{}.{}`",
                        reference.stage, reference.output, example, reference.output
                    )),
                );
                return Vec::new();
            }
            candidates
                .iter()
                .copied()
                .filter(|&i| {
                    stages[i]
                        .matrix
                        .iter()
                        .all(|(a, v)| consumer_value(a).as_deref() == Some(v.as_str()))
                })
                .collect()
        }
        Selector::Values(values) => {
            let axes: BTreeSet<&str> = candidates
                .iter()
                .flat_map(|&i| stages[i].matrix.iter().map(|(a, _)| a.as_str()))
                .collect();
            for (k, _) in values {
                if !axes.contains(k.as_str()) {
                    check.push(
                        err(
                            SpecErrorKind::UnknownReference,
                            format!("Stage `{}` has no matrix key `{k}`", reference.stage),
                            reference.span,
                            "unknown matrix key",
                        )
                        .with_help(suggestion_help(
                            k,
                            "matrix keys",
                            axes.iter().copied(),
                        )),
                    );
                    return Vec::new();
                }
            }
            candidates
                .iter()
                .copied()
                .filter(|&i| {
                    values
                        .iter()
                        .all(|(k, v)| stages[i].matrix.iter().any(|(a, b)| a == k && b == v))
                })
                .collect()
        }
    };
    if selected.is_empty() {
        let names: Vec<&str> = candidates
            .iter()
            .map(|&i| stages[i].name.as_str())
            .collect();
        check.push(
            err(
                SpecErrorKind::UnknownReference,
                format!(
                    "No instance of stage `{}` matches this reference",
                    reference.stage
                ),
                reference.span,
                "matches nothing",
            )
            .with_help(format!(
                "Instances: {}",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        );
        return Vec::new();
    }
    for &i in &selected {
        if stages[i].output(&reference.output).is_none() {
            let outs: Vec<&str> = stages[i].outputs.iter().map(|o| o.name.as_str()).collect();
            check.push(
                err(
                    SpecErrorKind::UnknownReference,
                    format!(
                        "Stage `{}` has no output `{}`",
                        stages[i].name, reference.output
                    ),
                    reference.span,
                    "unknown output",
                )
                .with_help(suggestion_help(
                    &reference.output,
                    "outputs",
                    outs.iter().copied(),
                )),
            );
            return Vec::new();
        }
    }
    selected
}
