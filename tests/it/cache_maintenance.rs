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
