//! `cache verify`, `cache gc`, `cache du`, and corrupt entries.

use std::os::unix::fs::PermissionsExt;

#[test]
fn verify_quarantines_a_corrupt_object_and_the_stage_reruns() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    let victim = project.output_object("report", "md");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "tampered").unwrap();
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(1);
    assert!(
        verify.stdout.contains("corrupt object moved to"),
        "{}",
        verify.stdout
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["report"], "{}", run.stderr);
    project.mipipe(&["cache", "verify"]).expect_code(0);
}

#[test]
fn verify_invalidates_what_was_computed_from_a_corrupt_object() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    // `prepare`'s table feeds the four `train` instances, which feed `report`.
    let victim = project.output_object("prepare", "table");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "tampered").unwrap();
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(1);
    assert!(
        verify.stdout.contains("computed from input `data`"),
        "{}",
        verify.stdout
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 6, "{}", run.stderr);
    project.assert_cache_clean();
}

#[test]
fn verify_removes_a_tree_checkout_that_differs_from_its_manifest() {
    let project = crate::Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  tree:
    kind: command
    params:
      cmd: mkdir -p ${outs.d} && echo right > ${outs.d}/f
      outs: {d: d/}
  read:
    kind: command
    inputs: {t: tree.d}
    params:
      cmd: cat ${inputs.t}/f > ${outs.o}
      outs: {o: o.txt}
      materialize: {o: o.txt}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    let checkout = project.output_object("tree", "d");
    // A new file in place of the stored one (what `sed -i` does), as root past the 0444 bits.
    std::fs::remove_file(checkout.join("f")).unwrap();
    std::fs::write(checkout.join("f"), "wrong\n").unwrap();
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(1);
    assert!(
        verify.stdout.contains("removed tree checkout"),
        "{}",
        verify.stdout
    );
    project.mipipe(&["run", "--force", "read"]).expect_code(0);
    assert_eq!(project.read("o.txt"), "right\n");
    project.assert_cache_clean();
}

#[test]
fn verify_never_calls_a_cache_clean_that_it_could_not_fix() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    let victim = project.output_object("report", "md");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "tampered").unwrap();
    // The quarantine cannot be created (as root, read-only bits would not stop it).
    std::fs::write(project.path().join(".mipipe/quarantine"), "in the way").unwrap();
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(3);
    assert!(verify.stdout.contains("NOT FIXED"), "{}", verify.stdout);
    assert!(
        !verify.stdout.contains("cache is clean"),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stderr.contains("could not be fixed"),
        "{}",
        verify.stderr
    );
}

#[test]
fn a_corrupt_action_entry_is_a_miss_with_a_warning() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    let entry = project.action_entry("prepare");
    std::fs::write(&entry, "{ not json").unwrap();
    // While the lockfile vouches for the key's outputs, a no-op run reads no entry (its fast
    // path); a cache shared by a checkout without that lockfile must read the entry.
    std::fs::remove_file(project.path().join("mipipe.lock")).unwrap();
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("warning: Stage `prepare`"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stages_with("ran"), ["prepare"], "{}", run.stderr);
}

#[test]
fn verify_removes_an_unparseable_entry_even_when_the_lockfile_vouches_for_it() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    let entry = project.action_entry("report");
    std::fs::write(&entry, "garbage").unwrap();
    let verify = project.mipipe(&["cache", "verify"]);
    verify.expect_code(1);
    assert!(
        verify.stdout.contains("does not parse"),
        "{}",
        verify.stdout
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["report"], "{}", run.stderr);
}

#[test]
fn gc_keeps_what_the_lockfile_references_and_removes_the_rest() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    project
        .mipipe(&["run", "--set", "prepare.rows=1"])
        .expect_code(0);
    project.mipipe(&["run"]).expect_code(0);
    // Everything is recent: nothing goes with the default 7-day window.
    let dry = project.mipipe(&["cache", "gc", "--dry-run"]);
    assert!(
        dry.stdout.contains("would remove 0 cache entries"),
        "{}",
        dry.stdout
    );
    // With no window, the rows=1 results go (entries; their objects are younger than the
    // one-hour grace that protects concurrent runs, so they stay until later).
    let gc = project.mipipe(&["cache", "gc", "--keep-recent", "0"]);
    gc.expect_code(0);
    assert!(
        gc.stdout.contains("removed 6 cache entries"),
        "{}",
        gc.stdout
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert!(run.stages_with("ran").is_empty(), "{}", run.stderr);
    let du = project.mipipe(&["cache", "du"]);
    assert!(du.stdout.contains("objects"), "{}", du.stdout);
}

#[test]
fn gc_keeps_fresh_objects_whose_files_carry_old_modification_times() {
    // `touch -d` (like `tar x` or `cp -p`) gives the output a 2001 mtime; ingestion is now.
    let project = crate::Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  old:
    kind: command
    params:
      cmd: mkdir -p ${outs.d} && echo file > ${outs.d}/f && echo one > ${outs.o} && touch -d 2001-01-01 ${outs.o} ${outs.d}/f ${outs.d}
      outs: {o: o.txt, d: d/}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    // With an empty lockfile nothing is a root, and `--keep-recent 0` drops the entry; what
    // was just ingested stays for the grace period all the same.
    project.write("mipipe.lock", "{\"version\": 1, \"stages\": {}}\n");
    let gc = project.mipipe(&["cache", "gc", "--keep-recent", "0"]);
    gc.expect_code(0);
    assert!(
        gc.stdout.contains("removed 1 cache entries, 0 objects"),
        "{}",
        gc.stdout
    );
    project.assert_cache_clean();
}

#[test]
fn gc_waits_for_the_runs_using_the_cache() {
    let project = crate::Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  first:
    kind: command
    params: {cmd: "echo 1 > ${outs.o}", outs: {o: o.txt}}
  second:
    kind: command
    inputs: {x: first.o}
    params:
      cmd: echo started >> runs.log && while [ ! -e go ]; do sleep 0.05; done && cat ${inputs.x} > ${outs.o}
      outs: {o: o.txt}
"#,
    );
    // A first run records a lockfile; the second reruns `second`, which waits for `go`.
    project.write("go", "");
    project.mipipe(&["run"]).expect_code(0);
    std::fs::remove_file(project.path().join("go")).unwrap();
    let run = project
        .command(&["run", "--force", "second"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while project.count_lines("runs.log", "started") < 2 {
        assert!(start.elapsed().as_secs() < 30, "the stage never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gc = project
        .command(&["cache", "gc", "--keep-recent", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(project.path().join("go"), "").unwrap();
    let run = run.wait_with_output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let gc = gc.wait_with_output().unwrap();
    let gc_err = String::from_utf8_lossy(&gc.stderr);
    assert!(gc.status.success(), "{gc_err}");
    assert!(
        gc_err.contains("waiting for the runs using this cache"),
        "{gc_err}"
    );
    // gc ran after the run had recorded its lockfile: nothing of it was collected.
    let gc_out = String::from_utf8_lossy(&gc.stdout);
    assert!(gc_out.contains("removed 0 cache entries"), "{gc_out}");
    assert_eq!(project.count_lines("runs.log", "started"), 2);
    let again = project.mipipe(&["run"]);
    again.expect_code(0);
    assert!(again.stderr.contains("0 ran, 2 cached"), "{}", again.stderr);
    project.assert_cache_clean();
}

/// A process id that no longer exists: a child that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Backdates a file's modification time by an hour (`touch -d`).
fn backdate(path: &std::path::Path) {
    let status = std::process::Command::new("touch")
        .arg("-d")
        .arg("1 hour ago")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn temp_files_of_a_killed_writer_are_cleaned_up_not_reported_as_corrupt() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    let object = project.output_object("report", "md");
    let pid = dead_pid();
    // A complete object copy a killed commit left beside the objects, and a copy a killed
    // `materialize:` left beside the workspace copy.
    let object_temp = object.with_file_name(format!(".object.tmp-{pid}-0"));
    std::fs::copy(&object, &object_temp).unwrap();
    backdate(&object_temp);
    let materialize_temp = project
        .path()
        .join(format!("results/.materialize.tmp-{pid}-3"));
    std::fs::write(&materialize_temp, "half a copy").unwrap();
    backdate(&materialize_temp);
    project.assert_cache_clean();
    assert!(!object_temp.exists(), "the orphaned object temp is removed");
    // The next copy into that folder removes the orphaned materialize temp.
    std::fs::remove_file(project.path().join("results/report.md")).unwrap();
    project.mipipe(&["run"]).expect_code(0);
    assert!(
        !materialize_temp.exists(),
        "the orphaned materialize temp is removed"
    );
}
