//! Reruns only what changed: cache hits, param changes, early cutoff, targets, fan-in.

use crate::Project;

/// The issue's example pipeline, with shell stand-ins for the Python scripts.
pub const EXAMPLE: &str = r#"version: 1
stages:
  prepare:
    kind: command
    params:
      cmd: echo prepare >> runs.log && head -n ${params.rows} raw.csv | sh prep.sh > ${outs.table}
      rows: 1000
      deps: [prep.sh, raw.csv]
      outs: {table: clean.csv}
  train:
    kind: command
    matrix: {lr: [0.1, 0.01], seed: [1, 2]}
    inputs: {data: prepare.table}
    params:
      cmd: echo "train ${params.lr} ${params.seed}" >> runs.log && sh train.sh ${inputs.data} ${params.lr} ${params.seed} > ${outs.model}
      deps: [train.sh]
      outs: {model: model.bin}
  report:
    kind: command
    inputs: {models: "train[*].model"}
    params:
      cmd: echo report >> runs.log && cat ${inputs.models} > ${outs.md}
      outs: {md: report.md}
      materialize: {md: results/report.md}
"#;

pub fn example_project() -> Project {
    let project = Project::new();
    project
        .write("mipipe.yaml", EXAMPLE)
        .write("raw.csv", "A,1\nB,2\nC,3\n")
        .write("prep.sh", "tr 'A-Z' 'a-z'\n")
        .write(
            "train.sh",
            "echo \"model rows=$(wc -l < $1) lr=$2 seed=$3\"\n",
        );
    project
}

#[test]
fn first_run_runs_everything_and_second_run_is_all_cache_hits() {
    let project = example_project();
    let first = project.mipipe(&["run"]);
    first.expect_code(0);
    assert_eq!(first.stages_with("ran").len(), 6, "{}", first.stderr);
    assert_eq!(
        project.read("results/report.md"),
        "model rows=3 lr=0.1 seed=1\nmodel rows=3 lr=0.1 seed=2\nmodel rows=3 lr=0.01 seed=1\nmodel rows=3 lr=0.01 seed=2\n"
    );
    let second = project.mipipe(&["run"]);
    second.expect_code(0);
    assert!(second.stages_with("ran").is_empty(), "{}", second.stderr);
    assert!(
        second.stderr.contains("0 ran, 6 cached"),
        "{}",
        second.stderr
    );
    assert_eq!(project.count_lines("runs.log", "prepare"), 1);
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("0 of 6 stages will run"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_param_change_reruns_exactly_the_stages_it_reaches() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let yaml = EXAMPLE.replace("lr: [0.1, 0.01]", "lr: [0.1, 0.02]");
    project.write("mipipe.yaml", &yaml);
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("train[lr=0.02,seed=1]  never run"),
        "{}",
        status.stdout
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(
        run.stages_with("ran"),
        ["report", "train[lr=0.02,seed=1]", "train[lr=0.02,seed=2]"],
        "{}",
        run.stderr
    );
    assert_eq!(project.count_lines("runs.log", "train 0.1 1"), 1);
}

#[test]
fn status_explains_a_changed_param_with_old_and_new_values() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let status = project.mipipe(&["status", "--set", "prepare.rows=2"]);
    status.expect_code(0);
    assert!(
        status
            .stdout
            .contains("prepare                param `rows` changed 1000 -> 2"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("upstream `prepare` will run"),
        "{}",
        status.stdout
    );
    // Running with the override applies it before hashing.
    let run = project.mipipe(&["run", "--set", "prepare.rows=2"]);
    run.expect_code(0);
    assert!(project.read("results/report.md").contains("rows=2"));
}

#[test]
fn reformatting_the_yaml_changes_no_key() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    // Flow style, reordered keys, comments and a default made explicit.
    let reformatted = EXAMPLE
        .replace(
            "outs: {table: clean.csv}",
            "outs:\n        table: clean.csv   # same\n      env: {}",
        )
        .replace("      rows: 1000\n", "")
        .replace(
            "    params:\n      cmd: echo prepare",
            "    params:\n      rows: 1000\n      cmd: echo prepare",
        );
    assert_ne!(reformatted, EXAMPLE);
    project.write("mipipe.yaml", &reformatted);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert!(run.stages_with("ran").is_empty(), "{}", run.stderr);
}

#[test]
fn identical_upstream_output_keeps_downstream_cached() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    // A change to prep.sh that produces the same bytes.
    project.write("prep.sh", "# lowercase everything\ntr 'A-Z' 'a-z'\n");
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["prepare"], "{}", run.stderr);
    assert!(
        run.stderr.contains("(upstream output unchanged)"),
        "{}",
        run.stderr
    );
    assert_eq!(project.count_lines("runs.log", "prepare"), 2);
    assert_eq!(project.count_lines("runs.log", "report"), 1);
}

#[test]
fn target_runs_only_the_stage_and_its_dependencies() {
    let project = example_project();
    let run = project.mipipe(&["run", "--target", "train[lr=0.1,seed=2]"]);
    run.expect_code(0);
    assert_eq!(
        run.stages_with("ran"),
        ["prepare", "train[lr=0.1,seed=2]"],
        "{}",
        run.stderr
    );
    // A base name selects every instance.
    let run = project.mipipe(&["run", "-t", "train"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 3, "{}", run.stderr);
    let run = project.mipipe(&["run", "--target", "trian"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("Did you mean `train`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn fan_in_reads_every_matrix_instance_in_matrix_order() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let lines: Vec<String> = project
        .read("results/report.md")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines[0].ends_with("lr=0.1 seed=1") && lines[3].ends_with("lr=0.01 seed=2"),
        "{lines:?}"
    );
    let dag = project.mipipe(&["dag"]);
    assert_eq!(
        dag.stdout.matches("models <- train[").count(),
        4,
        "{}",
        dag.stdout
    );
    let mermaid = project.mipipe(&["dag", "--format", "mermaid"]);
    assert!(
        mermaid.stdout.starts_with("flowchart LR\n"),
        "{}",
        mermaid.stdout
    );
    assert_eq!(
        mermaid.stdout.matches("-->|models| s5").count(),
        4,
        "{}",
        mermaid.stdout
    );
    let dot = project.mipipe(&["dag", "--format", "dot"]);
    assert!(
        dot.stdout.contains("s0 -> s1 [label=\"data\"];"),
        "{}",
        dot.stdout
    );
}

#[test]
fn force_reruns_a_stage_but_downstream_only_if_its_output_changed() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let run = project.mipipe(&["run", "--force", "prepare"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["prepare"], "{}", run.stderr);
}

#[test]
fn the_lockfile_records_keys_and_output_digests_sorted() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let lock: serde_json::Value = serde_json::from_str(&project.read("mipipe.lock")).unwrap();
    let stages = lock["stages"].as_object().unwrap();
    let names: Vec<&String> = stages.keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 6);
    let digest = stages["report"]["outputs"]["md"]["digest"]
        .as_str()
        .unwrap();
    let report = std::fs::read(project.path().join("results/report.md")).unwrap();
    assert_eq!(digest, blake3::hash(&report).to_hex().as_str());
    // Unchanged runs leave the file byte-identical.
    let before = project.read("mipipe.lock");
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(before, project.read("mipipe.lock"));
}

/// Waits out the two-second window in which mipipe does not trust a file's stat.
fn let_stats_settle() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

fn memo_count(project: &Project) -> usize {
    std::fs::read_dir(project.path().join(".mipipe/state/v1/up-to-date"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_up_to_date_memo_never_hides_a_change() {
    let project = example_project();
    project.mipipe(&["run"]).expect_code(0);
    let_stats_settle();
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(
        memo_count(&project),
        1,
        "a settled no-op run records the memo"
    );

    // A dependency rewritten with the same size: its stat changes, so the memo is not used.
    // The new table has the same row count, so the models come out identical and the report
    // stays cached.
    project.write("raw.csv", "X,1\nB,2\nC,3\n");
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 5, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cached report (upstream output unchanged)"),
        "{}",
        run.stderr
    );

    // A deleted workspace copy comes back.
    let_stats_settle();
    project.mipipe(&["run"]).expect_code(0);
    std::fs::remove_file(project.path().join("results/report.md")).unwrap();
    project.mipipe(&["run"]).expect_code(0);
    assert!(project.read("results/report.md").contains("rows=3"));

    // An object removed from the store makes its stage run again.
    let_stats_settle();
    project.mipipe(&["run"]).expect_code(0);
    std::fs::remove_file(project.output_object("report", "md")).unwrap();
    let run = project.mipipe(&["run"]);
    assert_eq!(run.stages_with("ran"), ["report"], "{}", run.stderr);

    // Overrides and targets are part of the fingerprint.
    let status = project.mipipe(&["status", "--set", "prepare.rows=1"]);
    assert!(
        status.stdout.contains("param `rows` changed 1000 -> 1"),
        "{}",
        status.stdout
    );
}
