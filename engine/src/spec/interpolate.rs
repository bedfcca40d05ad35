//! Interpolation: `${vars.*}` everywhere, `${params.*}` as whole values (keeping their type)
//! or inside strings a shell does not run, `${raw.*}` pasted unquoted, and the check that
//! `${inputs.*}` / `${outs.*}` left for the stage name real inputs and outputs.

use std::collections::BTreeMap;

use super::check::{err, Checker};
use crate::diagnostic::{suggestion_help, SpecErrorKind};
use crate::span::Span;
use crate::template::{self, Piece};
use crate::yaml::{Node, NodeValue};

pub(super) fn expand_path(
    check: &mut Checker<'_>,
    node: &Node,
    text: &str,
    vars: &BTreeMap<String, Node>,
    params: &BTreeMap<String, Node>,
) -> Option<String> {
    let mut visiting = Vec::new();
    let string = Node::new(node.span, NodeValue::Str(text.to_string()));
    let expanded = interpolate(check, &string, vars, params, &mut visiting, true)?;
    expanded.scalar_text()
}

/// Substitutes `${vars.*}` and `${matrix.*}` (the instance's value on an axis) in every string
/// of a node, and `${params.*}` where the reference
/// is the whole value (keeping its type) or `inline_params` is set. A `${params.*}` inside
/// a longer param string stays a template, checked here and expanded by the stage: the
/// referenced param is in the key already, and `status` then reports the param that
/// changed rather than every string built from it.
/// `${raw.vars.x}` / `${raw.params.x}` name a value pasted without shell quoting: the
/// namespace and name inside, and whether it was `raw.`.
pub(super) fn unwrap_raw<'t>(
    check: &mut Checker<'_>,
    namespace: &'t str,
    name: &'t str,
    span: Span,
) -> Option<(&'t str, &'t str, bool)> {
    if namespace != "raw" {
        return Some((namespace, name, false));
    }
    match name.split_once('.') {
        Some((inner @ ("vars" | "params"), n)) => Some((inner, n, true)),
        _ => {
            check.push(
                err(
                    SpecErrorKind::Interpolation,
                    format!("`${{raw.{name}}}` must name `vars.NAME` or `params.NAME`"),
                    span,
                    "in this value",
                )
                .with_help(
                    "Write `${raw.vars.NAME}` or `${raw.params.NAME}` to paste a value unquoted",
                ),
            );
            None
        }
    }
}

pub(super) fn interpolate(
    check: &mut Checker<'_>,
    node: &Node,
    vars: &BTreeMap<String, Node>,
    params: &BTreeMap<String, Node>,
    visiting: &mut Vec<String>,
    inline_params: bool,
) -> Option<Node> {
    match &node.value {
        NodeValue::Str(text) => {
            let pieces = match template::parse(text) {
                Ok(p) => p,
                Err(e) => {
                    check.push(
                        err(
                            SpecErrorKind::Interpolation,
                            e.message,
                            node.span,
                            "malformed reference",
                        )
                        .with_help("Write `$${` for a literal `${`"),
                    );
                    return None;
                }
            };
            let mut resolve = |this: &mut Checker<'_>,
                               namespace: &str,
                               name: &str|
             -> Option<Option<Node>> {
                match namespace {
                    "vars" => match vars.get(name) {
                        Some(v) => {
                            let mut inner = Vec::new();
                            // A value is quoted once, where it is placed, not inside.
                            let shell = std::mem::replace(&mut this.shell, false);
                            let out =
                                interpolate(this, v, vars, &BTreeMap::new(), &mut inner, true);
                            this.shell = shell;
                            out.map(Some)
                        }
                        None => {
                            this.push(
                                err(
                                    SpecErrorKind::Interpolation,
                                    format!("`${{vars.{name}}}` refers to an undefined var"),
                                    this.span_within(node.span, &format!("${{vars.{name}}}")),
                                    "no such var",
                                )
                                .with_help(suggestion_help(
                                    name,
                                    "vars",
                                    vars.keys().map(String::as_str),
                                )),
                            );
                            None
                        }
                    },
                    "params" => {
                        if visiting.iter().any(|v| v == name) {
                            this.push(
                                err(
                                    SpecErrorKind::Interpolation,
                                    format!(
                                        "`${{params.{name}}}` refers to itself through {}",
                                        visiting.join(" -> ")
                                    ),
                                    node.span,
                                    "circular reference",
                                )
                                .with_help("Params may refer to other params, but not in a circle"),
                            );
                            return None;
                        }
                        match params.get(name) {
                            Some(v) => {
                                visiting.push(name.to_string());
                                let shell = std::mem::replace(&mut this.shell, false);
                                let out =
                                    interpolate(this, v, vars, params, visiting, inline_params);
                                this.shell = shell;
                                visiting.pop();
                                out.map(Some)
                            }
                            None => {
                                this.push(
                                    err(
                                        SpecErrorKind::Interpolation,
                                        format!("`${{params.{name}}}` refers to a param this stage does not set"),
                                        this.span_within(node.span, &format!("${{params.{name}}}")),
                                        "no such param",
                                    )
                                    .with_help(suggestion_help(name, "params set here", params.keys().map(String::as_str))),
                                );
                                None
                            }
                        }
                    }
                    "matrix" => matrix_value(this, node, name).map(Some),
                    "inputs" | "outs" => Some(None),
                    other => {
                        this.push(
                            err(
                                SpecErrorKind::Interpolation,
                                format!("`${{{other}.{name}}}` uses unknown namespace `{other}`"),
                                node.span,
                                "in this value",
                            )
                            .with_help(suggestion_help(
                                other,
                                "namespaces",
                                ["vars", "params", "matrix", "inputs", "outs"],
                            )),
                        );
                        None
                    }
                }
            };
            if let [Piece::Reference {
                namespace, name, ..
            }] = pieces.as_slice()
            {
                let (namespace, name, _) = unwrap_raw(check, namespace, name, node.span)?;
                return match resolve(check, namespace, name)? {
                    Some(whole) => Some(Node::new(node.span, whole.value)),
                    None => Some(node.clone()),
                };
            }
            let mut out = String::new();
            for piece in &pieces {
                match piece {
                    Piece::Literal(s) => out.push_str(s),
                    Piece::EscapedDollar => out.push_str("$${"),
                    Piece::Reference {
                        namespace,
                        name,
                        raw,
                    } => {
                        let (namespace, name, unquoted) =
                            unwrap_raw(check, namespace, name, node.span)?;
                        match resolve(check, namespace, name)? {
                            // Expanded by the stage, which quotes it unless it is `raw.`.
                            Some(_) if namespace == "params" && !inline_params => out.push_str(raw),
                            Some(value) => match value.scalar_text() {
                                Some(text) if check.shell && !unquoted => {
                                    out.push_str(&template::shell_quote(&text))
                                }
                                Some(text) => out.push_str(&text),
                                None => {
                                    check.push(
                                    err(
                                        SpecErrorKind::Interpolation,
                                        format!("`{raw}` is {} and cannot be placed inside a string", value.type_name()),
                                        node.span,
                                        "in this string",
                                    )
                                    .with_help("Use the reference as the whole value to pass a list or mapping"),
                                );
                                    return None;
                                }
                            },
                            None => out.push_str(raw),
                        }
                    }
                }
            }
            Some(Node::new(node.span, NodeValue::Str(out)))
        }
        NodeValue::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                out.push(interpolate(
                    check,
                    item,
                    vars,
                    params,
                    visiting,
                    inline_params,
                )?);
            }
            Some(Node::new(node.span, NodeValue::Seq(out)))
        }
        NodeValue::Map(entries) => {
            let mut out = Vec::new();
            for (k, v) in entries {
                out.push((
                    k.clone(),
                    interpolate(check, v, vars, params, visiting, inline_params)?,
                ));
            }
            Some(Node::new(node.span, NodeValue::Map(out)))
        }
        _ => Some(node.clone()),
    }
}

/// This instance's value on matrix axis `name`, for `${matrix.NAME}` in `node`.
fn matrix_value(check: &mut Checker<'_>, node: &Node, name: &str) -> Option<Node> {
    if let Some((_, value)) = check.matrix.iter().find(|(axis, _)| axis == name) {
        return Some(value.clone());
    }
    let axes: Vec<String> = check.matrix.iter().map(|(a, _)| a.clone()).collect();
    let reference = format!("${{matrix.{name}}}");
    let span = check.span_within(node.span, &reference);
    check.push(
        err(
            SpecErrorKind::Interpolation,
            format!("`{reference}` names no matrix axis of this stage"),
            span,
            "no such axis",
        )
        .with_help(suggestion_help(
            name,
            "axes",
            axes.iter().map(String::as_str),
        )),
    );
    None
}

pub(super) fn check_runtime_refs(
    check: &mut Checker<'_>,
    node: &Node,
    inputs: &[String],
    outs: &[&str],
    stage: &str,
) {
    match &node.value {
        NodeValue::Str(text) => {
            let Ok(pieces) = template::parse(text) else {
                return;
            };
            for piece in pieces {
                let Piece::Reference {
                    namespace,
                    name,
                    raw,
                } = piece
                else {
                    continue;
                };
                let (known, what): (Vec<&str>, &str) = match namespace {
                    "inputs" => (inputs.iter().map(String::as_str).collect(), "input"),
                    "outs" => (outs.to_vec(), "output"),
                    _ => continue,
                };
                if !known.contains(&name) {
                    let span = check.span_within(node.span, raw);
                    check.push(
                        err(
                            SpecErrorKind::Interpolation,
                            format!(
                                "`{raw}` refers to nothing: stage `{stage}` has no {what} `{name}`"
                            ),
                            span,
                            "refers to nothing",
                        )
                        .with_help(suggestion_help(
                            name,
                            &format!("{what}s"),
                            known.iter().copied(),
                        )),
                    );
                }
            }
        }
        NodeValue::Seq(items) => {
            for item in items {
                check_runtime_refs(check, item, inputs, outs, stage);
            }
        }
        NodeValue::Map(entries) => {
            for (_, v) in entries {
                check_runtime_refs(check, v, inputs, outs, stage);
            }
        }
        _ => {}
    }
}
