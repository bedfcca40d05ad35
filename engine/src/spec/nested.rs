//! Dotted param names: `pgd.steps: 3` in `params`, `--set finetune.pgd.steps=3` and a matrix
//! axis `pgd.steps: [1, 2, 3]` all set the field `steps` of the mapping param `pgd`, keeping its
//! other fields. Names are nested here, before the kind checks the params, so the key, `status`
//! and every error see the same nested params as a stage that wrote the mapping out.

use super::check::{err, Checker};
use crate::diagnostic::SpecErrorKind;
use crate::yaml::{Node, NodeValue};

/// What setting a field that is already set means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Clash {
    /// Two params of the stage set it: an error.
    Params,
    /// `--set`, or a matrix value (whose clashes [`super::matrix`] reports once per axis),
    /// replaces it.
    Replace,
}

/// Adds `entries` (whose names may be dotted paths) to the params `into`, nesting dotted names
/// into mappings; `None` after reporting a name that is malformed, that sets a field inside a
/// param that is not a mapping, or that sets a field twice where `clash` says that is an error.
pub(super) fn merge(
    check: &mut Checker<'_>,
    stage: &str,
    into: &mut Vec<(Node, Node)>,
    entries: &[(Node, Node)],
    clash: Clash,
) -> Option<()> {
    let before = check.errors.len();
    for (key, value) in entries {
        let name = key.scalar_text().unwrap_or_default();
        let path: Vec<&str> = name.split('.').collect();
        if path.iter().any(|segment| segment.is_empty()) {
            check.push(
                err(
                    SpecErrorKind::Schema,
                    format!("`{name}` is not a param name"),
                    key.span,
                    "empty part",
                )
                .with_help("Name a param `NAME`, or a field of a mapping param `NAME.FIELD`"),
            );
            continue;
        }
        insert(check, stage, into, &path, &name, key, value, clash);
    }
    (check.errors.len() == before).then_some(())
}

#[allow(clippy::too_many_arguments)]
fn insert(
    check: &mut Checker<'_>,
    stage: &str,
    entries: &mut Vec<(Node, Node)>,
    path: &[&str],
    name: &str,
    key: &Node,
    value: &Node,
    clash: Clash,
) {
    let head = path[0];
    let found = entries
        .iter()
        .position(|(k, _)| k.scalar_text().as_deref() == Some(head));
    if path.len() == 1 {
        let entry = (
            Node::new(key.span, NodeValue::Str(head.to_string())),
            value.clone(),
        );
        match (found, clash) {
            (None, _) => entries.push(entry),
            (Some(at), Clash::Replace) => entries[at] = entry,
            (Some(at), Clash::Params) => check.push(
                err(
                    SpecErrorKind::Schema,
                    format!("`{name}` is set twice in the params of stage `{stage}`"),
                    key.span,
                    "set again here",
                )
                .with_label(entries[at].0.span, "also set here")
                .with_help("Set each param once: remove one of the two"),
            ),
        }
        return;
    }
    let at = found.unwrap_or_else(|| {
        entries.push((
            Node::new(key.span, NodeValue::Str(head.to_string())),
            Node::new(key.span, NodeValue::Map(Vec::new())),
        ));
        entries.len() - 1
    });
    let parent = &mut entries[at].1;
    let NodeValue::Map(fields) = &mut parent.value else {
        let span = parent.span;
        check.push(
            err(
                SpecErrorKind::InvalidParam,
                format!(
                    "`{name}` sets a field of `{head}`, which is {} here, not a mapping",
                    parent.type_name()
                ),
                key.span,
                "sets a field",
            )
            .with_label(span, "not a mapping")
            .with_help(format!(
                "Write `{head}` as a mapping (`{head}: {{{}: ...}}`), or drop the dotted name",
                path[1]
            )),
        );
        return;
    };
    insert(check, stage, fields, &path[1..], name, key, value, clash);
}

/// The key node that sets param `name` (a dotted path into mappings), if the params set it.
pub(super) fn find<'p>(params: &'p [(Node, Node)], name: &str) -> Option<&'p Node> {
    let (head, rest) = match name.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (name, None),
    };
    let (key, value) = params
        .iter()
        .find(|(k, _)| k.scalar_text().as_deref() == Some(head))?;
    match (rest, &value.value) {
        (None, _) => Some(key),
        (Some(rest), NodeValue::Map(fields)) => find(fields, rest),
        (Some(_), _) => None,
    }
}
