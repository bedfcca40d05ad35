//! Phase 1, the raw spec: the pipeline file as written (after YAML parsing), checked key by
//! key, with nodes (and so spans) everywhere; `--set` overrides parsed and grouped; defaults
//! checked against the kinds in use.

use std::collections::{BTreeMap, BTreeSet};

use super::check::{err, Checker};
use crate::cluster::{ClusterOptions, Executor};
use crate::diagnostic::{suggestion_help, SpecErrorKind};
use crate::span::{SourceId, Sources, Span};
use crate::stage::Resources;
use crate::yaml::{self, Node, NodeValue};

/// Keys allowed at the top of a pipeline file.
pub(super) const TOP_KEYS: &[&str] =
    &["version", "vars", "defaults", "executor", "slurm", "stages"];
/// Keys allowed in a stage.
pub(super) const STAGE_KEYS: &[&str] = &[
    "kind",
    "description",
    "params",
    "matrix",
    "inputs",
    "resources",
    "cache",
    "materialize",
    "executor",
    "slurm",
];
/// Keys allowed in `defaults:`.
pub(super) const DEFAULTS_KEYS: &[&str] = &["params", "resources", "cache"];
/// Keys allowed in `resources:`.
pub(super) const RESOURCE_KEYS: &[&str] = &["cpus", "gpus", "gpu"];

/// The whole pipeline file as written.
pub(super) struct RawPipeline {
    /// `vars:`, after `--set vars.*`.
    pub(super) vars: BTreeMap<String, Node>,
    /// `defaults.params`.
    pub(super) defaults_params: Vec<(Node, Node)>,
    /// `defaults.resources`.
    pub(super) defaults_resources: Option<Node>,
    /// `defaults.cache`.
    pub(super) defaults_cache: Option<Node>,
    /// `executor:` (default `local`).
    pub(super) executor: Executor,
    /// `slurm:`.
    pub(super) cluster: ClusterOptions,
    /// `stages:`, in file order.
    pub(super) stages: Vec<RawStage>,
}

/// A stage's `inputs:` as written: input name -> reference nodes.
pub(super) type RawInputs = Vec<(Node, Vec<Node>)>;

/// The pipeline file as written, with nodes everywhere.
pub(super) struct RawStage {
    pub(super) name: String,
    pub(super) name_span: Span,
    pub(super) kind: Option<(String, Span)>,
    pub(super) description: Option<String>,
    pub(super) params: Vec<(Node, Node)>,
    pub(super) params_span: Span,
    pub(super) matrix: Option<Node>,
    pub(super) inputs: RawInputs,
    pub(super) resources: Option<Node>,
    pub(super) cache: Option<Node>,
    pub(super) materialize: Vec<(Node, Node)>,
    pub(super) executor: Option<Node>,
    pub(super) cluster: Option<Node>,
}

/// Parses the file and reads its top level and stages; `None` when nothing more can be checked.
pub(super) fn read(check: &mut Checker<'_>, file: SourceId) -> Option<RawPipeline> {
    let root = match yaml::parse(check.sources, file) {
        Ok(root) => root,
        Err(e) => {
            check.push(e);
            return None;
        }
    };
    if root.as_map().is_none() {
        check.push(
            err(
                SpecErrorKind::Schema,
                "A pipeline must be a mapping with `version:` and `stages:`",
                root.span,
                "not a mapping",
            )
            .with_help("Start the file with `version: 1` and a `stages:` block"),
        );
        return None;
    }
    check.check_keys(&root, TOP_KEYS, "the pipeline");
    match root.get("version") {
        Some(Node {
            value: NodeValue::Int(1),
            ..
        }) => {}
        Some(other) => check.push(
            err(
                SpecErrorKind::Schema,
                "Unsupported pipeline version",
                other.span,
                "this version",
            )
            .with_help("This mipipe reads `version: 1`"),
        ),
        None => check.push(
            err(
                SpecErrorKind::Schema,
                "The pipeline has no `version:`",
                Span {
                    len: 0,
                    ..root.span
                },
                "add it here",
            )
            .with_help("Add `version: 1` at the top of the file"),
        ),
    }

    let mut vars: BTreeMap<String, Node> = BTreeMap::new();
    if let Some(node) = root.get("vars") {
        if let Some(entries) = check.expect_map(node, "`vars`") {
            for (k, v) in entries {
                vars.insert(k.scalar_text().unwrap_or_default(), v.clone());
            }
        }
    }
    let mut defaults_params: Vec<(Node, Node)> = Vec::new();
    let mut defaults_resources: Option<Node> = None;
    let mut defaults_cache: Option<Node> = None;
    if let Some(node) = root.get("defaults") {
        check.check_keys(node, DEFAULTS_KEYS, "`defaults`");
        if let Some(params) = node.get("params") {
            if let Some(entries) = check.expect_map(params, "`defaults.params`") {
                defaults_params = entries.to_vec();
            }
        }
        defaults_resources = node.get("resources").cloned();
        defaults_cache = node.get("cache").cloned();
    }

    let mut executor = Executor::Local;
    if let Some(node) = root.get("executor") {
        executor = check
            .typed::<Executor>(node, "`executor`")
            .unwrap_or_default();
    }
    let cluster: ClusterOptions = root
        .get("slurm")
        .and_then(|node| check.typed(node, "`slurm`"))
        .unwrap_or_default();

    let stages = raw_stages(check, &root)?;
    Some(RawPipeline {
        vars,
        defaults_params,
        defaults_resources,
        defaults_cache,
        executor,
        cluster,
        stages,
    })
}

/// Applies `--set vars.*` and groups the other overrides by stage (`--set train.lr=0.1`).
pub(super) fn group_overrides(
    check: &mut Checker<'_>,
    raw: &mut RawPipeline,
    overrides: &[(SourceId, String)],
) -> BTreeMap<String, Vec<(Node, Node)>> {
    let mut stage_overrides: BTreeMap<String, Vec<(Node, Node)>> = BTreeMap::new();
    for (source, text) in overrides {
        let Some((key, value)) = parse_override(check, *source, text) else {
            continue;
        };
        let path = key.as_str().unwrap_or_default();
        let (target, param) = path.split_once('.').unwrap_or((path, ""));
        let key_node = Node::new(key.span, NodeValue::Str(param.to_string()));
        if target == "vars" && !raw.vars.contains_key(param) {
            // A var nothing defines would be silently unused.
            check.push(
                err(
                    SpecErrorKind::Override,
                    format!("`--set vars.{param}` names a var this pipeline does not define"),
                    key.span,
                    "no such var",
                )
                .with_help(suggestion_help(
                    param,
                    "vars",
                    raw.vars.keys().map(String::as_str),
                )),
            );
        } else if target == "vars" {
            raw.vars.insert(param.to_string(), value);
        } else if raw.stages.iter().any(|s| s.name == target) {
            stage_overrides
                .entry(target.to_string())
                .or_default()
                .push((key_node, value));
        } else {
            let names: Vec<&str> = raw.stages.iter().map(|s| s.name.as_str()).collect();
            check.push(
                err(
                    SpecErrorKind::Override,
                    format!("`--set` names unknown stage `{target}`"),
                    key.span,
                    "no such stage",
                )
                .with_help(suggestion_help(
                    target,
                    "stages (or `vars`)",
                    names.iter().copied(),
                )),
            );
        }
    }

    stage_overrides
}

/// Reports `defaults.params` keys that no kind in the pipeline accepts (typos).
pub(super) fn check_defaults(check: &mut Checker<'_>, raw: &RawPipeline) {
    // Which params some kind in this pipeline accepts: a `defaults.params` key nobody
    // accepts is a typo.
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut any_open = false;
    for stage in &raw.stages {
        if let Some(kind) = stage.kind.as_ref().and_then(|(k, _)| check.registry.get(k)) {
            accepted.extend(kind.params().iter().map(|p| p.name.clone()));
            any_open |= kind.accepts_extra_params();
        }
    }
    for (key, _) in &raw.defaults_params {
        let name = key.scalar_text().unwrap_or_default();
        if !accepted.contains(&name) && !any_open {
            check.push(
                err(
                    SpecErrorKind::UnknownParam,
                    format!("No stage kind in this pipeline has a param `{name}`"),
                    key.span,
                    "unused default",
                )
                .with_help(suggestion_help(
                    &name,
                    "params",
                    accepted.iter().map(String::as_str),
                )),
            );
        }
    }
}

pub(super) fn raw_stages(check: &mut Checker<'_>, root: &Node) -> Option<Vec<RawStage>> {
    let Some(stages_node) = root.get("stages") else {
        check.push(
            err(
                SpecErrorKind::Schema,
                "The pipeline has no `stages:`",
                Span {
                    len: 0,
                    ..root.span
                },
                "add it here",
            )
            .with_help("Add a `stages:` mapping of stage names to stage definitions"),
        );
        return None;
    };
    let entries = check.expect_map(stages_node, "`stages`")?.to_vec();
    let mut out = Vec::new();
    for (name_node, body) in &entries {
        let name = name_node.scalar_text().unwrap_or_default();
        if !valid_stage_name(&name) {
            check.push(
                err(
                    SpecErrorKind::Schema,
                    format!("`{name}` is not a valid stage name"),
                    name_node.span,
                    "invalid name",
                )
                .with_help("Stage names start with a letter or `_` and use letters, digits, `_` and `-` (no `.` or brackets: those are reference syntax)"),
            );
            continue;
        }
        if body.as_map().is_none() {
            check.expect_map(body, &format!("Stage `{name}`"));
            continue;
        }
        check.check_keys(body, STAGE_KEYS, &format!("stage `{name}`"));
        let kind = match body.get("kind") {
            Some(node) => match node.as_str() {
                Some(k) => Some((k.to_string(), node.span)),
                None => {
                    check.push(
                        err(
                            SpecErrorKind::Schema,
                            "`kind` must be a string",
                            node.span,
                            "not a string",
                        )
                        .with_help(format!(
                            "Name the stage kind, e.g. `kind: command` (kinds: {})",
                            check.kind_names()
                        )),
                    );
                    continue;
                }
            },
            None => None,
        };
        let mut params = Vec::new();
        let mut materialize = Vec::new();
        let params_span = body.get("params").map_or(name_node.span, |p| p.span);
        if let Some(node) = body.get("params") {
            if let Some(entries) = check.expect_map(node, &format!("`{name}.params`")) {
                for (k, v) in entries {
                    // `materialize` is an engine feature the example writes among
                    // the params; it does not change outputs, so it is not a param.
                    if k.as_str() == Some("materialize") {
                        if let Some(m) = check.expect_map(v, "`materialize`") {
                            materialize.extend(m.iter().cloned());
                        }
                    } else {
                        params.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        if let Some(node) = body.get("materialize") {
            if let Some(m) = check.expect_map(node, "`materialize`") {
                materialize.extend(m.iter().cloned());
            }
        }
        let mut inputs = Vec::new();
        if let Some(node) = body.get("inputs") {
            if let Some(entries) = check.expect_map(node, &format!("`{name}.inputs`")) {
                for (k, v) in entries {
                    let refs = match &v.value {
                        NodeValue::Seq(items) => items.clone(),
                        _ => vec![v.clone()],
                    };
                    inputs.push((k.clone(), refs));
                }
            }
        }
        out.push(RawStage {
            name,
            name_span: name_node.span,
            kind,
            description: body.get("description").and_then(Node::scalar_text),
            params,
            params_span,
            matrix: body.get("matrix").cloned(),
            inputs,
            resources: body.get("resources").cloned(),
            cache: body.get("cache").cloned(),
            materialize,
            executor: body.get("executor").cloned(),
            cluster: body.get("slurm").cloned(),
        });
    }
    Some(out)
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn parse_override(
    check: &mut Checker<'_>,
    source: SourceId,
    text: &str,
) -> Option<(Node, Node)> {
    let whole = Span {
        source,
        offset: 0,
        len: text.len(),
    };
    let Some((key, value)) = text.split_once('=') else {
        check.push(
            err(
                SpecErrorKind::Override,
                format!("`--set {text}` has no `=`"),
                whole,
                "expected STAGE.PARAM=VALUE",
            )
            .with_help("Write `--set train.lr=0.01` or `--set vars.rows=100`"),
        );
        return None;
    };
    let key_span = Span {
        source,
        offset: 0,
        len: key.len(),
    };
    if !key.contains('.') {
        check.push(
            err(
                SpecErrorKind::Override,
                format!("`--set {text}` does not name a stage and a param"),
                key_span,
                "expected STAGE.PARAM",
            )
            .with_help("Write `--set train.lr=0.01` or `--set vars.rows=100`"),
        );
        return None;
    }
    let value_offset = key.len() + 1;
    let mut scratch = Sources::default();
    let id = scratch.add("--set", value.to_string());
    let mut node = match yaml::parse(&scratch, id) {
        Ok(node) => node,
        Err(_) => Node::new(Span::default(), NodeValue::Str(value.to_string())),
    };
    shift(&mut node, source, value_offset);
    if node.value == NodeValue::Null && value.is_empty() {
        node.value = NodeValue::Str(String::new());
    }
    Some((Node::new(key_span, NodeValue::Str(key.to_string())), node))
}

fn shift(node: &mut Node, source: SourceId, offset: usize) {
    node.span.source = source;
    node.span.offset += offset;
    match &mut node.value {
        NodeValue::Seq(items) => items.iter_mut().for_each(|n| shift(n, source, offset)),
        NodeValue::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift(k, source, offset);
            shift(v, source, offset);
        }),
        _ => {}
    }
}

pub(super) fn resources(check: &mut Checker<'_>, node: Option<&Node>) -> Resources {
    let mut resources = Resources { cpus: 1, gpus: 0 };
    let Some(node) = node else { return resources };
    check.check_keys(node, RESOURCE_KEYS, "`resources`");
    let Some(entries) = check.expect_map(node, "`resources`") else {
        return resources;
    };
    for (k, v) in entries {
        let amount = match v.value {
            NodeValue::Int(n) if (0..=1024).contains(&n) => n as u32,
            _ => {
                check.push(
                    err(
                        SpecErrorKind::Schema,
                        "Resource amounts must be whole numbers from 0 to 1024",
                        v.span,
                        "not a count",
                    )
                    .with_help("Write e.g. `resources: {cpus: 2, gpus: 1}`"),
                );
                continue;
            }
        };
        match k.as_str() {
            Some("cpus") => resources.cpus = amount.max(1),
            Some("gpus" | "gpu") => resources.gpus = amount,
            _ => {}
        }
    }
    resources
}
