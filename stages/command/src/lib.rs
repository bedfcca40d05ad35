//! The `command` stage kind: any shell command as a cached node of the DAG.
//!
//! ```yaml
//! train:
//!   kind: command
//!   inputs: {data: prepare.table}
//!   params:
//!     cmd: python3 train.py --data ${inputs.data} --lr ${params.lr} --out ${outs.model}
//!     lr: 0.1                 # free params feed ${params.*} and the key
//!     deps: [train.py]        # workspace files, hashed by content
//!     outs: {model: model.bin}
//! ```
//!
//! The command runs with `sh -c` in the pipeline's folder. `${inputs.NAME}` expands to the
//! read-only path(s) of an input (several, space-separated, for a fan-in) and `${outs.NAME}` to
//! where the output must be written; both are shell-quoted. stdout and stderr go to the stage's
//! log. The command runs in its own process group so Ctrl-C stops all of it.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::process::{Command, Stdio};

use mipipe_engine::template::{self, shell_quote};
use mipipe_engine::{
    describe_exit, run_child, OutputKind, OutputSpec, Stage, StageContext, StageError, SUPERVISOR,
};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A relative path inside the stage's output folder (`model.bin`, `plots/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct OutPath(String);

impl<'de> Deserialize<'de> for OutPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let path = Path::new(text.trim_end_matches('/'));
        let ok = !text.trim_end_matches('/').is_empty()
            && path.components().all(|c| matches!(c, Component::Normal(_)));
        if ok {
            Ok(Self(text))
        } else {
            Err(serde::de::Error::custom(format!(
                "`{text}` must be a relative file name without `..` (end it with `/` for a directory)"
            )))
        }
    }
}

/// Params of the `command` kind.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct CommandParams {
    /// The shell command, run with `sh -c` in the pipeline's folder. Use `${inputs.NAME}`,
    /// `${outs.NAME}`, `${params.NAME}` and `${vars.NAME}`.
    pub cmd: String,
    /// Workspace files or folders the command reads. Their content enters the stage key, so
    /// editing one reruns the stage.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Outputs: name -> file name the command writes. A file name ending in `/` is a
    /// directory output.
    #[serde(default)]
    pub outs: BTreeMap<String, OutPath>,
    /// Environment variables for the command (they enter the key).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Any other key is a free param: it feeds `${params.NAME}` and the stage key.
    #[serde(flatten)]
    pub values: BTreeMap<String, Value>,
}

/// A param as command-line text: strings bare, anything else as JSON.
fn param_text(params: &Value, name: &str) -> Option<String> {
    params.get(name).map(template::value_text)
}

/// The `command` stage kind.
#[derive(Default)]
pub struct CommandStage;

impl Stage for CommandStage {
    type Params = CommandParams;
    const KIND: &'static str = "command";
    const VERSION: u32 = 2;
    const SHELL_PARAMS: &'static [&'static str] = &["cmd"];
    const SUMMARY: &'static str = "Run a shell command with declared file dependencies and outputs";

    fn outputs(params: &CommandParams) -> Vec<OutputSpec> {
        params
            .outs
            .iter()
            .map(|(name, path)| OutputSpec {
                name: name.clone(),
                file_name: path.0.trim_end_matches('/').to_string(),
                kind: if path.0.ends_with('/') {
                    OutputKind::Dir
                } else {
                    OutputKind::File
                },
            })
            .collect()
    }

    fn workspace_deps(params: &CommandParams) -> Vec<String> {
        params.deps.clone()
    }

    fn run(&self, params: &CommandParams, ctx: &StageContext) -> Result<(), StageError> {
        let all_params = serde_json::to_value(params).unwrap_or_default();
        let script = template::expand(&params.cmd, true, |namespace, name| match namespace {
            // Values are quoted so that none runs as shell code; `${raw.params.NAME}` pastes
            // one as is.
            "params" => param_text(&all_params, name).map(|v| shell_quote(&v)),
            "raw" => name
                .strip_prefix("params.")
                .and_then(|n| param_text(&all_params, n)),
            "inputs" => ctx.inputs().get(name).map(|paths| {
                paths
                    .iter()
                    .map(|p| shell_quote(&p.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
            "outs" => ctx
                .outputs()
                .get(name)
                .map(|p| shell_quote(&p.to_string_lossy())),
            _ => None,
        })
        .map_err(|e| StageError::failed(e.message))?;
        ctx.log(&format!("$ {script}"));
        let log = ctx
            .log_file()
            .map_err(|e| StageError::environment(format!("Cannot open the stage log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| StageError::environment(format!("Cannot open the stage log: {e}")))?;
        // The shell runs under the supervisor, so that its whole process group ends with the
        // run that started it.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(ctx.workspace())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env("MIPIPE_STAGE", ctx.stage_name())
            .env("MIPIPE_SEED", ctx.seed().to_string());
        for (k, v) in &params.env {
            let value = template::expand(v, true, |namespace, name| match namespace {
                // Values are quoted so that none runs as shell code; `${raw.params.NAME}` pastes
                // one as is.
                "params" => param_text(&all_params, name).map(|v| shell_quote(&v)),
                "raw" => name
                    .strip_prefix("params.")
                    .and_then(|n| param_text(&all_params, n)),
                _ => None,
            })
            .map_err(|e| StageError::failed(e.message))?;
            command.env(k, value);
        }
        let exit = run_child(&mut command, ctx.env(), ctx.cancel_flag(), || {}).map_err(|e| {
            StageError::environment(format!("Running `sh` for the command failed: {e}"))
        })?;
        ctx.peak_memory().record(&exit);
        let status = exit.status;
        if status.success() {
            return Ok(());
        }
        Err(StageError::failed(format!(
            "Command {}",
            describe_exit(status)
        )))
    }
}
