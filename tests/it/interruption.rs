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
    // Kill mipipe itself the hard way (its stage's process group ends with it).
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

/// Whether any process is left in process group `group`.
fn group_alive(group: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-group, 0) == 0 }
}

#[test]
fn stage_commands_die_with_the_run_that_started_them() {
    // In the run's own process and in a worker process (`--isolate`).
    for isolate in [false, true] {
        let project = Project::new();
        project.write(
            "mipipe.yaml",
            r#"version: 1
stages:
  long:
    kind: command
    params:
      cmd: ps -o pgid= -p $$ > group && echo long >> runs.log && sleep 60 && echo late >> runs.log && echo x > ${outs.o}
      outs: {o: o.txt}
"#,
        );
        let mut args = vec!["run"];
        if isolate {
            args.push("--isolate");
        }
        let mut child = project.command(&args).spawn().unwrap();
        wait_for(&project, "long");
        let group: i32 = project.read("group").trim().parse().unwrap();
        assert!(group_alive(group));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let start = Instant::now();
        while group_alive(group) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the stage's processes outlived the killed run (isolate: {isolate})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // And the next run does not find a second copy running beside it.
        project.write(
            "mipipe.yaml",
            &project.read("mipipe.yaml").replace("sleep 60", "true"),
        );
        project.mipipe(&["run"]).expect_code(0);
        assert_eq!(project.count_lines("runs.log", "late"), 1);
    }
}
