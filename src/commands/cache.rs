//! `mipipe cache du | gc | hash | verify`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use mipipe_cache::GcPolicy;
use mipipe_engine::{Exit, Lockfile};

use super::{json_line, open_cache};
use crate::cli::CacheCommand;
use crate::CliError;

pub(super) fn cache_command(
    command: CacheCommand,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> Result<(), CliError> {
    match command {
        CacheCommand::Du(args) => {
            let cache = open_cache(&args.pipeline, cache_dir)?;
            let usage = cache.disk_usage();
            if json {
                let areas: Vec<_> = usage
                    .areas
                    .iter()
                    .map(|(a, f, b)| serde_json::json!({"area": a, "files": f, "bytes": b}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"cache": cache.root(), "areas": areas})
                );
                return Ok(());
            }
            println!("cache {}", cache.root().display());
            let mut total = 0;
            for (area, files, bytes) in &usage.areas {
                total += bytes;
                println!("  {area:<11} {files:>8} files  {:>10}", human_bytes(*bytes));
            }
            println!(
                "  {:<11} {:>8}        {:>10}",
                "total",
                "",
                human_bytes(total)
            );
            Ok(())
        }
        CacheCommand::Gc(args) => {
            let first = args
                .pipelines
                .first()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("mipipe.yaml"));
            let cache = open_cache(&first, cache_dir)?;
            for pipeline in &args.pipelines {
                let lock_path = Lockfile::path_for(pipeline);
                if !lock_path.exists() {
                    return Err(CliError::Usage {
                        message: format!("`{}` has no lockfile `{}`", pipeline.display(), lock_path.display()),
                        help: Some("Name the pipelines whose results to keep; gc keeps what their lockfiles record".into()),
                    });
                }
            }
            // No run may use the cache while gc collects, and the roots are read only then: a
            // run that was going on has recorded its results in its lockfile by now.
            let environment = |e: mipipe_cache::CacheError| CliError::Environment(e.to_string());
            let exclusive = match cache.locks().try_lock_for_gc().map_err(environment)? {
                Some(guard) => guard,
                None => {
                    eprintln!("waiting for the runs using this cache to finish (gc never removes what a live run uses)");
                    cache.locks().lock_for_gc().map_err(environment)?
                }
            };
            let mut roots = BTreeSet::new();
            for pipeline in &args.pipelines {
                let (lock, _) = Lockfile::read(&Lockfile::path_for(pipeline));
                roots.extend(lock.stages.values().map(|e| e.key));
            }
            let policy = GcPolicy {
                roots,
                keep_recent: Duration::from_secs_f64(args.keep_recent.max(0.0) * 86_400.0),
                dry_run: args.dry_run,
            };
            let report = cache.gc(&policy, &exclusive);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"dry_run": args.dry_run, "entries": report.entries, "objects": report.objects, "runs": report.runs, "bytes": report.bytes, "failed": report.failed.iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>()})
                );
            } else {
                let verb = if args.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                println!(
                    "{verb} {} cache entries, {} objects, {} run folders ({})",
                    report.entries,
                    report.objects,
                    report.runs,
                    human_bytes(report.bytes)
                );
                for (path, error) in report.failed.iter().take(10) {
                    println!("  NOT REMOVED {}: {error}", path.display());
                }
            }
            if report.failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::Environment(format!(
                    "{} item(s) could not be removed (is the cache read-only?); they are not counted above",
                    report.failed.len()
                )))
            }
        }
        CacheCommand::Hash(args) => {
            for file in &args.files {
                let digest = mipipe_cache::hash_file(file).map_err(|e| {
                    CliError::Environment(format!("Cannot hash `{}`: {e}", file.display()))
                })?;
                if json {
                    json_line(&serde_json::json!({"path": file, "digest": digest.to_string()}));
                } else {
                    println!("{digest}  {}", file.display());
                }
            }
            Ok(())
        }
        CacheCommand::Verify(args) => {
            let cache = open_cache(&args.pipeline, cache_dir)?;
            let report = cache.verify();
            let listed = |items: &[(PathBuf, String)]| {
                items
                    .iter()
                    .map(|(p, r)| serde_json::json!({"path": p, "problem": r}))
                    .collect::<Vec<_>>()
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"objects_checked": report.objects_checked, "quarantined": report.quarantined, "bad_entries": listed(&report.bad_entries), "bad_checkouts": report.bad_checkouts, "unfixed": listed(&report.unfixed), "clean": report.is_clean()})
                );
            } else {
                println!("checked {} objects", report.objects_checked);
                for path in &report.quarantined {
                    println!("  corrupt object moved to {}", path.display());
                }
                for (path, problem) in &report.bad_entries {
                    println!("  removed entry {}: {problem}", path.display());
                }
                for path in &report.bad_checkouts {
                    println!(
                        "  removed tree checkout {} (differed from its manifest)",
                        path.display()
                    );
                }
                for (path, problem) in &report.unfixed {
                    println!("  NOT FIXED {}: {problem}", path.display());
                }
                if report.is_clean() {
                    println!("cache is clean");
                }
            }
            if !report.unfixed.is_empty() {
                Err(CliError::Environment(format!(
                    "{} problem(s) found in the cache could not be fixed (is it read-only?); run `mipipe cache verify` where it is writable",
                    report.unfixed.len()
                )))
            } else if report.is_clean() {
                Ok(())
            } else {
                Err(CliError::StagesFailed(
                    "The cache had corrupt entries (now removed; affected stages will rerun)"
                        .into(),
                    Exit::StageFailed,
                ))
            }
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
