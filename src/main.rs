//! The `mipipe` binary: wires stage kinds, the terminal reporter, the worker launcher and the
//! Slurm executor to the engine (`commands/`, one file per subcommand), and exits with the
//! codes of the engine's one table, [`mipipe_engine::Exit`] (0 ok, 1 a stage failed, 2 invalid
//! pipeline or usage, 3 environment, 70 a bug in mipipe, 130 interrupted).

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod commands;
mod launcher;
mod reporter;
mod style;

use std::process::ExitCode;

use clap::Parser;
use miette::Diagnostic;
use mipipe_engine::Exit;

/// Every stage kind this binary was built with.
pub fn registry() -> mipipe_engine::Registry {
    registry_with(cfg!(feature = "torch"))
}

/// The stage kinds, the libtorch ones runnable (through the worker) or not.
fn registry_with(libtorch: bool) -> mipipe_engine::Registry {
    use mipipe_stage_torch_types::{FinetuneStage, PredictStage, PretrainStage};
    let mut registry = mipipe_engine::Registry::new();
    registry.register(mipipe_stage_command::CommandStage);
    registry.register(mipipe_stage_data::SynthStage);
    registry.register(mipipe_stage_data::PerturbStage);
    registry.register(mipipe_stage_data::SelectStage);
    registry.register(mipipe_stage_data::ConvertStage);
    registry.register(mipipe_stage_report::EvaluateStage);
    registry.register(mipipe_stage_report::TableStage);
    // Declared here, run by `mipipe-torch-worker`: this process never loads libtorch.
    if libtorch {
        registry.register(PretrainStage::default());
        registry.register(FinetuneStage::default());
        registry.register(PredictStage::default());
    } else {
        registry.register(WithoutLibtorch(PretrainStage::default()));
        registry.register(WithoutLibtorch(FinetuneStage::default()));
        registry.register(WithoutLibtorch(PredictStage::default()));
    }
    registry
}

/// A libtorch kind in a build without libtorch (`--no-default-features`): the same params,
/// outputs and version (so pipelines load and keys do not change), but running it fails with
/// a hint to rebuild.
struct WithoutLibtorch<S>(S);

impl<S: mipipe_engine::Stage> mipipe_engine::Stage for WithoutLibtorch<S> {
    type Params = S::Params;
    const KIND: &'static str = S::KIND;
    const VERSION: u32 = S::VERSION;
    const SUMMARY: &'static str = S::SUMMARY;

    fn outputs(params: &S::Params) -> Vec<mipipe_engine::OutputSpec> {
        S::outputs(params)
    }

    fn workspace_deps(params: &S::Params) -> Vec<String> {
        S::workspace_deps(params)
    }

    fn run(
        &self,
        _params: &S::Params,
        _ctx: &mipipe_engine::StageContext,
    ) -> Result<(), mipipe_engine::StageError> {
        Err(mipipe_engine::StageError::environment(format!(
            "Stage kind `{}` needs libtorch, and this mipipe was built without it (`--no-default-features`); rebuild with the default features: `bash scripts/setup-libtorch.sh && cargo build --release`",
            S::KIND
        )))
    }
}

/// Errors that end the process, each with its exit code.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CliError {
    /// The pipeline could not be loaded.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Pipeline(#[from] mipipe_engine::LoadError),
    /// Bad command-line usage.
    #[error("{message}")]
    #[diagnostic(code(mipipe::usage))]
    Usage {
        /// What is wrong.
        message: String,
        /// How to fix it.
        #[help]
        help: Option<String>,
    },
    /// The environment failed (I/O, permissions).
    #[error("{0}")]
    #[diagnostic(code(mipipe::environment))]
    Environment(String),
    /// The run ended with failed stages (already reported), or interrupted.
    #[error("{0}")]
    #[diagnostic(code(mipipe::stage_failed))]
    StagesFailed(String, Exit),
}

impl CliError {
    fn exit(&self) -> Exit {
        match self {
            Self::Pipeline(_) | Self::Usage { .. } => Exit::Usage,
            Self::Environment(_) => Exit::Environment,
            Self::StagesFailed(_, exit) => *exit,
        }
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Commands that only print (`show`, `status`, `dag`, `log`, `stages`, `cache`) end quietly
    // when their reader goes away (`mipipe show --json x | head -1`), as other tools do,
    // instead of panicking on the broken pipe. `run` and `exec-stage` keep ignoring SIGPIPE:
    // a closed terminal must not kill a run halfway through committing.
    if !matches!(
        cli.command,
        cli::Command::Run(_) | cli::Command::ExecStage(_)
    ) {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let colour = style::Style::stderr();
    miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(colour.is_colour())
                .terminal_links(false)
                .width(100)
                .build(),
        )
    }))
    .ok();
    // A panic is a bug in mipipe: exit 70 (the default hook has printed it), never Rust's 101.
    let result = std::panic::catch_unwind(|| commands::dispatch(cli, colour));
    let Ok(result) = result else {
        eprintln!("This is a bug in mipipe; please report it with the message above");
        return ExitCode::from(Exit::Internal.code());
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit().code();
            if !matches!(error, CliError::StagesFailed(..)) {
                eprintln!("{:?}", miette::Report::new(error));
            } else {
                eprintln!("{error}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TORCH_PIPELINE: &str =
        "version: 1\nstages:\n  base:\n    kind: pretrain\n    params: {family: llava, epochs: 1}\n";

    #[test]
    fn a_build_without_libtorch_keeps_the_torch_kinds_and_their_keys_but_runs_none() {
        let load = |libtorch| {
            mipipe_engine::Pipeline::from_text(
                "mipipe.yaml",
                TORCH_PIPELINE,
                std::path::Path::new("."),
                &registry_with(libtorch),
                &mipipe_engine::LoadOptions::default(),
            )
            .expect("the pipeline loads either way")
        };
        let (with, without) = (load(true), load(false));
        for (a, b) in with.stages.iter().zip(&without.stages) {
            assert_eq!(a.params, b.params);
            assert_eq!(a.kind.version(), b.kind.version());
            assert!(a.kind.wants_worker_process(&a.params));
            assert!(!b.kind.wants_worker_process(&b.params));
        }
        let dir = tempfile::tempdir().unwrap();
        let job = mipipe_engine::Job {
            version: 1,
            stage: "base".into(),
            kind: "pretrain".into(),
            kind_version: without.stages[0].kind.version(),
            params: without.stages[0].params.clone(),
            inputs: Default::default(),
            outputs: Default::default(),
            workspace: dir.path().to_path_buf(),
            seed: 1,
            env: Vec::new(),
            log: dir.path().join("log"),
            worker: None,
            progress_file: None,
            facts_file: None,
        };
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let error = mipipe_engine::run_job(&registry_with(false), &job, cancel).unwrap_err();
        assert_eq!(error.class(), mipipe_engine::ErrorClass::Environment);
        assert!(error.message().contains("built without it"), "{error}");
    }
}
