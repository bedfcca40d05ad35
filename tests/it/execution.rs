//! Failures, `--keep-going`, worker processes and logs.

use crate::Project;

const WITH_FAILURE: &str = r#"version: 1
stages:
  good:
    kind: command
    params:
      cmd: echo good >> runs.log && echo ok > ${outs.o}
      outs: {o: o.txt}
  bad:
    kind: command
    params:
      cmd: echo bad >> runs.log && echo "something broke" >&2 && exit 3
      outs: {o: o.txt}
  after_bad:
    kind: command
    inputs: {x: bad.o}
    params:
      cmd: cat ${inputs.x} > ${outs.o}
      outs: {o: o.txt}
  after_good:
    kind: command
    inputs: {x: good.o}
    params:
      cmd: echo after_good >> runs.log && cat ${inputs.x} > ${outs.o}
      outs: {o: o.txt}
"#;

#[test]
fn keep_going_runs_what_does_not_depend_on_a_failure_and_names_what_was_skipped() {
    let project = Project::new();
    project.write("mipipe.yaml", WITH_FAILURE);
    let run = project.mipipe(&["run", "--keep-going", "-j", "1"]);
    run.expect_code(1);
    assert_eq!(
        run.stages_with("ran"),
        ["after_good", "good"],
        "{}",
        run.stderr
    );
    assert_eq!(run.stages_with("FAILED"), ["bad"], "{}", run.stderr);
    assert!(
        run.stderr.contains("skipped after_bad: `bad` failed"),
        "{}",
        run.stderr
    );
    // The failure's log tail is shown.
    assert!(run.stderr.contains("| something broke"), "{}", run.stderr);
}

#[test]
fn without_keep_going_the_run_stops_after_a_failure() {
    let project = Project::new();
    project.write("mipipe.yaml", WITH_FAILURE);
    let run = project.mipipe(&["run", "-j", "1"]);
    run.expect_code(1);
    // `-j 1` runs in pipeline order: good, then bad; nothing starts after the failure.
    assert_eq!(run.stages_with("ran"), ["good"], "{}", run.stderr);
    assert!(
        run.stderr
            .contains("skipped after_good: the run stopped because `bad` failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn failures_are_never_cached() {
    let project = Project::new();
    project.write("mipipe.yaml", WITH_FAILURE);
    project.mipipe(&["run", "-k"]).expect_code(1);
    project.mipipe(&["run", "-k"]).expect_code(1);
    assert_eq!(project.count_lines("runs.log", "bad"), 2);
    assert_eq!(project.count_lines("runs.log", "good"), 1);
    let log = project.mipipe(&["log", "bad"]);
    log.expect_code(0);
    assert!(log.stdout.contains("something broke"), "{}", log.stdout);
    let show = project.mipipe(&["show", "bad"]);
    assert!(show.stdout.contains("last run failed"), "{}", show.stdout);
}

#[test]
fn isolated_runs_use_worker_processes_and_give_the_same_keys() {
    let in_process = crate::incremental::example_project();
    in_process.mipipe(&["run"]).expect_code(0);
    let isolated = crate::incremental::example_project();
    let run = isolated.mipipe(&["run", "--isolate"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 6, "{}", run.stderr);
    let keys = |p: &Project| {
        let lock: serde_json::Value = serde_json::from_str(&p.read("mipipe.lock")).unwrap();
        lock["stages"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["key"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&in_process), keys(&isolated));
    assert_eq!(
        in_process.read("results/report.md"),
        isolated.read("results/report.md")
    );
}

#[test]
fn a_crashing_worker_is_a_failed_stage_not_a_crashed_run() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  crash:
    kind: command
    params:
      # The command's parent is the supervising shell; its parent, the worker.
      cmd: kill -9 $(ps -o ppid= -p $PPID)
      outs: {o: o.txt}
  fine:
    kind: command
    params:
      cmd: echo fine > ${outs.o}
      outs: {o: o.txt}
"#,
    );
    let run = project.mipipe(&["run", "--isolate", "--keep-going"]);
    run.expect_code(1);
    assert!(run.stderr.contains("killed by signal 9"), "{}", run.stderr);
    assert_eq!(run.stages_with("ran"), ["fine"], "{}", run.stderr);
}

#[test]
fn a_closed_pipe_ends_a_printing_command_without_a_panic() {
    use std::io::{BufRead, BufReader};
    let project = crate::Project::new();
    let mut yaml = String::from("version: 1\nstages:\n");
    for i in 0..6000 {
        yaml.push_str(&format!(
            "  s{i}:\n    kind: command\n    params: {{cmd: \"echo {i} > ${{outs.o}}\", outs: {{o: o.txt}}}}\n"
        ));
    }
    project.write("mipipe.yaml", &yaml);
    // `mipipe dag --format dot | head -1` (more than a pipe buffer): the reader goes away
    // after one line.
    let mut child = project
        .command(&["dag", "--format", "dot"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}
