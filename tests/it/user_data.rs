//! Nothing mipipe does loses or escapes a user's files: `materialize:` copies stay inside the
//! workspace and replace only earlier copies of outputs (issue 16, "Data loss and escapes").

use crate::Project;

/// A directory output `d` with one file, materialized at `DEST`.
const DIR_OUTPUT: &str = r#"version: 1
stages:
  make:
    kind: command
    params:
      cmd: mkdir -p ${outs.d} && echo VALUE > ${outs.d}/result.txt
      outs: {d: out/}
      materialize: {d: DEST}
"#;

fn pipeline(dest: &str, value: &str) -> String {
    DIR_OUTPUT.replace("DEST", dest).replace("VALUE", value)
}

#[test]
fn materialize_into_the_workspace_folder_itself_is_refused() {
    let project = Project::new();
    project.write("mipipe.yaml", &pipeline(".", "1"));
    project.write("notes.md", "mine");
    let run = project.mipipe(&["run"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("is the workspace folder itself"),
        "{}",
        run.stderr
    );
    assert_eq!(project.read("notes.md"), "mine");
    assert!(project.path().join("mipipe.yaml").is_file());
}

#[test]
fn materialize_outside_the_workspace_is_refused() {
    for dest in ["../../escaped", "/tmp/mipipe-escaped-absolute"] {
        let project = Project::new();
        project.write("mipipe.yaml", &pipeline(dest, "1"));
        let run = project.mipipe(&["run"]);
        run.expect_code(2);
        assert!(
            run.stderr.contains("outside the workspace"),
            "{}",
            run.stderr
        );
    }
    assert!(!std::path::Path::new("/tmp/mipipe-escaped-absolute").exists());
}

#[test]
fn materialize_through_a_symlinked_folder_is_refused() {
    let project = Project::new();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), project.path().join("linked")).unwrap();
    project.write("mipipe.yaml", &pipeline("linked/copy", "1"));
    let run = project.mipipe(&["run"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("is a symlink"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing was written through the link"
    );
}

#[test]
fn materialize_does_not_wipe_a_folder_that_holds_other_files() {
    let project = Project::new();
    project.write("results/note.txt", "hand-written");
    project.write("mipipe.yaml", &pipeline("results", "1"));
    let run = project.mipipe(&["run"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("holds something mipipe did not put there"),
        "{}",
        run.stderr
    );
    assert_eq!(project.read("results/note.txt"), "hand-written");
}

#[test]
fn materialize_replaces_its_own_earlier_copy_of_a_folder() {
    let project = Project::new();
    project.write("mipipe.yaml", &pipeline("results", "1"));
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.read("results/result.txt"), "1\n");
    project.write("mipipe.yaml", &pipeline("results", "2"));
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.read("results/result.txt"), "2\n");
    // A file added by hand makes the folder the user's: it is no longer replaced.
    project.write("results/mine.txt", "keep");
    project.write("mipipe.yaml", &pipeline("results", "3"));
    let run = project.mipipe(&["run"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_eq!(project.read("results/mine.txt"), "keep");
    assert_eq!(project.read("results/result.txt"), "2\n");
}

#[test]
fn materialize_does_not_overwrite_a_hand_written_file() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        "version: 1\nstages:\n  make:\n    kind: command\n    params:\n      cmd: echo out > ${outs.o}\n      outs: {o: o.txt}\n      materialize: {o: report.txt}\n",
    );
    project.write("report.txt", "my own report");
    let run = project.mipipe(&["run"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_eq!(project.read("report.txt"), "my own report");
    // Moved away, the copy is made; deleted, it comes back; both without rerunning.
    std::fs::remove_file(project.path().join("report.txt")).unwrap();
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(project.read("report.txt"), "out\n");
}

/// A command stage echoing a matrix value, a var and a param into its output.
const ECHO: &str = r#"version: 1
vars:
  v: VAR
stages:
  echo:
    kind: command
    matrix: {m: [MATRIX]}
    params:
      p: PARAM
      cmd: printf '%s|%s|%s' ${params.m} ${vars.v} ${params.p} > ${outs.o}
      outs: {o: o.txt}
      materialize: {o: o.txt}
"#;

#[test]
fn values_from_yaml_and_set_never_run_as_shell_code() {
    let project = Project::new();
    let yaml = ECHO
        .replace("MATRIX", "'a; touch pwned-matrix'")
        .replace("VAR", "'$(touch pwned-var)'")
        .replace("PARAM", "'`touch pwned-param` x'");
    project.write("mipipe.yaml", &yaml);
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(
        project.read("o.txt"),
        "a; touch pwned-matrix|$(touch pwned-var)|`touch pwned-param` x"
    );
    project
        .mipipe(&["run", "--set", "vars.v=\"x'; touch pwned-set; '\""])
        .expect_code(0);
    assert!(project.read("o.txt").contains("|x'; touch pwned-set; '|"));
    for marker in ["pwned-matrix", "pwned-var", "pwned-param", "pwned-set"] {
        assert!(
            !project.path().join(marker).exists(),
            "`{marker}` was created: a value ran as code"
        );
    }
}

#[test]
fn raw_references_paste_values_for_the_shell() {
    let project = Project::new();
    let yaml = ECHO
        .replace("MATRIX", "plain")
        .replace("VAR", "'one two'")
        .replace("PARAM", "'three four'")
        .replace("${vars.v}", "${raw.vars.v}")
        .replace("${params.p}", "${raw.params.p}");
    project.write("mipipe.yaml", &yaml);
    project.mipipe(&["run"]).expect_code(0);
    // Unquoted, each value is split into two words: printf's format takes three of them.
    assert_eq!(project.read("o.txt"), "plain|one|twothree|four|");
}

#[test]
fn a_linked_output_stores_the_bytes_and_leaves_the_users_file_alone() {
    use std::os::unix::fs::PermissionsExt;
    for link in ["ln -s \"$PWD/data/big.bin\"", "ln data/big.bin"] {
        let project = Project::new();
        project.write("data/big.bin", "original");
        project.write(
            "mipipe.yaml",
            &format!(
                "version: 1\nstages:\n  link:\n    kind: command\n    params:\n      cmd: {link} ${{outs.o}}\n      outs: {{o: o.bin}}\n"
            ),
        );
        project.mipipe(&["run"]).expect_code(0);
        let user_file = project.path().join("data/big.bin");
        let mode = std::fs::metadata(&user_file).unwrap().permissions().mode();
        assert_ne!(
            mode & 0o200,
            0,
            "{link}: the user's file was made read-only"
        );
        // Editing the user's file does not change what the cache holds.
        std::fs::write(&user_file, "edited").unwrap();
        let object = project.output_object("link", "o");
        assert_eq!(
            std::fs::read_to_string(&object).unwrap(),
            "original",
            "{link}"
        );
        project.mipipe(&["cache", "verify"]).expect_code(0);
        assert_eq!(project.read("data/big.bin"), "edited");
    }
}

#[test]
fn a_stage_that_writes_into_its_input_fails_and_the_damage_is_not_kept() {
    let project = Project::new();
    let yaml = |consumer: &str| {
        format!(
            "version: 1\nstages:\n  make:\n    kind: command\n    params:\n      cmd: echo clean > ${{outs.o}}\n      outs: {{o: o.txt}}\n  use:\n    kind: command\n    inputs: {{x: make.o}}\n    params:\n      cmd: {consumer}\n      outs: {{r: r.txt}}\n      materialize: {{r: r.txt}}\n"
        )
    };
    project.write(
        "mipipe.yaml",
        &yaml("echo dirty >> ${inputs.x}; chmod u+w ${inputs.x} 2>/dev/null; echo dirty >> ${inputs.x}; cp ${inputs.x} ${outs.r}"),
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("The stage changed its input `x`"),
        "{}",
        run.stderr
    );
    // A well-behaved consumer then reads what `make` really wrote: `make` runs again, since
    // the object it had made was damaged and removed.
    project.write("mipipe.yaml", &yaml("cp ${inputs.x} ${outs.r}"));
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["make", "use"], "{}", run.stderr);
    assert_eq!(project.read("r.txt"), "clean\n");
}
