//! `mipipe-torch-worker exec-stage JOB.json`: runs one libtorch stage job that `mipipe` wrote.
//! Exits with the codes of mipipe's one table ([`Exit`]: 0 done, 1 the stage failed, 2 usage,
//! 3 environment such as a GPU asked for and absent, 70 a bug in mipipe). Started by `mipipe`
//! itself (found next to it); not meant to be run by hand.

#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mipipe_engine::{Exit, Job, Registry};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, command, job_file] = args.as_slice() else {
        eprintln!("usage: mipipe-torch-worker exec-stage JOB.json (started by `mipipe run`)");
        return ExitCode::from(Exit::Usage.code());
    };
    if command != "exec-stage" {
        eprintln!("mipipe-torch-worker: unknown command `{command}`; the only one is `exec-stage`");
        return ExitCode::from(Exit::Usage.code());
    }
    let job: Job = match std::fs::read(job_file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(job) => job,
        Err(e) => {
            eprintln!("mipipe-torch-worker: cannot read job `{job_file}`: {e}");
            return ExitCode::from(Exit::Environment.code());
        }
    };
    let mut registry = Registry::new();
    mipipe_stage_torch::register(&mut registry);
    match mipipe_engine::run_job(&registry, &job, Arc::new(AtomicBool::new(false))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(Exit::of_class(e.class()).code())
        }
    }
}
