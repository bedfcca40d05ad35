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

mod cluster;
mod diagnostic;
mod execute;
mod fsutil;
mod job;
mod lockfile;
mod pipeline;
mod plan;
mod reporter;
mod stage;
pub mod template;
mod uptodate;
mod yaml;

pub use cluster::{ClusterOptions, Executor};
pub use diagnostic::{did_you_mean, PipelineError, SpecError, SpecErrorKind};
pub use execute::{execute, Outcome, RunOptions, RunSummary};
pub use job::{
    read_progress, run_job, run_pipeline_stage, Job, PipelineStageJob, PipelineStageJobError,
    WorkerLauncher,
};
pub use lockfile::{LockEntry, Lockfile};
pub use pipeline::{LoadError, LoadOptions, Pipeline, ResolvedStage, Upstream};
pub use plan::{
    dependency_input_name, plan, stage_key, stage_seed, InputDigests, Plan, Reason, StageStatus,
};
pub use reporter::{Reporter, SilentReporter};
pub use stage::{
    ErrorClass, OutputKind, OutputSpec, ParamDoc, ParamError, ProgressSink, Registry, Resources,
    Stage, StageContext, StageError, StageKind,
};
pub use uptodate::{check_up_to_date, record_up_to_date, Fingerprint};
pub use yaml::{Node, NodeValue, Source, Sources, Span};
