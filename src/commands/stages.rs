//! `mipipe stages [KIND]`: the stage kinds of this build and their params.

use super::json_line;
use crate::{registry, CliError};

pub(super) fn stages(kind: Option<&str>, json: bool) -> Result<(), CliError> {
    let registry = registry();
    let kinds: Vec<_> = match kind {
        None => registry.kinds().collect(),
        Some(name) => match registry.get(name) {
            Some(k) => vec![k],
            None => {
                let names: Vec<&str> = registry.kinds().map(|k| k.kind()).collect();
                return Err(CliError::Usage {
                    message: format!("Unknown stage kind `{name}`"),
                    help: Some(format!("Kinds: {}", names.join(", "))),
                });
            }
        },
    };
    if json {
        for k in &kinds {
            json_line(
                &serde_json::json!({"kind": k.kind(), "version": k.version(), "summary": k.summary(), "params": k.params(), "accepts_extra_params": k.accepts_extra_params()}),
            );
        }
        return Ok(());
    }
    for k in kinds {
        println!("{} (v{}): {}", k.kind(), k.version(), k.summary());
        if kind.is_some() {
            for p in k.params() {
                let requirement = if p.required {
                    "required".to_string()
                } else {
                    match &p.default {
                        Some(d) => format!("default {d}"),
                        None => "optional".to_string(),
                    }
                };
                println!("  {:<10} {} ({requirement})", p.name, p.type_name);
                for line in p.doc.lines() {
                    println!("             {line}");
                }
            }
            if k.accepts_extra_params() {
                println!("  any other key is a free param, usable as ${{params.NAME}}");
            }
        }
    }
    Ok(())
}
