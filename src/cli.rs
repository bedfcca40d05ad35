//! Command-line interface definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// mipipe runs declarative ML pipelines incrementally: every stage is keyed by the hash of
/// its resolved params and the content of its inputs, results are stored content-addressed,
/// and only what changed runs again.
#[derive(Parser, Debug)]
#[command(
    name = "mipipe",
    version,
    propagate_version = true,
    after_help = "\
Examples:
  mipipe run                          run mipipe.yaml in this folder
  mipipe run pipelines/quick.yaml -j 2
  mipipe status --set train.lr=0.01   what would rerun if lr changed, and why
  mipipe dag --format mermaid         draw the DAG
  mipipe show 'train[lr=0.1,seed=1]'  key, params, inputs and outputs of one stage
  mipipe cache gc --dry-run           what garbage collection would remove"
)]
pub struct Cli {
    /// Where cached results live [default: .mipipe/ beside the pipeline].
    #[arg(long, global = true, env = "MIPIPE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of text (for `run`: one event per line).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Which pipeline, with which overrides.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The pipeline file.
    #[arg(default_value = "mipipe.yaml", value_name = "PIPELINE")]
    pub pipeline: PathBuf,

    /// Override a param before hashing: `STAGE.PARAM=VALUE` or `vars.NAME=VALUE` (YAML value).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the stages that are not cached, in parallel, and update the lockfile.
    ///
    /// A stage runs when no cache entry matches its key; `mipipe status` says why. A stage
    /// whose inputs come out byte-identical to last time is not rerun downstream.
    Run(RunArgs),
    /// Show every stage: cached, or will run and why. Runs nothing.
    Status(StatusArgs),
    /// Print the DAG of stage instances.
    Dag(DagArgs),
    /// Show one stage: key, params, inputs and outputs with digests, timing.
    Show(ShowArgs),
    /// Print the log of a stage's latest run.
    Log(ShowArgs),
    /// Wall time recorded for each cached stage, per kind (or per kind and param value).
    Timings(TimingsArgs),
    /// One table of every instance of a stage as the last run left it: params and metrics.
    ///
    /// Reads the lockfile and the cache (nothing runs). Several pipelines or lockfiles put
    /// their instances in one table.
    Compare(CompareArgs),
    /// What changed between two recorded runs: stages, params, outputs and table cells.
    ///
    /// OLD and NEW are lockfiles, git revisions of `--lockfile` (`HEAD~1`) or `REV:PATH`. Each
    /// changed table cell comes with the chain of changed stages that explains it.
    Diff(DiffArgs),
    /// Write one self-contained HTML report of what the last run left.
    ///
    /// Tables (a click on a cell shows its stages, params, log and the training curves
    /// upstream), figures, why the last run's stages ran, its timeline, and per stage its wall
    /// time and peak memory. Reads the lockfile and the cache (nothing runs); opens offline.
    Report(ReportArgs),
    /// Inspect and maintain the cache folder.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// List stage kinds, or document one kind's params.
    Stages(StagesArgs),
    /// Run one stage from a serialised job description (used by worker processes and
    /// cluster jobs; not usually run by hand).
    #[command(hide = true)]
    ExecStage(ExecStageArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,

    /// Run only these stages and what they depend on (a stage name selects every matrix
    /// instance; quote instance names: 'train[lr=0.1]').
    #[arg(long = "target", short = 't', value_name = "STAGE")]
    pub targets: Vec<String>,

    /// Rerun these stages even if cached (their dependents rerun only if outputs change).
    #[arg(long = "force", short = 'f', value_name = "STAGE", num_args = 0..)]
    pub force: Option<Vec<String>>,

    /// Print the plan and run nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,

    /// CPU slots: how many CPU stages run at once [default: number of cores].
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,

    /// GPU device slots; a stage with `resources: {gpus: K}` takes K of them and gets
    /// `CUDA_VISIBLE_DEVICES` [default: GPUs visible to this process].
    #[arg(long, value_name = "N")]
    pub gpus: Option<usize>,

    /// After a failure, keep running every stage that does not depend on it.
    #[arg(long, short = 'k')]
    pub keep_going: bool,

    /// Run every stage in its own worker process (`mipipe exec-stage`) for crash isolation.
    #[arg(long)]
    pub isolate: bool,

    /// Where stages run unless they set `executor:` themselves [default: the pipeline's
    /// `executor:`, else local]. `slurm` submits one job per stage (see docs/slurm.md).
    #[arg(long, value_enum, value_name = "EXECUTOR")]
    pub executor: Option<ExecutorArg>,

    /// With Slurm: submit the jobs and return; `mipipe status` shows their progress and a
    /// later `mipipe run` records their results.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExecutorArg {
    /// This machine.
    Local,
    /// One Slurm job per stage.
    Slurm,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Only these stages and what they depend on.
    #[arg(long = "target", short = 't', value_name = "STAGE")]
    pub targets: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DagFormat {
    /// Indented text.
    Text,
    /// Graphviz dot.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

#[derive(Args, Debug)]
pub struct DagArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DagFormat,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Stage instance name (or a stage name without a matrix).
    pub stage: String,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Args, Debug)]
pub struct TimingsArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Group each kind's stages by this param's value (e.g. `method`; dotted for a field of a
    /// mapping param, `pgd.steps`; a matrix axis the stage only joins on counts too).
    #[arg(long, value_name = "PARAM")]
    pub by: Option<String>,
    /// Also print each group's mean over the mean of this value's group of the same kind.
    #[arg(long, value_name = "VALUE", requires = "by")]
    pub baseline: Option<String>,
    /// Only these kinds.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only the instances of these stages (base names: `finetune`, not a sweep beside it).
    #[arg(long = "stage", value_name = "NAME")]
    pub stages: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Pipelines (their lockfiles are read) or lockfiles; `mipipe.yaml` when none is given.
    #[arg(value_name = "PIPELINE|LOCKFILE")]
    pub sources: Vec<PathBuf>,
    /// The stage whose instances are compared (a matrix stage's base name: `evaluate`).
    #[arg(long, value_name = "NAME")]
    pub stage: String,
    /// Only metrics whose `dataset/condition/metric` matches this glob (`*` matches anything);
    /// repeat for several.
    #[arg(long = "metric", value_name = "GLOB")]
    pub metrics: Vec<String>,
    /// Only the params and metrics that differ between rows.
    #[arg(long)]
    pub only_changed: bool,
    /// Sort rows by this column: `stage`, a param (dotted: `pgd.steps`) or a metric.
    #[arg(long, value_name = "COLUMN")]
    pub sort_by: Option<String>,
    /// Sort in descending order.
    #[arg(long, requires = "sort_by")]
    pub desc: bool,
    /// Pool rows that differ only in one param: `all-but-seed` gives each configuration's
    /// mean, standard deviation and 95% interval over its seeds.
    #[arg(long, value_name = "all-but-PARAM")]
    pub group_by: Option<String>,
    /// Output format (`--json` also selects JSON).
    #[arg(long, value_enum, default_value = "md")]
    pub format: CompareFormat,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The earlier run: a lockfile, a git revision, or `REV:PATH`.
    pub old: String,
    /// The later run (default: the lockfile as it is now).
    #[arg(default_value = "mipipe.lock")]
    pub new: String,
    /// The lockfile a bare revision refers to; its folder's `.mipipe` is the cache read for
    /// table cells (`--cache-dir` to name another).
    #[arg(long, default_value = "mipipe.lock", value_name = "PATH")]
    pub lockfile: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The pipeline (its lockfile is read) or a lockfile.
    #[arg(default_value = "mipipe.yaml", value_name = "PIPELINE|LOCKFILE")]
    pub pipeline: PathBuf,
    /// The HTML file to write (default: `<pipeline>-report.html` beside the lockfile). An
    /// existing file is replaced only if mipipe wrote it.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompareFormat {
    /// A Markdown table.
    Md,
    /// CSV with numbers as columns.
    Csv,
    /// One JSON object per row.
    Json,
    /// A LaTeX tabular (booktabs).
    Tex,
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Disk usage per area of the cache.
    Du(CacheArgs),
    /// Remove entries and objects no lockfile and no recent run references.
    Gc(GcArgs),
    /// Re-hash every object; move corrupt ones to quarantine and drop entries naming them.
    Verify(CacheArgs),
    /// Print the blake3 digest of files, as the cache names them (same as `b3sum`).
    Hash(HashArgs),
}

#[derive(Args, Debug)]
pub struct HashArgs {
    /// Files to hash.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    /// A pipeline whose folder locates the default cache.
    #[arg(default_value = "mipipe.yaml", value_name = "PIPELINE")]
    pub pipeline: PathBuf,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Pipelines whose lockfiles name what to keep (every stage they record is kept).
    #[arg(default_value = "mipipe.yaml", value_name = "PIPELINE")]
    pub pipelines: Vec<PathBuf>,
    /// Also keep entries written in the last DAYS days.
    #[arg(long, default_value_t = 7.0, value_name = "DAYS")]
    pub keep_recent: f64,
    /// Only report what would be removed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct StagesArgs {
    /// A kind to document.
    pub kind: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExecStageArgs {
    /// The job description (JSON) written by the engine.
    pub job: PathBuf,
}
