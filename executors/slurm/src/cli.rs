//! The Slurm command-line tools, with explicit text output formats (their JSON changes with
//! every release and is unreliable in common versions).

use std::collections::BTreeMap;
use std::process::Command;

/// A Slurm job id as `sbatch --parsable` prints it.
pub type JobId = String;

/// A problem talking to Slurm.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// A tool could not be started (Slurm not installed, not on PATH).
    #[error("Cannot run `{tool}`: {source}; is Slurm installed and on PATH?")]
    Missing {
        /// The tool.
        tool: String,
        /// The error.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

fn run(tool: &str, args: &[String]) -> Result<String, SlurmError> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|source| SlurmError::Missing {
            tool: tool.to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(SlurmError::Failed {
            command: format!("{tool} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Submits a batch script; returns the job id.
pub fn sbatch(args: &[String]) -> Result<JobId, SlurmError> {
    let mut all = vec!["--parsable".to_string()];
    all.extend_from_slice(args);
    let out = run("sbatch", &all)?;
    // `--parsable` prints `id` or `id;cluster`.
    Ok(out.trim().split(';').next().unwrap_or_default().to_string())
}

/// The state of a job as Slurm reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, ...
    pub state: String,
    /// Slurm's reason (`Dependency`, `Resources`, `NonZeroExitCode`, ...), if any.
    pub reason: String,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING"
                | "RUNNING"
                | "CONFIGURING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
        )
    }
}

/// The states of these jobs from `squeue` (finished jobs stay listed for `MinJobAge`). Jobs
/// Slurm no longer lists are absent from the map.
pub fn squeue(ids: &[JobId]) -> Result<BTreeMap<JobId, JobState>, SlurmError> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let args = vec![
        "-h".to_string(),
        "-t".into(),
        "all".into(),
        "-j".into(),
        ids.join(","),
        "-o".into(),
        "%i|%T|%r".into(),
    ];
    // squeue fails when *every* id is unknown ("Invalid job id specified"): no states then.
    let out = match run("squeue", &args) {
        Ok(out) => out,
        Err(SlurmError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {
            String::new()
        }
        Err(e) => return Err(e),
    };
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut parts = line.split('|');
            let id = parts.next()?.trim().to_string();
            let state = parts.next()?.trim().to_string();
            let reason = parts.next().unwrap_or_default().trim().to_string();
            Some((id, JobState { state, reason }))
        })
        .collect())
}

/// The final state of a job Slurm's queue no longer lists: from accounting (`sacct`), or from
/// the job completion log (`sacct -c`) when there is no accounting database.
pub fn final_state(id: &JobId) -> Option<JobState> {
    for completion_log in [false, true] {
        let mut args = vec![];
        if completion_log {
            args.push("-c".to_string());
        }
        args.extend(["-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j"].map(String::from));
        args.push(id.clone());
        if let Ok(out) = run("sacct", &args) {
            for line in out.lines() {
                let parts: Vec<&str> = line.split('|').collect();
                if parts.len() >= 3 && parts[0].trim() == id {
                    let state = parts[1]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    return Some(JobState {
                        state,
                        reason: format!("exit code {}", parts[2].trim()),
                    });
                }
            }
        }
    }
    None
}

/// Cancels jobs (unknown ids are ignored by Slurm).
pub fn scancel(ids: &[JobId]) -> Result<(), SlurmError> {
    if ids.is_empty() {
        return Ok(());
    }
    run("scancel", ids).map(|_| ())
}
