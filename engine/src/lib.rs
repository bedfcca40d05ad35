//! mipipe-engine: pipeline spec -> DAG -> keys -> plan -> execution.
//!
//! ```text
//!  YAML text ──yaml::parse──> spanned nodes ──Pipeline::from_text──> ResolvedStage DAG
//!                                 (matrix expansion, defaults, --set, ${vars}/${params},
//!                                  typed params via the kind, input binding, cycle check)
//!  DAG + Cache + Lockfile ──plan──> Plan (per stage: cached | will run + reasons)
//!  DAG + Cache ──execute──> RunSummary (+ mipipe.lock updated), events to a Reporter
//! ```
//!
//! The engine defines the stage contract ([`Stage`], [`StageContext`]), the [`Reporter`]
//! trait and the [`WorkerLauncher`] that runs a stage in another process. It knows no stage
//! kind, no terminal and no libtorch; the binary wires kinds, reporter and launcher together.

mod child;
mod cluster;
mod diagnostic;
mod execute;
mod exit;
mod fsutil;
mod gpu_memory;
mod job;
mod key;
mod lockfile;
mod outcome;
mod pipeline_job;
mod plan;
mod reason;
mod remote;
mod reporter;
mod run_stage;
mod span;
mod spec;
mod stage;
pub mod template;
mod uptodate;
mod yaml;

pub use child::{describe_exit, run_child, ChildError, ChildExit, PeakMemory, SUPERVISOR};
pub use cluster::{ClusterOptions, Executor};
pub use diagnostic::{did_you_mean, PipelineError, SpecError, SpecErrorKind};
pub use execute::{execute, RunOptions};
pub use exit::Exit;
pub use job::{read_progress, run_job, Job, WorkerLauncher};
pub use key::{dependency_input_name, dependency_path, flatten_params};
pub use lockfile::{LockEntry, Lockfile};
pub use outcome::{Outcome, RunSummary};
pub use pipeline_job::{run_pipeline_stage, PipelineStageJob, PipelineStageJobError};
pub use plan::{plan, Plan, StageStatus};
pub use reason::Reason;
pub use remote::{RemoteExecutor, RemoteJob, RemoteState};
pub use reporter::{Reporter, SilentReporter};
pub use span::{Source, Sources, Span};
pub use spec::{LoadError, LoadOptions, Pipeline, ResolvedStage, Upstream};
pub use stage::{
    visible_devices, ErrorClass, OutputKind, OutputSpec, ParamDoc, ParamError, ProgressSink,
    Registry, Resources, Stage, StageContext, StageError, StageKind,
};
pub use uptodate::{check_up_to_date, record_up_to_date, Fingerprint};
