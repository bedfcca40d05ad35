//! Load, expand and resolve: YAML text -> a checked DAG of concrete stage instances.
//!
//! 1. `yaml::parse` reads the text into spanned nodes.
//! 2. [`RawPipeline`] mirrors the file format with nodes (and so spans) everywhere.
//! 3. Matrix expansion turns each stage into instances named like `train[lr=0.1,seed=1]`.
//! 4. Resolution applies defaults, `--set` overrides and `${vars.*}`/`${params.*}`, checks
//!    params against the kind's typed `Params` (the canonical form is what is hashed), binds
//!    input references to producers' outputs and orders the DAG.
//!
//! Every problem becomes a [`SpecError`] with a label on its YAML span; all of them are
//! reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::cluster::{ClusterOptions, Executor};
use crate::diagnostic::{did_you_mean, suggestion_help, PipelineError, SpecError, SpecErrorKind};
use crate::stage::{OutputSpec, Registry, Resources, StageKind};
use crate::template::{self, Piece};
use crate::yaml::{self, Node, NodeValue, SourceId, Sources, Span};

/// Keys allowed at the top of a pipeline file.
const TOP_KEYS: &[&str] = &["version", "vars", "defaults", "executor", "slurm", "stages"];
/// Keys allowed in a stage.
const STAGE_KEYS: &[&str] = &[
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
const DEFAULTS_KEYS: &[&str] = &["params", "resources", "cache"];
/// Keys allowed in `resources:`.
const RESOURCE_KEYS: &[&str] = &["cpus", "gpus", "gpu"];

/// How to load a pipeline.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--set stage.param=value` and `--set vars.name=value` overrides, applied before hashing.
    pub overrides: Vec<String>,
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The file could not be read.
    #[error("Cannot read pipeline `{}`: {source}", path.display())]
    #[diagnostic(
        code(mipipe::pipeline_not_found),
        help("Pass the pipeline file as an argument, or run in a folder with a `mipipe.yaml`")
    )]
    Read {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The pipeline is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] PipelineError),
}

/// One upstream output an input is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Index of the producing stage in [`Pipeline::stages`].
    pub stage: usize,
    /// Output name.
    pub output: String,
}

/// A concrete stage instance, ready to plan.
#[derive(Clone)]
pub struct ResolvedStage {
    /// Instance name: `train[lr=0.1,seed=1]`, or the stage name without a matrix.
    pub name: String,
    /// The stage name in the file (`train`).
    pub base: String,
    /// Matrix values of this instance, in axis order, as text.
    pub matrix: Vec<(String, String)>,
    /// The stage kind.
    pub kind: Arc<dyn StageKind>,
    /// Canonical resolved params (defaults applied): what the key hashes.
    pub params: Value,
    /// Declared outputs.
    pub outputs: Vec<OutputSpec>,
    /// Workspace files whose content enters the key, relative to the workspace.
    pub workspace_deps: Vec<String>,
    /// Inputs by name, each bound to one or more upstream outputs.
    pub inputs: BTreeMap<String, Vec<Upstream>>,
    /// CPU and GPU slots.
    pub resources: Resources,
    /// `cache: false` runs the stage every time and never records it.
    pub cache: bool,
    /// Outputs to copy into the workspace after the stage completes: output -> path.
    pub materialize: BTreeMap<String, PathBuf>,
    /// `description:` text.
    pub description: Option<String>,
    /// `executor:` set on the stage itself (it wins over the pipeline's and the command line's).
    pub executor: Option<Executor>,
    /// Scheduler options: the pipeline's `slurm:` overridden by the stage's.
    pub cluster: ClusterOptions,
    /// The stage's name in the file.
    pub span: Span,
}

impl ResolvedStage {
    /// The output spec with this name.
    pub fn output(&self, name: &str) -> Option<&OutputSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }
}

/// A resolved pipeline: stages in a topological order.
pub struct Pipeline {
    /// The pipeline file.
    pub path: PathBuf,
    /// The folder holding it: commands run here and workspace paths are relative to it.
    pub workspace: PathBuf,
    /// Stage instances, every producer before its consumers.
    pub stages: Vec<ResolvedStage>,
    /// The source texts (for later diagnostics).
    pub sources: Sources,
    /// The pipeline's `executor:` (default `local`).
    pub executor: Executor,
}

impl Pipeline {
    /// Reads a pipeline file's text.
    pub fn read_text(path: &Path) -> Result<String, LoadError> {
        std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and resolves a pipeline file.
    pub fn load(
        path: &Path,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let text = Self::read_text(path)?;
        Self::load_text(path, &text, registry, options)
    }

    /// Resolves the text of the pipeline file at `path` (read already by the caller).
    pub fn load_text(
        path: &Path,
        text: &str,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, LoadError> {
        let workspace = crate::fsutil::parent_dir(path);
        Self::from_text(
            &path.display().to_string(),
            text,
            &workspace,
            registry,
            options,
        )
        .map(|mut p| {
            p.path = path.to_path_buf();
            p
        })
        .map_err(LoadError::Invalid)
    }

    /// Resolves pipeline text; `name` is shown in diagnostics.
    pub fn from_text(
        name: &str,
        text: &str,
        workspace: &Path,
        registry: &Registry,
        options: &LoadOptions,
    ) -> Result<Self, PipelineError> {
        let mut sources = Sources::default();
        let file = sources.add(name, text);
        let overrides: Vec<(SourceId, String)> = options
            .overrides
            .iter()
            .map(|o| (sources.add("--set", o.clone()), o.clone()))
            .collect();
        let mut resolver = Resolver {
            registry,
            sources: &sources,
            errors: Vec::new(),
            executor: Executor::Local,
            shell: false,
        };
        let stages = resolver.run(file, &overrides);
        if !resolver.errors.is_empty() || stages.is_none() {
            let errors = std::mem::take(&mut resolver.errors);
            return Err(PipelineError::new(name, &sources, errors));
        }
        let executor = resolver.executor;
        Ok(Self {
            path: PathBuf::from(name),
            workspace: workspace.to_path_buf(),
            stages: stages.unwrap_or_default(),
            sources,
            executor,
        })
    }

    /// The index of a stage instance by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// Selects stages by instance name or base name (`train` selects every instance).
    pub fn select(&self, name: &str) -> Vec<usize> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == name || s.base == name)
            .map(|(i, _)| i)
            .collect()
    }

    /// Indices of `targets` and everything they depend on, in order.
    pub fn closure(&self, targets: &[usize]) -> BTreeSet<usize> {
        let mut keep = BTreeSet::new();
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if keep.insert(i) {
                for ups in self.stages[i].inputs.values() {
                    stack.extend(ups.iter().map(|u| u.stage));
                }
            }
        }
        keep
    }

    /// Every edge as (producer index, consumer index, input name, output name), consumers in
    /// order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize, &str, &str)> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(consumer, stage)| {
                stage.inputs.iter().flat_map(move |(input, ups)| {
                    ups.iter()
                        .map(move |up| (up.stage, consumer, input.as_str(), up.output.as_str()))
                })
            })
    }

    /// Stage names a person could mean (for did-you-mean on `--target`).
    pub fn names(&self) -> BTreeSet<&str> {
        self.stages
            .iter()
            .flat_map(|s| [s.name.as_str(), s.base.as_str()])
            .collect()
    }
}

/// A stage's `inputs:` as written: input name -> reference nodes.
type RawInputs = Vec<(Node, Vec<Node>)>;

/// The pipeline file as written, with nodes everywhere.
struct RawStage {
    name: String,
    name_span: Span,
    kind: Option<(String, Span)>,
    description: Option<String>,
    params: Vec<(Node, Node)>,
    params_span: Span,
    matrix: Option<Node>,
    inputs: RawInputs,
    resources: Option<Node>,
    cache: Option<Node>,
    materialize: Vec<(Node, Node)>,
    executor: Option<Node>,
    cluster: Option<Node>,
}

/// One input reference, parsed: `stage[selector].output`.
struct Reference {
    stage: String,
    selector: Selector,
    output: String,
    span: Span,
}

enum Selector {
    /// `stage.output`: the stage, or the instance matching the consumer's matrix values.
    Implicit,
    /// `stage[*].output`: every instance.
    All,
    /// `stage[k=v,...].output`: instances with these values.
    Values(Vec<(String, String)>),
}

/// A matrix instance before resolution.
struct Instance {
    name: String,
    values: Vec<(String, Node)>,
}

struct Resolver<'a> {
    registry: &'a Registry,
    sources: &'a Sources,
    errors: Vec<SpecError>,
    /// The pipeline's `executor:`.
    executor: Executor,
    /// Whether the string being interpolated is run by a shell (`Stage::SHELL_PARAMS`), so
    /// values placed inside it are shell-quoted.
    shell: bool,
}

fn err(kind: SpecErrorKind, message: impl Into<String>, span: Span, label: &str) -> SpecError {
    SpecError::new(kind, message, span, label)
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Resolver<'_> {
    fn push(&mut self, error: SpecError) {
        self.errors.push(error);
    }

    /// The span of `needle` inside the source text of `span`, or `span` itself when the text
    /// there differs (escapes, folded block scalars).
    fn span_within(&self, span: Span, needle: &str) -> Span {
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
    fn typed<T: serde::de::DeserializeOwned>(&mut self, node: &Node, what: &str) -> Option<T> {
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

    fn check_keys(&mut self, node: &Node, allowed: &[&str], what: &str) {
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

    fn expect_map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Node, Node)]> {
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

    fn run(
        &mut self,
        file: SourceId,
        overrides: &[(SourceId, String)],
    ) -> Option<Vec<ResolvedStage>> {
        let root = match yaml::parse(self.sources, file) {
            Ok(root) => root,
            Err(e) => {
                self.push(e);
                return None;
            }
        };
        if root.as_map().is_none() {
            self.push(
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
        self.check_keys(&root, TOP_KEYS, "the pipeline");
        match root.get("version") {
            Some(Node {
                value: NodeValue::Int(1),
                ..
            }) => {}
            Some(other) => self.push(
                err(
                    SpecErrorKind::Schema,
                    "Unsupported pipeline version",
                    other.span,
                    "this version",
                )
                .with_help("This mipipe reads `version: 1`"),
            ),
            None => self.push(
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
            if let Some(entries) = self.expect_map(node, "`vars`") {
                for (k, v) in entries {
                    vars.insert(k.scalar_text().unwrap_or_default(), v.clone());
                }
            }
        }
        let mut defaults_params: Vec<(Node, Node)> = Vec::new();
        let mut defaults_resources: Option<Node> = None;
        let mut defaults_cache: Option<Node> = None;
        if let Some(node) = root.get("defaults") {
            self.check_keys(node, DEFAULTS_KEYS, "`defaults`");
            if let Some(params) = node.get("params") {
                if let Some(entries) = self.expect_map(params, "`defaults.params`") {
                    defaults_params = entries.to_vec();
                }
            }
            defaults_resources = node.get("resources").cloned();
            defaults_cache = node.get("cache").cloned();
        }

        if let Some(node) = root.get("executor") {
            self.executor = self
                .typed::<Executor>(node, "`executor`")
                .unwrap_or_default();
        }
        let pipeline_cluster: ClusterOptions = root
            .get("slurm")
            .and_then(|node| self.typed(node, "`slurm`"))
            .unwrap_or_default();

        let raw_stages = self.raw_stages(&root)?;

        // `--set` overrides, grouped by stage (or `vars`).
        let mut stage_overrides: BTreeMap<String, Vec<(Node, Node)>> = BTreeMap::new();
        for (source, text) in overrides {
            let Some((key, value)) = self.parse_override(*source, text) else {
                continue;
            };
            let path = key.as_str().unwrap_or_default();
            let (target, param) = path.split_once('.').unwrap_or((path, ""));
            let key_node = Node::new(key.span, NodeValue::Str(param.to_string()));
            if target == "vars" && !vars.contains_key(param) {
                // A var nothing defines would be silently unused.
                self.push(
                    err(
                        SpecErrorKind::Override,
                        format!("`--set vars.{param}` names a var this pipeline does not define"),
                        key.span,
                        "no such var",
                    )
                    .with_help(suggestion_help(
                        param,
                        "vars",
                        vars.keys().map(String::as_str),
                    )),
                );
            } else if target == "vars" {
                vars.insert(param.to_string(), value);
            } else if raw_stages.iter().any(|s| s.name == target) {
                stage_overrides
                    .entry(target.to_string())
                    .or_default()
                    .push((key_node, value));
            } else {
                let names: Vec<&str> = raw_stages.iter().map(|s| s.name.as_str()).collect();
                self.push(
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

        // Which params some kind in this pipeline accepts: a `defaults.params` key nobody
        // accepts is a typo.
        let mut accepted: BTreeSet<String> = BTreeSet::new();
        let mut any_open = false;
        for stage in &raw_stages {
            if let Some(kind) = stage.kind.as_ref().and_then(|(k, _)| self.registry.get(k)) {
                accepted.extend(kind.params().iter().map(|p| p.name.clone()));
                any_open |= kind.accepts_extra_params();
            }
        }
        for (key, _) in &defaults_params {
            let name = key.scalar_text().unwrap_or_default();
            if !accepted.contains(&name) && !any_open {
                self.push(
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

        // Expand and resolve each stage on its own.
        let mut instances_by_stage: Vec<(usize, Vec<ResolvedStage>, RawInputs)> = Vec::new();
        for (index, raw) in raw_stages.iter().enumerate() {
            let Some((kind_name, kind_span)) = &raw.kind else {
                self.push(
                    err(
                        SpecErrorKind::Schema,
                        format!("Stage `{}` has no `kind:`", raw.name),
                        raw.name_span,
                        "this stage",
                    )
                    .with_help(format!(
                        "Add `kind: command` (or another kind: {})",
                        self.kind_names()
                    )),
                );
                continue;
            };
            let Some(kind) = self.registry.get(kind_name).cloned() else {
                let names: Vec<&str> = self.registry.kinds().map(|k| k.kind()).collect();
                self.push(
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
            let resources = self.resources(raw.resources.as_ref().or(defaults_resources.as_ref()));
            let executor = raw
                .executor
                .as_ref()
                .and_then(|n| self.typed::<Executor>(n, "`executor`"));
            let cluster = match &raw.cluster {
                Some(node) => pipeline_cluster.overridden_by(
                    &self
                        .typed::<ClusterOptions>(node, "`slurm`")
                        .unwrap_or_default(),
                ),
                None => pipeline_cluster.clone(),
            };
            let cache = match raw.cache.as_ref().or(defaults_cache.as_ref()) {
                None => true,
                Some(Node {
                    value: NodeValue::Bool(b),
                    ..
                }) => *b,
                Some(other) => {
                    self.push(
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
            for (key, value) in &defaults_params {
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
            for (key, value) in &overridden {
                let name = key.as_str().unwrap_or_default().to_string();
                // `--set train.lr=0.5` on a matrix axis narrows the axis to that one value.
                if let Some(axis) = matrix.as_mut().and_then(|m| matrix_axis_mut(m, &name)) {
                    *axis = Node::new(value.span, NodeValue::Seq(vec![value.clone()]));
                    continue;
                }
                let set_here = params
                    .iter()
                    .any(|(k, _)| k.scalar_text().as_deref() == Some(&name));
                // On a kind with free params (`command`) a misspelled `--set` would add a new
                // param and rerun the stage: only params the stage sets or the kind declares.
                if kind.accepts_extra_params()
                    && !set_here
                    && !kind.params().iter().any(|p| p.name == name)
                {
                    let known: Vec<String> = params
                        .iter()
                        .filter_map(|(k, _)| k.scalar_text())
                        .chain(kind.params().iter().map(|p| p.name.clone()))
                        .collect();
                    self.push(
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
                params.retain(|(k, _)| k.scalar_text().as_deref() != Some(&name));
                params.push((key.clone(), value.clone()));
            }

            let instances = match &matrix {
                None => vec![Instance {
                    name: raw.name.clone(),
                    values: Vec::new(),
                }],
                Some(matrix) => match self.expand_matrix(raw, matrix, &params) {
                    Some(instances) => instances,
                    None => continue,
                },
            };

            let mut resolved = Vec::new();
            for instance in instances {
                let mut instance_params = params.clone();
                for (axis, value) in &instance.values {
                    instance_params.push((
                        Node::new(value.span, NodeValue::Str(axis.clone())),
                        value.clone(),
                    ));
                }
                if let Some(mut stage) = self.resolve_instance(
                    raw,
                    &kind,
                    &instance,
                    instance_params,
                    &vars,
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
        if !self.errors.is_empty() {
            return None;
        }

        // Bind references, then order the DAG.
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
                        let Some(reference) = self.parse_reference(ref_node, &stages[consumer])
                        else {
                            continue;
                        };
                        for producer in self.bind(&reference, &stages, &ranges, consumer) {
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
        if !self.errors.is_empty() {
            return None;
        }
        let order = self.order(&stages, &edge_spans)?;
        // Renumber upstream indices into the new order.
        let mut position = vec![0; stages.len()];
        for (new, old) in order.iter().enumerate() {
            position[*old] = new;
        }
        let mut slots: Vec<Option<ResolvedStage>> = stages.into_iter().map(Some).collect();
        let mut ordered: Vec<ResolvedStage> = order
            .iter()
            .map(|&i| slots[i].take().expect("each stage is ordered once"))
            .collect();
        for stage in &mut ordered {
            for ups in stage.inputs.values_mut() {
                for u in ups.iter_mut() {
                    u.stage = position[u.stage];
                }
            }
        }
        Some(ordered)
    }

    fn kind_names(&self) -> String {
        self.registry
            .kinds()
            .map(|k| format!("`{}`", k.kind()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn raw_stages(&mut self, root: &Node) -> Option<Vec<RawStage>> {
        let Some(stages_node) = root.get("stages") else {
            self.push(
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
        let entries = self.expect_map(stages_node, "`stages`")?.to_vec();
        let mut out = Vec::new();
        for (name_node, body) in &entries {
            let name = name_node.scalar_text().unwrap_or_default();
            if !valid_stage_name(&name) {
                self.push(
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
                self.expect_map(body, &format!("Stage `{name}`"));
                continue;
            }
            self.check_keys(body, STAGE_KEYS, &format!("stage `{name}`"));
            let kind = match body.get("kind") {
                Some(node) => match node.as_str() {
                    Some(k) => Some((k.to_string(), node.span)),
                    None => {
                        self.push(err(
                            SpecErrorKind::Schema,
                            "`kind` must be a string",
                            node.span,
                            "not a string",
                        ));
                        continue;
                    }
                },
                None => None,
            };
            let mut params = Vec::new();
            let mut materialize = Vec::new();
            let params_span = body.get("params").map_or(name_node.span, |p| p.span);
            if let Some(node) = body.get("params") {
                if let Some(entries) = self.expect_map(node, &format!("`{name}.params`")) {
                    for (k, v) in entries {
                        // `materialize` is an engine feature the example writes among
                        // the params; it does not change outputs, so it is not a param.
                        if k.as_str() == Some("materialize") {
                            if let Some(m) = self.expect_map(v, "`materialize`") {
                                materialize.extend(m.iter().cloned());
                            }
                        } else {
                            params.push((k.clone(), v.clone()));
                        }
                    }
                }
            }
            if let Some(node) = body.get("materialize") {
                if let Some(m) = self.expect_map(node, "`materialize`") {
                    materialize.extend(m.iter().cloned());
                }
            }
            let mut inputs = Vec::new();
            if let Some(node) = body.get("inputs") {
                if let Some(entries) = self.expect_map(node, &format!("`{name}.inputs`")) {
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

    fn parse_override(&mut self, source: SourceId, text: &str) -> Option<(Node, Node)> {
        let whole = Span {
            source,
            offset: 0,
            len: text.len(),
        };
        let Some((key, value)) = text.split_once('=') else {
            self.push(
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
            self.push(
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

    fn resources(&mut self, node: Option<&Node>) -> Resources {
        let mut resources = Resources { cpus: 1, gpus: 0 };
        let Some(node) = node else { return resources };
        self.check_keys(node, RESOURCE_KEYS, "`resources`");
        let Some(entries) = self.expect_map(node, "`resources`") else {
            return resources;
        };
        for (k, v) in entries {
            let amount = match v.value {
                NodeValue::Int(n) if (0..=1024).contains(&n) => n as u32,
                _ => {
                    self.push(
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

    fn expand_matrix(
        &mut self,
        raw: &RawStage,
        matrix: &Node,
        params: &[(Node, Node)],
    ) -> Option<Vec<Instance>> {
        let entries = self.expect_map(matrix, "`matrix`")?.to_vec();
        let mut axes: Vec<(String, Span, Vec<Node>)> = Vec::new();
        let mut include: Vec<Node> = Vec::new();
        let mut exclude: Vec<Node> = Vec::new();
        let before = self.errors.len();
        for (key, value) in &entries {
            let name = key.scalar_text().unwrap_or_default();
            let list = match &value.value {
                NodeValue::Seq(items) => items.clone(),
                _ => {
                    self.push(
                        err(
                            SpecErrorKind::Matrix,
                            format!("Matrix entry `{name}` must be a list"),
                            value.span,
                            "not a list",
                        )
                        .with_help(format!("Write `{name}: [a, b]`")),
                    );
                    continue;
                }
            };
            match name.as_str() {
                "include" => include = list,
                "exclude" => exclude = list,
                _ => {
                    if list.is_empty() {
                        self.push(
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
                            self.push(
                                err(
                                    SpecErrorKind::Matrix,
                                    "Matrix values must be scalars (strings, numbers, booleans)",
                                    item.span,
                                    "a list or mapping",
                                )
                                .with_help("Put structured values in `vars:` and select them by a scalar name"),
                            );
                        }
                    }
                    if let Some((k, _)) = params
                        .iter()
                        .find(|(k, _)| k.scalar_text().as_deref() == Some(&name))
                    {
                        self.push(
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
        if self.errors.len() > before {
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
            let Some(rule_entries) = self.expect_map(rule, "a matrix `exclude` entry") else {
                continue;
            };
            for (k, _) in rule_entries {
                let key = k.scalar_text().unwrap_or_default();
                if !axis_names.contains(&key.as_str()) {
                    self.push(
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
            let Some(rule_entries) = self.expect_map(rule, "a matrix `include` entry") else {
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
            self.push(
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
            let named: Vec<String> = combo
                .iter()
                .filter(|(k, _)| {
                    axis_names.contains(&k.as_str())
                        || !combo.iter().any(|(a, _)| axis_names.contains(&a.as_str()))
                })
                .map(|(k, v)| format!("{k}={}", text_of(v)))
                .collect();
            let name = format!("{}[{}]", raw.name, named.join(","));
            let span = combo.first().map_or(matrix.span, |(_, v)| v.span);
            if let Some(first) = seen.insert(name.clone(), span) {
                self.push(
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
                if params
                    .iter()
                    .any(|(p, _)| p.scalar_text().as_deref() == Some(k.as_str()))
                    && !axis_names.contains(&k.as_str())
                {
                    self.push(
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
            });
        }
        Some(instances)
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve_instance(
        &mut self,
        raw: &RawStage,
        kind: &Arc<dyn StageKind>,
        instance: &Instance,
        params: Vec<(Node, Node)>,
        vars: &BTreeMap<String, Node>,
        resources: Resources,
        cache: bool,
    ) -> Option<ResolvedStage> {
        let before = self.errors.len();
        let known: Vec<&str> = kind.params().iter().map(|p| p.name.as_str()).collect();
        for (key, _) in &params {
            let name = key.scalar_text().unwrap_or_default();
            // Kinds with open params (like `command`, whose free params feed `${params.*}`)
            // reject only names that look like a typo of a declared one.
            let unknown = !known.contains(&name.as_str())
                && (!kind.accepts_extra_params()
                    || did_you_mean(&name, known.iter().copied()).is_some());
            if unknown {
                self.push(
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
                self.push(
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
        if self.errors.len() > before {
            return None;
        }
        // `${vars.*}` and `${params.*}`, then the typed check.
        let raw_map: BTreeMap<String, Node> = params
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.clone()))
            .collect();
        let mut expanded: BTreeMap<String, Node> = BTreeMap::new();
        for (name, node) in &raw_map {
            let mut visiting = vec![name.clone()];
            self.shell = kind.shell_params().contains(&name.as_str());
            let node = self.interpolate(node, vars, &raw_map, &mut visiting, false);
            self.shell = false;
            if let Some(node) = node {
                expanded.insert(name.clone(), node);
            }
        }
        if self.errors.len() > before {
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
                self.push(
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
            self.check_runtime_refs(node, &input_names, &output_names, &instance.name);
        }
        let mut materialize = BTreeMap::new();
        for (k, v) in &raw.materialize {
            let out = k.scalar_text().unwrap_or_default();
            if !output_names.contains(&out.as_str()) {
                self.push(
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
                    let path = self.expand_path(v, path, vars, &raw_map)?;
                    if let Err(why) = workspace_relative(&path) {
                        self.push(
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
                _ => self.push(err(
                    SpecErrorKind::Schema,
                    "`materialize` values are workspace paths",
                    v.span,
                    "not a path",
                )),
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(ResolvedStage {
            name: instance.name.clone(),
            base: raw.name.clone(),
            matrix: instance
                .values
                .iter()
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

    fn expand_path(
        &mut self,
        node: &Node,
        text: &str,
        vars: &BTreeMap<String, Node>,
        params: &BTreeMap<String, Node>,
    ) -> Option<String> {
        let mut visiting = Vec::new();
        let string = Node::new(node.span, NodeValue::Str(text.to_string()));
        let expanded = self.interpolate(&string, vars, params, &mut visiting, true)?;
        expanded.scalar_text()
    }

    /// Substitutes `${vars.*}` in every string of a node, and `${params.*}` where the reference
    /// is the whole value (keeping its type) or `inline_params` is set. A `${params.*}` inside
    /// a longer param string stays a template, checked here and expanded by the stage: the
    /// referenced param is in the key already, and `status` then reports the param that
    /// changed rather than every string built from it.
    /// `${raw.vars.x}` / `${raw.params.x}` name a value pasted without shell quoting: the
    /// namespace and name inside, and whether it was `raw.`.
    fn unwrap_raw<'t>(
        &mut self,
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
                self.push(
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

    fn interpolate(
        &mut self,
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
                        self.push(
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
                let mut resolve = |this: &mut Self,
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
                                    this.interpolate(v, vars, &BTreeMap::new(), &mut inner, true);
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
                                    .with_help(
                                        suggestion_help(
                                            name,
                                            "vars",
                                            vars.keys().map(String::as_str),
                                        ),
                                    ),
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
                                    .with_help(
                                        "Params may refer to other params, but not in a circle",
                                    ),
                                );
                                return None;
                            }
                            match params.get(name) {
                                Some(v) => {
                                    visiting.push(name.to_string());
                                    let shell = std::mem::replace(&mut this.shell, false);
                                    let out =
                                        this.interpolate(v, vars, params, visiting, inline_params);
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
                        "inputs" | "outs" => Some(None),
                        other => {
                            this.push(
                                err(
                                    SpecErrorKind::Interpolation,
                                    format!(
                                        "`${{{other}.{name}}}` uses unknown namespace `{other}`"
                                    ),
                                    node.span,
                                    "in this value",
                                )
                                .with_help(suggestion_help(
                                    other,
                                    "namespaces",
                                    ["vars", "params", "inputs", "outs"],
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
                    let (namespace, name, _) = self.unwrap_raw(namespace, name, node.span)?;
                    return match resolve(self, namespace, name)? {
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
                                self.unwrap_raw(namespace, name, node.span)?;
                            match resolve(self, namespace, name)? {
                                // Expanded by the stage, which quotes it unless it is `raw.`.
                                Some(_) if namespace == "params" && !inline_params => {
                                    out.push_str(raw)
                                }
                                Some(value) => match value.scalar_text() {
                                    Some(text) if self.shell && !unquoted => {
                                        out.push_str(&template::shell_quote(&text))
                                    }
                                    Some(text) => out.push_str(&text),
                                    None => {
                                        self.push(
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
                    out.push(self.interpolate(item, vars, params, visiting, inline_params)?);
                }
                Some(Node::new(node.span, NodeValue::Seq(out)))
            }
            NodeValue::Map(entries) => {
                let mut out = Vec::new();
                for (k, v) in entries {
                    out.push((
                        k.clone(),
                        self.interpolate(v, vars, params, visiting, inline_params)?,
                    ));
                }
                Some(Node::new(node.span, NodeValue::Map(out)))
            }
            _ => Some(node.clone()),
        }
    }

    fn check_runtime_refs(&mut self, node: &Node, inputs: &[String], outs: &[&str], stage: &str) {
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
                        let span = self.span_within(node.span, raw);
                        self.push(
                            err(
                                SpecErrorKind::Interpolation,
                                format!("`{raw}` refers to nothing: stage `{stage}` has no {what} `{name}`"),
                                span,
                                "refers to nothing",
                            )
                            .with_help(suggestion_help(name, &format!("{what}s"), known.iter().copied())),
                        );
                    }
                }
            }
            NodeValue::Seq(items) => {
                for item in items {
                    self.check_runtime_refs(item, inputs, outs, stage);
                }
            }
            NodeValue::Map(entries) => {
                for (_, v) in entries {
                    self.check_runtime_refs(v, inputs, outs, stage);
                }
            }
            _ => {}
        }
    }

    fn parse_reference(&mut self, node: &Node, consumer: &ResolvedStage) -> Option<Reference> {
        let Some(text) = node.as_str() else {
            self.push(
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
        let malformed = |this: &mut Self| {
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
                malformed(self);
                return None;
            }
        };
        let (stage, selector) = match head.split_once('[') {
            None => (head, Selector::Implicit),
            Some((stage, rest)) => {
                let Some(inner) = rest.strip_suffix(']') else {
                    malformed(self);
                    return None;
                };
                if inner.trim() == "*" {
                    (stage, Selector::All)
                } else {
                    let mut values = Vec::new();
                    for pair in inner.split(',') {
                        let Some((k, v)) = pair.split_once('=') else {
                            malformed(self);
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
                                        .then(|| consumer.params.get(name).map(json_text))
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

    fn bind(
        &mut self,
        reference: &Reference,
        stages: &[ResolvedStage],
        ranges: &BTreeMap<String, (usize, usize)>,
        consumer: usize,
    ) -> Vec<usize> {
        let Some(&(start, end)) = ranges.get(&reference.stage) else {
            self.push(
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
                        .or_else(|| consumer_stage.params.get(axis).map(json_text))
                };
                let joinable = candidates.iter().all(|&i| {
                    stages[i]
                        .matrix
                        .iter()
                        .all(|(a, _)| consumer_value(a).is_some())
                });
                if !joinable {
                    let example = stages[start].name.clone();
                    self.push(
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
                        self.push(
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
            self.push(
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
                self.push(
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

    /// A topological order that prefers file order (deterministic), or a cycle error.
    fn order(
        &mut self,
        stages: &[ResolvedStage],
        edge_spans: &BTreeMap<(usize, usize), Span>,
    ) -> Option<Vec<usize>> {
        let mut graph: DiGraph<usize, ()> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..stages.len()).map(|i| graph.add_node(i)).collect();
        for &(from, to) in edge_spans.keys() {
            graph.add_edge(nodes[from], nodes[to], ());
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let members: BTreeSet<usize> = scc.iter().map(|n| graph[*n]).collect();
            // Walk the cycle from its first member for a readable path.
            let first = *members.iter().next().expect("a cycle has members");
            let mut path = vec![first];
            let mut current = first;
            loop {
                let next = edge_spans
                    .keys()
                    .filter(|(from, to)| *from == current && members.contains(to))
                    .map(|(_, to)| *to)
                    .find(|to| !path.contains(to) || *to == first);
                match next {
                    Some(n) if n == first => {
                        path.push(n);
                        break;
                    }
                    Some(n) => {
                        path.push(n);
                        current = n;
                    }
                    None => break,
                }
            }
            let names: Vec<&str> = path.iter().map(|&i| stages[i].name.as_str()).collect();
            let mut error = err(
                SpecErrorKind::Cycle,
                format!(
                    "Stages depend on each other in a cycle: {}",
                    names.join(" -> ")
                ),
                edge_spans[&(path[0], path[1.min(path.len() - 1)])],
                &format!(
                    "`{}` reads `{}` here",
                    names[1.min(names.len() - 1)],
                    names[0]
                ),
            );
            for window in path.windows(2).skip(1) {
                if let Some(span) = edge_spans.get(&(window[0], window[1])) {
                    error = error.with_label(
                        *span,
                        format!(
                            "`{}` reads `{}` here",
                            stages[window[1]].name, stages[window[0]].name
                        ),
                    );
                }
            }
            self.push(
                error.with_help(
                    "A stage cannot depend on its own output; remove one of these inputs",
                ),
            );
            return None;
        }
        let mut indegree = vec![0usize; stages.len()];
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); stages.len()];
        for &(from, to) in edge_spans.keys() {
            indegree[to] += 1;
            consumers[from].push(to);
        }
        let mut ready: BTreeSet<usize> = (0..stages.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(stages.len());
        while let Some(next) = ready.pop_first() {
            order.push(next);
            for &to in &consumers[next] {
                indegree[to] -= 1;
                if indegree[to] == 0 {
                    ready.insert(to);
                }
            }
        }
        Some(order)
    }
}

fn matrix_axis_mut<'n>(matrix: &'n mut Node, name: &str) -> Option<&'n mut Node> {
    match &mut matrix.value {
        NodeValue::Map(entries) => entries
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(name) && name != "include" && name != "exclude")
            .map(|(_, v)| v),
        _ => None,
    }
}

/// A scalar JSON value as text (strings without quotes).
fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
