//! SIGKILL and Ctrl-C in the middle of a stage: nothing partial is cached, a rerun completes
//! and does not redo finished stages.

use std::time::{Duration, Instant};

use crate::Project;

const SLOW: &str = r#"version: 1
stages:
  quick:
    kind: command
    params:
      cmd: echo quick >> runs.log && echo q > ${outs.o}
      outs: {o: o.txt}
  slow:
    kind: command
    inputs: {q: quick.o}
    params:
      cmd: echo slow >> runs.log && echo partial > ${outs.o} && sleep 30 && echo done >> ${outs.o}
      outs: {o: o.txt}
"#;

fn wait_for(project: &Project, needle: &str) {
    let start = Instant::now();
    while project.count_lines("runs.log", needle) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "`{needle}` never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn sigkill_mid_stage_then_rerun_completes_without_redoing_finished_stages() {
    let project = Project::new();
    project.write("mipipe.yaml", SLOW);
    let mut child = project.command(&["run", "-j", "1"]).spawn().unwrap();
    wait_for(&project, "slow");
    // Kill mipipe itself the hard way (the stage's own process group lives on until its sleep
    // ends, like an orphan after a real crash).
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("cached    quick"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("will run  slow"),
        "{}",
        status.stdout
    );
    let fast = SLOW.replace("sleep 30", "true");
    project.write("mipipe.yaml", &fast);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["slow"], "{}", run.stderr);
    assert_eq!(project.count_lines("runs.log", "quick"), 1);
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(0);
    // The leftover scratch folder of the killed process is collected.
    project.mipipe(&["cache", "gc"]).expect_code(0);
    let tmp: Vec<_> = std::fs::read_dir(project.path().join(".mipipe/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn ctrl_c_stops_running_stages_and_caches_nothing_partial() {
    let project = Project::new();
    project.write("mipipe.yaml", SLOW);
    let mut child = project.command(&["run"]).spawn().unwrap();
    wait_for(&project, "slow");
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stage was not stopped"
    );
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("will run  slow"),
        "{}",
        status.stdout
    );
    let lock = project.read("mipipe.lock");
    assert!(
        lock.contains("\"quick\"") && !lock.contains("\"slow\""),
        "{lock}"
    );
}
