//! LLaVA-1.5 in the Hugging Face layout against transformers: a tiny random checkpoint and the
//! outputs transformers gave for it (`tests/fixtures/llava/make_golden.py`, which records the
//! versions that made them in `golden.json`). On CPU in fp32: the processor's token ids and
//! pixel values, logits of a padded batch, greedy tokens, option log-likelihoods, one AdamW
//! step, and a save that loads back to the same logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mipipe_stage_schema::image::RgbImage;
use mipipe_stage_torch::hf::llava::LlavaModel;
use mipipe_stage_torch::hf::processor::{Batch, LlavaProcessor, Message};
use serde_json::Value;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava")
}

struct Golden {
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let json: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("golden.json")).unwrap()).unwrap();
    let tensors = Tensor::read_safetensors(fixture().join("golden.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    Golden { json, tensors }
}

fn checkpoint() -> PathBuf {
    fixture().join("checkpoint")
}

fn load() -> (tch::nn::VarStore, LlavaModel, LlavaProcessor) {
    let (vs, model) = LlavaModel::load(&checkpoint(), Device::Cpu, Kind::Float).unwrap();
    let processor = LlavaProcessor::load(&checkpoint(), model.config()).unwrap();
    (vs, model, processor)
}

fn images(golden: &Golden) -> Vec<RgbImage> {
    golden.json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| RgbImage::from_png(&std::fs::read(fixture().join(p.as_str().unwrap())).unwrap()))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The questions as conversations, and the pictures in the order their placeholders appear.
fn conversations(golden: &Golden) -> (Vec<Vec<Message>>, Vec<RgbImage>) {
    let pictures = images(golden);
    let mut chosen = Vec::new();
    let conversations = golden.json["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let image = q["image"].as_u64();
            if let Some(i) = image {
                chosen.push(pictures[i as usize].clone());
            }
            vec![Message::user(q["text"].as_str().unwrap(), image.is_some())]
        })
        .collect();
    (conversations, chosen)
}

fn prompts(processor: &LlavaProcessor, golden: &Golden) -> (Vec<String>, Vec<RgbImage>) {
    let (conversations, pictures) = conversations(golden);
    let prompts = conversations
        .iter()
        .map(|c| processor.render(c, true).unwrap())
        .collect();
    (prompts, pictures)
}

/// A list of strings of `golden.json`.
fn golden_strings(golden: &Golden, key: &str) -> Vec<String> {
    golden.json[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Token rows transformers generated (`golden.json`'s `key`), each cut at `eos`.
fn golden_tokens(golden: &Golden, key: &str, eos: i64) -> Vec<Vec<i64>> {
    golden.json[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .take_while(|&t| t != eos)
                .collect()
        })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn ids(t: &Tensor) -> Vec<Vec<i64>> {
    Vec::<Vec<i64>>::try_from(t).unwrap()
}

#[test]
fn the_processor_gives_transformers_prompts_token_ids_and_pixel_values() {
    let golden = golden();
    let (_vs, _model, processor) = load();
    let (prompts, pictures) = prompts(&processor, &golden);
    let expected = golden_strings(&golden, "prompts");
    assert_eq!(prompts, expected, "chat template");
    let batch = processor.batch(&prompts, &pictures).unwrap();
    assert_eq!(ids(&batch.input_ids), ids(&golden.tensors["input_ids"]));
    assert_eq!(
        ids(&batch.attention_mask),
        ids(&golden.tensors["attention_mask"])
    );
    let pixels = batch.pixel_values.as_ref().unwrap();
    let expected = &golden.tensors["pixel_values"];
    assert_eq!(pixels.size(), expected.size());
    // Pillow's resampling is reproduced to the byte, so only float rounding may differ.
    let diff = max_diff(pixels, expected);
    assert!(diff < 1e-6, "pixel values differ by {diff}");
}

fn batch_of(golden: &Golden) -> Batch {
    Batch {
        input_ids: golden.tensors["input_ids"].shallow_clone(),
        attention_mask: golden.tensors["attention_mask"].shallow_clone(),
        pixel_values: Some(golden.tensors["pixel_values"].shallow_clone()),
    }
}

fn logits(model: &LlavaModel, batch: &Batch) -> Tensor {
    tch::no_grad(|| {
        let embeddings = model
            .embed(&batch.input_ids, batch.pixel_values.as_ref())
            .unwrap();
        model.logits(&embeddings, &batch.attention_mask)
    })
}

/// Largest difference over the real (unpadded) positions.
fn real_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let real = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(a);
    max_diff(&a.masked_select(&real), &b.masked_select(&real))
}

#[test]
fn logits_of_a_padded_batch_match_transformers() {
    let golden = golden();
    let (_vs, model, _) = load();
    let batch = batch_of(&golden);
    let ours = logits(&model, &batch);
    let theirs = &golden.tensors["logits"];
    assert_eq!(ours.size(), theirs.size());
    let diff = real_diff(&ours, theirs, &batch.attention_mask);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn a_rows_logits_do_not_depend_on_its_batch() {
    let golden = golden();
    let (_vs, model, processor) = load();
    let (prompts, pictures) = prompts(&processor, &golden);
    let together = processor.batch(&prompts, &pictures).unwrap();
    let all = logits(&model, &together);
    let mut picture = 0;
    for (row, prompt) in prompts.iter().enumerate() {
        let own: Vec<RgbImage> = if prompt.contains("<image>") {
            picture += 1;
            vec![pictures[picture - 1].clone()]
        } else {
            Vec::new()
        };
        let alone = processor.batch(std::slice::from_ref(prompt), &own).unwrap();
        let single = logits(&model, &alone).get(0);
        let real = together.attention_mask.get(row as i64).to_kind(Kind::Bool);
        let in_batch = all.get(row as i64).index(&[Some(real)]);
        let diff = max_diff(&in_batch, &single);
        assert!(diff < 1e-5, "row {row} changes by {diff} with its batch");
    }
}

#[test]
fn greedy_generation_and_option_scores_match_transformers() {
    let golden = golden();
    let (_vs, model, processor) = load();
    let batch = batch_of(&golden);
    let eos = model.config().eos_token_id.unwrap();
    let max_new = golden.json["max_new_tokens"].as_u64().unwrap() as usize;
    let decoding = model
        .prefill(
            &batch.input_ids,
            &batch.attention_mask,
            batch.pixel_values.as_ref(),
        )
        .unwrap();
    // Option scores: every option after every prompt, from the one prompt pass.
    let scores = Vec::<Vec<f64>>::try_from(&golden.tensors["option_scores"]).unwrap();
    let options = golden.json["options"].as_array().unwrap();
    let rows = scores.len();
    for (o, option) in options.iter().enumerate() {
        let continuation = processor
            .continuation_ids(option.as_str().unwrap())
            .unwrap();
        let expected_ids: Vec<i64> = golden.json["option_ids"][o]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(continuation, expected_ids, "tokens of option {option}");
        let ours = decoding.score(&vec![continuation; rows]);
        for row in 0..rows {
            let diff = (ours[row] - scores[row][o]).abs();
            assert!(
                diff < 1e-4,
                "row {row}, option {option}: {} vs {}",
                ours[row],
                scores[row][o]
            );
        }
    }
    let generated = decoding.generate(max_new, eos);
    let expected = golden_tokens(&golden, "generated", eos);
    assert_eq!(generated, expected);
}

#[test]
fn one_adamw_step_of_the_supervised_loss_matches_torch() {
    let golden = golden();
    let (vs, model, processor) = load();
    let (prompts, pictures) = prompts(&processor, &golden);
    let answers = golden_strings(&golden, "answers");
    let texts: Vec<String> = prompts
        .iter()
        .zip(&answers)
        .map(|(p, a)| format!("{p}{a}"))
        .collect();
    let batch = processor.batch(&texts, &pictures).unwrap();
    assert_eq!(
        ids(&batch.input_ids),
        ids(&golden.tensors["train_input_ids"])
    );
    // Labels: the answer's tokens at the end of each row, -100 elsewhere.
    let (b, t) = batch.input_ids.size2().unwrap();
    let labels = Tensor::full([b, t], -100i64, (Kind::Int64, Device::Cpu));
    for (row, answer) in answers.iter().enumerate() {
        let answer_ids = processor.continuation_ids(answer).unwrap();
        let n = answer_ids.len() as i64;
        labels
            .get(row as i64)
            .narrow(0, t - n, n)
            .copy_(&Tensor::from_slice(&answer_ids));
    }
    assert_eq!(ids(&labels), ids(&golden.tensors["train_labels"]));

    model.freeze_for_finetune(&vs);
    let adamw = &golden.json["adamw"];
    let mut optimizer = tch::nn::AdamW {
        beta1: adamw["betas"][0].as_f64().unwrap(),
        beta2: adamw["betas"][1].as_f64().unwrap(),
        wd: adamw["weight_decay"].as_f64().unwrap(),
        eps: adamw["eps"].as_f64().unwrap(),
        amsgrad: false,
    }
    .build(&vs, adamw["lr"].as_f64().unwrap())
    .unwrap();
    let embeddings = model
        .embed(&batch.input_ids, batch.pixel_values.as_ref())
        .unwrap();
    let logits = model.logits(&embeddings, &batch.attention_mask);
    let vocab = logits.size()[2];
    let loss = logits
        .narrow(1, 0, t - 1)
        .reshape([-1, vocab])
        .cross_entropy_loss::<Tensor>(
            &labels.narrow(1, 1, t - 1).reshape([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        );
    let expected = golden.tensors["train_loss"].double_value(&[0]);
    let ours = loss.double_value(&[]);
    assert!((ours - expected).abs() < 1e-5, "loss {ours} vs {expected}");
    // Gradients first (so a difference is caught where it arises), then the step. Adam's first
    // step moves each weight by about the learning rate in the sign of its gradient, so the
    // updated weights check that the optimiser's arithmetic matches torch.optim.AdamW.
    optimizer.zero_grad();
    loss.backward();
    let variables = vs.variables();
    for name in golden.json["watched"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let Some(theirs) = golden.tensors.get(&format!("grad.{name}")) else {
            continue;
        };
        let ours = variables[&mipipe_stage_torch::hf::weights::canonical_key(name)].grad();
        let scale = theirs.abs().max().double_value(&[]);
        let diff = max_diff(&ours, theirs);
        assert!(
            diff <= 1e-5 * scale,
            "{name}: gradients differ by {diff} (largest {scale})"
        );
    }
    optimizer.step();
    // Adam's first step moves a weight by lr * g / (|g| + eps): where |g| is near eps, the
    // last-bit differences of the gradients checked above (summation order, thread count)
    // move it by up to lr. So each weight may differ by 1e-5 plus exactly what the two
    // gradients' own difference explains; any other difference is the optimiser's.
    let (lr, eps) = (
        adamw["lr"].as_f64().unwrap(),
        adamw["eps"].as_f64().unwrap(),
    );
    let direction = |g: &Tensor| g / (g.abs() + eps);
    for name in golden.json["watched"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let canonical = mipipe_stage_torch::hf::weights::canonical_key(name);
        let ours = &variables[&canonical];
        let diff = (ours - &golden.tensors[&format!("after_step.{name}")]).abs();
        let explained = match golden.tensors.get(&format!("grad.{name}")) {
            Some(theirs) => (direction(&ours.grad()) - direction(theirs)).abs() * lr,
            None => diff.zeros_like(),
        };
        let excess = (&diff - explained - 1e-5).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "{name} after one step differs by {} (beyond what its gradients explain by {excess})",
            diff.max().double_value(&[])
        );
    }
}

#[test]
fn a_saved_checkpoint_loads_back_to_the_same_logits() {
    let golden = golden();
    let (vs, model, _) = load();
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(checkpoint().join(file), dir.path().join(file)).unwrap();
    }
    mipipe_stage_torch::hf::weights::save(&vs, dir.path(), Kind::Float, false).unwrap();
    // The keys are the original checkpoint's, canonicalised: nothing lost, nothing invented.
    let index: Value = serde_json::from_slice(
        &std::fs::read(checkpoint().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut original: Vec<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| mipipe_stage_torch::hf::weights::canonical_key(k))
        .collect();
    original.sort();
    let saved = Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
    let mut keys: Vec<String> = saved.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    assert_eq!(keys, original);
    let (_vs2, reloaded) = LlavaModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let batch = batch_of(&golden);
    let diff = max_diff(&logits(&model, &batch), &logits(&reloaded, &batch));
    assert_eq!(diff, 0.0, "a reload changes logits by {diff}");
}

#[test]
fn a_mismatched_checkpoint_is_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(checkpoint().join("config.json")).unwrap()).unwrap();
    config["text_config"]["intermediate_size"] = Value::from(96);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    for entry in std::fs::read_dir(checkpoint()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "config.json" {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    let error = LlavaModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        error.contains("mlp") && error.contains("the model expects"),
        "{error}"
    );
}

fn item(id: &str, task: mipipe_stage_schema::Task, image: Option<Vec<u8>>, anchor: bool) -> Item {
    Item {
        id: id.into(),
        dataset: "d".into(),
        task,
        split: "train".into(),
        image,
        question: "What colour is the shape?".into(),
        options: vec!["red".into(), "blue square".into(), "green".into()],
        answer: 1,
        perturbation: if anchor { "none" } else { "uf" }.into(),
        origin_id: id.trim_end_matches("#uf").into(),
        facts: None,
        meta: (!anchor).then(|| r#"{"context": "Rivers flow into the sea."}"#.to_string()),
    }
}

use mipipe_stage_schema::{Item, Task};
use mipipe_stage_torch::hf::encode::{encode, item_tokens};
use mipipe_stage_torch::methods::{training_loss, Method, MethodConfig};
use mipipe_stage_torch::mixture::BatchRow;
use mipipe_stage_torch::objectives::TokenRole;

fn png(path: &str) -> Vec<u8> {
    std::fs::read(fixture().join(path)).unwrap()
}

#[test]
fn training_rows_give_every_token_its_role() {
    let (_vs, model, processor) = load();
    let it = item(
        "a#uf",
        Task::ImageHeavy,
        Some(png("images/rgb-47x35.png")),
        false,
    );
    let (ids, roles) = item_tokens(&processor, &it, Some(1)).unwrap();
    assert_eq!(ids.len(), roles.len());
    let text_of = |role: TokenRole| {
        let chosen: Vec<i64> = ids
            .iter()
            .zip(&roles)
            .filter(|(_, r)| **r == role)
            .map(|(i, _)| *i)
            .collect();
        processor.decode(&chosen).unwrap()
    };
    assert_eq!(
        roles.iter().filter(|r| **r == TokenRole::Image).count() as i64,
        model.config().tokens_per_image()
    );
    assert_eq!(
        text_of(TokenRole::Question),
        "Rivers flow into the sea. What colour is the shape?"
    );
    // Options: their words (the space after `B: ` belongs to the template when the tokenizer
    // keeps it as a token of its own).
    assert_eq!(
        text_of(TokenRole::Option).replace(' ', ""),
        "redbluesquaregreen"
    );
    // The answer: the letter, then the end-of-sequence token (a special token: decoded away).
    let answer: Vec<i64> = ids
        .iter()
        .zip(&roles)
        .filter(|(_, r)| **r == TokenRole::Answer)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(answer.last(), model.config().eos_token_id.as_ref());
    assert_eq!(processor.decode(&answer).unwrap(), "B");
    // The template is everything else, and the prompt is what `predict` renders.
    let prompt = processor
        .render(&mipipe_stage_torch::hf::predict::conversation(&it), true)
        .unwrap();
    let (prompt_ids, _) = item_tokens(&processor, &it, None).unwrap();
    assert_eq!(prompt_ids, processor.token_ids(&prompt).unwrap());
    assert_eq!(&ids[..prompt_ids.len()], &prompt_ids[..]);
}

#[test]
fn an_open_ended_row_trains_on_its_answer_in_words_without_options_or_system_message() {
    let (_vs, model, processor) = load();
    let mut open = item("v", Task::Vqa, Some(png("images/rgb-47x35.png")), true);
    open.options = vec!["blue square".into()];
    open.answer = 0;
    open.meta = Some(r#"{"answers": ["blue square", "a blue square"]}"#.into());
    let (ids, roles) = item_tokens(&processor, &open, Some(0)).unwrap();
    let chosen = |role: TokenRole| -> Vec<i64> {
        ids.iter()
            .zip(&roles)
            .filter(|(_, r)| **r == role)
            .map(|(i, _)| *i)
            .collect()
    };
    assert!(chosen(TokenRole::Option).is_empty(), "no options shown");
    let answer = chosen(TokenRole::Answer);
    assert_eq!(answer.last(), model.config().eos_token_id.as_ref());
    assert_eq!(processor.decode(&answer).unwrap().trim(), "blue square");
    assert_eq!(
        processor.decode(&chosen(TokenRole::Question)).unwrap(),
        "What colour is the shape?"
    );
    let prompt = processor
        .render(&mipipe_stage_torch::hf::predict::conversation(&open), true)
        .unwrap();
    assert!(
        !prompt.contains(mipipe_stage_torch::hf::predict::SYSTEM_PROMPT)
            && !prompt.contains("Option:"),
        "{prompt}"
    );
}

#[test]
fn the_seven_methods_train_a_pretrained_llava() {
    let items = vec![
        item(
            "a",
            Task::ImageHeavy,
            Some(png("images/rgb-47x35.png")),
            true,
        ),
        item(
            "a#uf",
            Task::ImageHeavy,
            Some(png("images/rgb-47x35.png")),
            false,
        ),
        item(
            "b",
            Task::TextHeavy,
            Some(png("images/grey-31x64.png")),
            true,
        ),
        item("c", Task::TextHeavy, None, true),
    ];
    let batch = vec![
        BatchRow {
            item: 0,
            anchor: None,
        },
        BatchRow {
            item: 1,
            anchor: Some(0),
        },
        BatchRow {
            item: 2,
            anchor: None,
        },
        BatchRow {
            item: 3,
            anchor: None,
        },
    ];
    for method in [
        Method::FftVqa,
        Method::FftMix,
        Method::Kl,
        Method::Js,
        Method::Rg,
        Method::Adv,
        Method::Ours,
    ] {
        tch::manual_seed(3);
        let (vs, model, processor) = load();
        model.freeze_for_finetune(&vs);
        let rows = encode(&processor, &items, &batch).unwrap();
        assert_eq!(rows.images.size()[0], 3, "one picture per row that has one");
        let config = MethodConfig::paper(method);
        let mut optimizer = tch::nn::AdamW::default().build(&vs, 1e-3).unwrap();
        let first = training_loss(&model, &rows, &config);
        let first_total = first.total.double_value(&[]);
        assert!(first_total.is_finite(), "{method:?}: {first_total}");
        let terms: std::collections::BTreeMap<&str, f64> = first.terms.iter().copied().collect();
        match method {
            Method::Kl | Method::Js => assert!(terms["consistency"] > 0.0, "{terms:?}"),
            Method::Rg => assert!(terms["noise_to_text"] > 0.0 && terms["noise_to_image"] > 0.0),
            Method::Adv | Method::Ours => {
                // PGD moved the question's words of the image-heavy rows and the image tokens
                // of the text-heavy row that has a picture.
                assert!(terms["delta_to_text"] > 0.0, "{terms:?}");
                assert!(terms["delta_to_image"] > 0.0, "{terms:?}");
            }
            _ => {}
        }
        optimizer.backward_step(&first.total);
        for _ in 0..3 {
            let loss = training_loss(&model, &rows, &config);
            optimizer.backward_step(&loss.total);
        }
        let last = training_loss(&model, &rows, &config)
            .total
            .double_value(&[]);
        assert!(last < first_total, "{method:?}: {first_total} -> {last}");
        // Gradient checkpointing gives this model's gradients (PGD's inner ones included).
        let gradients = |checkpointing: bool| {
            tch::manual_seed(4);
            model.decoder.set_checkpointing(checkpointing);
            for mut var in vs.trainable_variables() {
                var.zero_grad();
            }
            let loss = training_loss(&model, &rows, &config);
            loss.total.backward();
            model.decoder.backward_checkpoints();
            model.decoder.set_checkpointing(false);
            let mut grads: Vec<(String, Tensor)> = vs
                .variables()
                .into_iter()
                .filter(|(_, v)| v.requires_grad())
                .map(|(name, v)| (name, v.grad().copy()))
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            grads
        };
        for ((name, a), (_, b)) in gradients(false).iter().zip(&gradients(true)) {
            let scale = a.abs().max().double_value(&[]).max(1e-12);
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff <= 1e-5 * scale, "{method:?} {name}: {diff} of {scale}");
        }
        // The vision tower stays as it was loaded.
        let (fresh_vs, _) = LlavaModel::load(&checkpoint(), Device::Cpu, Kind::Float).unwrap();
        let fresh = fresh_vs.variables();
        for (name, value) in vs.variables() {
            if name.starts_with("vision_tower.") {
                assert!(value.equal(&fresh[&name]), "{method:?} moved {name}");
            }
        }
    }
}

#[test]
fn lora_adapters_start_neutral_train_alone_and_merge_into_an_ordinary_checkpoint() {
    use mipipe_stage_torch::lora::{Adapters, LoraParams};
    let golden = golden();
    let batch = batch_of(&golden);
    let (_plain_vs, plain, processor) = load();
    let params = LoraParams {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
    };
    tch::manual_seed(5);
    let adapters = Adapters::new(&params);
    let (vs, model) =
        LlavaModel::load_with_adapters(&checkpoint(), Device::Cpu, Kind::Float, Some(&adapters))
            .unwrap();
    let adapter_names: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|n| mipipe_stage_torch::lora::is_adapter(n))
        .collect();
    // Two layers x three targets x (A, B).
    assert_eq!(adapter_names.len(), 12, "{adapter_names:?}");
    assert!(adapter_names
        .iter()
        .any(|n| n == "language_model.model.layers.1.mlp.down_proj.lora_A.weight"));
    // B starts at zero: the adapted model is the checkpoint.
    let diff = max_diff(&logits(&model, &batch), &logits(&plain, &batch));
    assert_eq!(diff, 0.0, "fresh adapters change logits by {diff}");

    // Train: only the adapters and the projector move.
    model.freeze_for_finetune(&vs);
    let before: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let items = vec![
        item(
            "a",
            Task::ImageHeavy,
            Some(png("images/rgb-47x35.png")),
            true,
        ),
        item("b", Task::TextHeavy, None, true),
    ];
    let rows = encode(
        &processor,
        &items,
        &[
            BatchRow {
                item: 0,
                anchor: None,
            },
            BatchRow {
                item: 1,
                anchor: None,
            },
        ],
    )
    .unwrap();
    let config = MethodConfig::paper(Method::Ours);
    let mut optimizer = tch::nn::AdamW::default().build(&vs, 1e-2).unwrap();
    use mipipe_stage_torch::methods::Trainable;
    model.set_training(true);
    let first = training_loss(&model, &rows, &config).total;
    let first_value = first.double_value(&[]);
    optimizer.backward_step(&first);
    for _ in 0..4 {
        let loss = training_loss(&model, &rows, &config).total;
        optimizer.backward_step(&loss);
    }
    model.set_training(false);
    let last = training_loss(&model, &rows, &config)
        .total
        .double_value(&[]);
    assert!(last < first_value, "{first_value} -> {last}");
    for (name, value) in vs.variables() {
        let moved = !value.equal(&before[&name]);
        let trains = mipipe_stage_torch::lora::is_adapter(&name)
            || name.starts_with("multi_modal_projector.");
        if name.contains(".lora_B.") || name.starts_with("multi_modal_projector.") {
            assert!(moved, "{name} did not train");
        }
        if !trains {
            assert!(!moved, "{name} moved but is frozen");
        }
    }

    // Merged and saved, it is an ordinary checkpoint with the adapted model's logits.
    let adapted = logits(&model, &batch);
    let merged = mipipe_stage_torch::lora::merge(&vs, &params);
    assert_eq!(merged.len(), 12);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        checkpoint().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    mipipe_stage_torch::hf::weights::save(&vs, dir.path(), Kind::Float, false).unwrap();
    let (_vs2, reloaded) = LlavaModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let diff = max_diff(&logits(&reloaded, &batch), &adapted);
    assert!(
        diff < 1e-4,
        "the merged checkpoint differs from the adapted model by {diff}"
    );
}

#[test]
fn bf16_logits_are_as_close_to_transformers_bf16_as_bf16_is_to_fp32() {
    let golden = golden();
    let batch = batch_of(&golden);
    let (_vs, model) = LlavaModel::load(&checkpoint(), Device::Cpu, Kind::BFloat16).unwrap();
    let ours = logits(&model, &batch).to_kind(Kind::Float);
    assert!(ours.isfinite().all().int64_value(&[]) == 1);
    let theirs = &golden.tensors["logits_bf16"];
    let fp32 = &golden.tensors["logits"];
    let mask = &batch.attention_mask;
    let to_transformers = real_diff(&ours, theirs, mask);
    // What rounding to bf16 costs transformers itself: the yardstick.
    let rounding = real_diff(theirs, fp32, mask);
    let to_fp32 = real_diff(&ours, fp32, mask);
    // Ours must be as accurate as transformers' own bf16 (within a quarter of its error
    // against fp32); two such bf16 results can then differ by up to twice that error.
    assert!(
        to_fp32 <= 1.25 * rounding && to_transformers <= 2.0 * rounding,
        "bf16 logits differ from fp32 by {to_fp32} and from transformers' bf16 by \
         {to_transformers}; bf16 rounding itself moves transformers' by {rounding}"
    );
}

#[test]
fn greedy_generation_with_the_authors_repetition_penalty_matches_transformers() {
    let golden = golden();
    let (_vs, model, _) = load();
    let batch = batch_of(&golden);
    let eos = model.config().eos_token_id.unwrap();
    let expected = golden_tokens(&golden, "generated_repetition_penalty_1.2", eos);
    let plain = golden_tokens(&golden, "generated", eos);
    assert_ne!(
        plain, expected,
        "the penalty must change something to be tested"
    );
    let decoding = model
        .prefill(
            &batch.input_ids,
            &batch.attention_mask,
            batch.pixel_values.as_ref(),
        )
        .unwrap();
    let generated = decoding.generate_with(8, eos, Some((1.2, &batch.input_ids)));
    assert_eq!(generated, expected);
}
