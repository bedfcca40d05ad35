//! A YAML tree that remembers where every node came from.
//!
//! serde deserialisation loses positions, and every pipeline error must point at the exact
//! span it is about, so pipelines are read into [`Node`]s straight from the YAML event stream
//! of `saphyr-parser`. Scalars are typed with the YAML 1.2 core schema; quoted and block
//! scalars are always strings.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::Value;

use crate::diagnostic::{SpecError, SpecErrorKind};
use crate::span::{SourceId, Sources, Span};

/// A YAML value with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Where the node is.
    pub span: Span,
    /// What it holds.
    pub value: NodeValue,
}

/// The value of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (any quoted scalar, or a plain one that is not another type).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, keys as nodes.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A node made by the engine (e.g. a default), pointing at `span`.
    pub fn new(span: Span, value: NodeValue) -> Self {
        Self { span, value }
    }

    /// The mapping entries, if this is a mapping.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The string, if this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short word for the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a float",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// A scalar as the text a person would write (for matrix instance names and messages).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            NodeValue::Null => Some("null".into()),
            NodeValue::Bool(b) => Some(b.to_string()),
            NodeValue::Int(i) => Some(i.to_string()),
            NodeValue::Float(f) => Some(Value::from(*f).to_string()),
            NodeValue::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Converts to JSON (spans dropped).
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Maps the parser's character indices to byte offsets.
struct Offsets {
    char_to_byte: Option<Vec<usize>>,
    len: usize,
}

impl Offsets {
    fn new(text: &str) -> Self {
        let char_to_byte = (!text.is_ascii()).then(|| {
            let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
            v.push(text.len());
            v
        });
        Self {
            char_to_byte,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.char_to_byte {
            None => char_index.min(self.len),
            Some(v) => v.get(char_index).copied().unwrap_or(self.len),
        }
    }
}

/// How many nodes aliases (`*name`) may copy in one file: far more than any pipeline needs,
/// far less than an alias bomb (a few hundred bytes that double at every level).
pub const MAX_ALIAS_NODES: usize = 100_000;

/// The number of nodes in a tree.
fn node_count(node: &Node) -> usize {
    1 + match &node.value {
        NodeValue::Seq(items) => items.iter().map(node_count).sum(),
        NodeValue::Map(entries) => entries
            .iter()
            .map(|(k, v)| node_count(k) + node_count(v))
            .sum(),
        _ => 0,
    }
}

/// Parses one YAML document into a node tree.
pub fn parse(sources: &Sources, source: SourceId) -> Result<Node, SpecError> {
    let text = sources.get(source).text.clone();
    let offsets = Offsets::new(&text);
    let span_of = |s: saphyr_parser::Span| {
        let start = offsets.byte(s.start.index());
        let end = offsets.byte(s.end.index()).max(start);
        Span {
            source,
            offset: start,
            len: end - start,
        }
    };

    enum Frame {
        Seq(Span, usize, Vec<Node>),
        // The keys seen so far, for the duplicate check without a quadratic scan.
        Map(
            Span,
            usize,
            Vec<(Node, Node)>,
            Option<Node>,
            HashMap<String, Span>,
        ),
    }
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchor's node with its node count.
    let mut anchors: Vec<Option<(Node, usize)>> = Vec::new();
    let mut copied_by_aliases = 0usize;
    let mut root: Option<Node> = None;
    let mut documents = 0;

    let set_anchor = |anchors: &mut Vec<Option<(Node, usize)>>, id: usize, node: &Node| {
        if id > 0 {
            if anchors.len() <= id {
                anchors.resize(id + 1, None);
            }
            anchors[id] = Some((node.clone(), node_count(node)));
        }
    };

    for item in Parser::new_from_str(&text) {
        let (event, raw_span) = item.map_err(|e| {
            let at = offsets.byte(e.marker().index());
            SpecError::new(
                SpecErrorKind::YamlSyntax,
                format!("Invalid YAML: {}", e.info()),
                Span {
                    source,
                    offset: at,
                    len: 0,
                },
                "here",
            )
            .with_help("Check indentation and quoting near this point; a value containing `: ` or `#` must be quoted")
        })?;
        let span = span_of(raw_span);
        let mut finished: Option<(Node, usize)> = None;
        match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SpecError::new(
                        SpecErrorKind::YamlSyntax,
                        "A pipeline file holds one YAML document",
                        span,
                        "second document starts here",
                    )
                    .with_help(
                        "Remove the `---` separator, or split the file into two pipelines",
                    ));
                }
            }
            Event::Alias(id) => {
                let count = anchors.get(id).and_then(|a| a.as_ref()).map_or(0, |a| a.1);
                copied_by_aliases += count;
                if copied_by_aliases > MAX_ALIAS_NODES {
                    return Err(SpecError::new(
                        SpecErrorKind::YamlSyntax,
                        format!(
                            "YAML aliases here copy more than {MAX_ALIAS_NODES} nodes (an alias bomb?)"
                        ),
                        span,
                        "this alias goes past the limit",
                    )
                    .with_help("Write the repeated part out, or use `defaults:` and `matrix:` instead of nested aliases"));
                }
                let node = anchors
                    .get(id)
                    .cloned()
                    .flatten()
                    .map(|a| a.0)
                    .ok_or_else(|| {
                        SpecError::new(
                            SpecErrorKind::YamlSyntax,
                            "Unknown YAML alias",
                            span,
                            "this alias",
                        )
                        .with_help("Define the anchor (`&name`) before using the alias (`*name`)")
                    })?;
                finished = Some((Node { span, ..node }, 0));
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let value = match style {
                    ScalarStyle::Plain => plain_scalar(&text),
                    _ => NodeValue::Str(text.to_string()),
                };
                // Keys hash values exactly: a number JSON cannot hold exactly would become a
                // rounded float (two integers, one key) or null (`.inf`, `1e999`).
                if let Some(why) = inexact_number(&text, &value) {
                    return Err(SpecError::new(
                        SpecErrorKind::Schema,
                        format!("`{text}` {why}"),
                        span,
                        "not an exact number",
                    )
                    .with_help(
                        "Quote it to pass it as a string (`\"...\"`), or use a smaller value",
                    ));
                }
                finished = Some((Node { span, value }, anchor));
            }
            Event::SequenceStart(anchor, _) => stack.push(Frame::Seq(span, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map(span, anchor, Vec::new(), None, HashMap::new()))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(start, anchor, items)) = stack.pop() {
                    let end = items.last().map_or(start, |n| n.span);
                    finished = Some((
                        Node {
                            span: start.to(end),
                            value: NodeValue::Seq(items),
                        },
                        anchor,
                    ));
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(start, anchor, entries, _, _)) = stack.pop() {
                    let end = entries.last().map_or(start, |(_, v)| v.span);
                    finished = Some((
                        Node {
                            span: start.to(end),
                            value: NodeValue::Map(entries),
                        },
                        anchor,
                    ));
                }
            }
        }
        if let Some((node, anchor)) = finished {
            set_anchor(&mut anchors, anchor, &node);
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq(_, _, items)) => items.push(node),
                Some(Frame::Map(_, _, entries, pending, seen)) => match pending.take() {
                    None => {
                        let Some(text) = node.scalar_text() else {
                            return Err(SpecError::new(
                                SpecErrorKind::YamlSyntax,
                                "Mapping keys must be plain values",
                                node.span,
                                "this key is a list or mapping",
                            )
                            .with_help("Use a string as the key"));
                        };
                        if let Some(first) = seen.insert(text.clone(), node.span) {
                            return Err(SpecError::new(
                                SpecErrorKind::DuplicateName,
                                format!("Duplicate key `{text}`"),
                                node.span,
                                "defined again here",
                            )
                            .with_label(first, "first defined here")
                            .with_help(
                                "Each key may appear once in a mapping; remove or rename one",
                            ));
                        }
                        *pending = Some(node);
                    }
                    Some(key) => entries.push((key, node)),
                },
            }
        }
    }
    Ok(root.unwrap_or(Node {
        span: Span {
            source,
            offset: 0,
            len: 0,
        },
        value: NodeValue::Null,
    }))
}

/// Why a plain scalar cannot be a param value exactly: an integer beyond 64 bits, or a float
/// that is not finite.
fn inexact_number(text: &str, value: &NodeValue) -> Option<&'static str> {
    match value {
        NodeValue::Float(f) if !f.is_finite() => {
            Some("is not a finite number, which a stage key cannot hold")
        }
        NodeValue::Float(_) => {
            let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then_some("is an integer beyond 64 bits, which would be rounded to a float")
        }
        _ => None,
    }
}

/// Parses a plain scalar the way YAML 1.2's core schema does.
pub fn plain_scalar(text: &str) -> NodeValue {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" => return NodeValue::Bool(true),
        "false" | "False" | "FALSE" => return NodeValue::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeValue::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return NodeValue::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return NodeValue::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return NodeValue::Int(i);
        }
    }
    let looks_numeric = digits.bytes().all(|b| {
        b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
    }) && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return NodeValue::Float(f);
        }
    }
    NodeValue::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Node, SpecError> {
        let mut sources = Sources::default();
        let id = sources.add("t.yaml", text);
        parse(&sources, id)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        assert_eq!(plain_scalar("12"), NodeValue::Int(12));
        assert_eq!(plain_scalar("-3"), NodeValue::Int(-3));
        assert_eq!(plain_scalar("0.1"), NodeValue::Float(0.1));
        assert_eq!(plain_scalar("1e-3"), NodeValue::Float(1e-3));
        assert_eq!(plain_scalar("true"), NodeValue::Bool(true));
        assert_eq!(plain_scalar("~"), NodeValue::Null);
        assert_eq!(plain_scalar("1.2.3"), NodeValue::Str("1.2.3".into()));
        assert_eq!(plain_scalar("e5"), NodeValue::Str("e5".into()));
        assert_eq!(plain_scalar("yes"), NodeValue::Str("yes".into()));
    }

    #[test]
    fn numbers_a_key_cannot_hold_exactly_are_refused() {
        for text in [
            "a: 9223372036854775808\n",
            "a: -9223372036854775809\n",
            "a: .inf\n",
            "a: -.inf\n",
            "a: .nan\n",
            "a: 1e999\n",
        ] {
            let err = parse_text(text).unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("not a finite number") || message.contains("beyond 64 bits"),
                "{text}: {message}"
            );
        }
        let fine = parse_text("a: 9223372036854775807\nb: '1e999'\nc: 1e300\n").unwrap();
        assert_eq!(fine.get("a").unwrap().value, NodeValue::Int(i64::MAX));
        assert_eq!(fine.get("b").unwrap().value, NodeValue::Str("1e999".into()));
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let node = parse_text("a: '12'\nb: 12\n").unwrap();
        assert_eq!(node.get("a").unwrap().value, NodeValue::Str("12".into()));
        assert_eq!(node.get("b").unwrap().value, NodeValue::Int(12));
    }

    #[test]
    fn spans_are_byte_offsets_even_after_non_ascii_text() {
        let text = "name: \"héllo wörld\"\nrows: 1000\n";
        let node = parse_text(text).unwrap();
        let rows = node.get("rows").unwrap();
        assert_eq!(
            &text[rows.span.offset..rows.span.offset + rows.span.len],
            "1000"
        );
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse_text("a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("Duplicate key `a`"), "{err}");
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let node = parse_text("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(
            node.get("other").unwrap().to_json(),
            serde_json::json!({"x": 1})
        );
    }
}
