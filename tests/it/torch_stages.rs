//! The libtorch kinds through `mipipe-torch-worker` on a tiny study: outputs, progress
//! forwarded from the worker, and a mis-wired checkpoint refused.

use crate::Project;

pub(crate) const TINY: &str = r#"
version: 1
stages:
  world:
    kind: synth
    params: {train_per_set: 16, test_per_set: 4, instruct_items: 16, pretrain_captions: 16}
  conditions:
    kind: perturb
    inputs: {items: world.items}
  pretrain:
    kind: pretrain
    matrix: {family: [qwen]}
    inputs: {corpus: world.corpus, items: world.items}
    params: {size: xs, epochs: 1, batch_size: 8, answer: text}
  finetune:
    kind: finetune
    matrix: {family: [qwen], method: [ours]}
    inputs: {model: pretrain.model, items: conditions.items}
    params: {batch_size: 4}
  predict:
    kind: predict
    matrix: {family: [qwen], method: [ours]}
    inputs: {model: finetune.model, items: conditions.items}
    params: {batch_size: 8}
"#;

#[test]
fn torch_stages_run_in_the_worker_and_report_progress() {
    crate::require_torch_worker();
    let project = Project::new();
    project.write("mipipe.yaml", TINY);
    let run = project.mipipe(&["run", "--json"]);
    run.expect_code(0);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for stage in [
        "pretrain[family=qwen]",
        "finetune[family=qwen,method=ours]",
        "predict[family=qwen,method=ours]",
    ] {
        let progress: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["event"] == "progress" && e["stage"] == stage)
            .collect();
        let last = progress
            .last()
            .unwrap_or_else(|| panic!("no progress event from {stage}:\n{}", run.stdout));
        assert_eq!(
            last["done"], last["total"],
            "{stage} ends at its total: {last}"
        );
    }
    let predictions = mipipe_stage_schema::read_predictions(
        &project.output_object("predict[family=qwen,method=ours]", "predictions"),
    )
    .unwrap();
    let test_rows = mipipe_stage_schema::read_items(&project.output_object("conditions", "items"))
        .unwrap()
        .into_iter()
        .filter(|i| i.split == "test")
        .count();
    assert_eq!(predictions.len(), test_rows);
    let model = project.output_object("finetune[family=qwen,method=ours]", "model");
    assert!(
        model.join("weights.safetensors").is_file(),
        "{}",
        model.display()
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["method"], "ours");
    assert_eq!(config["answer"], "text");
}

#[test]
fn a_checkpoint_of_another_family_is_refused_by_name() {
    crate::require_torch_worker();
    let project = Project::new();
    let wrong = TINY.replace(
        "    matrix: {family: [qwen], method: [ours]}\n    inputs: {model: finetune.model, items: conditions.items}\n    params: {batch_size: 8}",
        "    inputs: {model: \"pretrain[family=qwen].model\", items: conditions.items}\n    params: {batch_size: 8, family: llava}",
    );
    assert_ne!(wrong, TINY);
    project.write("mipipe.yaml", &wrong);
    let run = project.mipipe(&["run", "-t", "predict"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("family Llava (the checkpoint is Qwen)"),
        "{}",
        run.stderr
    );
}
