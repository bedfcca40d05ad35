//! Phase 3, resolution of each instance: kind, resources, executor, `cache`; params from the
//! stage, `defaults` and `--set`; `${vars.*}` and whole-value `${params.*}` substituted; params
//! checked against the kind's typed `Params`, whose serialisation is the canonical form that is
//! hashed; `materialize:` paths checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::check::{err, Checker};
use super::interpolate::{check_runtime_refs, expand_path, interpolate};
use super::matrix::{self, Instance};
use super::model::ResolvedStage;
use super::nested::{self, Clash};
use super::raw::{RawInputs, RawPipeline, RawStage};
use crate::cluster::{ClusterOptions, Executor};
use crate::diagnostic::{did_you_mean, suggestion_help, SpecErrorKind};
use crate::span::Span;
use crate::stage::{Resources, StageKind};
use crate::yaml::{Node, NodeValue};

/// Every instance of every stage, resolved: `(index of the raw stage, its instances, its
/// inputs as written)`; stages with errors are left out (the errors are in `check`).
pub(super) type StageInstances = Vec<(usize, Vec<ResolvedStage>, RawInputs)>;

/// Expands and resolves each stage on its own.
pub(super) fn resolve_stages(
    check: &mut Checker<'_>,
    pipeline: &RawPipeline,
    stage_overrides: &BTreeMap<String, Vec<(Node, Node)>>,
) -> StageInstances {
    let mut instances_by_stage: Vec<(usize, Vec<ResolvedStage>, RawInputs)> = Vec::new();
    for (index, raw) in pipeline.stages.iter().enumerate() {
        let Some((kind_name, kind_span)) = &raw.kind else {
            check.push(
                err(
                    SpecErrorKind::Schema,
                    format!("Stage `{}` has no `kind:`", raw.name),
                    raw.name_span,
                    "this stage",
                )
                .with_help(format!(
                    "Add `kind: command` (or another kind: {})",
                    check.kind_names()
                )),
            );
            continue;
        };
        let Some(kind) = check.registry.get(kind_name).cloned() else {
            let names: Vec<&str> = check.registry.kinds().map(|k| k.kind()).collect();
            check.push(
                err(
                    SpecErrorKind::UnknownKind,
                    format!("Unknown stage kind `{kind_name}`"),
                    *kind_span,
                    "not a stage kind",
                )
                .with_help(format!(
                    "{}; `mipipe stages` describes each",
                    suggestion_help(kind_name, "kinds", names.iter().copied())
                )),
            );
            continue;
        };
        let resources = super::raw::resources(
            check,
            raw.resources
                .as_ref()
                .or(pipeline.defaults_resources.as_ref()),
        );
        let executor = raw
            .executor
            .as_ref()
            .and_then(|n| check.typed::<Executor>(n, "`executor`"));
        let cluster = match &raw.cluster {
            Some(node) => pipeline.cluster.overridden_by(
                &check
                    .typed::<ClusterOptions>(node, "`slurm`")
                    .unwrap_or_default(),
            ),
            None => pipeline.cluster.clone(),
        };
        let cache = match raw.cache.as_ref().or(pipeline.defaults_cache.as_ref()) {
            None => true,
            Some(Node {
                value: NodeValue::Bool(b),
                ..
            }) => *b,
            Some(other) => {
                check.push(
                    err(
                        SpecErrorKind::Schema,
                        "`cache` must be `true` or `false`",
                        other.span,
                        "not a boolean",
                    )
                    .with_help("Write `cache: false` to rerun the stage every time"),
                );
                true
            }
        };

        // Params: the stage's own, then defaults the kind accepts, then `--set`.
        let mut params: Vec<(Node, Node)> = raw.params.clone();
        for (key, value) in &pipeline.defaults_params {
            let name = key.scalar_text().unwrap_or_default();
            let has = params
                .iter()
                .any(|(k, _)| k.scalar_text().as_deref() == Some(&name));
            let applies =
                kind.accepts_extra_params() || kind.params().iter().any(|p| p.name == name);
            if !has && applies {
                params.push((key.clone(), value.clone()));
            }
        }
        let overridden: Vec<(Node, Node)> =
            stage_overrides.get(&raw.name).cloned().unwrap_or_default();
        let mut matrix = raw.matrix.clone();
        let mut replacements: Vec<(Node, Node)> = Vec::new();
        for (key, value) in &overridden {
            let name = key.as_str().unwrap_or_default().to_string();
            // `--set train.lr=0.5` on a matrix axis narrows the axis to that one value.
            if let Some(axis) = matrix.as_mut().and_then(|m| matrix::axis_mut(m, &name)) {
                *axis = Node::new(value.span, NodeValue::Seq(vec![value.clone()]));
                continue;
            }
            let head = name.split('.').next().unwrap_or_default();
            let set_here = params
                .iter()
                .any(|(k, _)| k.scalar_text().as_deref() == Some(head));
            // On a kind with free params (`command`) a misspelled `--set` would add a new
            // param and rerun the stage: only params the stage sets or the kind declares.
            if kind.accepts_extra_params()
                && !set_here
                && !kind.params().iter().any(|p| p.name == head)
            {
                let known: Vec<String> = params
                    .iter()
                    .filter_map(|(k, _)| k.scalar_text())
                    .chain(kind.params().iter().map(|p| p.name.clone()))
                    .collect();
                check.push(
                    err(
                        SpecErrorKind::Override,
                        format!(
                            "`--set {}.{name}` names a param stage `{}` does not set",
                            raw.name, raw.name
                        ),
                        key.span,
                        "no such param",
                    )
                    .with_help(suggestion_help(
                        &name,
                        "params",
                        known.iter().map(String::as_str),
                    )),
                );
                continue;
            }
            replacements.push((key.clone(), value.clone()));
        }
        // Dotted names (`pgd.steps`) set fields of mapping params; `--set` replaces.
        let mut nested = Vec::new();
        if nested::merge(check, &raw.name, &mut nested, &params, Clash::Params).is_none()
            || nested::merge(check, &raw.name, &mut nested, &replacements, Clash::Replace).is_none()
        {
            continue;
        }
        let params = nested;
        // A matrix axis that is no param of this kind but an axis of a stage it reads joins
        // on that stage's instances (and names this stage's) without being a param.
        let upstream = upstream_axes(pipeline, raw);
        let joins_only = |axis: &str| {
            let head = axis.split('.').next().unwrap_or_default();
            !kind.accepts_extra_params()
                && !kind.params().iter().any(|p| p.name == head)
                && upstream.iter().any(|a| a == axis)
        };

        let instances = match &matrix {
            None => vec![Instance {
                name: raw.name.clone(),
                values: Vec::new(),
                axes: Vec::new(),
            }],
            Some(matrix) => match matrix::expand(check, raw, matrix, &params, &pipeline.vars) {
                Some(instances) => instances,
                None => continue,
            },
        };

        let mut resolved = Vec::new();
        for instance in instances {
            let mut instance_params = params.clone();
            let values: Vec<(Node, Node)> = instance
                .values
                .iter()
                .filter(|(axis, _)| !joins_only(axis))
                .map(|(axis, value)| {
                    (
                        Node::new(value.span, NodeValue::Str(axis.clone())),
                        value.clone(),
                    )
                })
                .collect();
            // Clashes with params were reported once per axis by the expansion; a path
            // through a param that is not a mapping fails every instance alike, so once.
            if nested::merge(
                check,
                &instance.name,
                &mut instance_params,
                &values,
                Clash::Replace,
            )
            .is_none()
            {
                break;
            }
            if let Some(mut stage) = resolve_instance(
                check,
                raw,
                &kind,
                &instance,
                instance_params,
                &pipeline.vars,
                resources,
                cache,
            ) {
                stage.executor = executor;
                stage.cluster = cluster.clone();
                resolved.push(stage);
            }
        }
        instances_by_stage.push((index, resolved, raw.inputs.clone()));
    }
    instances_by_stage
}

#[allow(clippy::too_many_arguments)]
pub(super) fn resolve_instance(
    check: &mut Checker<'_>,
    raw: &RawStage,
    kind: &Arc<dyn StageKind>,
    instance: &Instance,
    params: Vec<(Node, Node)>,
    vars: &BTreeMap<String, Node>,
    resources: Resources,
    cache: bool,
) -> Option<ResolvedStage> {
    let before = check.errors.len();
    // For `${matrix.NAME}` in params and `materialize` paths.
    check.matrix = instance.values.clone();
    let known: Vec<&str> = kind.params().iter().map(|p| p.name.as_str()).collect();
    for (key, _) in &params {
        let name = key.scalar_text().unwrap_or_default();
        // Kinds with open params (like `command`, whose free params feed `${params.*}`)
        // reject only names that look like a typo of a declared one.
        let unknown = !known.contains(&name.as_str())
            && (!kind.accepts_extra_params()
                || did_you_mean(&name, known.iter().copied()).is_some());
        if unknown {
            check.push(
                err(
                    SpecErrorKind::UnknownParam,
                    format!("Stage kind `{}` has no param `{name}`", kind.kind()),
                    key.span,
                    "unknown param",
                )
                .with_help(format!(
                    "{}; `mipipe stages {}` documents them",
                    suggestion_help(&name, "params", known.iter().copied()),
                    kind.kind()
                )),
            );
        }
    }
    for doc in kind.params().iter().filter(|p| p.required) {
        if !params
            .iter()
            .any(|(k, _)| k.scalar_text().as_deref() == Some(&doc.name))
        {
            check.push(
                err(
                    SpecErrorKind::MissingParam,
                    format!(
                        "Stage `{}` is missing required param `{}`",
                        raw.name, doc.name
                    ),
                    raw.params_span,
                    "in these params",
                )
                .with_label(raw.name_span, "")
                .with_help(format!(
                    "Add `{}: <{}>`: {}",
                    doc.name,
                    doc.type_name,
                    first_sentence(&doc.doc)
                )),
            );
        }
    }
    if check.errors.len() > before {
        return None;
    }
    // `${vars.*}`, `${matrix.*}` and `${params.*}`, then the typed check.
    let raw_map: BTreeMap<String, Node> = params
        .iter()
        .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.clone()))
        .collect();
    let mut expanded: BTreeMap<String, Node> = BTreeMap::new();
    for (name, node) in &raw_map {
        let mut visiting = vec![name.clone()];
        check.shell = kind.shell_params().contains(&name.as_str());
        let node = interpolate(check, node, vars, &raw_map, &mut visiting, false);
        check.shell = false;
        if let Some(node) = node {
            expanded.insert(name.clone(), node);
        }
    }
    if check.errors.len() > before {
        return None;
    }
    let json = Value::Object(
        expanded
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    );
    let canonical = match kind.canonicalize(&json) {
        Ok(value) => value,
        Err(problem) => {
            let node = locate(&expanded, &problem.path).unwrap_or(raw.params_span);
            let field = if problem.path.is_empty() {
                String::new()
            } else {
                format!(" `{}`", problem.path.join("."))
            };
            check.push(
                err(
                    SpecErrorKind::InvalidParam,
                    format!(
                        "Invalid param{field} of stage `{}`: {}",
                        instance.name, problem.message
                    ),
                    node,
                    "invalid value",
                )
                .with_help(param_help(
                    kind.as_ref(),
                    problem.path.first().map(String::as_str),
                )),
            );
            return None;
        }
    };
    let outputs = kind.outputs(&canonical);
    let input_names: Vec<String> = raw
        .inputs
        .iter()
        .map(|(k, _)| k.scalar_text().unwrap_or_default())
        .collect();
    let output_names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    for node in expanded.values() {
        check_runtime_refs(check, node, &input_names, &output_names, &instance.name);
    }
    let mut materialize = BTreeMap::new();
    for (k, v) in &raw.materialize {
        let out = k.scalar_text().unwrap_or_default();
        if !output_names.contains(&out.as_str()) {
            check.push(
                err(
                    SpecErrorKind::UnknownReference,
                    format!(
                        "`materialize` names `{out}`, which stage `{}` does not output",
                        raw.name
                    ),
                    k.span,
                    "unknown output",
                )
                .with_help(suggestion_help(
                    &out,
                    "outputs",
                    output_names.iter().copied(),
                )),
            );
            continue;
        }
        match v.as_str() {
            Some(path) if !path.is_empty() => {
                let path = expand_path(check, v, path, vars, &raw_map)?;
                if let Err(why) = workspace_relative(&path) {
                    check.push(
                        err(
                            SpecErrorKind::Schema,
                            format!("`materialize` path `{path}` {why}"),
                            v.span,
                            "outside the workspace",
                        )
                        .with_help(
                            "`materialize` copies outputs into the pipeline's folder: give a path relative to it, without `..`, that is not the folder itself",
                        ),
                    );
                    continue;
                }
                materialize.insert(out, PathBuf::from(path));
            }
            _ => check.push(
                err(
                    SpecErrorKind::Schema,
                    "`materialize` values are workspace paths",
                    v.span,
                    "not a path",
                )
                .with_help("Write `materialize: {OUTPUT: results/file.csv}`"),
            ),
        }
    }
    if check.errors.len() > before {
        return None;
    }
    Some(ResolvedStage {
        name: instance.name.clone(),
        base: raw.name.clone(),
        matrix: instance
            .values
            .iter()
            .filter(|(k, _)| instance.axes.contains(k))
            .map(|(k, v)| (k.clone(), v.scalar_text().unwrap_or_default()))
            .collect(),
        kind: kind.clone(),
        workspace_deps: kind.workspace_deps(&canonical),
        params: canonical,
        outputs,
        inputs: BTreeMap::new(),
        resources,
        cache,
        materialize,
        description: raw.description.clone(),
        executor: None,
        cluster: ClusterOptions::default(),
        span: raw.name_span,
    })
}

/// The matrix axes of the stages `raw` reads through its inputs (`include`/`exclude` aside).
fn upstream_axes(pipeline: &RawPipeline, raw: &RawStage) -> Vec<String> {
    let mut axes = Vec::new();
    for (_, references) in &raw.inputs {
        for reference in references {
            let Some(text) = reference.as_str() else {
                continue;
            };
            let name = text.split(['[', '.']).next().unwrap_or_default();
            let Some(NodeValue::Map(entries)) = pipeline
                .stages
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.matrix.as_ref())
                .map(|m| &m.value)
            else {
                continue;
            };
            for (key, _) in entries {
                if let Some(axis) = key
                    .as_str()
                    .filter(|a| !matches!(*a, "include" | "exclude"))
                {
                    axes.push(axis.to_string());
                }
            }
        }
    }
    axes
}

fn first_sentence(doc: &str) -> &str {
    doc.split(". ").next().unwrap_or(doc).trim_end_matches('.')
}

fn param_help(kind: &dyn StageKind, param: Option<&str>) -> String {
    match param.and_then(|p| kind.params().iter().find(|d| d.name == p)) {
        Some(doc) => format!(
            "`{}` takes {}: {}",
            doc.name,
            doc.type_name,
            first_sentence(&doc.doc)
        ),
        None => format!("`mipipe stages {}` documents every param", kind.kind()),
    }
}

/// The span of the node at `path` inside params.
fn locate(params: &BTreeMap<String, Node>, path: &[String]) -> Option<Span> {
    let (first, rest) = path.split_first()?;
    let mut node = params.get(first)?;
    for segment in rest {
        let next = match &node.value {
            NodeValue::Map(_) => node.get(segment),
            NodeValue::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    Some(node.span)
}

/// Checks that a `materialize:` path names a place strictly inside the workspace: relative, no
/// `..`, not the workspace itself. (Symlinked folders on the way are refused when copying.)
fn workspace_relative(path: &str) -> Result<(), &'static str> {
    use std::path::Component;
    let path = std::path::Path::new(path);
    let mut depth = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err("goes up with `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    if depth == 0 {
        return Err("is the workspace folder itself");
    }
    Ok(())
}
