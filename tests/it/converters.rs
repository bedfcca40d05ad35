//! The `convert` stage kind on fixtures written in each dataset's real format
//! (`tests/fixtures/`, made by `make_fixtures.py`), including bad input.

use std::path::Path;

use mipipe_stage_data::schema::{read_items, Item, Task};

use crate::Project;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A project holding one fixture folder and a pipeline that converts it.
fn project_with(fixture: &str, params: &str) -> Project {
    let project = Project::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    copy_dir(&fixtures.join(fixture), &project.path().join(fixture));
    project.write(
        "mipipe.yaml",
        &format!(
            "version: 1\nstages:\n  data:\n    kind: convert\n    params: {params}\n    materialize: {{items: items.parquet, skipped: skipped.json}}\n"
        ),
    );
    project
}

fn convert(fixture: &str, params: &str) -> (Project, Vec<Item>) {
    let project = project_with(fixture, params);
    project.mipipe(&["run"]).expect_code(0);
    let items = read_items(&project.path().join("items.parquet")).unwrap();
    (project, items)
}

fn is_png(item: &Item) -> bool {
    item.image
        .as_deref()
        .is_some_and(|b| b.starts_with(b"\x89PNG"))
}

#[test]
fn mini_imagenet_folders_with_readable_class_names() {
    let (_, items) = convert(
        "mini-imagenet",
        "{format: imagenet_folders, path: mini-imagenet/images, class_names: mini-imagenet/LOC_synset_mapping.txt, split: train}",
    );
    assert_eq!(items.len(), 6);
    for item in &items {
        assert_eq!(item.task, Task::ImageHeavy);
        assert_eq!(item.split, "train");
        assert!(is_png(item));
        // Three classes: every option is a readable name, the gold is the folder's class.
        assert_eq!(item.options.len(), 3);
        let meta: serde_json::Value = serde_json::from_str(item.meta.as_deref().unwrap()).unwrap();
        let gold = match meta["class_dir"].as_str().unwrap() {
            "n01440764" => "tench",
            "n02099601" => "golden retriever",
            _ => "parachute",
        };
        assert_eq!(item.options[item.answer], gold, "{item:?}");
        assert!(item.id.starts_with("mini-imagenet/n0"), "{}", item.id);
    }
}

#[test]
fn caltech_ids_are_class_qualified_and_grayscale_images_become_rgb() {
    let (_, items) = convert(
        "caltech-101",
        "{format: caltech101, path: caltech-101/101_ObjectCategories}",
    );
    assert_eq!(items.len(), 6);
    let ids: std::collections::BTreeSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        6,
        "basenames collide across classes; ids must not"
    );
    assert!(
        ids.contains("caltech-101/yin_yang/image_0002.jpg"),
        "{ids:?}"
    );
    assert!(items.iter().all(is_png));
    let names: std::collections::BTreeSet<&str> =
        items.iter().map(|i| i.options[i.answer].as_str()).collect();
    assert_eq!(
        names,
        ["background google", "faces easy", "yin yang"]
            .into_iter()
            .collect()
    );
}

#[test]
fn openbookqa_jsonl_and_a_bad_answer_key() {
    let (_, items) = convert(
        "openbookqa",
        "{format: openbookqa_jsonl, path: openbookqa/test.jsonl}",
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].question, "The sun is responsible for");
    assert_eq!(
        items[0].options[items[0].answer],
        "plants sprouting, blooming and wilting"
    );
    assert!(items
        .iter()
        .all(|i| i.task == Task::TextHeavy && i.image.is_none()));

    let project = project_with(
        "openbookqa-bad",
        "{format: openbookqa_jsonl, path: openbookqa-bad/test.jsonl}",
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(
            "`openbookqa-bad/test.jsonl` line 2: answer `E` is not one of the choice labels"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !project.path().join("items.parquet").exists(),
        "nothing partial is written"
    );

    let (project, items) = convert(
        "openbookqa-bad",
        "{format: openbookqa_jsonl, path: openbookqa-bad/test.jsonl, on_error: skip}",
    );
    assert_eq!(items.len(), 1);
    let skipped: serde_json::Value = serde_json::from_str(&project.read("skipped.json")).unwrap();
    assert_eq!(skipped[0]["record"], "line 2", "{skipped}");
}

#[test]
fn mmlu_csv_without_header_keeps_quoted_commas() {
    let (_, items) = convert("mmlu", "{format: mmlu_csv, path: mmlu/data/test}");
    assert_eq!(items.len(), 3);
    let truck = items.iter().find(|i| i.question.contains("truck")).unwrap();
    assert_eq!(truck.options[2], "It depends, on the mass");
    assert_eq!(truck.answer, 1);
    assert!(truck.meta.as_deref().unwrap().contains("astronomy"));
    let project = project_with("mmlu-bad", "{format: mmlu_csv, path: mmlu-bad/test}");
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("anatomy_test.csv` line 1: answer `E` is not one of A, B, C, D"),
        "{}",
        run.stderr
    );
}

#[test]
fn mmlu_data_folder_reads_its_split_folders_with_ids_unique_across_splits() {
    // `path` at the official `data/` folder: dev/, val/ and test/ (this gave 0 rows before).
    let (_, items) = convert("mmlu", "{format: mmlu_csv, path: mmlu/data}");
    assert_eq!(items.len(), 5);
    let ids: std::collections::BTreeSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.contains("mmlu/anatomy/dev/0") && ids.contains("mmlu/anatomy/val/0"));
    let dev = items.iter().find(|i| i.id == "mmlu/anatomy/dev/0").unwrap();
    assert_eq!(dev.split, "train");
    assert!(dev
        .meta
        .as_deref()
        .unwrap()
        .contains("\"source_split\":\"dev\""));
}

#[test]
fn a_conversion_that_finds_no_items_is_an_error_saying_what_it_looked_for() {
    let project = project_with("mmlu", "{format: mmlu_csv, path: mmlu}");
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("`mmlu` gave no items (0 skipped)")
            && run.stderr.contains("`<subject>_<split>.csv` files"),
        "{}",
        run.stderr
    );
}

#[test]
fn replacing_one_image_reruns_the_conversion_of_every_json_indexed_format() {
    for (fixture, params, image) in [
        (
            "seedbench",
            "{format: seedbench_json, path: seedbench/SEED-Bench.json}",
            "seedbench/SEED-Bench-image/1454426_2591111986.jpg",
        ),
        (
            "textcaps",
            "{format: textcaps, path: textcaps/TextCaps_0.1_train.json}",
            "textcaps/train_images/0054c91397f2fe05.jpg",
        ),
        (
            "llava-instruct",
            "{format: llava_instruct_json, path: llava-instruct/llava_v1_5_mix665k.json}",
            "llava-instruct/coco/train2017/000000033471.jpg",
        ),
    ] {
        let (project, before) = convert(fixture, params);
        // Another valid picture in place of the first.
        let other = project.path().join(image);
        let replacement = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/textcaps/train_images/011e7e629fb9ae7b.jpg"),
        )
        .unwrap();
        assert_ne!(std::fs::read(&other).unwrap(), replacement);
        std::fs::write(&other, replacement).unwrap();
        let run = project.mipipe(&["run"]);
        run.expect_code(0);
        assert_eq!(
            run.stages_with("ran"),
            ["data"],
            "{fixture}: {}",
            run.stderr
        );
        let after = read_items(&project.path().join("items.parquet")).unwrap();
        assert_ne!(before, after, "{fixture}: the table kept the old image");
    }
}

#[test]
fn hugging_face_parquet_exports_of_mmbench_scienceqa_and_seedbench() {
    // The lmms-lab schemas, written with pyarrow as `datasets` does (`make_fixtures.py`).
    let (_, items) = convert(
        "hf",
        "{format: hf_parquet, preset: mmbench, path: hf/mmbench-dev-00000-of-00001.parquet}",
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].id, "mmbench-en/241");
    assert_eq!(items[0].options, ["red", "green", "blue", "yellow"]);
    assert_eq!(
        items[1].options,
        ["yes", "no"],
        "null option cells are absent"
    );
    assert_eq!(items[1].answer, 1);
    assert!(items.iter().all(is_png));
    assert!(items[1].meta.as_deref().unwrap().contains("Look closely."));
    let (_, items) = convert(
        "hf",
        "{format: hf_parquet, preset: scienceqa, path: hf/scienceqa-test-00000-of-00001.parquet}",
    );
    assert_eq!(items.len(), 1, "the question without an image is left out");
    assert_eq!(items[0].options.len(), 4);
    assert_eq!(items[0].answer, 0, "an integer answer is an index");
    let (_, items) = convert(
        "hf",
        "{format: hf_parquet, preset: seedbench, path: hf/seedbench-test-00000-of-00001.parquet}",
    );
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].id, "seed-bench-img/101669");
    assert_eq!(items[0].options[items[0].answer], "One");
    assert!(is_png(&items[0]), "the first image of the list");
    // A mapping that names a column the file lacks says which columns there are.
    let project = project_with(
        "hf",
        "{format: hf_parquet, path: hf/seedbench-test-00000-of-00001.parquet, columns: {question: question, answer: answer, options: choices}}",
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("no column `choices` (columns: `answer`, `choice_a`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_vlmevalkit_tsv_with_five_options_and_its_md5() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let md5 = std::fs::read_to_string(fixtures.join("vlmevalkit/ScienceQA_TEST.md5")).unwrap();
    let (_, items) = convert(
        "vlmevalkit",
        &format!(
            "{{format: vlmevalkit_tsv, path: vlmevalkit/ScienceQA_TEST.tsv, md5: {}}}",
            md5.trim()
        ),
    );
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].id, "scienceqa_test/0");
    assert_eq!(items[0].options.len(), 5);
    assert_eq!(items[0].answer, 4);
    assert_eq!(items[1].options, ["West Virginia", "Louisiana"]);
    let project = project_with(
        "vlmevalkit",
        "{format: vlmevalkit_tsv, path: vlmevalkit/ScienceQA_TEST.tsv, md5: 0123456789abcdef0123456789abcdef}",
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("not the expected 0123456789abcdef0123456789abcdef"),
        "{}",
        run.stderr
    );
}

#[test]
fn scienceqa_keeps_image_questions_with_up_to_five_options() {
    let (_, items) = convert("scienceqa", "{format: scienceqa, path: scienceqa}");
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["scienceqa-img/2", "scienceqa-img/3"],
        "text-only and train questions are left out"
    );
    assert_eq!(items[1].options.len(), 5);
    assert_eq!(items[1].answer, 4);
    assert!(items.iter().all(is_png));
    let project = project_with("scienceqa-bad", "{format: scienceqa, path: scienceqa-bad}");
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("problems.json` problem 2: image"),
        "{}",
        run.stderr
    );
}

#[test]
fn mmbench_tsv_with_base64_images_and_two_to_four_options() {
    let (_, items) = convert(
        "mmbench",
        "{format: mmbench_tsv, path: mmbench/mmbench_dev_en.tsv}",
    );
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].options, ["red", "green", "blue", "yellow"]);
    assert_eq!(items[1].options, ["yes", "no"]);
    assert_eq!(items[1].answer, 1);
    assert!(items.iter().all(is_png));
    assert!(items[1].meta.as_deref().unwrap().contains("Look closely."));
    // pandas' quoting: a quoted hint holding a newline and a tab, inner quotes doubled; `nan`
    // and an empty cell are absent options.
    assert_eq!(
        items[2].question,
        "What does the sign that says \"STOP\" ask drivers to do?"
    );
    assert_eq!(items[2].options, ["stop", "go"]);
    let meta: serde_json::Value = serde_json::from_str(items[2].meta.as_deref().unwrap()).unwrap();
    assert_eq!(meta["hint"], "Line one.\nLine\ttwo.");
}

#[test]
fn seedbench_keeps_image_questions_only() {
    let (_, items) = convert(
        "seedbench",
        "{format: seedbench_json, path: seedbench/SEED-Bench.json}",
    );
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].id, "seed-bench-img/101669");
    assert_eq!(items[0].options[items[0].answer], "One");
}

#[test]
fn llava_instruct_first_turn_and_textcaps_captions_are_open_ended_vqa() {
    let (_, items) = convert(
        "llava-instruct",
        "{format: llava_instruct_json, path: llava-instruct/llava_v1_5_mix665k.json}",
    );
    assert_eq!(items.len(), 1, "the text-only conversation has no image");
    assert_eq!(
        items[0].question,
        "What are the colors of the bus in the image?"
    );
    assert_eq!(items[0].options, ["The bus in the image is white and red."]);
    assert_eq!(
        items[0].reference_answers().unwrap(),
        items[0].options,
        "open-ended, its one reference the first gpt turn"
    );
    assert_eq!(items[0].split, "train");
    let (_, items) = convert(
        "textcaps",
        "{format: textcaps, path: textcaps/TextCaps_0.1_train.json}",
    );
    assert_eq!(items.len(), 3, "one item per reference caption");
    assert_eq!(items[1].id, "textcaps/011e7e629fb9ae7b/1");
    // One caption: the natural id `<image_id>/<caption_id>`, the image found from `image_path`.
    assert_eq!(items[2].id, "textcaps/0054c91397f2fe05/7");
    assert!(items[2]
        .meta
        .as_deref()
        .unwrap()
        .contains("train/0054c91397f2fe05.jpg"));
    // Each caption of an image is a reference answer of every item of that image.
    let both = [
        "A red bus with the number 12 on it.",
        "The bus says EXPRESS on the front.",
    ];
    for item in &items[..2] {
        assert_eq!(item.reference_answers().unwrap(), both, "{}", item.id);
    }
    assert_eq!(
        items[2].reference_answers().unwrap(),
        ["A red sign reading STOP."]
    );
}

#[test]
fn a_corrupt_image_fails_the_conversion_or_is_skipped_with_its_reason() {
    let project = project_with(
        "caltech-101",
        "{format: caltech101, path: caltech-101/101_ObjectCategories}",
    );
    project.write(
        "caltech-101/101_ObjectCategories/yin_yang/image_0003.jpg",
        "not really a jpeg",
    );
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("`caltech-101/101_ObjectCategories/yin_yang/image_0003.jpg` image: not a PNG or JPEG image"),
        "{}",
        run.stderr
    );
    project.write(
        "mipipe.yaml",
        &project.read("mipipe.yaml").replace(
            "101_ObjectCategories}",
            "101_ObjectCategories, on_error: skip}",
        ),
    );
    project.mipipe(&["run"]).expect_code(0);
    let items = read_items(&project.path().join("items.parquet")).unwrap();
    assert_eq!(items.len(), 6);
    let skipped: serde_json::Value = serde_json::from_str(&project.read("skipped.json")).unwrap();
    assert_eq!(skipped.as_array().unwrap().len(), 1, "{skipped}");
    assert_eq!(skipped[0]["reason"], "not a PNG or JPEG image");
}

#[test]
fn an_mmbench_answer_outside_the_options_names_its_line() {
    let project = project_with(
        "mmbench",
        "{format: mmbench_tsv, path: mmbench/mmbench_dev_en.tsv}",
    );
    let tsv = project
        .read("mmbench/mmbench_dev_en.tsv")
        .replace("\tB\tspatial", "\tC\tspatial");
    project.write("mmbench/mmbench_dev_en.tsv", &tsv);
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("`mmbench/mmbench_dev_en.tsv` line 3: answer `C` is not one of A, B"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_real_data_example_pipeline_runs_on_the_fixtures() {
    let project = Project::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // The example's layout (`data/...`), filled with the fixtures.
    for (from, to) in [
        ("mini-imagenet", "data/mini-imagenet"),
        ("caltech-101", "data/caltech-101"),
        ("openbookqa", "data/OpenBookQA/Main"),
        ("mmlu/data/test", "data/mmlu/data/test"),
        ("scienceqa", "data/ScienceQA"),
        ("mmbench", "data/MMBench"),
        ("seedbench", "data/SEED-Bench"),
    ] {
        copy_dir(&fixtures.join(from), &project.path().join(to));
    }
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples/real-data/mipipe.yaml");
    project.write("mipipe.yaml", &std::fs::read_to_string(example).unwrap());
    let run = project.mipipe(&["run"]);
    run.expect_code(0);
    assert_eq!(run.stages_with("ran").len(), 8, "{}", run.stderr);
    let show = project.mipipe(&["show", "conditions", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    let object = value["entry"]["outputs"]["items"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = project.path().join(format!(
        ".mipipe/objects/v1/{}/{}",
        &object[..2],
        &object[2..]
    ));
    let rows = read_items(&path).unwrap();
    // 12 image-heavy items x (none, uf, md), 5 text-heavy x (rp, ri, fb, fw), 6 VQA clean.
    assert_eq!(rows.len(), 12 * 3 + 5 * 4 + 6, "{}", rows.len());
    assert!(rows
        .iter()
        .filter(|r| r.perturbation == "ri")
        .all(|r| r.image.is_some()));
}

/// The whole study on the real datasets (pipelines/examples/real-data/study.yaml) runs end to
/// end on the fixtures, laid out as the study expects the official downloads: every converter,
/// the perturbations, pretraining, the seven methods on the three from-scratch families and on
/// a LLaVA-1.5 checkpoint (the tiny random one of the parity tests), evaluation and the tables.
#[test]
fn the_real_data_study_runs_end_to_end_on_the_fixtures() {
    crate::require_torch_worker();
    let project = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures");
    for (from, to) in [
        ("mini-imagenet", "data/mini-imagenet"),
        ("mini-imagenet/images", "data/mini-imagenet/train"),
        ("caltech-101", "data/caltech-101"),
        ("caltech-101/101_ObjectCategories", "data/caltech-101/train"),
        ("openbookqa", "data/OpenBookQA/Main"),
        ("mmlu", "data/mmlu"),
        ("scienceqa", "data/ScienceQA"),
        ("mmbench", "data/MMBench"),
        ("seedbench", "data/SEED-Bench"),
        ("llava-instruct", "data/LLaVA-Instruct"),
        ("textcaps", "data/TextCaps"),
    ] {
        copy_dir(&fixtures.join(from), &project.path().join(to));
    }
    // The fixtures hold one file where the study reads two names.
    let data = project.path().join("data");
    std::fs::copy(
        data.join("OpenBookQA/Main/test.jsonl"),
        data.join("OpenBookQA/Main/train.jsonl"),
    )
    .unwrap();
    std::fs::rename(
        data.join("LLaVA-Instruct/llava_v1_5_mix665k.json"),
        data.join("LLaVA-Instruct/llava_instruct_150k.json"),
    )
    .unwrap();
    copy_dir(
        &root.join("stages/torch/tests/fixtures/llava/checkpoint"),
        &project.path().join("models/llava-1.5-7b-hf"),
    );
    let study =
        std::fs::read_to_string(root.join("pipelines/examples/real-data/study.yaml")).unwrap();
    project.write("mipipe.yaml", &study);

    // Small sizes, batches of one (the fixtures hold one LLaVA-Instruct item, the study's D_VQA,
    // and three TextCaps items, InstructBLIP's too); two device slots (on a CPU machine
    // `device: auto` computes on the CPU).
    let args = [
        "run",
        "--gpus",
        "2",
        "--set",
        "vars.size=xs",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.batch_size=1",
        "--set",
        "llava15_finetune.batch_size=1",
    ];
    let run = project.mipipe(&args);
    run.expect_code(0);
    let ran = run.stages_with("ran");
    assert_eq!(ran.len(), 113, "every stage ran: {}", run.stderr);
    // D_VQA: LLaVA-Instruct for every family, with TextCaps for InstructBLIP (paper §5.1).
    for (stage, anchors) in [
        (
            "finetune[family=llava,method=fft_vqa,seed=0]",
            "VQA anchors from llava-instruct (1)\n",
        ),
        (
            "finetune[family=qwen,method=ours,seed=0]",
            "VQA anchors from llava-instruct (1)\n",
        ),
        (
            "finetune[family=blip,method=fft_vqa,seed=0]",
            "VQA anchors from llava-instruct (1), textcaps (3)\n",
        ),
        (
            "llava15_finetune[method=ours,seed=0]",
            "VQA anchors from llava-instruct (1)\n",
        ),
    ] {
        let log = project.mipipe(&["log", stage]);
        log.expect_code(0);
        assert!(log.stdout.contains(anchors), "{stage}:\n{}", log.stdout);
    }
    for table in ["table1", "table2", "table5", "table11"] {
        let md = project.read(&format!("results/{table}.md"));
        for model in ["llava-xs", "blip-xs", "qwen-xs", "llava-1.5-7b"] {
            assert!(
                md.contains(&format!("| {model} |")),
                "{table} lacks {model}:\n{md}"
            );
        }
    }
    let table2 = project.read("results/table2.csv");
    assert!(
        table2.lines().any(|l| l.starts_with("llava-1.5-7b,ours,")),
        "{table2}"
    );
    // Nothing changed, nothing runs.
    let again = project.mipipe(&args);
    again.expect_code(0);
    assert!(again.stages_with("ran").is_empty(), "{}", again.stderr);
}

/// The whole study on the real datasets (pipelines/examples/real-data/study.yaml) resolves:
/// every reference, matrix join and param of its from-scratch and LLaVA-1.5 halves.
#[test]
fn the_real_data_study_resolves() {
    let study =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples/real-data/study.yaml");
    let output = std::process::Command::new(crate::mipipe_bin())
        .args(["dag", study.to_str().unwrap()])
        .output()
        .unwrap();
    let run = crate::Run::from(output);
    run.expect_code(0);
    for stage in [
        "llava15_finetune[method=ours,seed=0]",
        "llava15_predict[method=ours,seed=0]",
        "llava15_predict_vanilla",
        "predict[family=qwen,method=ours,seed=0]",
    ] {
        assert!(
            run.stdout.contains(stage),
            "{stage} missing:\n{}",
            run.stdout
        );
    }
}

/// `predict` asked to answer open-ended rows (here LLaVA-Instruct's, by `split: train`) refuses,
/// naming the first, instead of scoring their words as an option; with `free_form: true` the
/// LLaVA-1.5 checkpoint answers them in words and `evaluate` scores them against their
/// references.
#[test]
fn predict_answers_open_ended_rows_only_free_form() {
    crate::require_torch_worker();
    let project = Project::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    copy_dir(
        &root.join("tests/fixtures/llava-instruct"),
        &project.path().join("llava-instruct"),
    );
    copy_dir(
        &root.join("stages/torch/tests/fixtures/llava/checkpoint"),
        &project.path().join("llava-tiny"),
    );
    let pipeline = r#"version: 1
stages:
  instruct:
    kind: convert
    params: {format: llava_instruct_json, path: llava-instruct/llava_v1_5_mix665k.json}
  predict:
    kind: predict
    inputs: {items: instruct.items}
    params: {checkpoint: llava-tiny, split: train}
"#;
    project.write("mipipe.yaml", pipeline);
    let run = project.mipipe(&["run"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("item `llava-instruct/")
            && run.stderr.contains("is open-ended (`meta.answers`)")
            && run.stderr.contains("free_form: true"),
        "{}",
        run.stderr
    );
    let free_form = pipeline.replace(
        "split: train}",
        "split: train, free_form: true, max_new_tokens: 3}",
    );
    project.write(
        "mipipe.yaml",
        &(free_form
            + r#"  evaluate:
    kind: evaluate
    inputs: {predictions: predict.predictions}
    params: {family: llava, method: vanilla}
    materialize: {samples: out/samples.jsonl}
"#),
    );
    project.mipipe(&["run"]).expect_code(0);
    let samples = project.read("out/samples.jsonl");
    let lines: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line["target"].as_array().is_some_and(|t| !t.is_empty()),
            "the references are the target: {line}"
        );
        let accuracy = line["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{line}");
        assert!(line["exact_match"].as_f64().is_some(), "{line}");
    }
}
