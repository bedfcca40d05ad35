//! The pipeline spec: YAML text -> a checked DAG of concrete stage instances, in phases, each a
//! function over one diagnostics collector ([`check::Checker`]) so that every problem of a file
//! is reported together, each labelling its YAML span.
//!
//! ```text
//!  load       read the file; run the phases below over its text
//!  raw        yaml::parse -> RawPipeline: the file as written, key by key; `--set` grouped;
//!             `defaults` checked against the kinds in use
//!  matrix     each `matrix:` -> instances `train[lr=0.1,seed=1]` (include/exclude)
//!  resolve    per instance: defaults, `--set`, dotted names nested (`nested`), typed params
//!             (the canonical form is what is hashed), resources, executor, materialize
//!             paths; `interpolate` substitutes `${vars.*}`/`${params.*}`/`${matrix.*}` and
//!             checks what is left for the stage
//!  reference  inputs bound to producer instances (selectors, fan-in, matrix joins)
//!  graph      cycle check (Tarjan, reported as a path); Kahn order preferring file order
//!  model      the result: ResolvedStage, Pipeline
//! ```

mod check;
mod graph;
mod interpolate;
mod load;
mod matrix;
mod model;
mod nested;
mod raw;
mod reference;
mod resolve;

pub use load::{LoadError, LoadOptions};
pub use model::{Pipeline, ResolvedStage, Upstream};

use crate::cluster::Executor;
use crate::span::SourceId;

/// Runs every phase; `None` (with the problems in `check`) when the pipeline is invalid.
fn resolve_pipeline(
    check: &mut check::Checker<'_>,
    file: SourceId,
    overrides: &[(SourceId, String)],
) -> Option<(Vec<ResolvedStage>, Executor)> {
    let mut raw = raw::read(check, file)?;
    let stage_overrides = raw::group_overrides(check, &mut raw, overrides);
    raw::check_defaults(check, &raw);
    let instances = resolve::resolve_stages(check, &raw, &stage_overrides);
    if !check.errors.is_empty() {
        return None;
    }
    let (stages, edge_spans) = reference::bind_all(check, &raw.stages, instances)?;
    if !check.errors.is_empty() {
        return None;
    }
    let stages = graph::ordered(check, stages, &edge_spans)?;
    Some((stages, raw.executor))
}
