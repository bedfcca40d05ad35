//! Every invalid pipeline in `tests/invalid/` renders a report with labels and a help line,
//! and exits with code 2. The rendered reports are snapshots.

use std::path::Path;

use crate::Project;

fn render(file: &Path, extra: &[&str]) -> (i32, String) {
    let project = Project::new();
    let name = file.file_name().unwrap().to_str().unwrap();
    project.write(name, &std::fs::read_to_string(file).unwrap());
    let mut args = vec!["status", name];
    args.extend_from_slice(extra);
    let run = project.mipipe(&args);
    (run.code, run.stderr)
}

#[test]
fn every_invalid_pipeline_has_a_labelled_report() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "the folder of invalid pipelines went missing"
    );
    for file in files {
        let (code, report) = render(&file, &[]);
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            code, 2,
            "{name} should be rejected with exit code 2:\n{report}"
        );
        assert!(
            report.contains("help:"),
            "{name} has no help line:\n{report}"
        );
        assert!(
            report.contains("╭─["),
            "{name} has no source label:\n{report}"
        );
        insta::assert_snapshot!(name, report);
    }
}

#[test]
fn bad_overrides_point_into_the_flag() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        "version: 1\nstages:\n  train:\n    kind: command\n    params:\n      cmd: echo ${params.lr} > ${outs.m}\n      lr: 0.1\n      outs: {m: m.txt}\n",
    );
    let run = project.mipipe(&["status", "--set", "trian.lr=0.5"]);
    run.expect_code(2);
    insta::assert_snapshot!("override_unknown_stage", run.stderr);
    let run = project.mipipe(&["status", "--set", "train.lr=fast"]);
    // A free param of `command` may be any value: this is valid and changes the key.
    run.expect_code(0);
    assert!(run.stdout.contains("will run"), "{}", run.stdout);
}

#[test]
fn a_misspelled_set_of_a_var_or_a_free_param_is_refused() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        "version: 1
vars:
  rows: 3
stages:
  train:
    kind: command
    params:
      cmd: echo ${params.lr} ${vars.rows} > ${outs.m}
      lr: 0.1
      outs: {m: m.txt}
",
    );
    // Before, the first was silently ignored and the second added a param `lrr` that reran
    // the stage.
    let run = project.mipipe(&["status", "--set", "vars.row=5"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("`--set vars.row` names a var this pipeline does not define")
            && run.stderr.contains("rows"),
        "{}",
        run.stderr
    );
    let run = project.mipipe(&["status", "--set", "train.lrr=0.5"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("`--set train.lrr` names a param stage `train` does not set")
            && run.stderr.contains("`lr`"),
        "{}",
        run.stderr
    );
}

#[test]
fn one_bad_value_in_a_large_matrix_is_reported_once_with_its_count() {
    let project = Project::new();
    let values: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    project.write(
        "mipipe.yaml",
        &format!(
            "version: 1\nstages:\n  world:\n    kind: synth\n    matrix: {{train_per_set: [{0}], test_per_set: [{0}]}}\n    params: {{instruct_items: many}}\n",
            values.join(", ")
        ),
    );
    let run = project.mipipe(&["status"]);
    run.expect_code(2);
    // Before: 900 identical reports of the bad value, one per instance.
    assert_eq!(
        run.stderr.matches("Invalid param").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(found 900 times)"), "{}", run.stderr);
}

#[test]
fn a_typo_far_along_a_one_line_pipeline_is_reported_from_an_excerpt() {
    // A generated one-line JSON pipeline, the typo near its end (column ~150,000): the
    // renderer panicked past column ~65,534, and quoting the whole line took seconds.
    let project = Project::new();
    let mut stages: Vec<String> = (0..2000)
        .map(|i| format!(r#""s{i}": {{"kind": "command", "params": {{"cmd": "echo {i}"}}}}"#))
        .collect();
    stages.push(r#""last": {"kind": "comand", "params": {"cmd": "true"}}"#.to_string());
    project.write(
        "mipipe.yaml",
        &format!(r#"{{"version": 1, "stages": {{{}}}}}"#, stages.join(", ")),
    );
    let started = std::time::Instant::now();
    let run = project.mipipe(&["status"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("Unknown stage kind `comand`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("excerpt of long lines; line 1, column"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not a stage kind"), "{}", run.stderr);
    assert!(
        run.stderr.len() < 5_000,
        "the report quotes too much: {}",
        run.stderr.len()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn an_alias_bomb_is_refused_before_it_grows() {
    let project = Project::new();
    let mut yaml = String::from("version: 1\nvars:\n  l0: &l0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let previous = format!("*l{}", level - 1);
        yaml.push_str(&format!(
            "  l{level}: &l{level} [{}]\n",
            vec![previous; 9].join(", ")
        ));
    }
    yaml.push_str("stages: {}\n");
    assert!(yaml.len() < 600);
    project.write("mipipe.yaml", &yaml);
    let run = project.mipipe(&["status"]);
    run.expect_code(2);
    assert!(run.stderr.contains("an alias bomb?"), "{}", run.stderr);
}

#[test]
fn a_matrix_of_a_million_instances_is_refused_with_its_size() {
    let project = Project::new();
    let axis: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let axis = axis.join(", ");
    project.write(
        "mipipe.yaml",
        &format!(
            "version: 1\nstages:\n  sweep:\n    kind: command\n    matrix: {{a: [{axis}], b: [{axis}], c: [{axis}]}}\n    params: {{cmd: \"true\"}}\n"
        ),
    );
    let run = project.mipipe(&["status"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("has 1000000 combinations; a stage has at most 10000"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_pipeline_that_is_not_utf8_names_the_byte() {
    let project = Project::new();
    std::fs::write(
        project.path().join("mipipe.yaml"),
        b"version: 1\nstages:\n  caf\xe9:\n    kind: command\n",
    )
    .unwrap();
    let run = project.mipipe(&["status"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("is not UTF-8 text: invalid byte at offset 24 (line 3)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("Save the file as UTF-8"),
        "{}",
        run.stderr
    );
}
