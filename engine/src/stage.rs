//! The stage contract: what a stage kind implements and what it is given when it runs.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::child::PeakMemory;

pub use mipipe_cache::OutputKind;

/// An output a stage declares; the engine checks after `run` that exactly these exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// The output's name, used in references (`stage.name`).
    pub name: String,
    /// The file name the stage writes (inside its scratch folder).
    pub file_name: String,
    /// File or directory.
    pub kind: OutputKind,
}

impl OutputSpec {
    /// A file output named `name`, written as `file_name`.
    pub fn file(name: &str, file_name: &str) -> Self {
        Self {
            name: name.into(),
            file_name: file_name.into(),
            kind: OutputKind::File,
        }
    }

    /// A directory output named `name`, written as the folder `dir_name`.
    pub fn dir(name: &str, dir_name: &str) -> Self {
        Self {
            name: name.into(),
            file_name: dir_name.into(),
            kind: OutputKind::Dir,
        }
    }
}

/// What a stage needs to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU slots (of `-j`).
    pub cpus: u32,
    /// GPU device slots (of `--gpus`).
    pub gpus: u32,
}

/// Why a stage failed. Shared cheaply between the outcome, the reporter and the summary.
#[derive(Clone, Debug)]
pub struct StageError(Arc<StageErrorInner>);

#[derive(Debug)]
struct StageErrorInner {
    message: String,
    class: ErrorClass,
}

/// Who is at fault: decides the exit code of the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The stage's own work failed (a command exited non-zero, bad data).
    Stage,
    /// The environment failed (disk, missing library, out of memory).
    Environment,
    /// A bug in mipipe.
    Internal,
}

impl StageError {
    /// The stage's own work failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::with_class(message, ErrorClass::Stage)
    }

    /// The environment failed.
    pub fn environment(message: impl Into<String>) -> Self {
        Self::with_class(message, ErrorClass::Environment)
    }

    /// A failure with an explicit class.
    pub fn with_class(message: impl Into<String>, class: ErrorClass) -> Self {
        Self(Arc::new(StageErrorInner {
            message: message.into(),
            class,
        }))
    }

    /// A panic caught while running a stage: a bug in mipipe.
    pub fn internal_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Self::with_class(
            format!("mipipe panicked while running the stage: {what}; this is a bug in mipipe, please report it"),
            ErrorClass::Internal,
        )
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.0.class
    }
}

/// How many devices a `CUDA_VISIBLE_DEVICES` value makes visible (`""` and `-1`: none).
pub fn visible_devices(value: &str) -> usize {
    value
        .split(',')
        .map(str::trim)
        .take_while(|id| *id != "-1")
        .filter(|id| !id.is_empty())
        .count()
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for StageError {}

/// A stage kind. Implement this; register it with [`Registry::register`].
pub trait Stage: Send + Sync + 'static {
    /// Typed params: `#[serde(deny_unknown_fields)]`, defaults with `#[serde(default)]`,
    /// doc comments become the `mipipe stages` reference.
    type Params: DeserializeOwned + Serialize + JsonSchema;

    /// The stable name used in `kind:`.
    const KIND: &'static str;
    /// Bump when behaviour changes: part of every key of this kind.
    const VERSION: u32;
    /// One line for `mipipe stages`.
    const SUMMARY: &'static str;

    /// The outputs these params declare.
    fn outputs(params: &Self::Params) -> Vec<OutputSpec>;

    /// Workspace files (relative to the pipeline's folder) whose content enters the key.
    fn workspace_deps(_params: &Self::Params) -> Vec<String> {
        Vec::new()
    }

    /// Whether the stage should run in a separate worker process (`mipipe exec-stage`), e.g.
    /// because it loads a heavy library the engine process must not load.
    fn wants_worker_process(_params: &Self::Params) -> bool {
        false
    }

    /// The executable that runs this kind's worker processes, found next to the running
    /// `mipipe`; `None` for `mipipe exec-stage` itself. A kind whose real `run` lives in
    /// another binary (the libtorch kinds: `mipipe-torch-worker`) names it here.
    const WORKER_BINARY: Option<&'static str> = None;

    /// Params whose strings a shell runs (`command`'s `cmd`): a `${vars.*}` or `${params.*}`
    /// placed inside one is shell-quoted, so no value runs as code; `${raw.vars.*}` and
    /// `${raw.params.*}` paste a value as is.
    const SHELL_PARAMS: &'static [&'static str] = &[];

    /// Does the work. Outputs go to [`StageContext::output_path`].
    fn run(&self, params: &Self::Params, ctx: &StageContext) -> Result<(), StageError>;
}

/// Documentation of one param, derived from the kind's JSON schema.
#[derive(Clone, Debug, Serialize)]
pub struct ParamDoc {
    /// Name.
    pub name: String,
    /// Type, as a person reads it.
    pub type_name: String,
    /// Whether it must be given.
    pub required: bool,
    /// The default, if any.
    pub default: Option<Value>,
    /// Doc comment.
    pub doc: String,
}

/// A problem with params found while checking them against the kind's type.
#[derive(Clone, Debug)]
pub struct ParamError {
    /// Path into the params (`["outs", "table"]`); empty for the params as a whole.
    pub path: Vec<String>,
    /// What serde said.
    pub message: String,
}

/// The object-safe face of a [`Stage`], used by the engine.
pub trait StageKind: Send + Sync {
    /// `Stage::KIND`.
    fn kind(&self) -> &'static str;
    /// `Stage::VERSION`.
    fn version(&self) -> u32;
    /// `Stage::SUMMARY`.
    fn summary(&self) -> &'static str;
    /// Every param with its docs.
    fn params(&self) -> &[ParamDoc];
    /// Whether params other than the declared ones are accepted (a flattened map).
    fn accepts_extra_params(&self) -> bool;
    /// Deserialises params into the typed form and serialises them back: the canonical
    /// resolved params (defaults applied) that enter the key.
    fn canonicalize(&self, params: &Value) -> Result<Value, ParamError>;
    /// Outputs declared by canonical params.
    fn outputs(&self, params: &Value) -> Vec<OutputSpec>;
    /// Workspace dependencies declared by canonical params.
    fn workspace_deps(&self, params: &Value) -> Vec<String>;
    /// Whether to run in a worker process.
    fn wants_worker_process(&self, params: &Value) -> bool;
    /// `Stage::WORKER_BINARY`.
    fn worker_binary(&self) -> Option<&'static str>;
    /// `Stage::SHELL_PARAMS`.
    fn shell_params(&self) -> &'static [&'static str];
    /// Runs with canonical params.
    fn run(&self, params: &Value, ctx: &StageContext) -> Result<(), StageError>;
}

struct Adapter<S: Stage> {
    stage: S,
    params: Vec<ParamDoc>,
    open: bool,
}

fn typed<S: Stage>(params: &Value) -> S::Params {
    S::Params::deserialize(params).expect("canonical params always deserialise")
}

impl<S: Stage> StageKind for Adapter<S> {
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn version(&self) -> u32 {
        S::VERSION
    }
    fn summary(&self) -> &'static str {
        S::SUMMARY
    }
    fn params(&self) -> &[ParamDoc] {
        &self.params
    }
    fn accepts_extra_params(&self) -> bool {
        self.open
    }
    fn canonicalize(&self, params: &Value) -> Result<Value, ParamError> {
        // The plain path first; the path-tracking one only to locate an error.
        if let Ok(typed) = S::Params::deserialize(params) {
            return serde_json::to_value(&typed).map_err(|e| ParamError {
                path: Vec::new(),
                message: e.to_string(),
            });
        }
        let typed: S::Params = serde_path_to_error::deserialize(params).map_err(|e| {
            let path = e
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect();
            ParamError {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        serde_json::to_value(&typed).map_err(|e| ParamError {
            path: Vec::new(),
            message: e.to_string(),
        })
    }
    fn outputs(&self, params: &Value) -> Vec<OutputSpec> {
        S::outputs(&typed::<S>(params))
    }
    fn workspace_deps(&self, params: &Value) -> Vec<String> {
        S::workspace_deps(&typed::<S>(params))
    }
    fn wants_worker_process(&self, params: &Value) -> bool {
        S::wants_worker_process(&typed::<S>(params))
    }
    fn worker_binary(&self) -> Option<&'static str> {
        S::WORKER_BINARY
    }
    fn shell_params(&self) -> &'static [&'static str] {
        S::SHELL_PARAMS
    }
    fn run(&self, params: &Value, ctx: &StageContext) -> Result<(), StageError> {
        self.stage.run(&typed::<S>(params), ctx)
    }
}

/// Param docs from the JSON schema of `P`, and whether `P` accepts undeclared params.
fn param_docs<P: JsonSchema>() -> (Vec<ParamDoc>, bool) {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<P>();
    let root = schema.as_value();
    let open = !matches!(
        root.get("additionalProperties"),
        None | Some(Value::Bool(false))
    );
    (param_docs_of(root), open)
}

fn param_docs_of(root: &Value) -> Vec<ParamDoc> {
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = root.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, prop)| ParamDoc {
            name: name.clone(),
            type_name: type_name(prop, root),
            required: required.contains(&name.as_str()),
            default: prop.get("default").cloned(),
            doc: prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
        .collect()
}

fn type_name(prop: &Value, root: &Value) -> String {
    if let Some(reference) = prop.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        if let Some(def) = root.pointer(&format!("/$defs/{name}")) {
            return type_name(def, root);
        }
        return name.to_string();
    }
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(options) = prop.get(combinator).and_then(Value::as_array) {
            return options
                .iter()
                .map(|o| type_name(o, root))
                .collect::<Vec<_>>()
                .join(" | ");
        }
    }
    if let Some(constant) = prop.get("const") {
        return constant
            .as_str()
            .map_or(constant.to_string(), str::to_string);
    }
    match prop.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = prop
                .get("items")
                .map_or("any".into(), |i| type_name(i, root));
            format!("list of {item}")
        }
        Some(Value::String(t)) if t == "object" => match prop.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of {}", type_name(v, root)),
            _ => "mapping".into(),
        },
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".into(),
    }
}

/// Every stage kind the binary was built with.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn StageKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind.
    pub fn register<S: Stage>(&mut self, stage: S) -> &mut Self {
        let (params, open) = param_docs::<S::Params>();
        self.kinds.insert(
            S::KIND,
            Arc::new(Adapter {
                stage,
                params,
                open,
            }),
        );
        self
    }

    /// Adds an already-wrapped kind (e.g. a placeholder for a kind left out of this build).
    pub fn register_dyn(&mut self, kind: Arc<dyn StageKind>) -> &mut Self {
        self.kinds.insert(kind.kind(), kind);
        self
    }

    /// Looks a kind up.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn StageKind>> {
        self.kinds.get(kind)
    }

    /// All kinds, sorted by name.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn StageKind>> + Clone {
        self.kinds.values()
    }
}

/// Progress callbacks a running stage may call.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` units of work, with an optional message.
    fn progress(&self, done: u64, total: u64, message: &str);
}

/// What a running stage is given. A stage never sees cache paths, locks or other stages.
pub struct StageContext {
    pub(crate) stage_name: String,
    pub(crate) inputs: BTreeMap<String, Vec<PathBuf>>,
    pub(crate) outputs: BTreeMap<String, PathBuf>,
    pub(crate) workspace: PathBuf,
    pub(crate) seed: u64,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log: Mutex<File>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) progress: Option<Arc<dyn ProgressSink>>,
    pub(crate) facts_file: Option<PathBuf>,
    pub(crate) peak_memory: Arc<PeakMemory>,
}

impl StageContext {
    /// Where a stage that runs child processes records their peak memory, resident and on GPUs
    /// (the run record keeps it): pass each [`crate::ChildExit`] to [`PeakMemory::record`].
    pub fn peak_memory(&self) -> &PeakMemory {
        &self.peak_memory
    }

    /// The stage's instance name (`train[lr=0.1]`).
    pub fn stage_name(&self) -> &str {
        &self.stage_name
    }

    /// The paths bound to an input, in reference order (one for a single reference, several
    /// for a fan-in). Read-only.
    pub fn input_paths(&self, name: &str) -> Result<&[PathBuf], StageError> {
        self.inputs
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StageError::failed(format!("Stage has no input named `{name}`")))
    }

    /// The single path bound to an input.
    pub fn input_path(&self, name: &str) -> Result<&Path, StageError> {
        match self.input_paths(name)? {
            [one] => Ok(one),
            many => Err(StageError::failed(format!(
                "Input `{name}` is bound to {} outputs; this stage expects exactly one",
                many.len()
            ))),
        }
    }

    /// Every input, by name.
    pub fn inputs(&self) -> &BTreeMap<String, Vec<PathBuf>> {
        &self.inputs
    }

    /// Where to write a declared output.
    pub fn output_path(&self, name: &str) -> Result<&Path, StageError> {
        self.outputs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| StageError::failed(format!("Stage declares no output `{name}`")))
    }

    /// Every output path, by name.
    pub fn outputs(&self) -> &BTreeMap<String, PathBuf> {
        &self.outputs
    }

    /// The folder holding the pipeline file; workspace dependencies are relative to it.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// A seed derived from the stage key: same params and inputs, same seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Environment variables the stage must set for child processes (`CUDA_VISIBLE_DEVICES`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// A handle to the log file, e.g. for a child process's stdout and stderr.
    pub fn log_file(&self) -> std::io::Result<File> {
        self.log.lock().expect("log poisoned").try_clone()
    }

    /// Appends a line to the stage's log.
    pub fn log(&self, line: &str) {
        let mut file = self.log.lock().expect("log poisoned");
        let _ = writeln!(file, "{line}");
    }

    /// Whether the run was cancelled (Ctrl-C); long work should check and return early.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The flag [`StageContext::is_cancelled`] reads, for [`crate::run_child`].
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Records a fact about how the stage ran (`device` = `cuda:0`): kept with its cache entry
    /// and shown by `mipipe show`. Facts describe a run; they never enter a key. A later value
    /// of the same name replaces the earlier one.
    pub fn record_fact(&self, name: &str, value: &str) {
        let Some(path) = &self.facts_file else {
            return;
        };
        let mut facts = read_facts(path);
        facts.insert(name.to_string(), value.to_string());
        let text = serde_json::to_vec(&facts).expect("string maps serialise");
        let _ = mipipe_cache::write_atomic(path, &text);
    }

    /// Reports progress (shown as a per-stage bar on a terminal).
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        if let Some(sink) = &self.progress {
            sink.progress(done, total, message);
        }
    }
}

/// The facts a stage recorded in `path` ([`StageContext::record_fact`]); none when the file is
/// missing or unreadable.
pub fn read_facts(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}
