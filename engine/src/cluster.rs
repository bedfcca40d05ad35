//! Where a stage runs: on this machine, or as a job of a cluster scheduler (Slurm).
//!
//! The engine only parses and carries these settings; the executor that submits jobs lives in
//! its own crate and is wired in by the binary.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which executor runs a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Worker threads (or worker processes) of the `mipipe run` process.
    #[default]
    Local,
    /// One Slurm job per stage, submitted with `sbatch`.
    Slurm,
}

/// Scheduler options of a stage (`slurm:` at the top of a pipeline, overridden per stage).
/// CPUs and GPUs come from the stage's `resources`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterOptions {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// `--time` (e.g. `"4:00:00"`).
    #[serde(default)]
    pub time: Option<String>,
    /// `--mem` (e.g. `"16G"`).
    #[serde(default)]
    pub mem: Option<String>,
    /// Any other `sbatch` arguments, appended as given.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl ClusterOptions {
    /// `self`, with every field `over` sets taken from `over` (extra args are appended).
    pub fn overridden_by(&self, over: &ClusterOptions) -> ClusterOptions {
        ClusterOptions {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            qos: over.qos.clone().or_else(|| self.qos.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            extra_args: self
                .extra_args
                .iter()
                .chain(&over.extra_args)
                .cloned()
                .collect(),
        }
    }
}
