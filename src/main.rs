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
    let mut registry = mipipe_engine::Registry::new();
    registry.register(mipipe_stage_command::CommandStage);
    registry.register(mipipe_stage_data::SynthStage);
    registry.register(mipipe_stage_data::PerturbStage);
    registry.register(mipipe_stage_data::ConvertStage);
    registry.register(mipipe_stage_report::EvaluateStage);
    registry.register(mipipe_stage_report::TableStage);
    // Declared here, run by `mipipe-torch-worker`: this process never loads libtorch.
    #[cfg(feature = "torch")]
    {
        registry.register(mipipe_stage_torch_types::PretrainStage::default());
        registry.register(mipipe_stage_torch_types::FinetuneStage::default());
        registry.register(mipipe_stage_torch_types::PredictStage::default());
    }
    registry
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
    let colour = style::Style::detect();
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
