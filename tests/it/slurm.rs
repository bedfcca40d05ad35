//! The Slurm executor against a real single-node Slurm (`scripts/start-slurm.sh`).
//! `scripts/test.sh` starts the cluster and sets `MIPIPE_REQUIRE_SLURM=1`, so there these
//! tests fail rather than skip when Slurm is missing.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::Project;

fn slurm_available() -> bool {
    let ok = Command::new("sinfo")
        .arg("-h")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("MIPIPE_REQUIRE_SLURM").is_none(),
            "MIPIPE_REQUIRE_SLURM is set but `sinfo` fails: run scripts/start-slurm.sh"
        );
        eprintln!("skipped: no Slurm cluster here (scripts/start-slurm.sh starts one)");
    }
    ok
}

fn job_state(id: &str) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-t", "all", "-j", id, "-o", "%T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Job ids in `submitted STAGE as Slurm job ID` lines.
fn submitted_jobs(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("submitted ")?.1;
            let (stage, rest) = rest.split_once(" as Slurm job ")?;
            Some((
                stage.to_string(),
                rest.split_whitespace().next()?.to_string(),
            ))
        })
        .collect()
}

const CHAIN: &str = r#"version: 1
executor: slurm
stages:
  a:
    kind: command
    params:
      cmd: echo "a on ${SLURM_JOB_ID:-local}" >> runs.log && echo a > ${outs.o}
      outs: {o: a.txt}
  b:
    kind: command
    inputs: {x: a.o}
    params:
      cmd: (cat ${inputs.x}; echo b) > ${outs.o}
      outs: {o: b.txt}
  c:
    kind: command
    inputs: {x: [a.o, b.o]}
    params:
      cmd: cat ${inputs.x} > ${outs.o}
      outs: {o: c.txt}
      materialize: {o: c.txt}
"#;

#[test]
fn slurm_runs_the_dag_in_order_and_a_second_run_submits_nothing() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    project.write("mipipe.yaml", CHAIN);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    let jobs = submitted_jobs(&run.stderr);
    assert_eq!(jobs.len(), 3, "{}", run.stderr);
    assert_eq!(project.read("c.txt"), "a\na\nb\n");
    assert!(
        project.read("runs.log").starts_with("a on "),
        "{}",
        project.read("runs.log")
    );
    assert!(
        !project.read("runs.log").contains("local"),
        "stage `a` ran outside Slurm"
    );
    let again = project.mipipe(&["run"]);
    again.expect_code(0);
    assert!(submitted_jobs(&again.stderr).is_empty(), "{}", again.stderr);
    assert!(again.stderr.contains("0 ran, 3 cached"), "{}", again.stderr);
    let lock = project.read("mipipe.lock");
    assert!(lock.contains("\"c\""), "{lock}");
}

#[test]
fn a_failing_slurm_stage_fails_its_job_and_skips_its_dependents() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  bad:
    kind: command
    params:
      cmd: echo "something broke" >&2 && exit 3
      outs: {o: o.txt}
  after_bad:
    kind: command
    inputs: {x: bad.o}
    params:
      cmd: cat ${inputs.x} > ${outs.o}
      outs: {o: o.txt}
  independent:
    kind: command
    params:
      cmd: echo fine > ${outs.o}
      outs: {o: o.txt}
"#,
    );
    let run = project.mipipe(&["run", "--executor", "slurm"]);
    run.expect_code(1);
    assert_eq!(run.stages_with("FAILED"), ["bad"], "{}", run.stderr);
    assert!(
        run.stderr.contains("skipped after_bad: `bad` failed"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stages_with("ran"), ["independent"], "{}", run.stderr);
    // The failure's log tail (the job's output, with the stage's stderr) is shown.
    assert!(run.stderr.contains("something broke"), "{}", run.stderr);
    let status = project.mipipe(&["status"]);
    assert!(status.stdout.contains("will run  bad"), "{}", status.stdout);
}

#[test]
fn scancel_of_a_running_stage_leaves_the_cache_clean_and_a_rerun_completes() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    let slow = r#"version: 1
stages:
  slow:
    kind: command
    params:
      cmd: echo started >> runs.log && echo partial > ${outs.o} && sleep 60 && echo done >> ${outs.o}
      outs: {o: o.txt}
      materialize: {o: o.txt}
"#;
    project.write("mipipe.yaml", slow);
    let run = project.mipipe(&["run", "--executor", "slurm", "--detach"]);
    run.expect_code(0);
    let jobs = submitted_jobs(&run.stderr);
    let job = jobs[0].1.clone();
    wait_until("the stage to start", Duration::from_secs(30), || {
        project.count_lines("runs.log", "started") == 1
    });
    let status = project.mipipe(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("running on Slurm as job {job}")),
        "{}",
        status.stdout
    );
    assert!(Command::new("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    wait_until("the job to end", Duration::from_secs(30), || {
        job_state(&job) != "RUNNING"
    });
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("will run  slow"),
        "{}",
        status.stdout
    );
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(0);
    project.write("mipipe.yaml", &slow.replace("sleep 60", "true"));
    let rerun = project.mipipe(&["run", "--executor", "slurm"]);
    rerun.expect_code(0);
    assert_eq!(project.read("o.txt"), "partial\ndone\n");
}

#[test]
fn mixed_local_and_slurm_stages_run_where_they_say() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
executor: slurm
stages:
  first:
    kind: command
    params:
      cmd: echo "first ${SLURM_JOB_ID:-local}" > ${outs.o}
      outs: {o: o.txt}
  middle:
    kind: command
    executor: local
    inputs: {x: first.o}
    params:
      cmd: (cat ${inputs.x}; echo "middle ${SLURM_JOB_ID:-local}") > ${outs.o}
      outs: {o: o.txt}
  last:
    kind: command
    inputs: {x: middle.o}
    params:
      cmd: (cat ${inputs.x}; echo "last ${SLURM_JOB_ID:-local}") > ${outs.o}
      outs: {o: o.txt}
      materialize: {o: out.txt}
"#,
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    let lines: Vec<String> = project.read("out.txt").lines().map(String::from).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(!lines[0].ends_with("local"), "{lines:?}");
    assert_eq!(lines[1], "middle local");
    assert!(!lines[2].ends_with("local"), "{lines:?}");
    let jobs: Vec<String> = submitted_jobs(&run.stderr)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(jobs, ["first", "last"], "{}", run.stderr);
}

#[test]
fn detached_jobs_show_in_status_and_a_later_run_records_them() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    project.write("mipipe.yaml", CHAIN);
    let run = project.mipipe(&["run", "--detach"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("3 stage(s) submitted to Slurm"),
        "{}",
        run.stderr
    );
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("on Slurm as job"),
        "{}",
        status.stdout
    );
    let jobs = submitted_jobs(&run.stderr);
    let last = jobs.last().unwrap().1.clone();
    wait_until("the last job to finish", Duration::from_secs(60), || {
        job_state(&last) == "COMPLETED"
    });
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert!(submitted_jobs(&run.stderr).is_empty(), "{}", run.stderr);
    assert!(run.stderr.contains("0 ran, 3 cached"), "{}", run.stderr);
    assert_eq!(project.read("c.txt"), "a\na\nb\n");
}

#[test]
fn ctrl_c_while_following_cancels_the_submitted_jobs() {
    if !slurm_available() {
        return;
    }
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
executor: slurm
stages:
  slow:
    kind: command
    params:
      cmd: echo started >> runs.log && sleep 60 && echo done > ${outs.o}
      outs: {o: o.txt}
  after:
    kind: command
    inputs: {x: slow.o}
    params:
      cmd: cat ${inputs.x} > ${outs.o}
      outs: {o: o.txt}
"#,
    );
    let child = project
        .command(&["run"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the stage to start", Duration::from_secs(30), || {
        project.count_lines("runs.log", "started") == 1
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for (stage, job) in submitted_jobs(&stderr) {
        wait_until(
            &format!("job {job} of {stage} to be cancelled"),
            Duration::from_secs(30),
            || job_state(&job) == "CANCELLED",
        );
    }
    assert_eq!(submitted_jobs(&stderr).len(), 2, "{stderr}");
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("will run  slow"),
        "{}",
        status.stdout
    );
}

#[test]
fn torch_stages_run_as_slurm_jobs_through_the_worker() {
    if !slurm_available() {
        return;
    }
    crate::require_torch_worker();
    let project = Project::new();
    project.write("mipipe.yaml", crate::torch_stages::TINY);
    let run = project.mipipe(&["run", "--executor", "slurm"]);
    run.expect_code(0);
    assert_eq!(submitted_jobs(&run.stderr).len(), 5, "{}", run.stderr);
    let predictions = mipipe_stage_schema::read_predictions(
        &project.output_object("predict[family=qwen,method=ours]", "predictions"),
    )
    .unwrap();
    assert!(!predictions.is_empty());
}
