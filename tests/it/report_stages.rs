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
    assert_eq!(height, 600, "the bar chart is 300 px high, rendered at 2x");

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
fn the_latex_table_compiles_with_pdflatex() {
    let project = project_with_predictions();
    // The VQA layout: arrows for relative changes, and a plain-text caption with every character
    // LaTeX treats specially (a YAML `\\%` is a backslash and a percent sign, printed as such).
    project.write(
        "mipipe.yaml",
        &PIPELINE.replace(
            "layout: orig_perturbed,",
            "layout: vqa, caption: \"VQA accuracy & relative change (100%, \\\\%) {#1} $x_2$ ~^\",",
        ),
    );
    project.mipipe(&["run"]).expect_code(0);
    assert!(
        project
            .read("table.tex")
            .contains("\\caption{VQA accuracy \\& relative change (100\\%, \\textbackslash{}\\%)"),
        "{}",
        project.read("table.tex")
    );
    if crate::compile_latex(&project, &["table.tex"]) {
        assert!(project.path().join("doc.pdf").exists());
    }
}
