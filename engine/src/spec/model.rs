//! The resolved model: concrete stage instances ([`ResolvedStage`]) bound to their producers,
//! in a topological order ([`Pipeline`]), and the queries the commands ask of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::cluster::{ClusterOptions, Executor};
use crate::span::{Sources, Span};
use crate::stage::{OutputSpec, Resources, StageKind};

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
