//! `evaluate` and `table` through the binary, on predictions written in the real schema.

use mipipe_stage_data::schema::{write_predictions, Prediction};

use crate::Project;

fn prediction(origin: &str, dataset: &str, task: &str, condition: &str, raw: &str) -> Prediction {
    Prediction {
        id: format!("{origin}#{condition}"),
        origin_id: origin.into(),
        dataset: dataset.into(),
        task: task.into(),
        perturbation: condition.into(),
        answer: 0,
        options: ["circle", "square", "star", "ring"]
            .map(String::from)
            .to_vec(),
        raw_text: raw.into(),
        predicted: None,
        option_logprobs: Some(vec![-0.1, -2.0, -3.0, -4.0]),
        points_at: None,
        unknown_share: None,
        references: None,
    }
}

/// A model that is right on clean items and, unless `robust`, fooled by MD on half of them.
fn predictions(robust: bool) -> Vec<Prediction> {
    let mut rows = Vec::new();
    for i in 0..4 {
        let origin = format!("shapes/{i}");
        rows.push(prediction(&origin, "shapes", "image_heavy", "none", "A"));
        let fooled = !robust && i % 2 == 0;
        rows.push(prediction(
            &origin,
            "shapes",
            "image_heavy",
            "md",
            if fooled { "B" } else { "A" },
        ));
        rows.push(prediction(&origin, "shapes", "image_heavy", "uf", "circle"));
        rows.push(prediction(
            &format!("counting/{i}"),
            "counting",
            "vqa",
            "none",
            if i < 3 { "A" } else { "C" },
        ));
    }
    rows
}

/// A project holding the predictions of a vanilla and a robust ("ours") model.
fn project_with_predictions() -> Project {
    let project = Project::new();
    for (method, robust) in [("vanilla", false), ("ours", true)] {
        let path = project.path().join(format!("preds-{method}.parquet"));
        write_predictions(&path, &predictions(robust)).unwrap();
    }
    project
}

const PIPELINE: &str = r#"version: 1
stages:
  predict:
    kind: command
    matrix: {method: [vanilla, ours]}
    params:
      cmd: cp preds-${params.method}.parquet ${outs.p}
      deps: [preds-vanilla.parquet, preds-ours.parquet]
      outs: {p: p.parquet}
  evaluate:
    kind: evaluate
    matrix: {method: [vanilla, ours]}
    inputs: {predictions: predict.p}
    params: {family: llava}
  table:
    kind: table
    inputs: {metrics: "evaluate[*].metrics"}
    params: {layout: orig_perturbed, names: {shapes: Shapes, ours: Ours}}
    materialize: {md: table.md, tex: table.tex, csv: table.csv, provenance: provenance.csv, figures: figures/}
"#;

#[test]
fn predictions_become_metrics_and_a_table_and_a_table_option_reruns_only_the_table() {
    let project = project_with_predictions();
    project.write("mipipe.yaml", PIPELINE);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 5, "{}", run.stderr);
    let md = project.read("table.md");
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0], "| Model | Method | Shapes Orig | Shapes Perturbed | VQA Overall |",
        "{md}"
    );
    assert_eq!(
        lines[2], "| llava-s | Vanilla | 100.0 | 50.0 | 75.0 |",
        "{md}"
    );
    assert_eq!(lines[3], "|  | Ours | 100.0 | **100.0** | 75.0 |", "{md}");
    assert!(project.read("table.tex").contains("\\begin{tabular}"));
    assert!(project
        .read("provenance.csv")
        .contains("evaluate[method=ours]"));
    assert!(
        project.path().join("figures/radar-llava_s.svg").exists()
            || project.path().join("figures/drop-llava_s.svg").exists()
    );
    assert!(project.read("figures/drop-llava_s.svg").contains("<svg"));
    // The PNG twin: a PNG signature and the SVG's size at twice the scale.
    let png = std::fs::read(project.path().join("figures/drop-llava_s.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    let svg = project.read("figures/drop-llava_s.svg");
    let start = svg.find("height=\"").unwrap() + 8;
    let svg_height: u32 = svg[start..start + svg[start..].find('"').unwrap()]
        .parse()
        .unwrap();
    assert_eq!(height, 2 * svg_height, "the PNG is the SVG rendered at 2x");

    project.write(
        "mipipe.yaml",
        &PIPELINE.replace(
            "layout: orig_perturbed,",
            "layout: orig_perturbed, decimals: 2,",
        ),
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["table"], "{}", run.stderr);
    assert!(project
        .read("table.md")
        .contains("| llava-s | Vanilla | 100.00 | 50.00 | 75.00 |"));
}

#[test]
fn per_item_scores_open_in_pyarrow_and_give_the_tables_their_tests() {
    let project = project_with_predictions();
    project.write(
        "mipipe.yaml",
        &PIPELINE
            .replace(
                r#"inputs: {metrics: "evaluate[*].metrics"}"#,
                r#"inputs: {metrics: "evaluate[*].metrics", scores: "evaluate[*].scores"}"#,
            )
            .replace("names: {", "reference: vanilla, names: {"),
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    // "Ours" is right on the 2 MD items vanilla gets wrong: a test is made (too few pairs to
    // be significant) and its counts are in the CSV.
    let csv = project.read("table.csv");
    let line = csv
        .lines()
        .find(|l| l.starts_with("llava-s,ours,shapes,perturbed,accuracy,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(line.contains(",vanilla,50.0000,"), "{line}");
    assert!(line.contains(",2,0,0.500000,"), "{line}");
    let Some(python) = crate::python_with_pyarrow() else {
        return;
    };
    let script = r#"
import sys, pyarrow.parquet as pq
for scores_path, metrics_path in zip(sys.argv[1::2], sys.argv[2::2]):
    scores = pq.read_table(scores_path)
    names = ["family", "size", "method", "seed", "dataset", "task", "condition", "metric"]
    assert scores.schema.names == names + ["origin_id", "value"], scores.schema.names
    metrics = pq.read_table(metrics_path).to_pylist()
    assert all("ci_low" in m and "ci_high" in m for m in metrics)
    rows = scores.to_pylist()
    for m in metrics:
        values = [r["value"] for r in rows if (r["dataset"], r["condition"], r["metric"]) == (m["dataset"], m["condition"], m["metric"])]
        assert len(values) == m["n"], m
        assert abs(sum(values) / len(values) - m["value"]) < 1e-12, m
        assert m["ci_low"] <= m["value"] <= m["ci_high"], m
print("scores ok")
"#;
    let mut command = std::process::Command::new(python);
    command.arg("-c").arg(script);
    for method in ["vanilla", "ours"] {
        let stage = format!("evaluate[method={method}]");
        command.arg(project.output_object(&stage, "scores"));
        command.arg(project.output_object(&stage, "metrics"));
    }
    let out = command.current_dir(project.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_latex_table_compiles_with_pdflatex() {
    let project = project_with_predictions();
    // The VQA layout: arrows for relative changes, and a plain-text caption with every character
    // LaTeX treats specially (a YAML `\\%` is a backslash and a percent sign, printed as such).
    project.write(
        "mipipe.yaml",
        &PIPELINE.replace(
            "layout: orig_perturbed,",
            "layout: vqa, caption: \"VQA accuracy & relative change (100%, \\\\%) {#1} $x_2$ ~^ at λ ≥ 1, ε = 0.1 ± 0.01\",",
        ),
    );
    project.mipipe(&["run"]).expect_code(0);
    assert!(
        project
            .read("table.tex")
            .contains("\\caption{VQA accuracy \\& relative change (100\\%, \\textbackslash{}\\%)")
            && project
                .read("table.tex")
                .contains("at $\\lambda$ $\\geq$ 1, $\\varepsilon$ = 0.1 $\\pm$ 0.01"),
        "{}",
        project.read("table.tex")
    );
    if crate::compile_latex(&project, &["table.tex"]) {
        assert!(project.path().join("doc.pdf").exists());
    }
}

#[test]
fn compare_puts_every_instance_in_one_table_and_pools_seeds() {
    let project = project_with_predictions();
    project.write(
        "mipipe.yaml",
        &PIPELINE.replace(
            "    matrix: {method: [vanilla, ours]}\n    inputs: {predictions: predict.p}",
            "    matrix: {method: [vanilla, ours], seed: [0, 1]}\n    inputs: {predictions: predict.p}",
        ),
    );
    project.mipipe(&["run"]).expect_code(0);
    let compare = |args: &[&str]| {
        let mut all = vec!["compare", "--stage", "evaluate"];
        all.extend_from_slice(args);
        let run = project.mipipe(&all);
        run.expect_code(0);
        run.stdout
    };

    // One row per instance; params and the chosen metric as columns; sorted as asked.
    let md = compare(&[
        "--metric",
        "shapes/md/accuracy",
        "--only-changed",
        "--sort-by",
        "shapes/md/accuracy",
        "--desc",
    ]);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0], "| stage | method | seed | shapes/md/accuracy |",
        "{md}"
    );
    assert_eq!(
        lines.len(),
        6,
        "a header, its rule and four instances: {md}"
    );
    assert!(lines[2].starts_with("| evaluate[method=ours,"), "{md}");
    assert!(
        lines[2].ends_with("| ours | 0 | 1.0000 |") || lines[2].ends_with("| ours | 1 | 1.0000 |"),
        "{md}"
    );
    assert!(lines[5].ends_with("| 0.5000 |"), "{md}");
    assert!(
        !md.contains("family"),
        "--only-changed drops a param every row shares: {md}"
    );

    // Seeds pooled: per configuration the mean, std and interval over its instances.
    let csv = compare(&[
        "--metric",
        "shapes/md/acc*",
        "--group-by",
        "all-but-seed",
        "--only-changed",
        "--format",
        "csv",
    ]);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "stage,instances,method,shapes/md/accuracy,shapes/md/accuracy.std,shapes/md/accuracy.ci_low,shapes/md/accuracy.ci_high",
        "{csv}"
    );
    assert_eq!(
        &rows[1..],
        [
            "\"evaluate[method=ours,seed=*]\",2,ours,1,0,1,1",
            "\"evaluate[method=vanilla,seed=*]\",2,vanilla,0.5,0,0.5,0.5"
        ],
        "{csv}"
    );
    let tex = compare(&[
        "--metric",
        "shapes/md/accuracy",
        "--group-by",
        "all-but-seed",
        "--format",
        "tex",
    ]);
    assert!(
        tex.contains("\\begin{tabular}") && tex.contains("1.0000 $\\pm$ 0.0000"),
        "{tex}"
    );

    // A misspelt stage or column is a usage error that suggests the right one.
    let wrong = project.mipipe(&["compare", "--stage", "evalute"]);
    wrong.expect_code(2);
    assert!(
        wrong.stderr.contains("Did you mean `evaluate`?"),
        "{}",
        wrong.stderr
    );
    let wrong = project.mipipe(&["compare", "--stage", "evaluate", "--sort-by", "methd"]);
    wrong.expect_code(2);
    assert!(
        wrong.stderr.contains("Did you mean `method`?"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn report_is_one_offline_page_whose_cells_open_the_stages_behind_them() {
    let project = project_with_predictions();
    project.write("mipipe.yaml", PIPELINE);
    project.mipipe(&["run"]).expect_code(0);
    // A second run with a changed param, so the last run has reasons to show.
    project.write(
        "mipipe.yaml",
        &PIPELINE.replace("params: {family: llava}", "params: {family: blip}"),
    );
    project.mipipe(&["run"]).expect_code(0);
    project.mipipe(&["report"]).expect_code(0);
    let html = project.read("mipipe-report.html");

    // Offline: nothing is fetched (the only URL is the SVG namespace).
    for external in ["src=\"", "<link", "href=\"http", "url(", "@import"] {
        assert!(!html.contains(external), "the page refers out: {external}");
    }
    // The table's cells, each a link to itself; the figures inline.
    assert!(
        html.contains("<a class=\"cell\" id=\"cell-0-0\""),
        "no cells"
    );
    assert!(
        html.contains("<figure><div class=\"svg\"><svg"),
        "no figures"
    );
    // Why the last run's stages ran, and what they cost.
    assert!(
        html.contains("param `family` changed &quot;llava&quot; -&gt; &quot;blip&quot;"),
        "the last run's reasons are missing: {}",
        html.split("<section id=\"last-run\">")
            .nth(1)
            .unwrap_or("")
            .split("</section>")
            .next()
            .unwrap()
    );
    let records: Vec<serde_json::Value> = walk(&project.path().join(".mipipe/runs"))
        .into_iter()
        .filter(|p| p.ends_with("record.json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let predict = records
        .iter()
        .find(|r| r["stage"] == "predict[method=ours]")
        .expect("a run record of predict");
    // The `command` kind's shell and `cp`: a real process, measured by the kernel.
    let rss = predict["peak_rss_bytes"]
        .as_u64()
        .expect("peak RSS recorded");
    assert!(rss > 100_000, "peak RSS {rss} bytes");
    // `cp` uses no GPU: no GPU figure, whether or not the machine has NVML.
    assert!(predict.get("peak_gpu_bytes").is_none(), "{predict}");
    assert!(predict["run"].as_str().is_some_and(|r| r.contains('-')));

    // A file mipipe did not write is never replaced.
    project.write("notes.html", "my notes");
    project
        .mipipe(&["report", "-o", "notes.html"])
        .expect_code(2);
    assert_eq!(project.read("notes.html"), "my notes");
    project.mipipe(&["report"]).expect_code(0);

    // In a browser: opening a cell shows the stages behind it with their keys.
    let lock = project.lock();
    let Some(dom) = crate::headless_chromium(
        &project,
        "mipipe-report.html?open=cell-0-0",
        &["--dump-dom"],
    ) else {
        return;
    };
    let detail = dom
        .split("<div id=\"detail-body\">")
        .nth(1)
        .and_then(|rest| rest.split("</aside>").next())
        .expect("the detail panel");
    assert!(detail.contains("Stages behind it"), "{detail}");
    let shown: Vec<&str> = lock["stages"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with("evaluate["))
        .filter_map(|(_, e)| e["key"].as_str())
        .filter(|key| detail.contains(key))
        .collect();
    assert_eq!(
        shown.len(),
        1,
        "one evaluate stage's key per cell: {detail}"
    );
    assert!(detail.contains("why it ran"), "{detail}");
    let shot = project.path().join("report.png");
    crate::headless_chromium(
        &project,
        "mipipe-report.html?open=cell-0-0",
        &[&format!("--screenshot={}", shot.display())],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(frame.width, 1280);
    let channels = frame.line_size / frame.width as usize;
    let inked = pixels[..frame.buffer_size()]
        .chunks(channels)
        .filter(|p| p[..3].iter().any(|c| *c < 200))
        .count();
    let share = inked as f64 / (frame.width * frame.height) as f64;
    assert!(
        share > 0.01,
        "the screenshot is nearly blank ({share:.4} inked)"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn diff_names_changed_stages_and_traces_a_changed_cell_to_the_param_behind_it() {
    let project = project_with_predictions();
    // The model each method answers with is a matrix key of `predict` only, so `evaluate`
    // names its instance by `method`.
    let pipeline = |model: &str| {
        PIPELINE
            .replace(
                "inputs: {predictions: predict.p}",
                "inputs: {predictions: \"predict[method=${params.method}].p\"}",
            )
            .replace(
            "    matrix: {method: [vanilla, ours]}\n    params:\n      cmd: cp preds-${params.method}.parquet ${outs.p}",
            &format!(
                "    matrix:\n      method: [vanilla, ours]\n      include: [{{method: vanilla, model: vanilla}}, {{method: ours, model: {model}}}]\n    params:\n      cmd: cp preds-${{params.model}}.parquet ${{outs.p}}"
            ),
        )
    };
    project.write("mipipe.yaml", &pipeline("ours"));
    project.mipipe(&["run"]).expect_code(0);
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(project.path())
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}: {status:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "mipipe.lock"]);
    git(&["commit", "-qm", "first run"]);
    std::fs::copy(
        project.path().join("mipipe.lock"),
        project.path().join("old.lock"),
    )
    .unwrap();

    // Ours now answers with the vanilla model's predictions.
    project.write("mipipe.yaml", &pipeline("vanilla"));
    project.mipipe(&["run"]).expect_code(0);
    let diff = project.mipipe(&["diff", "old.lock", "mipipe.lock"]);
    diff.expect_code(0);
    let out = &diff.stdout;
    assert!(
        out.starts_with(
            "old.lock -> mipipe.lock: 3 stage(s) changed, 0 added, 0 removed, 2 unchanged"
        ),
        "{out}"
    );
    assert!(
        out.contains("~ predict[method=ours]\n    model: ours -> vanilla\n"),
        "{out}"
    );
    assert!(
        out.contains("~ evaluate[method=ours]\n    inputs changed: predictions\n"),
        "{out}"
    );
    assert!(!out.contains("~ predict[method=vanilla]"), "{out}");
    assert!(
        out.contains(
            "  llava-s | ours | shapes perturbed accuracy: 100.0000 -> 50.0000\n      \
             via evaluate[method=ours] <- predict[method=ours]\n      \
             because predict[method=ours]: model: ours -> vanilla\n"
        ),
        "{out}"
    );
    assert!(
        !out.contains("| vanilla |"),
        "vanilla's cells did not change: {out}"
    );

    // The same from git: the committed lockfile against the one on disk.
    let from_git = project.mipipe(&["diff", "HEAD"]);
    from_git.expect_code(0);
    assert_eq!(
        from_git.stdout.replacen("HEAD -> ", "old.lock -> ", 1),
        diff.stdout
    );
    let wrong = project.mipipe(&["diff", "no-such-rev"]);
    wrong.expect_code(2);
    assert!(
        wrong
            .stderr
            .contains("neither a lockfile nor a git revision"),
        "{}",
        wrong.stderr
    );
}
