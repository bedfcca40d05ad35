//! `mipipe dag`: the resolved stage graph as text, Graphviz or Mermaid (or JSON lines).

use std::fmt::Write as _;

use super::{json_line, load};
use crate::cli::{DagFormat, PipelineArgs};
use crate::CliError;

pub(super) fn dag(args: &PipelineArgs, format: DagFormat, json: bool) -> Result<(), CliError> {
    let pipeline = load(args)?;
    if json {
        // One line per stage instance, in order, with what each input reads.
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let inputs: Vec<_> = pipeline
                .edges()
                .filter(|e| e.1 == i)
                .map(|(from, _, input, output)| {
                    serde_json::json!({"input": input, "stage": pipeline.stages[from].name, "output": output})
                })
                .collect();
            json_line(
                &serde_json::json!({"stage": stage.name, "base": stage.base, "kind": stage.kind.kind(), "inputs": inputs}),
            );
        }
        return Ok(());
    }
    let mut out = String::new();
    match format {
        DagFormat::Text => {
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let _ = writeln!(out, "{} ({})", stage.name, stage.kind.kind());
                for (from, _, input, output) in pipeline.edges().filter(|e| e.1 == i) {
                    let _ = writeln!(
                        out,
                        "    {input} <- {}.{output}",
                        pipeline.stages[from].name
                    );
                }
            }
        }
        DagFormat::Dot => {
            out.push_str("digraph mipipe {\n  rankdir=LR;\n  node [shape=box];\n");
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let label = stage.name.replace('"', "\\\"");
                let _ = writeln!(out, "  {} [label=\"{label}\"];", node_id(i));
            }
            for (from, to, input, _) in pipeline.edges() {
                let _ = writeln!(
                    out,
                    "  {} -> {} [label=\"{input}\"];",
                    node_id(from),
                    node_id(to)
                );
            }
            out.push_str("}\n");
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (i, stage) in pipeline.stages.iter().enumerate() {
                let label = stage.name.replace('"', "#quot;");
                let _ = writeln!(out, "  {}[\"{label}\"]", node_id(i));
            }
            for (from, to, input, _) in pipeline.edges() {
                let _ = writeln!(out, "  {} -->|{input}| {}", node_id(from), node_id(to));
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn node_id(index: usize) -> String {
    format!("s{index}")
}
