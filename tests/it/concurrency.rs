//! Two `mipipe run` processes on one cache: no corruption, no stage computed twice.

use std::process::Stdio;

use crate::Project;

/// Starts one `mipipe run -j N` per entry at once and checks that each succeeds.
fn run_at_once(project: &Project, jobs: &[&str]) {
    let children: Vec<_> = jobs
        .iter()
        .map(|jobs| {
            project
                .command(&["run", "-j", jobs])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Each marker line appears once in `runs.log`: its stage ran once across all the runs.
fn assert_each_ran_once(project: &Project, markers: impl Iterator<Item = String>) {
    for marker in markers {
        assert_eq!(
            project.count_lines("runs.log", &marker),
            1,
            "{}",
            project.read("runs.log")
        );
    }
}

#[test]
fn concurrent_runs_on_one_cache_compute_each_stage_once() {
    let project = Project::new();
    let mut yaml = String::from("version: 1\nstages:\n");
    for i in 0..8 {
        yaml.push_str(&format!(
            "  s{i}:\n    kind: command\n    params:\n      cmd: echo s{i} >> runs.log && sleep 0.3 && echo {i} > ${{outs.o}}\n      outs: {{o: o.txt}}\n"
        ));
    }
    yaml.push_str("  total:\n    kind: command\n    inputs: {all: [");
    yaml.push_str(
        &(0..8)
            .map(|i| format!("s{i}.o"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    yaml.push_str("]}\n    params:\n      cmd: echo total >> runs.log && cat ${inputs.all} > ${outs.o}\n      outs: {o: o.txt}\n");
    project.write("mipipe.yaml", &yaml);
    run_at_once(&project, &["4", "4"]);
    assert_each_ran_once(&project, (0..8).map(|i| format!("s{i}")));
    assert_eq!(project.count_lines("runs.log", "total"), 1);
    project.assert_cache_clean();
}

#[test]
fn runs_with_different_jobs_on_one_cache_compute_each_stage_once() {
    // The `-j 1` run looks every stage up at once and then waits for its one slot, while the
    // `-j 4` run computes most of them: each must be found in the cache once its turn comes.
    let project = Project::new();
    let mut yaml = String::from("version: 1\nstages:\n");
    for i in 0..12 {
        yaml.push_str(&format!(
            "  s{i}:\n    kind: command\n    params:\n      cmd: echo s{i}. >> runs.log && sleep 0.2 && echo {i} > ${{outs.o}}\n      outs: {{o: o.txt}}\n"
        ));
    }
    project.write("mipipe.yaml", &yaml);
    run_at_once(&project, &["1", "4"]);
    assert_each_ran_once(&project, (0..12).map(|i| format!("s{i}.")));
    project.assert_cache_clean();
}

#[test]
fn lockfile_writers_exclude_each_other_whatever_their_cache_dir() {
    // Before, the lock that serialises writers of a lockfile lived in the cache folder, so runs
    // of one pipeline with different `--cache-dir` did not exclude each other and lost records.
    // Now it is a lock on the lockfile's folder: while another writer (here, this test) holds
    // it, a run waits before recording its stages, and then records them.
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        "version: 1\nstages:\n  one:\n    kind: command\n    params:\n      cmd: echo 1 > ${outs.o}\n      outs: {o: o.txt}\n",
    );
    let folder = std::fs::File::open(project.path()).unwrap();
    folder.lock().unwrap();
    let mut child = project
        .command(&["run", "--cache-dir", "elsewhere"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run wrote its lockfile while another writer held the lock"
    );
    assert!(!project.path().join("mipipe.lock").exists());
    drop(folder);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(project.lock()["stages"]["one"].is_object());
}

#[test]
fn verify_and_gc_looping_during_a_run_change_nothing_it_computes() {
    let yaml = crate::interruption::fault_injection_pipeline();
    let reference = Project::new();
    reference.write("mipipe.yaml", &yaml);
    reference.mipipe(&["run"]).expect_code(0);
    let project = Project::new();
    project.write("mipipe.yaml", &yaml);
    // A lockfile to keep, so that gc has roots.
    project.write("mipipe.lock", "{\"version\": 1, \"stages\": {}}\n");
    let run = project
        .command(&["run", "-j", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut verifies = 0;
    let mut gcs = 0;
    let mut unclean = Vec::new();
    let mut run = run;
    loop {
        let verify = project.mipipe(&["cache", "verify"]);
        if verify.code != 0 {
            unclean.push(verify.stdout);
        }
        verifies += 1;
        if verifies % 3 == 0 {
            // Waits for the run, then collects with no window at all.
            let gc = project.mipipe(&["cache", "gc", "--keep-recent", "0"]);
            if gc.code != 0 {
                unclean.push(gc.stderr);
            }
            gcs += 1;
        }
        if run.try_wait().unwrap().is_some() {
            break;
        }
    }
    let run = run.wait_with_output().unwrap();
    assert!(unclean.is_empty(), "verify or gc during a run: {unclean:?}");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        verifies >= 2 && gcs <= verifies,
        "{verifies} verifies, {gcs} gcs"
    );
    assert_eq!(
        crate::interruption::recorded_keys(&project),
        crate::interruption::recorded_keys(&reference)
    );
    let again = project.mipipe(&["run"]);
    again.expect_code(0);
    assert!(
        again.stderr.contains("0 ran, 17 cached"),
        "{}",
        again.stderr
    );
    project.assert_cache_clean();
}
