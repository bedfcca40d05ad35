//! `predict` on a pretrained LLaVA checkpoint: the authors' evaluation prompt (seed-repo.md
//! §1.8 and §4.2: their system message, `Question:\n{q}\nOption:\n{L}: {text}\n...`, the
//! checkpoint's chat template with the picture first), one prompt pass per batch with the KV
//! cache, every option letter scored as a continuation of that pass, and a greedy answer.

use std::path::Path;

use mipipe_engine::{StageContext, StageError};
use mipipe_stage_schema::image::RgbImage;
use mipipe_stage_schema::{Item, Prediction};
use mipipe_stage_torch_types::{Dtype, PredictParams};
use tch::Kind;

use super::llava::LlavaModel;
use super::processor::{Content, LlavaProcessor, Message};
use crate::encode::{item_context, letter, prediction};
use crate::kinds::failed;
use crate::objectives::TokenRole;

/// The authors' evaluation system message (`qa_image_prompt`, seed-repo.md §1.8).
pub const SYSTEM_PROMPT: &str = "You are an expert at question answering. Given the question \
and the context image of the question, please output the answer. Please provide a concise \
option, no explanation and further question.";

/// The user text of an item in parts, each with the role its tokens play: `Question:\n`, any
/// prepended context and the question, `\nOption:\n`, then each option as `{letter}: {text}`
/// on its own line. An open-ended row is its question alone (with any context), as the authors
/// train LLaVA-Instruct's first turn (seed-repo.md §1.6).
pub fn user_segments(item: &Item) -> Vec<(String, TokenRole)> {
    let context = item_context(item);
    let open = item.is_open_ended();
    let mut segments = Vec::new();
    if !open {
        segments.push(("Question:\n".to_string(), TokenRole::Template));
    }
    if let Some(context) = context.filter(|c| !c.is_empty()) {
        segments.push((format!("{context} "), TokenRole::Question));
    }
    segments.push((item.question.clone(), TokenRole::Question));
    if open {
        return segments;
    }
    segments.push(("\nOption:\n".to_string(), TokenRole::Template));
    for (i, option) in item.options.iter().enumerate() {
        segments.push((format!("{}: ", letter(i)), TokenRole::Template));
        segments.push((option.clone(), TokenRole::Option));
        segments.push(("\n".to_string(), TokenRole::Template));
    }
    segments
}

/// The user text of an item.
pub fn user_text(item: &Item) -> String {
    user_segments(item)
        .into_iter()
        .map(|(text, _)| text)
        .collect()
}

/// The conversation of an item: the system message (none for an open-ended row, as the
/// authors train VQA items), then the user's turn (picture first).
pub fn conversation(item: &Item) -> Vec<Message> {
    let system = Message {
        role: "system".into(),
        content: vec![Content::Text {
            text: SYSTEM_PROMPT.into(),
        }],
    };
    let user = Message::user(&user_text(item), item.image.is_some());
    if item.is_open_ended() {
        vec![user]
    } else {
        vec![system, user]
    }
}

/// Answers `items` with the checkpoint in `dir` (pretrained, or fine-tuned by mipipe: then
/// its `mipipe.json` names the method and seed the labels are checked against).
pub fn answer(
    dir: &Path,
    device: tch::Device,
    params: &PredictParams,
    items: &[Item],
    ctx: &StageContext,
) -> Result<Vec<Prediction>, StageError> {
    super::finetune::check_family_and_size(params.family, params.size, dir)?;
    let labels = super::finetune::labels(dir).map_err(failed)?;
    let (method, seed) = labels
        .as_ref()
        .map_or(("vanilla", None), |l| (l.method.as_str(), Some(l.seed)));
    if let Some(wanted) = params.method.as_deref().filter(|m| *m != method) {
        return Err(StageError::failed(format!(
            "`method: {wanted}` but the checkpoint is `{method}`"
        )));
    }
    if let Some(wanted) = params.seed.filter(|s| Some(*s) != seed) {
        return Err(StageError::failed(format!(
            "`seed: {wanted}` but the checkpoint {}",
            seed.map_or("is pretrained (no seed)".to_string(), |s| format!(
                "was trained with seed {s}"
            ))
        )));
    }
    let kind = match params.dtype {
        Dtype::Float32 => Kind::Float,
        Dtype::Bfloat16 => Kind::BFloat16,
        Dtype::Float16 => Kind::Half,
    };
    let (_vs, model) = LlavaModel::load(dir, device, kind).map_err(failed)?;
    let processor = LlavaProcessor::load(dir, model.config()).map_err(failed)?;
    let eos = model.config().eos_token_id.ok_or_else(|| {
        StageError::failed(format!(
            "`{}/config.json` names no eos_token_id, so greedy answers cannot stop",
            dir.display()
        ))
    })?;
    let letters: Vec<Vec<i64>> = (0..26)
        .map(|i| processor.continuation_ids(&letter(i)))
        .collect::<Result<_, _>>()
        .map_err(failed)?;
    if let Some(item) = items.iter().find(|i| i.options.len() > letters.len()) {
        return Err(StageError::failed(format!(
            "item `{}` has {} options; letters go to Z (26)",
            item.id,
            item.options.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    let chunks: Vec<&[Item]> = items.chunks(params.batch_size.max(1)).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        if ctx.is_cancelled() {
            return Err(StageError::failed("Cancelled"));
        }
        let mut texts = Vec::with_capacity(chunk.len());
        let mut pictures = Vec::new();
        for item in *chunk {
            texts.push(
                processor
                    .render(&conversation(item), true)
                    .map_err(failed)?,
            );
            if let Some(png) = &item.image {
                pictures.push(
                    RgbImage::from_png(png)
                        .map_err(|e| StageError::failed(format!("item `{}`: {e}", item.id)))?,
                );
            }
        }
        let batch = processor.batch(&texts, &pictures).map_err(failed)?;
        let pixels = batch.pixel_values.as_ref().map(|p| p.to_device(device));
        let decoding = model
            .prefill(
                &batch.input_ids.to_device(device),
                &batch.attention_mask.to_device(device),
                pixels.as_ref(),
            )
            .map_err(failed)?;
        let scores = if chunk.iter().all(Item::is_open_ended) {
            vec![Vec::new(); chunk.len()]
        } else {
            decoding.score_options(chunk, |_, option| letters[option].clone())
        };
        let history = batch.input_ids.to_device(device);
        let generated = decoding.generate_with(
            params.max_new_tokens,
            eos,
            Some((params.repetition_penalty, &history)),
        );
        for ((item, logprobs), tokens) in chunk.iter().zip(scores).zip(&generated) {
            let raw_text = processor.decode(tokens).map_err(failed)?;
            out.push(prediction(item, raw_text, logprobs));
        }
        ctx.progress(n as u64 + 1, chunks.len() as u64, "predicting");
    }
    Ok(out)
}
