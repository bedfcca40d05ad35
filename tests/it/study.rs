//! The ablation study itself: pipelines/quick.yaml run end to end through the torch worker,
//! and the incrementality the issue asks for, with the exact sets of stages each change reruns.

use std::collections::BTreeSet;
use std::path::Path;

use crate::Project;

const FAMILIES: [&str; 3] = ["llava", "blip", "qwen"];
const METHODS: [&str; 7] = ["fft_vqa", "fft_mix", "kl", "js", "rg", "adv", "ours"];
const TABLES: [&str; 11] = [
    "causal_effect",
    "figure5",
    "pointing",
    "probe",
    "table1",
    "table10",
    "table11",
    "table2",
    "table5",
    "table8",
    "table9",
];
/// The tables that read the vanilla models only.
const VANILLA_TABLES: [&str; 2] = ["probe", "table8"];

fn pipeline(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Everything from `stages:` on, with the results folder named neutrally.
fn stages_section(text: &str, results: &str) -> String {
    let start = text.find("\nstages:\n").expect("a stages section");
    text[start..].replace(&format!("results/{results}/"), "results/STUDY/")
}

#[test]
fn quick_and_ablation_pipelines_are_the_same_study() {
    assert_eq!(
        stages_section(&pipeline("quick.yaml"), "quick"),
        stages_section(&pipeline("ablation.yaml"), "ablation"),
        "pipelines/quick.yaml must differ from ablation.yaml only in `vars` and the results folder"
    );
}

fn instances(stage: &str, families: &[&str], methods: &[&str], seeds: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    for family in families {
        for seed in seeds {
            if methods.is_empty() {
                out.push(format!("{stage}[family={family},seed={seed}]"));
            }
            for method in methods {
                out.push(format!(
                    "{stage}[family={family},method={method},seed={seed}]"
                ));
            }
        }
    }
    out
}

/// Figure 5's sweep (`finetune_pgd_steps` and the stages joined on it): LLaVA, K PGD steps.
fn sweep(stage: &str, steps: &[u32], seeds: &[u32]) -> Vec<String> {
    let mut out = Vec::new();
    for k in steps {
        for seed in seeds {
            out.push(format!("{stage}[family=llava,pgd.steps={k},seed={seed}]"));
        }
    }
    out
}

/// The sweep's K values in quick.yaml (`vars.pgd_steps`), and those it adds to the ablation's
/// Ours (K = 2).
const STEPS: [u32; 2] = [1, 2];
const NEW_STEPS: [u32; 1] = [1];

/// The sweep's K = 2 fine-tune and prediction are the ablation's Ours ones (one key, one
/// cache entry): whichever name a run executes it under, it is that stage.
fn canonical(name: &str) -> String {
    for (sweep, main) in [
        ("finetune_pgd_steps", "finetune"),
        ("predict_pgd_steps", "predict"),
    ] {
        let twin = name
            .strip_prefix(sweep)
            .and_then(|rest| rest.strip_prefix("[family="))
            .and_then(|rest| rest.split_once(",pgd.steps=2,seed="));
        if let Some((family, seed)) = twin {
            return format!("{main}[family={family},method=ours,seed={seed}");
        }
    }
    name.to_string()
}

/// The stages a run executed, twins as one.
fn executed(run: &crate::Run) -> BTreeSet<String> {
    run.stages_with("ran")
        .iter()
        .map(|n| canonical(n))
        .collect()
}

/// The predictions of `stage`, asserting there is one for every test row of `conditions`.
fn predictions_of_every_test_row(
    project: &Project,
    stage: &str,
) -> Vec<mipipe_stage_schema::Prediction> {
    let test_rows = mipipe_stage_schema::read_items(&project.output_object("conditions", "items"))
        .unwrap()
        .into_iter()
        .filter(|i| i.split == "test")
        .count();
    let predictions =
        mipipe_stage_schema::read_predictions(&project.output_object(stage, "predictions"))
            .unwrap();
    assert_eq!(predictions.len(), test_rows, "{stage}");
    predictions
}

#[test]
fn the_quick_study_runs_end_to_end_and_reruns_only_what_each_change_touches() {
    crate::require_torch_worker();
    let project = Project::new();
    let yaml = pipeline("quick.yaml");
    project.write("mipipe.yaml", &yaml);

    // 1. A full run: every stage once, and the tables exist.
    let run = project.mipipe(&["run", "-j", "2"]);
    run.expect_code(0);
    let seeds = [0];
    let trained: Vec<String> = instances("finetune", &FAMILIES, &METHODS, &seeds);
    // Figure 5's sweep adds a fine-tune and a prediction per new K and an evaluation per K;
    // Table 9 a prediction and an evaluation per vanilla model; Table 10 a free-form
    // prediction and evaluation per model; the probe one per vanilla model.
    let sweep_stages = 2 * NEW_STEPS.len() + STEPS.len();
    let cot_stages = 2 * FAMILIES.len();
    let free_form_stages = 2 * (FAMILIES.len() + trained.len());
    let probe_stages = 2 * FAMILIES.len();
    // world, conditions and the two `select`s of their training rows; pretraining; ...
    let total = 4
        + 3
        + 3 * trained.len()
        + 3
        + 3
        + TABLES.len()
        + sweep_stages
        + cot_stages
        + free_form_stages
        + probe_stages;
    assert_eq!(run.stages_with("ran").len(), total, "{}", run.stderr);
    assert_eq!(executed(&run).len(), total, "{}", run.stderr);
    let table1 = project.read("results/quick/table1.md");
    for family in FAMILIES {
        assert!(table1.contains(&format!("{family}-xs")), "{table1}");
    }
    for method in ["Vanilla", "FFT w/ D_mixed", "Ours"] {
        assert!(table1.contains(&format!("| {method} |")), "{table1}");
    }
    assert!(project.path().join("results/quick/figures").is_dir());
    // Every number behind the tables, in one Parquet table: a row per evaluated metric of
    // every model and method.
    let metrics =
        mipipe_stage_schema::read_metrics(&project.path().join("results/quick/metrics.parquet"))
            .unwrap();
    for method in ["vanilla", "fft_mix", "ours"] {
        assert!(metrics.iter().any(|m| m.method == method), "{method}");
    }
    assert!(metrics.iter().all(|m| m.value.is_finite()));
    // The tables the shipped pipeline writes compile as a paper would include them.
    let tex: Vec<String> = TABLES
        .iter()
        .map(|t| format!("results/quick/{t}.tex"))
        .collect();
    crate::compile_latex(
        &project,
        &tex.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Every test row of every condition got a prediction from every model.
    let conditions = project.output_object("conditions", "items");
    let predictions =
        predictions_of_every_test_row(&project, "predict[family=blip,method=ours,seed=0]");
    assert!(predictions
        .iter()
        .all(|p| p.option_logprobs.as_ref().map(Vec::len) == Some(p.options.len())));
    // Table 10's free-form predictions: the clean test rows, answered in words, each with its
    // gold option's words as the reference and no option scored.
    let clean_rows = mipipe_stage_schema::read_items(&conditions)
        .unwrap()
        .into_iter()
        .filter(|i| i.split == "test" && (i.perturbation == "none" || i.perturbation == "rp"))
        .count();
    let free_form = mipipe_stage_schema::read_predictions(&project.output_object(
        "predict_free_form[family=blip,method=ours,seed=0]",
        "predictions",
    ))
    .unwrap();
    assert_eq!(free_form.len(), clean_rows);
    assert!(free_form.iter().all(|p| p.option_logprobs.is_none()
        && p.predicted.is_none()
        && p.references.as_ref().is_some_and(|r| r.len() == 1)));
    let table10 = project.read("results/quick/table10.md");
    assert!(table10.contains("| VQA Overall |"), "{table10}");

    // Tables test methods against FFT w/ D_mixed from the per-item scores (the CSV has each
    // test; the Markdown says what a dagger means).
    let csv = project.read("results/quick/table1.csv");
    let ours = csv
        .lines()
        .find(|l| l.starts_with("llava-xs,ours,") && l.contains(",none,accuracy,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(ours.contains(",fft_mix,"), "{ours}");
    assert!(
        table1.contains("†: differs from FFT w/ D_mixed"),
        "{table1}"
    );

    // Table 14 from the wall times the engine recorded: a row per method, against FFT w/
    // D_mixed.
    let timings = project.mipipe(&[
        "timings",
        "--stage",
        "finetune",
        "--by",
        "method",
        "--baseline",
        "fft_mix",
    ]);
    timings.expect_code(0);
    for method in METHODS {
        assert!(
            timings
                .stdout
                .contains(&format!("| finetune | {method} | 3 |")),
            "{}",
            timings.stdout
        );
    }
    assert!(
        timings.stdout.contains("| finetune | fft_mix | 3 |") && timings.stdout.contains(" 1.00 |"),
        "{}",
        timings.stdout
    );

    // The HTML report: each fine-tune's training curves, and the peak memory of the torch
    // workers measured.
    project.mipipe(&["report"]).expect_code(0);
    let html = project.read("mipipe-report.html");
    let curves = html
        .split("\"curves\":{")
        .nth(1)
        .expect("the report's data");
    for stage in &trained {
        assert!(
            curves.contains(&format!("\"{stage}\":\"<svg")),
            "no curves for {stage}"
        );
    }
    let row = html
        .split("<tr id=\"stage-finetune[family=blip,method=ours,seed=0]\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("the fine-tune's row");
    assert!(row.contains(" MiB</td>"), "{row}");

    // 2. Nothing changed: nothing runs.
    let noop = project.mipipe(&["run"]);
    noop.expect_code(0);
    assert!(noop.stages_with("ran").is_empty(), "{}", noop.stderr);

    // 3. Reformatting the YAML (comments, flow to block style, key order) runs nothing.
    let reformatted = yaml
        .replace(
            "      consistency: {kl_weight: 0.01, js_weight: 0.01}",
            "      # the consistency weights\n      consistency:\n        js_weight: 0.01\n        kl_weight: 0.01",
        )
        .replace("stages:\n", "stages:   # every stage of the study\n");
    assert_ne!(reformatted, yaml);
    project.write("mipipe.yaml", &reformatted);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert!(run.stages_with("ran").is_empty(), "{}", run.stderr);

    // 4. The JS weight: the `js` and `ours` fine-tunes and their predictions rerun; their
    //    evaluations and the tables rerun where their inputs' bytes changed (early cutoff);
    //    nothing else.
    let status = project.mipipe(&["status"]);
    status.expect_code(0);
    let changed = reformatted.replace("js_weight: 0.01", "js_weight: 2.0");
    project.write("mipipe.yaml", &changed);
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("consistency"),
        "status names the changed param: {}",
        status.stdout
    );
    let run = project.mipipe(&["run", "-j", "2"]);
    run.expect_code(0);
    let ran = executed(&run);
    let retrained: BTreeSet<String> = instances("finetune", &FAMILIES, &["js", "ours"], &seeds)
        .into_iter()
        .chain(instances("predict", &FAMILIES, &["js", "ours"], &seeds))
        .chain(instances(
            "predict_free_form",
            &FAMILIES,
            &["js", "ours"],
            &seeds,
        ))
        .chain(sweep("finetune_pgd_steps", &NEW_STEPS, &seeds))
        .chain(sweep("predict_pgd_steps", &NEW_STEPS, &seeds))
        .collect();
    assert!(retrained.is_subset(&ran), "{}", run.stderr);
    let may_follow: BTreeSet<String> = instances("evaluate", &FAMILIES, &["js", "ours"], &seeds)
        .into_iter()
        .chain(instances(
            "evaluate_free_form",
            &FAMILIES,
            &["js", "ours"],
            &seeds,
        ))
        .chain(sweep("evaluate_pgd_steps", &STEPS, &seeds))
        // Every table but those that read the vanilla models only.
        .chain(
            TABLES
                .iter()
                .filter(|t| !VANILLA_TABLES.contains(t))
                .map(|t| t.to_string()),
        )
        .collect();
    let others: Vec<&String> = ran
        .difference(&retrained)
        .filter(|s| !may_follow.contains(*s))
        .collect();
    assert!(
        others.is_empty(),
        "unexpected reruns {others:?}\n{}",
        run.stderr
    );

    // 5. A table option reruns that table only.
    let decimals = changed.replace(
        "params: {layout: conditions, caption: \"Accuracy",
        "params: {layout: conditions, decimals: 2, caption: \"Accuracy",
    );
    assert_ne!(decimals, changed);
    project.write("mipipe.yaml", &decimals);
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["table5"], "{}", run.stderr);

    // 6. A deleted cached object: only what needs it is recomputed.
    let object = project.output_object("table2", "md");
    std::fs::remove_file(&object).unwrap();
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran"), ["table2"], "{}", run.stderr);
    assert!(object.is_file(), "the object is back");

    // 7. More test items retrain nothing: the training stages read the `select`ed training
    //    rows, whose bytes do not change; every prediction reruns on the new test rows.
    let more_tests = decimals.replace("test_per_set: 30 ", "test_per_set: 36 ");
    assert_ne!(more_tests, decimals);
    project.write("mipipe.yaml", &more_tests);
    let run = project.mipipe(&["run", "-j", "2"]);
    run.expect_code(0);
    let ran = executed(&run);
    for stage in ["world", "conditions", "train_items", "train_conditions"] {
        assert!(ran.contains(stage), "{stage} did not rerun\n{}", run.stderr);
    }
    let retrained: Vec<&String> = ran
        .iter()
        .filter(|s| s.starts_with("pretrain") || s.starts_with("finetune"))
        .collect();
    assert!(
        retrained.is_empty(),
        "retrained {retrained:?}\n{}",
        run.stderr
    );
    let predictions: BTreeSet<String> = instances("predict", &FAMILIES, &METHODS, &seeds)
        .into_iter()
        .chain(instances("predict_vanilla", &FAMILIES, &[], &seeds))
        .collect();
    assert!(predictions.is_subset(&ran), "{}", run.stderr);
    predictions_of_every_test_row(&project, "predict[family=qwen,method=kl,seed=0]");

    // 8. A second seed (`vars.seeds`, the `seed` axis of every training and evaluation
    //    stage) runs only the new seed's branch, and the tables that read it.
    let two_seeds = more_tests.replace("seeds: [0]", "seeds: [0, 1]");
    assert_ne!(two_seeds, more_tests);
    project.write("mipipe.yaml", &two_seeds);
    let run = project.mipipe(&["run", "-j", "2"]);
    run.expect_code(0);
    let new_branch: BTreeSet<String> = [
        "pretrain",
        "predict_vanilla",
        "evaluate_vanilla",
        "predict_cot",
        "evaluate_cot",
        "predict_free_form_vanilla",
        "evaluate_free_form_vanilla",
        "predict_probe",
        "evaluate_probe",
    ]
    .iter()
    .flat_map(|s| instances(s, &FAMILIES, &[], &[1]))
    .chain(
        [
            "finetune",
            "predict",
            "evaluate",
            "predict_free_form",
            "evaluate_free_form",
        ]
        .iter()
        .flat_map(|s| instances(s, &FAMILIES, &METHODS, &[1])),
    )
    .chain(sweep("finetune_pgd_steps", &NEW_STEPS, &[1]))
    .chain(sweep("predict_pgd_steps", &NEW_STEPS, &[1]))
    .chain(sweep("evaluate_pgd_steps", &STEPS, &[1]))
    .chain(TABLES.map(String::from))
    .collect();
    assert_eq!(executed(&run), new_branch, "{}", run.stderr);
    let table1 = project.read("results/quick/table1.md");
    assert!(table1.contains('±'), "two seeds give mean ± std: {table1}");
}
