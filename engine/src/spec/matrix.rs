//! Phase 2, matrix expansion: each stage with a `matrix:` becomes one instance per combination
//! (with `include`/`exclude`), named like `train[lr=0.1,seed=1]`.

use std::collections::BTreeMap;

use super::check::{err, Checker};
use super::nested;
use super::raw::RawStage;
use crate::diagnostic::{suggestion_help, SpecErrorKind};
use crate::span::Span;
use crate::yaml::{Node, NodeValue};

/// The most instances one stage's matrix may expand to (before `exclude`).
pub(super) const MAX_INSTANCES: usize = 10_000;

/// A matrix instance before resolution.
pub(super) struct Instance {
    pub(super) name: String,
    /// Every key the combination sets: its axes and the extra keys an `include` added.
    pub(super) values: Vec<(String, Node)>,
    /// The keys that name the instance (and that other stages join on): the axes, or every key
    /// of a standalone `include`; not the extra keys an `include` added to a combination.
    pub(super) axes: Vec<String>,
}

pub(super) fn expand(
    check: &mut Checker<'_>,
    raw: &RawStage,
    matrix: &Node,
    params: &[(Node, Node)],
    vars: &BTreeMap<String, Node>,
) -> Option<Vec<Instance>> {
    let entries = check.expect_map(matrix, "`matrix`")?.to_vec();
    let mut axes: Vec<(String, Span, Vec<Node>)> = Vec::new();
    let mut include: Vec<Node> = Vec::new();
    let mut exclude: Vec<Node> = Vec::new();
    let before = check.errors.len();
    for (key, value) in &entries {
        let name = key.scalar_text().unwrap_or_default();
        // An axis may be a var holding a list (`seed: ${vars.seeds}`), so that two pipelines
        // sharing their stages differ in `vars` only, and `--set vars.seeds=[0]` narrows it.
        let var_list = value
            .as_str()
            .and_then(|t| t.strip_prefix("${vars."))
            .and_then(|t| t.strip_suffix('}'))
            .and_then(|var| vars.get(var));
        let list = match (&value.value, var_list.map(|v| &v.value)) {
            (NodeValue::Seq(items), _) | (_, Some(NodeValue::Seq(items))) => items.clone(),
            _ => {
                check.push(
                    err(
                        SpecErrorKind::Matrix,
                        format!("Matrix entry `{name}` must be a list"),
                        value.span,
                        "not a list",
                    )
                    .with_help(format!(
                        "Write `{name}: [a, b]`, or `{name}: ${{vars.NAME}}` for a var holding a list"
                    )),
                );
                continue;
            }
        };
        match name.as_str() {
            "include" => include = list,
            "exclude" => exclude = list,
            _ => {
                if list.is_empty() {
                    check.push(
                        err(
                            SpecErrorKind::Matrix,
                            format!("Matrix axis `{name}` has no values"),
                            value.span,
                            "empty list",
                        )
                        .with_help("Give the axis at least one value, or remove it"),
                    );
                }
                for item in &list {
                    if item.scalar_text().is_none() {
                        check.push(
                            err(
                                SpecErrorKind::Matrix,
                                "Matrix values must be scalars (strings, numbers, booleans)",
                                item.span,
                                "a list or mapping",
                            )
                            .with_help(
                                "Put structured values in `vars:` and select them by a scalar name",
                            ),
                        );
                    }
                }
                if let Some(k) = nested::find(params, &name) {
                    check.push(
                        err(
                            SpecErrorKind::Matrix,
                            format!(
                                "`{name}` is both a matrix axis and a param of stage `{}`",
                                raw.name
                            ),
                            key.span,
                            "matrix axis",
                        )
                        .with_label(k.span, "also set as a param here")
                        .with_help("Matrix keys are params; remove one of the two"),
                    );
                }
                axes.push((name, key.span, list));
            }
        }
    }
    if check.errors.len() > before {
        return None;
    }
    let product = axes
        .iter()
        .try_fold(1usize, |n, (_, _, values)| n.checked_mul(values.len()))
        .unwrap_or(usize::MAX);
    if product > MAX_INSTANCES {
        check.push(
            err(
                SpecErrorKind::Matrix,
                format!(
                    "The matrix of stage `{}` has {} combinations; a stage has at most {MAX_INSTANCES}",
                    raw.name,
                    if product == usize::MAX { "too many".to_string() } else { product.to_string() }
                ),
                matrix.span,
                "this matrix",
            )
            .with_help("Split the sweep into several stages, or narrow an axis (`--set STAGE.AXIS=value` picks one value)"),
        );
        return None;
    }
    // Cartesian product in axis order.
    let mut combos: Vec<Vec<(String, Node)>> = vec![Vec::new()];
    for (name, _, values) in &axes {
        let mut next = Vec::new();
        for combo in &combos {
            for value in values {
                let mut c = combo.clone();
                c.push((name.clone(), value.clone()));
                next.push(c);
            }
        }
        combos = next;
    }
    if axes.is_empty() {
        combos.clear();
    }
    let axis_names: Vec<&str> = axes.iter().map(|(n, _, _)| n.as_str()).collect();
    let text_of = |n: &Node| n.scalar_text().unwrap_or_default();
    for rule in &exclude {
        let Some(rule_entries) = check.expect_map(rule, "a matrix `exclude` entry") else {
            continue;
        };
        for (k, _) in rule_entries {
            let key = k.scalar_text().unwrap_or_default();
            if !axis_names.contains(&key.as_str()) {
                check.push(
                    err(
                        SpecErrorKind::Matrix,
                        format!("`exclude` names `{key}`, which is not a matrix axis"),
                        k.span,
                        "unknown axis",
                    )
                    .with_help(suggestion_help(
                        &key,
                        "axes",
                        axis_names.iter().copied(),
                    )),
                );
            }
        }
        combos.retain(|combo| {
            !rule_entries.iter().all(|(k, v)| {
                combo.iter().any(|(a, value)| {
                    Some(a.as_str()) == k.as_str() && text_of(value) == text_of(v)
                })
            })
        });
    }
    for rule in &include {
        let Some(rule_entries) = check.expect_map(rule, "a matrix `include` entry") else {
            continue;
        };
        let rule_entries = rule_entries.to_vec();
        let on_axes: Vec<&(Node, Node)> = rule_entries
            .iter()
            .filter(|(k, _)| axis_names.contains(&k.as_str().unwrap_or_default()))
            .collect();
        let extra: Vec<&(Node, Node)> = rule_entries
            .iter()
            .filter(|(k, _)| !axis_names.contains(&k.as_str().unwrap_or_default()))
            .collect();
        let matches = |combo: &Vec<(String, Node)>| {
            on_axes.iter().all(|(k, v)| {
                combo.iter().any(|(a, value)| {
                    Some(a.as_str()) == k.as_str() && text_of(value) == text_of(v)
                })
            })
        };
        let matched = !extra.is_empty() && !on_axes.is_empty() && combos.iter().any(matches);
        if matched {
            // Like GitHub Actions: extra keys extend every matching combination.
            for combo in combos.iter_mut().filter(|c| matches(c)) {
                for (k, v) in &extra {
                    combo.push((k.scalar_text().unwrap_or_default(), v.clone()));
                }
            }
        } else {
            combos.push(
                rule_entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.clone()))
                    .collect(),
            );
        }
    }
    if combos.is_empty() {
        check.push(
            err(
                SpecErrorKind::Matrix,
                format!("The matrix of stage `{}` has no combinations", raw.name),
                matrix.span,
                "every combination is excluded",
            )
            .with_help("Check the `exclude` entries, or add an axis"),
        );
        return None;
    }
    let mut seen: BTreeMap<String, Span> = BTreeMap::new();
    let mut instances = Vec::new();
    for combo in combos {
        // Names show the axes (and the keys of standalone includes), not keys an include
        // added to an existing combination.
        let naming: Vec<&(String, Node)> = combo
            .iter()
            .filter(|(k, _)| {
                axis_names.contains(&k.as_str())
                    || !combo.iter().any(|(a, _)| axis_names.contains(&a.as_str()))
            })
            .collect();
        let named: Vec<String> = naming
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect();
        let axes: Vec<String> = naming.iter().map(|(k, _)| k.clone()).collect();
        let name = format!("{}[{}]", raw.name, named.join(","));
        let span = combo.first().map_or(matrix.span, |(_, v)| v.span);
        if let Some(first) = seen.insert(name.clone(), span) {
            check.push(
                err(
                    SpecErrorKind::DuplicateName,
                    format!("The matrix produces `{name}` twice"),
                    span,
                    "this combination",
                )
                .with_label(first, "same as this one")
                .with_help("Remove the duplicate value or `include` entry"),
            );
            continue;
        }
        for (k, v) in &combo {
            if nested::find(params, k).is_some() && !axis_names.contains(&k.as_str()) {
                check.push(
                    err(
                        SpecErrorKind::Matrix,
                        format!(
                            "Matrix `include` sets `{k}`, which is also a param of stage `{}`",
                            raw.name
                        ),
                        v.span,
                        "set by include",
                    )
                    .with_help("Matrix keys are params; remove one of the two"),
                );
            }
        }
        instances.push(Instance {
            name,
            values: combo,
            axes,
        });
    }
    Some(instances)
}

/// The values of matrix axis `name` (not `include`/`exclude`).
pub(super) fn axis_mut<'n>(matrix: &'n mut Node, name: &str) -> Option<&'n mut Node> {
    match &mut matrix.value {
        NodeValue::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(name) && name != "include" && name != "exclude")
            .map(|(_, v)| v),
        _ => None,
    }
}
