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

/// About 20 stages: 2 MB files, directory outputs, fan-in, a materialized result.
pub fn fault_injection_pipeline() -> String {
    let mut yaml = String::from("version: 1\nstages:\n");
    for i in 0..8 {
        yaml.push_str(&format!(
            "  big{i}:\n    kind: command\n    params:\n      cmd: yes {i} | head -c 2000000 > ${{outs.o}} && sleep 0.05\n      outs: {{o: o.bin}}\n"
        ));
    }
    for i in 0..4 {
        yaml.push_str(&format!(
            "  tree{i}:\n    kind: command\n    inputs: {{x: big{i}.o}}\n    params:\n      cmd: mkdir -p ${{outs.d}}/sub && head -c 300000 ${{inputs.x}} > ${{outs.d}}/a && echo {i} > ${{outs.d}}/sub/b\n      outs: {{d: d/}}\n"
        ));
    }
    for i in 0..4 {
        yaml.push_str(&format!(
            "  pair{i}:\n    kind: command\n    inputs: {{x: [big{}.o, big{}.o], t: tree{i}.d}}\n    params:\n      cmd: cat ${{inputs.x}} ${{inputs.t}}/a | wc -c > ${{outs.o}}\n      outs: {{o: o.txt}}\n",
            2 * i,
            2 * i + 1
        ));
    }
    yaml.push_str("  total:\n    kind: command\n    inputs: {all: [pair0.o, pair1.o, pair2.o, pair3.o]}\n    params:\n      cmd: cat ${inputs.all} > ${outs.o}\n      outs: {o: o.txt}\n      materialize: {o: results/total.txt}\n");
    yaml
}

/// Stage name -> key, from the lockfile.
pub fn recorded_keys(project: &Project) -> std::collections::BTreeMap<String, String> {
    project.lock()["stages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, entry)| (name.clone(), entry["key"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn sigkill_at_random_points_never_corrupts_loses_or_repeats_work() {
    let yaml = fault_injection_pipeline();
    // The undisturbed run every disturbed one must end up equal to.
    let reference = Project::new();
    reference.write("mipipe.yaml", &yaml);
    reference.mipipe(&["run"]).expect_code(0);
    let expected_keys = recorded_keys(&reference);
    let expected_total = reference.read("results/total.txt");
    assert_eq!(expected_keys.len(), 17);
    let trials = 50;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut killed_mid_run = 0;
    for trial in 0..trials {
        let project = Project::new();
        project.write("mipipe.yaml", &yaml);
        // Kill after 0 to 0.8 s (an undisturbed run takes about 1 s), `-j` 1 to 3, mipipe
        // alone or its whole process group.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 800);
        let jobs = (1 + rng % 3).to_string();
        let whole_group = rng.is_multiple_of(2);
        let child = {
            let mut command = project.command(&["run", "-j", &jobs]);
            use std::os::unix::process::CommandExt;
            command.process_group(0);
            command.spawn().unwrap()
        };
        std::thread::sleep(delay);
        let pid = child.id() as i32;
        // SAFETY: signalling our own child (or its process group).
        unsafe { libc::kill(if whole_group { -pid } else { pid }, libc::SIGKILL) };
        let mut child = child;
        let status = child.wait().unwrap();
        if status.code().is_none() {
            killed_mid_run += 1;
        }
        let context = format!("trial {trial}: -j {jobs}, killed after {delay:?}");
        let verify = project.mipipe(&["cache", "verify"]);
        assert_eq!(verify.code, 0, "{context}: {}", verify.stdout);
        assert!(
            verify.stdout.contains("cache is clean"),
            "{context}: {}",
            verify.stdout
        );
        // What the interrupted run completed is cached, and only the rest runs again.
        let status = project.mipipe(&["status"]);
        let will_run: Vec<String> = status
            .stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("will run"))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .collect();
        let rerun = project.mipipe(&["run"]);
        rerun.expect_code(0);
        let mut ran = rerun.stages_with("ran");
        ran.sort();
        let mut expected_to_run = will_run.clone();
        expected_to_run.sort();
        assert_eq!(ran, expected_to_run, "{context}: {}", rerun.stderr);
        assert_eq!(recorded_keys(&project), expected_keys, "{context}");
        assert_eq!(
            project.read("results/total.txt"),
            expected_total,
            "{context}"
        );
        project.assert_cache_clean();
    }
    eprintln!("{trials} trials, {killed_mid_run} killed before the run ended: all clean");
    assert!(
        killed_mid_run >= trials / 2,
        "the kills came too late to test anything"
    );
}
