//! `mipipe exec-stage JOB`: runs one job description in this process, a resolved stage (worker
//! processes) or one stage of a pipeline file (cluster jobs), and exits with the code of
//! [`Exit`]'s table.

use std::path::Path;
use std::sync::Arc;

use mipipe_engine::{Exit, Outcome, Reporter};

use super::cancel_on_ctrl_c;
use crate::launcher::SubprocessLauncher;
use crate::reporter::TerminalReporter;
use crate::style::Style;
use crate::{registry, CliError};

pub(super) fn exec_stage(job_file: &Path) -> Result<(), CliError> {
    let bytes = std::fs::read(job_file).map_err(|e| {
        CliError::Environment(format!("Cannot read job `{}`: {e}", job_file.display()))
    })?;
    /// The two kinds of job description.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum AnyJob {
        /// One stage of a pipeline file (cluster jobs).
        Stage(mipipe_engine::PipelineStageJob),
        /// A stage with resolved input and output paths (worker processes).
        Resolved(mipipe_engine::Job),
    }
    let job: AnyJob = serde_json::from_slice(&bytes).map_err(|e| CliError::Usage {
        message: format!(
            "`{}` is not a mipipe job description: {e}",
            job_file.display()
        ),
        help: None,
    })?;
    let cancel = cancel_on_ctrl_c(false);
    let failure = |class, message: String| CliError::StagesFailed(message, Exit::of_class(class));
    match job {
        AnyJob::Resolved(job) => mipipe_engine::run_job(&registry(), &job, cancel)
            .map_err(|e| failure(e.class(), e.message().to_string())),
        AnyJob::Stage(job) => {
            let program = std::env::current_exe().map_err(|e| {
                CliError::Environment(format!("Cannot locate the mipipe executable: {e}"))
            })?;
            // The summary (with a failure's log tail) goes to the job's output, which the
            // submitting run shows.
            let reporter: Arc<dyn Reporter> =
                Arc::new(TerminalReporter::new(false, Style::stderr()));
            let outcome = mipipe_engine::run_pipeline_stage(
                &registry(),
                &job,
                cancel,
                Some(Arc::new(SubprocessLauncher::new(program))),
                &reporter,
            )
            .map_err(|e| CliError::Environment(e.to_string()))?;
            match outcome {
                Outcome::Executed { .. } | Outcome::Cached { .. } => Ok(()),
                Outcome::Failed { error, class, .. } => Err(failure(class, error)),
                Outcome::Skipped { cause } => Err(CliError::StagesFailed(
                    format!("Not run: {cause}"),
                    Exit::StageFailed,
                )),
                Outcome::Cancelled => Err(CliError::StagesFailed(
                    "Cancelled".into(),
                    Exit::Interrupted,
                )),
            }
        }
    }
}
