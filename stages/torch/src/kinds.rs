//! The libtorch backend of the `pretrain`, `finetune` and `predict` stage kinds (declared in
//! `mipipe-stage-torch-types`), what `mipipe-torch-worker` runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mipipe_engine::{StageContext, StageError};
use mipipe_stage_schema::{
    read_corpus, read_items, read_tables, write_predictions, Item, ItemRng, Prediction, Task,
};
use mipipe_stage_torch_types::{
    AnswerFormat, Family, FinetuneParams, Method, PredictParams, PretrainParams, Size, TorchBackend,
};
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::checkpoint;
use crate::decode::{Decoding, Prompts};
use crate::encode::{
    answer_ids, encode, encode_sequences, letter, prediction, prompt_ids, prompt_tokens, row_task,
    vocabulary_text, with_prompt_prefix, Sequence,
};
use crate::methods::MethodConfig;
use crate::mixture::{batches, Mixture};
use crate::model::{ModelConfig, MultimodalModel};
use crate::objectives::{RowTask, TokenRole};
use crate::presets::model_config;
use crate::tokenizer::{Tokenizer, EOS, PAD, UNK};
use crate::training::{train, write_log};
use crate::{device, tokenizer};

/// The libtorch implementation of the torch stage kinds.
pub struct TchBackend;

/// What a checkpoint folder's `config.json` holds besides the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sidecar {
    /// Format version (1).
    pub version: u32,
    /// The resolved model shapes.
    pub model: ModelConfig,
    /// The size preset.
    pub size: Size,
    /// `vanilla` (made by `pretrain`) or the fine-tuning method.
    pub method: String,
    /// The seed of the training that made it.
    pub seed: u64,
    /// What the model answers: the option letter or the option's words.
    #[serde(default)]
    pub answer: AnswerFormat,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Where the training that made it ran (`cpu`, `cuda:0`); informational.
    #[serde(default)]
    pub trained_on: Option<String>,
}

/// A stage failure carrying `e`'s message.
pub(crate) fn failed(e: impl std::fmt::Display) -> StageError {
    StageError::failed(e.to_string())
}

fn read_all_items(ctx: &StageContext, input: &str) -> Result<Vec<Item>, StageError> {
    read_tables(ctx.input_paths(input)?, read_items).map_err(failed)
}

fn prepare(
    ctx: &StageContext,
    device: mipipe_stage_torch_types::Device,
) -> Result<tch::Device, StageError> {
    device::set_threads(ctx.env());
    let (device, note) = device::resolve(device)?;
    if let Some(note) = note {
        ctx.log(&note);
    }
    ctx.log(&format!(
        "libtorch on {device:?} with {} thread(s)",
        tch::get_num_threads()
    ));
    ctx.record_fact("device", &device::name(device));
    Ok(device)
}

fn load(
    dir: &Path,
    device: tch::Device,
) -> Result<(nn::VarStore, MultimodalModel, Sidecar), StageError> {
    let sidecar: Sidecar = checkpoint::read_sidecar(dir).map_err(failed)?;
    let mut vs = nn::VarStore::new(device);
    let model = MultimodalModel::new(vs.root(), &sidecar.model);
    checkpoint::load(&mut vs, dir).map_err(failed)?;
    Ok((vs, model, sidecar))
}

/// Instruction rows of pretraining: clean training items, image-heavy ones with a truthful
/// description of the picture at `hint_rate` (drawn per item from the seed).
fn instruction_items(items: &[Item], hint_rate: f64, seed: u64) -> Vec<Item> {
    items
        .iter()
        .filter(|i| i.split == "train" && i.perturbation == "none")
        .map(|item| {
            let mut item = item.clone();
            let mut rng = ItemRng::new(seed, &["pretrain-hint", &item.id]);
            if item.task == Task::ImageHeavy && rng.unit() < hint_rate {
                item.question = format!(
                    "The picture seems to describe a {}. {}",
                    item.options[item.answer], item.question
                );
            }
            item
        })
        .collect()
}

/// What `pretrain` and `finetune` share: train, then write the log and the checkpoint.
struct TrainingRun<'a> {
    vs: &'a nn::VarStore,
    model: &'a MultimodalModel,
    method: MethodConfig,
    lr: f64,
    optimizer: &'a mipipe_stage_torch_types::OptimizerParams,
    ctx: &'a StageContext,
}

impl TrainingRun<'_> {
    fn train_and_save<B>(
        &self,
        plan: &[(u32, B)],
        encode: impl Fn(&B) -> Result<crate::methods::Rows, String>,
        sidecar: &Sidecar,
    ) -> Result<(), StageError> {
        let log = train(
            self.vs,
            None,
            self.model,
            plan,
            encode,
            &self.method,
            self.lr,
            self.optimizer,
            self.ctx,
        )?;
        write_log(self.ctx.output_path("log")?, &log)?;
        checkpoint::save(self.vs, sidecar, self.ctx.output_path("model")?).map_err(failed)
    }
}

/// One pretraining row: a corpus text (every token supervised) or an instruction item.
enum PretrainRow {
    Corpus(usize),
    Item(usize),
}

impl TorchBackend for TchBackend {
    fn pretrain(&self, params: &PretrainParams, ctx: &StageContext) -> Result<(), StageError> {
        let device = prepare(ctx, params.device)?;
        // The corpus is optional: real-data studies pretrain on instruction items alone.
        let bound = ctx.inputs().get("corpus").map_or(&[][..], Vec::as_slice);
        let corpus = read_tables(bound, read_corpus).map_err(failed)?;
        let items = instruction_items(
            &read_all_items(ctx, "items")?,
            params.truthful_hint_rate,
            params.seed,
        );
        if corpus.is_empty() && items.is_empty() {
            return Err(StageError::failed(
                "nothing to train on: the corpus is empty and the items table has no clean `train` rows",
            ));
        }
        let prompts: Vec<String> = items.iter().map(vocabulary_text).collect();
        let tokenizer = Tokenizer::train(
            corpus
                .iter()
                .map(|r| r.text.as_str())
                .chain(prompts.iter().map(String::as_str)),
            params.vocab_size,
        );
        ctx.log(&format!(
            "{} corpus rows, {} instruction items, vocabulary {}",
            corpus.len(),
            items.len(),
            tokenizer.len()
        ));
        let config = model_config(params.family, params.size, tokenizer.len() as i64);
        tch::manual_seed(params.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = MultimodalModel::new(vs.root(), &config);
        let (text_rms, image_rms) = match_image_scale(&model, &corpus, &items, &config, device)?;
        ctx.log(&format!(
            "initial RMS: text embeddings {text_rms:.4}, image tokens {image_rms:.4} (rescaled to the text's)"
        ));
        let mut rows: Vec<PretrainRow> = (0..corpus.len()).map(PretrainRow::Corpus).collect();
        rows.extend((0..items.len()).map(PretrainRow::Item));
        let mut plan = Vec::new();
        for epoch in 0..params.epochs {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            let mut rng = ItemRng::new(params.seed, &["pretrain-order", &epoch.to_string()]);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for chunk in order.chunks(params.batch_size.max(1)) {
                plan.push((epoch, chunk.to_vec()));
            }
        }
        let bos = tokenizer.id(tokenizer::BOS);
        let eos = tokenizer.id(EOS);
        let image_size = config.vision.image_size;
        let encode_batch = |batch: &Vec<usize>| {
            let sequences: Vec<Sequence> = batch
                .iter()
                .map(|&r| match rows[r] {
                    PretrainRow::Corpus(i) => {
                        let mut answer = tokenizer.encode(&corpus[i].text);
                        answer.push(eos);
                        Sequence {
                            image: corpus[i].image.as_deref(),
                            prompt: vec![bos],
                            roles: vec![TokenRole::Template],
                            answer,
                            task: RowTask::Vqa,
                            anchor: None,
                        }
                    }
                    PretrainRow::Item(i) => {
                        let item = &items[i];
                        let (prompt, roles) = prompt_tokens(item, &tokenizer);
                        Sequence {
                            image: item.image.as_deref(),
                            prompt,
                            roles,
                            answer: answer_ids(item, item.answer, params.answer, &tokenizer),
                            task: row_task(items[i].task),
                            anchor: None,
                        }
                    }
                })
                .collect();
            encode_sequences(&sequences, tokenizer.id(PAD), image_size)
        };
        let sidecar = Sidecar {
            version: 1,
            model: config,
            size: params.size,
            method: "vanilla".into(),
            seed: params.seed,
            answer: params.answer,
            tokenizer: tokenizer.clone(),
            trained_on: Some(device::name(device)),
        };
        let run = TrainingRun {
            vs: &vs,
            model: &model,
            method: MethodConfig::paper(Method::FftMix),
            lr: params.lr,
            optimizer: &params.optimizer,
            ctx,
        };
        run.train_and_save(&plan, encode_batch, &sidecar)
    }

    fn finetune(&self, params: &FinetuneParams, ctx: &StageContext) -> Result<(), StageError> {
        let device = prepare(ctx, params.device)?;
        if let Some(dir) = &params.checkpoint {
            let items = read_all_items(ctx, "items")?;
            let plan = finetune_plan(params, &items, ctx)?;
            return crate::hf::finetune::run(
                &ctx.workspace().join(dir),
                device,
                params,
                &items,
                &plan,
                ctx,
            );
        }
        if params.lora.is_some() {
            return Err(StageError::failed(
                "`lora` fine-tunes Hugging Face checkpoints (`checkpoint`); mipipe's own small \
                 models train in full",
            ));
        }
        if !params.dtype.is_float32() {
            return Err(StageError::failed(
                "`dtype` applies to Hugging Face checkpoints; mipipe's own models train in float32",
            ));
        }
        let (vs, model, mut sidecar) = load(ctx.input_path("model")?, device)?;
        check_labels(&sidecar, params.family, params.size, None, None)?;
        model.freeze_for_finetune(&vs);
        model
            .decoder
            .set_checkpointing(params.gradient_checkpointing);
        let items = read_all_items(ctx, "items")?;
        let plan = finetune_plan(params, &items, ctx)?;
        tch::manual_seed(params.seed as i64);
        let image_size = sidecar.model.vision.image_size;
        let tokenizer = sidecar.tokenizer.clone();
        let format = sidecar.answer;
        sidecar.method = method_name(params.method);
        sidecar.seed = params.seed;
        sidecar.trained_on = Some(device::name(device));
        let run = TrainingRun {
            vs: &vs,
            model: &model,
            method: method_config(params),
            lr: params.lr(),
            optimizer: &params.optimizer,
            ctx,
        };
        run.train_and_save(
            &plan,
            |batch| encode(&items, batch, &tokenizer, format, image_size),
            &sidecar,
        )
    }

    fn predict(&self, params: &PredictParams, ctx: &StageContext) -> Result<(), StageError> {
        let device = prepare(ctx, params.device)?;
        let items: Vec<Item> = read_all_items(ctx, "items")?
            .into_iter()
            .filter(|i| i.split == params.split)
            .filter(|i| params.conditions.is_empty() || params.conditions.contains(&i.perturbation))
            .map(|i| with_prompt_prefix(i, &params.prompt_prefix))
            .map(|i| {
                if params.free_form {
                    i.into_open_ended()
                } else {
                    i
                }
            })
            .collect();
        if items.is_empty() {
            let wanted = if params.conditions.is_empty() {
                format!("`{}` rows (param `split`)", params.split)
            } else {
                format!(
                    "`{}` rows of the conditions {} (params `split`, `conditions`)",
                    params.split,
                    params.conditions.join(", ")
                )
            };
            return Err(StageError::failed(format!(
                "the items table has no {wanted}"
            )));
        }
        if let Some(open) = items
            .iter()
            .find(|i| i.is_open_ended() && !params.free_form)
        {
            return Err(StageError::failed(format!(
                "item `{}` is open-ended (`meta.answers`): set `free_form: true` to answer it in \
                 words, or leave open-ended rows (training data such as LLaVA-Instruct, TextCaps) \
                 out of the `split`",
                open.id
            )));
        }
        if params.free_form {
            ctx.log(&format!(
                "free-form: {} rows answered in words, without options",
                items.len()
            ));
        }
        let out = match &params.checkpoint {
            Some(dir) => {
                crate::hf::predict::answer(&ctx.workspace().join(dir), device, params, &items, ctx)?
            }
            None => {
                let dir = ctx.input_path("model")?;
                if crate::hf::finetune::is_llava_checkpoint(dir) {
                    crate::hf::predict::answer(dir, device, params, &items, ctx)?
                } else {
                    predict_own(params, ctx, device, &items)?
                }
            }
        };
        ctx.log(&format!("{} predictions", out.len()));
        write_predictions(ctx.output_path("predictions")?, &out).map_err(failed)
    }
}

/// The batches `finetune` trains on, epoch by epoch: D_mixed (D_VQA for `fft_vqa`); the
/// first epoch's order is the seed's own, so every method of an ablation sees the same batches.
pub(crate) fn finetune_plan(
    params: &FinetuneParams,
    items: &[Item],
    ctx: &StageContext,
) -> Result<Vec<(u32, Vec<crate::mixture::BatchRow>)>, StageError> {
    let mut mixture = if params.method == Method::FftVqa {
        Mixture::vqa_only(params.batch_size)
    } else {
        Mixture {
            image_ratio: params.mixture.image_ratio,
            text_ratio: params.mixture.text_ratio,
            ..Mixture::mixed(params.batch_size)
        }
    };
    mixture.vqa_datasets.clone_from(&params.vqa_datasets);
    let mut plan = Vec::new();
    for epoch in 0..params.epochs {
        let seed = params.seed.wrapping_add(epoch as u64);
        for batch in batches(items, &mixture, seed).map_err(StageError::failed)? {
            plan.push((epoch, batch));
        }
    }
    if plan.is_empty() {
        return Err(StageError::failed(
            "the mixture has no complete batch; the items table needs more `train` rows",
        ));
    }
    ctx.log(&format!(
        "{:?}: {} steps over {} epoch(s)",
        params.method,
        plan.len(),
        params.epochs
    ));
    // Where the VQA anchors come from (D_VQA's datasets), counted once per row.
    let mut vqa: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for row in plan.iter().flat_map(|(_, batch)| batch) {
        let item = &items[row.item];
        if item.task == Task::Vqa {
            vqa.entry(item.dataset.as_str())
                .or_default()
                .insert(row.item);
        }
    }
    if !vqa.is_empty() {
        let counts: Vec<String> = vqa
            .iter()
            .map(|(dataset, rows)| format!("{dataset} ({})", rows.len()))
            .collect();
        ctx.log(&format!("VQA anchors from {}", counts.join(", ")));
    }
    Ok(plan)
}

/// The objective settings of a `finetune` stage.
pub(crate) fn method_config(params: &FinetuneParams) -> MethodConfig {
    let divergence = params.method.divergence(params.consistency.ours_divergence);
    MethodConfig {
        method: params.method,
        lambda: divergence.map_or(0.0, |d| params.consistency.weight(d)),
        tau: params.consistency.tau,
        sigma: params.sigma,
        ours_divergence: params.consistency.ours_divergence,
        stop_gradient: params.consistency.stop_gradient,
        pgd: params.pgd,
        perturb_tokens: params.perturb_tokens,
        ours_anchors: params.consistency.ours_anchors,
    }
}

/// `predict` with a checkpoint of mipipe's own (`pretrain` or `finetune` output).
fn predict_own(
    params: &PredictParams,
    ctx: &StageContext,
    device: tch::Device,
    items: &[Item],
) -> Result<Vec<Prediction>, StageError> {
    if !params.dtype.is_float32() {
        return Err(StageError::failed(
            "`dtype` applies to Hugging Face checkpoints; mipipe's own models run in float32",
        ));
    }
    let (_vs, model, sidecar) = load(ctx.input_path("model")?, device)?;
    check_labels(
        &sidecar,
        params.family,
        params.size,
        params.method.as_deref(),
        params.seed,
    )?;
    let tokenizer = &sidecar.tokenizer;
    let image_size = sidecar.model.vision.image_size;
    let eos = tokenizer.id(EOS);
    let mut out = Vec::with_capacity(items.len());
    let chunks: Vec<&[Item]> = items.chunks(params.batch_size.max(1)).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        if ctx.is_cancelled() {
            return Err(StageError::failed("Cancelled"));
        }
        let sequences: Vec<Sequence> = chunk
            .iter()
            .map(|item| {
                let (prompt, roles) = prompt_tokens(item, tokenizer);
                Sequence {
                    image: item.image.as_deref(),
                    prompt,
                    roles,
                    answer: Vec::new(),
                    task: row_task(item.task),
                    anchor: None,
                }
            })
            .collect();
        let rows = encode_sequences(&sequences, tokenizer.id(PAD), image_size)
            .map_err(StageError::failed)?;
        let prompts = Prompts {
            padding: rows.tokens.ne(tokenizer.id(PAD)).to_device(device),
            images: rows.images.to_device(device),
            tokens: rows.tokens.to_device(device),
        };
        // One pass over the prompts; the options and the generated answer continue it.
        let decoding = Decoding::prefill(&model, &prompts);
        let first = decoding.first_logprobs();
        let scores: Vec<Vec<f64>> = match sidecar.answer {
            _ if chunk.iter().all(Item::is_open_ended) => vec![Vec::new(); chunk.len()],
            AnswerFormat::Letter => chunk
                .iter()
                .enumerate()
                .map(|(row, item)| {
                    (0..item.options.len())
                        .map(|i| first.double_value(&[row as i64, tokenizer.id(&letter(i))]))
                        .collect()
                })
                .collect(),
            AnswerFormat::Text => option_text_scores(&decoding, chunk, tokenizer),
        };
        let generated = decoding.generate_with(
            params.max_new_tokens,
            eos,
            Some((params.repetition_penalty, &prompts.tokens)),
        );
        for ((item, logprobs), tokens) in chunk.iter().zip(scores).zip(&generated) {
            let raw_text = tokenizer.decode(tokens);
            let mut row = prediction(item, raw_text, logprobs);
            let prompt = prompt_ids(item, tokenizer);
            let unknown = prompt.iter().filter(|&&t| t == tokenizer.id(UNK)).count();
            row.unknown_share = Some(unknown as f64 / prompt.len().max(1) as f64);
            out.push(row);
        }
        ctx.progress(n as u64 + 1, chunks.len() as u64, "predicting");
    }
    Ok(out)
}

pub(crate) fn method_name(method: Method) -> String {
    serde_json::to_value(method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Checks the labels a stage was given against the checkpoint it reads: a wrong join in a
/// pipeline (the blip predictions reading a llava model) fails loudly.
fn check_labels(
    sidecar: &Sidecar,
    family: Option<Family>,
    size: Option<Size>,
    method: Option<&str>,
    seed: Option<u64>,
) -> Result<(), StageError> {
    let mut wrong = Vec::new();
    if let Some(family) = family.filter(|f| *f != sidecar.model.family) {
        wrong.push(format!(
            "family {family:?} (the checkpoint is {:?})",
            sidecar.model.family
        ));
    }
    if let Some(size) = size.filter(|s| *s != sidecar.size) {
        wrong.push(format!(
            "size {size:?} (the checkpoint is {:?})",
            sidecar.size
        ));
    }
    if let Some(method) = method.filter(|m| *m != sidecar.method) {
        wrong.push(format!(
            "method `{method}` (the checkpoint is `{}`)",
            sidecar.method
        ));
    }
    if let Some(seed) = seed.filter(|s| *s != sidecar.seed) {
        wrong.push(format!(
            "seed {seed} (the checkpoint's is {})",
            sidecar.seed
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(StageError::failed(format!(
            "the input `model` does not match this stage's params: {}; check the `inputs:` reference",
            wrong.join(", ")
        )))
    }
}

/// The log-likelihood of every option's words (and `<eos>`) after each item's prompt (`text`
/// answers), continuing the prompts' one pass.
pub fn option_text_scores(
    decoding: &Decoding,
    chunk: &[Item],
    tokenizer: &Tokenizer,
) -> Vec<Vec<f64>> {
    decoding.score_options(chunk, |item, option| {
        answer_ids(item, option, AnswerFormat::Text, tokenizer)
    })
}

/// Rescales the new model's image tokens to the text embeddings' RMS
/// ([`MultimodalModel::match_image_scale`]) on up to 64 of the pictures it will train on.
fn match_image_scale(
    model: &MultimodalModel,
    corpus: &[mipipe_stage_schema::CorpusRow],
    items: &[Item],
    config: &ModelConfig,
    device: tch::Device,
) -> Result<(f64, f64), StageError> {
    let pictures: Vec<tch::Tensor> = corpus
        .iter()
        .filter_map(|r| r.image.as_deref())
        .chain(items.iter().filter_map(|i| i.image.as_deref()))
        .take(64)
        .map(|png| crate::encode::image_tensor(Some(png), config.vision.image_size))
        .collect::<Result<_, _>>()
        .map_err(StageError::failed)?;
    if pictures.is_empty() {
        return Ok((0.0, 0.0));
    }
    Ok(model.match_image_scale(&tch::Tensor::stack(&pictures, 0).to_device(device)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::prompt_ids;
    use crate::model::tests::tiny;

    fn item(task: Task, split: &str, condition: &str) -> Item {
        Item {
            id: format!("x-{split}-{condition}"),
            dataset: "d".into(),
            task,
            split: split.into(),
            image: None,
            question: "What shape is in this picture?".into(),
            options: vec!["circle".into(), "red square".into(), "star".into()],
            answer: 1,
            perturbation: condition.into(),
            origin_id: "x".into(),
            facts: None,
            meta: None,
        }
    }

    #[test]
    fn pretraining_items_are_clean_training_rows_with_truthful_hints_at_the_rate() {
        let mut items = vec![
            item(Task::ImageHeavy, "test", "none"),
            item(Task::ImageHeavy, "train", "md"),
            item(Task::TextHeavy, "train", "none"),
        ];
        for n in 0..200 {
            let mut i = item(Task::ImageHeavy, "train", "none");
            i.id = format!("img{n}");
            items.push(i);
        }
        let none = instruction_items(&items, 0.0, 1);
        assert_eq!(none.len(), 201, "test rows and perturbed rows are left out");
        assert!(none.iter().all(|i| !i.question.contains("describe")));
        let half = instruction_items(&items, 0.5, 1);
        let hinted: Vec<&Item> = half
            .iter()
            .filter(|i| {
                i.question
                    .starts_with("The picture seems to describe a red square. ")
            })
            .collect();
        assert!((70..130).contains(&hinted.len()), "{}", hinted.len());
        assert!(hinted.iter().all(|i| i.task == Task::ImageHeavy));
        assert_eq!(
            half,
            instruction_items(&items, 0.5, 1),
            "drawn from the seed"
        );
    }

    #[test]
    fn a_checkpoint_of_another_family_or_method_is_refused_with_both_names() {
        let sidecar = Sidecar {
            version: 1,
            model: tiny(Family::Llava),
            size: Size::Xs,
            method: "vanilla".into(),
            seed: 0,
            answer: AnswerFormat::Text,
            tokenizer: Tokenizer::train(["a b"], 10),
            trained_on: None,
        };
        assert!(check_labels(
            &sidecar,
            Some(Family::Llava),
            Some(Size::Xs),
            Some("vanilla"),
            Some(0)
        )
        .is_ok());
        assert!(check_labels(&sidecar, None, None, None, None).is_ok());
        let err = check_labels(&sidecar, Some(Family::Blip), None, Some("ours"), None).unwrap_err();
        assert!(
            err.message()
                .contains("family Blip (the checkpoint is Llava)"),
            "{err}"
        );
        assert!(
            err.message()
                .contains("method `ours` (the checkpoint is `vanilla`)"),
            "{err}"
        );
    }

    #[test]
    fn option_words_are_scored_by_their_likelihood() {
        let _rng = crate::rng_lock();
        tch::manual_seed(3);
        let tokenizer = Tokenizer::train(["circle square star shape"], 64);
        let mut config = tiny(Family::Llava);
        config.decoder.vocab = tokenizer.len() as i64;
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &config);
        let chunk = vec![item(Task::ImageHeavy, "test", "none")];
        let ids = prompt_ids(&chunk[0], &tokenizer);
        let images = crate::encode::image_tensor(None, 8).unwrap().unsqueeze(0);
        let prompts = Prompts {
            images: images.shallow_clone(),
            tokens: tch::Tensor::from_slice(&ids).unsqueeze(0),
            padding: tch::Tensor::ones([1, ids.len() as i64], (tch::Kind::Bool, tch::Device::Cpu)),
        };
        let scores = option_text_scores(&Decoding::prefill(&model, &prompts), &chunk, &tokenizer);
        assert_eq!(scores[0].len(), 3);
        // By hand for option B ("red square" + <eos>), with one full forward pass and no cache:
        // the sum of the log-probabilities of its tokens, each given everything before it.
        let answer = answer_ids(&chunk[0], 1, AnswerFormat::Text, &tokenizer);
        let mut full = ids.clone();
        full.extend(&answer);
        let tokens = tch::Tensor::from_slice(&full).unsqueeze(0);
        let logits = tch::no_grad(|| model.logits(&model.embed(&images, &tokens), None));
        let n_image = model.image_token_count();
        let logp = logits.log_softmax(-1, tch::Kind::Float);
        let by_hand: f64 = (0..answer.len())
            .map(|k| {
                let position = n_image + (ids.len() + k) as i64 - 1;
                logp.double_value(&[0, position, answer[k]])
            })
            .sum();
        assert!(
            (scores[0][1] - by_hand).abs() < 1e-4,
            "{} vs {by_hand}",
            scores[0][1]
        );
        assert!(scores[0].iter().all(|s| *s < 0.0));
    }
}
