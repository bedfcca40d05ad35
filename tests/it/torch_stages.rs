//! The libtorch kinds through `mipipe-torch-worker` on a tiny study: outputs, progress
//! forwarded from the worker, and a mis-wired checkpoint refused.

use std::collections::BTreeMap;

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
    assert_eq!(config["trained_on"], "cpu");
    // The device each stage computed on is kept with its cache entry and shown.
    let show = project.mipipe(&["show", "predict[family=qwen,method=ours]"]);
    show.expect_code(0);
    assert!(
        show.stdout.contains("facts    device=cpu"),
        "{}",
        show.stdout
    );
}

#[test]
fn device_cuda_without_a_cuda_libtorch_fails_naming_the_library() {
    crate::require_torch_worker();
    let has_gpu = std::process::Command::new("nvidia-smi")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_gpu {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let project = Project::new();
    project.write(
        "mipipe.yaml",
        &TINY.replace(
            "params: {size: xs, epochs: 1, batch_size: 8, answer: text}",
            "params: {size: xs, epochs: 1, batch_size: 8, answer: text, device: cuda}",
        ),
    );
    let run = project.mipipe(&["run", "-t", "pretrain"]);
    run.expect_code(3);
    // The CPU set-up has `libtorch_cuda.so` but not the CUDA libraries it links: the loader's
    // message names the first one missing.
    assert!(
        run.stderr
            .contains("`device: cuda:0` but libtorch's CUDA library cannot be loaded: lib")
            && run.stderr.contains("cannot open shared object file"),
        "{}",
        run.stderr
    );
}

/// A stand-in for `mipipe-torch-worker` that records the `CUDA_VISIBLE_DEVICES` it was started
/// with and writes the declared outputs of its job.
const FAKE_WORKER: &str = r#"#!/bin/sh
set -eu
echo "${CUDA_VISIBLE_DEVICES:-unset}" >> "$FAKE_WORKER_RECORD"
sleep 1
"$FAKE_WORKER_PYTHON" - "$2" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))
for path in job["outputs"].values():
    open(path, "w").write(job["stage"])
PY
"#;

/// A `predict` stage on stand-in inputs (to run with a fake worker), without its `inputs:`.
const PREDICT_ON_FAKE_INPUTS: &str = r#"version: 1
stages:
  inputs:
    kind: command
    params: {cmd: "echo m > ${outs.model} && echo i > ${outs.items}", outs: {model: m, items: i}}
  predict:
    kind: predict
"#;

/// A project whose `mipipe` (a copy in `bin/`) sits next to `script` as its torch worker.
fn with_fake_worker(script: &str) -> (Project, std::path::PathBuf) {
    let project = Project::new();
    let bin = project.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(crate::mipipe_bin(), bin.join("mipipe")).unwrap();
    let worker = bin.join("mipipe-torch-worker");
    std::fs::write(&worker, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    (project, bin)
}

#[test]
fn a_workers_exit_code_reads_back_through_the_one_table() {
    // 101 is a Rust panic: a bug in mipipe, like 70; 3 is the environment; anything else is
    // the stage's own failure.
    for (worker_exit, run_exit) in [(101, 70), (70, 70), (3, 3), (1, 1), (9, 1)] {
        let (project, bin) = with_fake_worker(&format!("#!/bin/sh\nexit {worker_exit}\n"));
        project.write(
            "mipipe.yaml",
            &format!("{PREDICT_ON_FAKE_INPUTS}    inputs: {{model: inputs.model, items: inputs.items}}\n"),
        );
        let output = std::process::Command::new(bin.join("mipipe"))
            .arg("run")
            .current_dir(project.path())
            .env("NO_COLOR", "1")
            .env("MIPIPE_NO_PROGRESS", "1")
            .env_remove("MIPIPE_CACHE_DIR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(run_exit),
            "worker exit {worker_exit}: {stderr}"
        );
        if run_exit == 70 {
            assert!(stderr.contains("a bug in mipipe"), "{stderr}");
        }
    }
}

#[test]
fn gpu_slots_reach_torch_workers() {
    let (project, bin) = with_fake_worker(FAKE_WORKER);
    project.write(
        "mipipe.yaml",
        &(PREDICT_ON_FAKE_INPUTS.to_string()
            + r#"    matrix: {batch_size: [8, 16]}
    inputs: {model: inputs.model, items: inputs.items}
    params: {device: auto}
    resources: {gpus: 1}
"#),
    );
    let record = project.path().join("devices.txt");
    let python = std::env::var("MIPIPE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(bin.join("mipipe"))
        .args(["run", "-j", "2", "--gpus", "2"])
        .current_dir(project.path())
        .env("NO_COLOR", "1")
        .env("MIPIPE_NO_PROGRESS", "1")
        .env_remove("MIPIPE_CACHE_DIR")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env("FAKE_WORKER_RECORD", &record)
        .env("FAKE_WORKER_PYTHON", python)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut devices: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    devices.sort();
    assert_eq!(
        devices,
        ["0", "1"],
        "each concurrent `gpus: 1` worker gets its own GPU"
    );
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

#[test]
fn predict_gives_the_same_answers_with_batch_size_1_and_64() {
    crate::require_torch_worker();
    let project = Project::new();
    // Two predictions of one vanilla checkpoint, batch sizes 1 and 64, over every condition of
    // the test rows: each item's conditions sit side by side, so a batch mixes prompt lengths.
    let yaml = TINY.replace(
        "  predict:\n    kind: predict\n    matrix: {family: [qwen], method: [ours]}\n    inputs: {model: finetune.model, items: conditions.items}\n    params: {batch_size: 8}",
        "  predict:\n    kind: predict\n    matrix: {batch_size: [1, 64]}\n    inputs: {model: \"pretrain[family=qwen].model\", items: conditions.items}",
    );
    assert_ne!(yaml, TINY);
    project.write("mipipe.yaml", &yaml);
    project
        .mipipe(&["run", "-t", "predict", "-j", "2"])
        .expect_code(0);
    let read = |batch: u32| {
        mipipe_stage_schema::read_predictions(
            &project.output_object(&format!("predict[batch_size={batch}]"), "predictions"),
        )
        .unwrap()
    };
    let (alone, batched) = (read(1), read(64));
    assert_eq!(alone.len(), batched.len());
    assert!(alone.len() > 64, "more rows than one batch");
    for (a, b) in alone.iter().zip(&batched) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.raw_text, b.raw_text, "{}", a.id);
        let (x, y) = (
            a.option_logprobs.as_ref().unwrap(),
            b.option_logprobs.as_ref().unwrap(),
        );
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-5, "{}: {x:?} vs {y:?}", a.id);
        }
    }
}

/// The tensor names of a safetensors file, sorted.
fn safetensors_keys(path: &std::path::Path) -> Vec<String> {
    safetensors_f32(path).into_keys().collect()
}

/// The tiny LLaVA checkpoint of the parity tests, copied to `llava-tiny/` in the project.
fn copy_llava_checkpoint(project: &Project) -> std::path::PathBuf {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("stages/torch/tests/fixtures/llava/checkpoint");
    let target = project.path().join("llava-tiny");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
    }
    target
}

/// `predict` on a pretrained LLaVA checkpoint in the Hugging Face layout (the tiny random one
/// the parity tests compare with transformers): no `model` input, the folder's content in the
/// key, one prediction per test item with a finite log-probability per option letter.
#[test]
fn predict_answers_with_a_hugging_face_llava_checkpoint() {
    crate::require_torch_worker();
    let project = Project::new();
    let target = copy_llava_checkpoint(&project);
    project.write(
        "mipipe.yaml",
        r#"
version: 1
stages:
  world:
    kind: synth
    params: {train_per_set: 4, test_per_set: 3, instruct_items: 4, pretrain_captions: 4}
  predict:
    kind: predict
    inputs: {items: world.items}
    params: {checkpoint: llava-tiny, batch_size: 4, max_new_tokens: 3}
  predict_bf16:
    kind: predict
    inputs: {items: world.items}
    params: {checkpoint: llava-tiny, batch_size: 4, max_new_tokens: 3, dtype: bfloat16}
"#,
    );
    project.mipipe(&["run"]).expect_code(0);
    let predictions =
        mipipe_stage_schema::read_predictions(&project.output_object("predict", "predictions"))
            .unwrap();
    let items = mipipe_stage_schema::read_items(&project.output_object("world", "items"))
        .unwrap()
        .into_iter()
        .filter(|i| i.split == "test")
        .collect::<Vec<_>>();
    assert_eq!(predictions.len(), items.len());
    for (p, item) in predictions.iter().zip(&items) {
        assert_eq!(p.id, item.id);
        let logprobs = p.option_logprobs.as_ref().unwrap();
        assert_eq!(logprobs.len(), item.options.len(), "{}", p.id);
        assert!(
            logprobs.iter().all(|l| l.is_finite() && *l <= 0.0),
            "{logprobs:?}"
        );
    }
    // In bf16 the same items get finite scores too (their closeness to transformers' bf16 is
    // the parity tests' business).
    let bf16 = mipipe_stage_schema::read_predictions(
        &project.output_object("predict_bf16", "predictions"),
    )
    .unwrap();
    assert_eq!(bf16.len(), predictions.len());
    assert!(bf16
        .iter()
        .flat_map(|p| p.option_logprobs.clone().unwrap())
        .all(|l| l.is_finite() && l <= 0.0));
    // Unchanged: cached. A changed checkpoint (one byte of its config): rerun, and the reason
    // names the folder.
    let again = project.mipipe(&["run"]);
    again.expect_code(0);
    assert_eq!(
        again.stages_with("ran"),
        Vec::<String>::new(),
        "{}",
        again.stderr
    );
    let config = target.join("generation_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"use_cache\": true", "\"use_cache\": false"),
    )
    .unwrap();
    let status = project.mipipe(&["status"]);
    assert!(
        status.stdout.contains("llava-tiny") || status.stderr.contains("llava-tiny"),
        "{}{}",
        status.stdout,
        status.stderr
    );
    let rerun = project.mipipe(&["run"]);
    rerun.expect_code(0);
    assert_eq!(
        rerun.stages_with("ran"),
        vec!["predict".to_string(), "predict_bf16".to_string()]
    );
}

/// `finetune` on the same checkpoint with the paper's method, then `predict` on its output: a
/// Hugging Face folder again (weights, the source's processor files, `mipipe.json` naming the
/// method), read back through the `model` input and checked against the labels.
#[test]
fn finetune_trains_a_hugging_face_llava_checkpoint_that_predict_reads() {
    crate::require_torch_worker();
    let project = Project::new();
    copy_llava_checkpoint(&project);
    let pipeline = r#"
version: 1
stages:
  world:
    kind: synth
    params: {train_per_set: 8, test_per_set: 2, instruct_items: 8, pretrain_captions: 4}
  conditions:
    kind: perturb
    inputs: {items: world.items}
  finetune:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: ours, batch_size: 2, lr: 1e-5}
  predict:
    kind: predict
    inputs: {model: finetune.model, items: conditions.items}
    params: {method: ours, batch_size: 4, max_new_tokens: 2}
  finetune_lora:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: adv, batch_size: 2, lr: 1e-4, lora: {rank: 2}}
  predict_lora:
    kind: predict
    inputs: {model: finetune_lora.model, items: conditions.items}
    params: {method: adv, batch_size: 4, max_new_tokens: 2}
"#;
    project.write("mipipe.yaml", pipeline);
    project.mipipe(&["run"]).expect_code(0);
    let model = project.output_object("finetune", "model");
    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "processor_config.json",
        "mipipe.json",
    ] {
        assert!(
            model.join(file).is_file(),
            "{file} missing in {}",
            model.display()
        );
    }
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("mipipe.json")).unwrap()).unwrap();
    assert_eq!(labels["method"], "ours");
    let log = project.output_object("finetune", "log");
    assert!(log.is_file());
    let predictions =
        mipipe_stage_schema::read_predictions(&project.output_object("predict", "predictions"))
            .unwrap();
    assert!(!predictions.is_empty());
    // The LoRA run writes a merged checkpoint: the original keys, no adapters.
    let merged = safetensors_keys(
        &project
            .output_object("finetune_lora", "model")
            .join("model.safetensors"),
    );
    assert!(
        merged.iter().all(|name| !name.contains("lora_")),
        "{merged:?}"
    );
    assert_eq!(merged, safetensors_keys(&model.join("model.safetensors")));
    assert!(!mipipe_stage_schema::read_predictions(
        &project.output_object("predict_lora", "predictions")
    )
    .unwrap()
    .is_empty());
    // A mis-labelled predict fails, naming both methods.
    project.write(
        "mipipe.yaml",
        &pipeline.replace("{method: ours, batch_size: 4", "{method: js, batch_size: 4"),
    );
    let wrong = project.mipipe(&["run"]);
    wrong.expect_code(1);
    assert!(
        wrong
            .stderr
            .contains("`method: js` but the checkpoint is `ours`"),
        "{}",
        wrong.stderr
    );
}

/// The tensors of a safetensors file: name -> (dtype, values as f32 when the dtype is F32).
fn safetensors_f32(path: &std::path::Path) -> BTreeMap<String, (String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let data = &bytes[8 + length..];
    let mut out = BTreeMap::new();
    for (name, entry) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = entry["dtype"].as_str().unwrap().to_string();
        let [from, to] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
        let values = match dtype.as_str() {
            "F32" => data[from..to]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            _ => Vec::new(),
        };
        out.insert(name.clone(), (dtype, values));
    }
    out
}

/// The first step's loss and the step count a fine-tune's stage log reports.
fn first_loss_and_steps(project: &Project, stage: &str) -> (f64, usize) {
    let log = project.mipipe(&["log", stage]);
    log.expect_code(0);
    let loss = log
        .stdout
        .lines()
        .find_map(|l| l.split(" loss ").nth(1).filter(|_| l.contains("step 1/")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no first step in:\n{}", log.stdout));
    let steps = log
        .stdout
        .lines()
        .find_map(|l| {
            l.split(" steps over ")
                .next()
                .filter(|_| l.contains(" steps over "))
        })
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step count in:\n{}", log.stdout));
    (loss, steps)
}

/// `dtype: bfloat16` fine-tuning of a Hugging Face checkpoint: the model computes in bf16 and
/// AdamW steps fp32 master weights, so updates far below bf16's resolution are kept, the
/// frozen tower is written unrounded, and the first step's loss is fp32's within bf16 error.
#[test]
fn bf16_finetuning_steps_fp32_master_weights_and_writes_an_fp32_checkpoint() {
    crate::require_torch_worker();
    let project = Project::new();
    copy_llava_checkpoint(&project);
    project.write(
        "mipipe.yaml",
        r#"
version: 1
stages:
  world:
    kind: synth
    params: {train_per_set: 4, test_per_set: 2, instruct_items: 4, pretrain_captions: 4}
  conditions:
    kind: perturb
    inputs: {items: world.items}
  fp32:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: ours, batch_size: 2, lr: 1e-6}
    materialize: {model: out/fp32/}
  bf16:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: ours, batch_size: 2, lr: 1e-6, dtype: bfloat16}
    materialize: {model: out/bf16/}
  predict:
    kind: predict
    inputs: {model: bf16.model, items: conditions.items}
    params: {method: ours, batch_size: 4, max_new_tokens: 2}
  lora:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: adv, batch_size: 4, lr: 1e-4, lora: {rank: 2}, dtype: bfloat16}
    materialize: {model: out/lora/}
  half:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: ours, dtype: float16}
  dropout:
    kind: finetune
    inputs: {items: conditions.items}
    params: {checkpoint: llava-tiny, method: ours, lora: {rank: 2}, gradient_checkpointing: true}
"#,
    );
    let run = project.mipipe(&["run", "-k"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("`dtype: float16` training needs loss scaling"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("set `lora.dropout: 0` to use both"),
        "{}",
        run.stderr
    );
    assert!(!mipipe_stage_schema::read_predictions(
        &project.output_object("predict", "predictions")
    )
    .unwrap()
    .is_empty());
    let weights = |stage: &str| {
        let model = project.path().join("out").join(stage);
        let labels: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model.join("mipipe.json")).unwrap()).unwrap();
        (safetensors_f32(&model.join("model.safetensors")), labels)
    };
    let ((full, full_labels), (half, half_labels)) = (weights("fp32"), weights("bf16"));
    // LoRA in bf16: the adapters merged into the fp32 weights, the original keys, all F32.
    let (merged, _) = weights("lora");
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        full.keys().collect::<Vec<_>>()
    );
    assert!(merged.values().all(|(dtype, _)| dtype == "F32"));
    assert_eq!(full_labels.get("dtype"), None);
    assert_eq!(half_labels["dtype"], "bfloat16");
    let (full_loss, steps) = first_loss_and_steps(&project, "fp32");
    let (half_loss, _) = first_loss_and_steps(&project, "bf16");
    assert!(
        (full_loss - half_loss).abs() <= 0.02 * full_loss,
        "first loss {half_loss} in bf16, {full_loss} in fp32"
    );
    // Every step moves a weight by at most a few lr (Adam's |m / sqrt(v)| stays near 1), so
    // the trained weights stay within 4 * steps * lr of the checkpoint's and of each other;
    // rounding the weights to bf16 (no master copy) would move them by far more.
    let bound = 4.0 * steps as f32 * 1e-6;
    let mut source = BTreeMap::new();
    for shard in std::fs::read_dir(project.path().join("llava-tiny")).unwrap() {
        let path = shard.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            source.extend(safetensors_f32(&path));
        }
    }
    let mut largest_rounding = 0f32;
    let mut moved = 0usize;
    assert_eq!(
        full.keys().collect::<Vec<_>>(),
        half.keys().collect::<Vec<_>>()
    );
    for (name, (dtype, a)) in &full {
        let (other, b) = &half[name];
        assert_eq!((dtype.as_str(), other.as_str()), ("F32", "F32"), "{name}");
        if name.starts_with("vision_tower.") {
            assert_eq!(a, b, "{name}: the frozen tower is written as loaded");
            continue;
        }
        if let Some((_, before)) = source.get(name) {
            for (y, w) in b.iter().zip(before) {
                assert!((y - w).abs() <= bound, "{name}: {w} moved to {y} in bf16");
                moved += usize::from(y != w);
            }
        }
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= bound,
                "{name}: {x} (fp32 run) vs {y} (bf16 run)"
            );
            let rounded = f32::from_bits((x.to_bits() + 0x8000) & 0xffff_0000);
            largest_rounding = largest_rounding.max((x - rounded).abs());
        }
    }
    assert!(moved > 1000, "the bf16 run trained: {moved} weights moved");
    let adapted = merged
        .iter()
        .filter(|(name, _)| name.contains("self_attn.q_proj.weight"))
        .filter(|(name, (_, values))| source.get(*name).is_some_and(|(_, w)| w != values))
        .count();
    assert!(
        adapted > 0,
        "the merged LoRA updates changed the query projections"
    );
    assert!(
        largest_rounding > 10.0 * bound,
        "the check needs weights whose bf16 rounding ({largest_rounding}) exceeds the bound ({bound})"
    );
}
