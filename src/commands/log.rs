//! `mipipe log STAGE`: the log of the stage's latest run.

use std::path::PathBuf;

use super::{json_line, NamedStage};
use crate::cli::PipelineArgs;
use crate::CliError;

pub(super) fn log(
    name: &str,
    args: &PipelineArgs,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    let NamedStage {
        pipeline,
        index,
        cache,
        lock,
        key,
        ..
    } = NamedStage::find(args, name, cache_dir)?;
    let stage_name = &pipeline.stages[index].name;
    let candidates = key
        .into_iter()
        .chain(lock.stages.get(stage_name).map(|e| e.key));
    for key in candidates {
        if let Some((dir, _)) = cache.runs().latest(&key) {
            let text = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            if json {
                json_line(&serde_json::json!({"stage": stage_name, "key": key, "log": text}));
            } else {
                print!("{text}");
            }
            return Ok(());
        }
    }
    Err(CliError::Usage {
        message: format!("No run of `{stage_name}` is recorded in this cache"),
        help: Some("Stages served from another cache folder keep their logs there; run the stage with `mipipe run --force`".into()),
    })
}
