//! The diagnostics collector every phase reports into: problems are collected (each a
//! [`SpecError`] labelling its YAML span) so that one load reports all of them, with the few
//! checks every phase uses on nodes.

use crate::diagnostic::{suggestion_help, SpecError, SpecErrorKind};
use crate::span::{Sources, Span};
use crate::stage::Registry;
use crate::yaml::{Node, NodeValue};

/// Collects the problems of one load.
pub(super) struct Checker<'a> {
    /// The stage kinds params are checked against.
    pub(super) registry: &'a Registry,
    /// The texts spans point into.
    pub(super) sources: &'a Sources,
    /// Every problem found so far.
    pub(super) errors: Vec<SpecError>,
    /// Whether the string being interpolated is run by a shell (`Stage::SHELL_PARAMS`), so
    /// values placed inside it are shell-quoted.
    pub(super) shell: bool,
    /// The matrix values of the instance being resolved, for `${matrix.NAME}`.
    pub(super) matrix: Vec<(String, crate::yaml::Node)>,
}

pub(super) fn err(
    kind: SpecErrorKind,
    message: impl Into<String>,
    span: Span,
    label: &str,
) -> SpecError {
    SpecError::new(kind, message, span, label)
}

impl Checker<'_> {
    pub(super) fn push(&mut self, error: SpecError) {
        self.errors.push(error);
    }

    /// The span of `needle` inside the source text of `span`, or `span` itself when the text
    /// there differs (escapes, folded block scalars).
    pub(super) fn span_within(&self, span: Span, needle: &str) -> Span {
        let text = &self.sources.get(span.source).text;
        text.get(span.offset..span.offset + span.len)
            .and_then(|slice| slice.find(needle))
            .map_or(span, |at| Span {
                source: span.source,
                offset: span.offset + at,
                len: needle.len(),
            })
    }

    /// Deserialises a node into a typed value, reporting a problem at its exact span.
    pub(super) fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(node.to_json()) {
            Ok(value) => Some(value),
            Err(e) => {
                let path: Vec<String> = e.path().iter().map(|s| s.to_string()).collect();
                let span = match node.as_map() {
                    Some(entries) => path
                        .first()
                        .and_then(|first| entries.iter().find(|(k, _)| k.as_str() == Some(first)))
                        .map_or(node.span, |(k, v)| {
                            if e.inner().to_string().contains("unknown field") {
                                k.span
                            } else {
                                v.span
                            }
                        }),
                    None => node.span,
                };
                self.push(
                    err(
                        SpecErrorKind::Schema,
                        format!("Invalid {what}: {}", e.into_inner()),
                        span,
                        "here",
                    )
                    .with_help(format!("See the YAML reference for {what}")),
                );
                None
            }
        }
    }

    pub(super) fn check_keys(&mut self, node: &Node, allowed: &[&str], what: &str) {
        let Some(entries) = node.as_map() else { return };
        for (key, _) in entries {
            let text = key.scalar_text().unwrap_or_default();
            if !allowed.contains(&text.as_str()) {
                self.push(
                    err(
                        SpecErrorKind::UnknownKey,
                        format!("Unknown key `{text}` in {what}"),
                        key.span,
                        "not a known key",
                    )
                    .with_help(suggestion_help(
                        &text,
                        "keys",
                        allowed.iter().copied(),
                    )),
                );
            }
        }
    }

    pub(super) fn expect_map<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
    ) -> Option<&'n [(Node, Node)]> {
        match &node.value {
            NodeValue::Map(entries) => Some(entries),
            NodeValue::Null => Some(&[]),
            _ => {
                self.push(
                    err(
                        SpecErrorKind::Schema,
                        format!("{what} must be a mapping, not {}", node.type_name()),
                        node.span,
                        "expected `key: value` pairs",
                    )
                    .with_help(format!(
                        "Write {what} as an indented block of `key: value` lines"
                    )),
                );
                None
            }
        }
    }

    pub(super) fn kind_names(&self) -> String {
        self.registry
            .kinds()
            .map(|k| format!("`{}`", k.kind()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
