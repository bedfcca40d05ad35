//! Pipeline syntax beyond the basics: vars, defaults, include/exclude, instance selection,
//! `cache: false`, GPU slots, directory outputs.

use crate::Project;

#[test]
fn vars_defaults_and_overrides_reach_the_command() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
vars:
  rows: 3
  greeting: hello
defaults:
  params:
    seed: 7
stages:
  make:
    kind: command
    params:
      cmd: echo "${vars.greeting} ${params.n} ${params.seed}" > ${outs.txt}
      n: ${vars.rows}
      outs: {txt: out.txt}
      materialize: {txt: out.txt}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.read("out.txt"), "hello 3 7\n");
    project
        .mipipe(&["run", "--set", "vars.rows=5", "--set", "make.seed=8"])
        .expect_code(0);
    assert_eq!(project.read("out.txt"), "hello 5 8\n");
    // A whole-value `${vars.*}` keeps its type: `n` is the integer 3, not the string "3".
    let show = project.mipipe(&["show", "make", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(value["params"]["n"], serde_json::json!(3));
}

#[test]
fn a_matrix_axis_may_be_a_var_holding_a_list() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
vars:
  seeds: [1, 2, 3]
stages:
  train:
    kind: command
    matrix: {seed: "${vars.seeds}"}
    params:
      cmd: echo ${params.seed} > ${outs.m}
      outs: {m: m.txt}
"#,
    );
    let names = |run: &crate::Run| -> Vec<String> {
        run.stdout
            .lines()
            .filter(|l| l.starts_with("train"))
            .map(String::from)
            .collect()
    };
    let dag = project.mipipe(&["dag"]);
    dag.expect_code(0);
    assert_eq!(
        names(&dag),
        [
            "train[seed=1] (command)",
            "train[seed=2] (command)",
            "train[seed=3] (command)"
        ]
    );
    let narrowed = project.mipipe(&["dag", "--set", "vars.seeds=[2]"]);
    narrowed.expect_code(0);
    assert_eq!(names(&narrowed), ["train[seed=2] (command)"]);
    // A var that is not a list is refused as an axis, with the fix in the help.
    project.write(
        "mipipe.yaml",
        &project
            .read("mipipe.yaml")
            .replace("seeds: [1, 2, 3]", "seeds: 1"),
    );
    let bad = project.mipipe(&["dag"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("Matrix entry `seed` must be a list")
            && bad.stderr.contains("a var holding a list"),
        "{}",
        bad.stderr
    );
}

#[test]
fn matrix_include_exclude_and_instance_selection() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  train:
    kind: command
    matrix:
      model: [small, large]
      seed: [1, 2]
      exclude:
        - {model: large, seed: 2}
      include:
        - {model: large, batch: 4}
        - {model: tiny, seed: 9}
    params:
      cmd: echo "${params.model} ${params.seed} ${params.batch}" > ${outs.m}
      batch: 0
      outs: {m: m.txt}
  pick:
    kind: command
    inputs: {one: "train[model=small,seed=2].m", smalls: "train[model=small].m"}
    params:
      cmd: cat ${inputs.one} ${inputs.smalls} > ${outs.r}
      outs: {r: r.txt}
      materialize: {r: r.txt}
"#,
    );
    let dag = project.mipipe(&["dag"]);
    dag.expect_code(2);
    assert!(
        dag.stderr.contains("Matrix `include` sets `batch`"),
        "{}",
        dag.stderr
    );
    let fixed = project.read("mipipe.yaml").replace("      batch: 0\n", "");
    project.write("mipipe.yaml", &fixed.replace("${params.batch}", "x"));
    let dag = project.mipipe(&["dag"]);
    dag.expect_code(0);
    let names: Vec<&str> = dag
        .stdout
        .lines()
        .filter(|l| l.starts_with("train"))
        .collect();
    assert_eq!(
        names,
        [
            "train[model=small,seed=1] (command)",
            "train[model=small,seed=2] (command)",
            "train[model=large,seed=1] (command)",
            "train[model=tiny,seed=9] (command)"
        ],
        "{}",
        dag.stdout
    );
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.read("r.txt"), "small 2 x\nsmall 1 x\nsmall 2 x\n");
}

#[test]
fn matrix_stages_join_on_shared_axes() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  pretrain:
    kind: command
    matrix: {family: [llava, blip]}
    params:
      cmd: echo "base ${params.family}" > ${outs.ckpt}
      outs: {ckpt: base.txt}
  finetune:
    kind: command
    matrix:
      family: [llava, blip]
      method: [js, kl]
      # Keys an include adds to combinations are params: no join waits on them.
      include:
        - {family: llava, sets: [a]}
        - {family: blip, sets: [a, b], width: 2}
    inputs: {base: pretrain.ckpt}
    params:
      cmd: (cat ${inputs.base}; echo ${params.method} ${params.sets}) > ${outs.ckpt}
      outs: {ckpt: ft.txt}
  predict:
    kind: command
    matrix: {family: [llava, blip], method: [js, kl]}
    inputs: {model: finetune.ckpt}
    params:
      cmd: cat ${inputs.model} > ${outs.p}
      outs: {p: p.txt}
      materialize: {p: "p-${matrix.family}-${matrix.method}.txt"}
"#,
    );
    let dag = project.mipipe(&["dag"]);
    dag.expect_code(0);
    assert!(
        dag.stdout.contains(
            "finetune[family=blip,method=kl] (command)\n    base <- pretrain[family=blip].ckpt"
        ),
        "{}",
        dag.stdout
    );
    assert!(
        dag.stdout.contains(
            "predict[family=blip,method=kl] (command)\n    model <- finetune[family=blip,method=kl].ckpt"
        ),
        "{}",
        dag.stdout
    );
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(
        project.read("p-blip-js.txt"),
        "base blip\njs [\"a\",\"b\"]\n"
    );
    assert_eq!(project.read("p-llava-js.txt"), "base llava\njs [\"a\"]\n");
}

#[test]
fn cache_false_runs_every_time_and_is_never_recorded() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  clock:
    kind: command
    cache: false
    params:
      cmd: echo tick >> runs.log && echo same > ${outs.t}
      outs: {t: t.txt}
  after:
    kind: command
    inputs: {t: clock.t}
    params:
      cmd: echo after >> runs.log && cat ${inputs.t} > ${outs.o}
      outs: {o: o.txt}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.count_lines("runs.log", "tick"), 2);
    // Its output is identical, so the consumer stays cached.
    assert_eq!(project.count_lines("runs.log", "after"), 1);
    let lock = project.read("mipipe.lock");
    assert!(!lock.contains("\"clock\""), "{lock}");
}

#[test]
fn gpu_stages_take_device_slots_and_see_cuda_visible_devices() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  a:
    kind: command
    resources: {gpus: 1}
    params:
      cmd: echo "$CUDA_VISIBLE_DEVICES" > ${outs.d}
      outs: {d: d.txt}
      materialize: {d: a.txt}
  b:
    kind: command
    resources: {gpus: 2}
    params:
      cmd: echo "$CUDA_VISIBLE_DEVICES" > ${outs.d}
      outs: {d: d.txt}
      materialize: {d: b.txt}
"#,
    );
    let run = project.mipipe(&["run", "--gpus", "1"]);
    run.expect_code(3);
    assert!(
        run.stderr.contains("needs 2 GPU(s) but this run has 1"),
        "{}",
        run.stderr
    );
    project
        .mipipe(&["run", "--gpus", "2", "-j", "1"])
        .expect_code(0);
    // `a` and `b` have the same params, so they share one key and one result (resources are
    // not part of the key); both copies are materialized anyway.
    assert_eq!(project.read("a.txt"), "0\n");
    assert_eq!(project.read("b.txt"), "0\n");
    project.write(
        "mipipe.yaml",
        &project.read("mipipe.yaml").replace(
            "> ${outs.d}\n      outs: {d: d.txt}\n      materialize: {d: b.txt}",
            "> ${outs.d} && true\n      outs: {d: d.txt}\n      materialize: {d: b.txt}",
        ),
    );
    project.mipipe(&["run", "--gpus", "2"]).expect_code(0);
    assert_eq!(project.read("b.txt"), "0,1\n");
    // A deleted workspace copy comes back from the cache without rerunning.
    std::fs::remove_file(project.path().join("a.txt")).unwrap();
    let run = project.mipipe(&["run", "--gpus", "2"]);
    assert!(run.stages_with("ran").is_empty(), "{}", run.stderr);
    assert_eq!(project.read("a.txt"), "0\n");
}

#[test]
fn directory_outputs_are_stored_as_trees_and_read_as_folders() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  shards:
    kind: command
    params:
      cmd: mkdir -p ${outs.dir}/sub && echo 1 > ${outs.dir}/a && echo 2 > ${outs.dir}/sub/b
      outs: {dir: shards/}
  count:
    kind: command
    inputs: {dir: shards.dir}
    params:
      cmd: find ${inputs.dir} -type f | wc -l | tr -d ' ' > ${outs.n}
      outs: {n: n.txt}
      materialize: {n: n.txt}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    assert_eq!(project.read("n.txt"), "2\n");
}

#[test]
fn undeclared_or_missing_outputs_fail_the_stage() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  missing:
    kind: command
    params:
      cmd: "true"
      outs: {x: x.txt}
"#,
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("did not write its declared output `x`"),
        "{}",
        run.stderr
    );
}

#[test]
fn json_events_are_one_object_per_line() {
    let project = crate::incremental::example_project();
    let run = project.mipipe(&["run", "--json"]);
    run.expect_code(0);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "run_start");
    assert_eq!(
        events.iter().filter(|e| e["outcome"] == "executed").count(),
        6
    );
    assert_eq!(events.last().unwrap()["event"], "summary");
}

#[test]
fn every_subcommand_speaks_json_one_object_per_line() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    for args in [
        &["--json", "status"][..],
        &["--json", "run"],
        &["--json", "dag"],
        &["--json", "show", "prepare"],
        &["--json", "log", "prepare"],
        &["--json", "stages"],
        &["--json", "cache", "du"],
        &["--json", "cache", "verify"],
        &["--json", "cache", "gc", "--dry-run"],
        &["--json", "cache", "hash", "raw.csv"],
    ] {
        let run = project.mipipe(args);
        run.expect_code(0);
        assert!(!run.stdout.trim().is_empty(), "{args:?} printed nothing");
        for line in run.stdout.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: `{line}` is not one JSON value: {e}"));
            assert!(value.is_object(), "{args:?}: `{line}` is not an object");
        }
    }
}

#[test]
fn output_redirected_to_a_file_has_no_colour_codes_even_from_a_terminal() {
    let project = crate::incremental::example_project();
    project.mipipe(&["run"]).expect_code(0);
    // `script` gives mipipe a terminal on stderr; stdout goes to a file.
    let bin = crate::mipipe_bin();
    let status = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("'{}' status > status.txt", bin.display()),
            "/dev/null",
        ])
        .current_dir(project.path())
        .env_remove("NO_COLOR")
        .status()
        .unwrap();
    assert!(status.success());
    let text = project.read("status.txt");
    assert!(text.contains("cached"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in a file: {text:?}");
}

#[test]
fn stages_documents_the_command_kind() {
    let project = Project::new();
    let run = project.mipipe(&["stages", "command"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("cmd        string (required)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("deps       list of string"),
        "{}",
        run.stdout
    );
}

#[test]
fn every_pipeline_shipped_in_the_repository_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    let project = Project::new();
    for file in files {
        let run = project.mipipe(&["dag", file.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{}:\n{}", file.display(), run.stderr);
    }
}

/// Figure 5's shape: a sweep of a field of a mapping param (`pgd.steps`), repeated by the stages
/// downstream to join on it, and `${matrix.NAME}` to label their results. Resolution only.
#[test]
fn dotted_axes_set_fields_of_mapping_params_and_repeated_axes_join_on_them() {
    let project = Project::new();
    let pipeline = |sweep_params: &str, predict_axis: &str, label: &str| {
        format!(
            r#"version: 1
stages:
  world:
    kind: synth
    params: {{seed: 0}}
  pretrain:
    kind: pretrain
    inputs: {{corpus: world.corpus, items: world.items}}
    params: {{family: llava, size: xs}}
  sweep:
    kind: finetune
    matrix: {{pgd.steps: [1, 2, 3]}}
    inputs: {{model: pretrain.model, items: world.items}}
    params: {sweep_params}
  plain:
    kind: finetune
    inputs: {{model: pretrain.model, items: world.items}}
    params: {{method: ours}}
  answer:
    kind: predict
    matrix: {{{predict_axis}: [1, 2, 3]}}
    inputs: {{model: sweep.model, items: world.items}}
  score:
    kind: evaluate
    matrix: {{pgd.steps: [1, 2, 3]}}
    inputs: {{predictions: answer.predictions}}
    params: {{family: llava, method: "{label}"}}
"#
        )
    };
    project.write(
        "mipipe.yaml",
        &pipeline(
            "{method: ours, pgd: {alpha: 0.2}}",
            "pgd.steps",
            "ours_k${matrix.pgd.steps}",
        ),
    );
    let show = |stage: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["show", stage, "--json"];
        args.extend_from_slice(extra);
        let run = project.mipipe(&args);
        run.expect_code(0);
        serde_json::from_str(&run.stdout).unwrap()
    };
    // The axis sets one field; the stage's own fields and the defaults stay.
    let three = show("sweep[pgd.steps=3]", &[]);
    assert_eq!(three["params"]["pgd"]["steps"], 3, "{three}");
    assert_eq!(three["params"]["pgd"]["alpha"], 0.2, "{three}");
    assert_eq!(three["params"]["pgd"]["epsilon"], 0.001, "{three}");
    // A value equal to the default gives the canonical params of a stage that does not set
    // it (so, on the same inputs, the same key: the ablation's K = 2 is found in the cache).
    let two = show("sweep[pgd.steps=2]", &[]);
    let plain = show("plain", &["--set", "plain.pgd.alpha=0.2"]);
    assert_eq!(two["params"], plain["params"]);
    assert_ne!(two["params"], three["params"]);
    // `--set` reaches a field and keeps the others.
    let set = show("sweep[pgd.steps=3]", &["--set", "sweep.pgd.epsilon=0.01"]);
    assert_eq!(set["params"]["pgd"]["epsilon"], 0.01, "{set}");
    assert_eq!(set["params"]["pgd"]["alpha"], 0.2, "{set}");
    // Downstream, the repeated axis joins (predict has no `pgd` param) and labels.
    let dag = project.mipipe(&["dag"]);
    dag.expect_code(0);
    for k in 1..=3 {
        assert!(
            dag.stdout.contains(&format!(
                "answer[pgd.steps={k}] (predict)\n    items <- world.items\n    model <- sweep[pgd.steps={k}].model"
            )),
            "{}",
            dag.stdout
        );
        let score = show(&format!("score[pgd.steps={k}]"), &[]);
        assert_eq!(score["params"]["method"], format!("ours_k{k}"), "{score}");
    }
    assert!(show("answer[pgd.steps=1]", &[])["params"]
        .get("pgd")
        .is_none());

    // Mistakes, each named.
    let refused = |yaml: String, words: &str| {
        project.write("mipipe.yaml", &yaml);
        let run = project.mipipe(&["status"]);
        run.expect_code(2);
        assert!(run.stderr.contains(words), "{words}:\n{}", run.stderr);
    };
    // (the sweep's params, predict's axis, evaluate's method label, words of the error)
    let mistakes = [
        (
            "{method: ours, pgd: {steps: 2}}",
            "pgd.steps",
            "ours",
            "`pgd.steps` is both a matrix axis and a param of stage `sweep`",
        ),
        (
            "{method: ours, pgd: 3}",
            "pgd.steps",
            "ours",
            "`pgd.steps` sets a field of `pgd`, which is",
        ),
        (
            "{method: ours}",
            "k",
            "ours",
            "Stage kind `predict` has no param `k`",
        ),
        (
            "{method: ours}",
            "pgd.steps",
            "ours_k${matrix.k}",
            "`${matrix.k}` names no matrix axis of this stage",
        ),
        ("{method: ours, pgd.stepz: 4}", "pgd.steps", "ours", "stepz"),
    ];
    for (sweep_params, axis, label, words) in mistakes {
        refused(pipeline(sweep_params, axis, label), words);
    }
}

/// `mipipe timings --stage NAME --by FIELD`: a dotted field of a mapping param (here a
/// `command` stage's free param, swept by a dotted axis) groups only the named stage's instances.
#[test]
fn timings_group_the_named_stage_by_a_dotted_field() {
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        r#"version: 1
stages:
  sweep:
    kind: command
    matrix: {opt.depth: [1, 2]}
    params:
      cmd: echo ${params.opt} > ${outs.txt}
      opt: {width: 3}
      outs: {txt: out.txt}
  other:
    kind: command
    params:
      cmd: echo other > ${outs.txt}
      opt: {depth: 9}
      outs: {txt: out.txt}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    let run = project.mipipe(&["timings", "--stage", "sweep", "--by", "opt.depth"]);
    run.expect_code(0);
    for depth in ["1", "2"] {
        assert!(
            run.stdout.contains(&format!("| command | {depth} | 1 |")),
            "{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("| 9 |"), "{}", run.stdout);
    // The field was nested into the mapping, next to the stage's own.
    let show = project.mipipe(&["show", "sweep[opt.depth=2]", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(
        value["params"]["opt"],
        serde_json::json!({"depth": 2, "width": 3})
    );
}

/// Every pipeline the repository ships (the study, its pilots and sensitivity runs, the
/// examples) resolves and plans with this build: a renamed param or kind fails here, not in a
/// user's run. Planned against an empty cache of its own, so the repository is not written.
#[test]
fn every_shipped_pipeline_plans() {
    fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && name != "results" && !name.starts_with('.') {
                yaml_files(&path, out);
            } else if name.ends_with(".yaml") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut pipelines = Vec::new();
    yaml_files(&root, &mut pipelines);
    pipelines.sort();
    assert!(pipelines.len() >= 10, "{pipelines:?}");
    let cache = tempfile::tempdir().unwrap();
    for pipeline in &pipelines {
        let output = std::process::Command::new(crate::mipipe_bin())
            .arg("run")
            .arg(pipeline)
            .args(["--dry-run", "--cache-dir"])
            .arg(cache.path())
            .output()
            .unwrap();
        let run = crate::Run::from(output);
        assert_eq!(
            run.code,
            0,
            "{} does not plan:\n{}{}",
            pipeline.display(),
            run.stdout,
            run.stderr
        );
        assert!(
            format!("{}{}", run.stdout, run.stderr).contains("stages will run"),
            "{}",
            pipeline.display()
        );
    }
}
