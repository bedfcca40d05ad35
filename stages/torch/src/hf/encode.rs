//! Training batches for a pretrained LLaVA: each row is the evaluation prompt of
//! [`super::predict`] through the checkpoint's chat template, followed by the answer letter (an
//! open-ended row's reference answer in words) and
//! the end-of-sequence token (the supervised tokens), with the role of every token so the
//! paper's modality masks apply: the `<image>` placeholders are image tokens, the question's
//! words (and any prepended context) the question, the option texts the options, the rest
//! template. A token's role is that of the text its last byte comes from (a Llama token carries
//! the space before its word).

use mipipe_stage_schema::image::RgbImage;
use mipipe_stage_schema::Item;
use tch::Tensor;

use super::predict::{conversation, user_segments};
use super::processor::LlavaProcessor;
use crate::encode::{letter, row_task};
use crate::methods::Rows;
use crate::mixture::BatchRow;
use crate::objectives::TokenRole;

/// The token ids and roles of one item's prompt and answer.
pub fn item_tokens(
    processor: &LlavaProcessor,
    item: &Item,
    answer: Option<usize>,
) -> Result<(Vec<i64>, Vec<TokenRole>), String> {
    let prompt = processor.expand_images(&processor.render(&conversation(item), true)?);
    let segments = user_segments(item);
    let user: String = segments.iter().map(|(text, _)| text.as_str()).collect();
    let start = prompt.find(&user).ok_or_else(|| {
        format!(
            "item `{}`: the chat template does not keep the question text as it is",
            item.id
        )
    })?;
    let mut text = prompt.clone();
    if let Some(option) = answer {
        let eos = processor
            .eos_token()
            .ok_or("tokenizer_config.json names no eos_token to end the answer with")?;
        text.push(' ');
        if item.is_open_ended() {
            text.push_str(&item.options[option]);
        } else {
            text.push_str(&letter(option));
        }
        text.push_str(eos);
    }
    // Byte ranges of the roles in `text`.
    let mut ranges = Vec::new();
    let mut at = start;
    for (segment, role) in &segments {
        ranges.push((at, at + segment.len(), *role));
        at += segment.len();
    }
    if answer.is_some() {
        ranges.push((prompt.len(), text.len(), TokenRole::Answer));
    }
    let (ids, offsets) = processor.tokens_with_offsets(&text)?;
    let image = processor.image_token_id();
    let roles = ids
        .iter()
        .zip(&offsets)
        .map(|(&id, &(from, to))| {
            if Some(id) == image {
                return TokenRole::Image;
            }
            let last = to.max(from + 1) - 1;
            ranges
                .iter()
                .find(|(a, b, _)| (*a..*b).contains(&last))
                .map_or(TokenRole::Template, |r| r.2)
        })
        .collect();
    Ok((ids, roles))
}

/// A training batch of table rows: left-padded token ids with roles, one picture per row that
/// has one (in row order, as the placeholders appear), the tasks and the anchors of variants.
pub fn encode(
    processor: &LlavaProcessor,
    items: &[Item],
    batch: &[BatchRow],
) -> Result<Rows, String> {
    let position = crate::mixture::anchor_positions(batch);
    let mut sequences = Vec::with_capacity(batch.len());
    let mut pictures = Vec::new();
    for row in batch {
        let item = &items[row.item];
        sequences.push(item_tokens(processor, item, Some(item.answer))?);
        if let Some(png) = &item.image {
            let image = RgbImage::from_png(png).map_err(|e| format!("item `{}`: {e}", item.id))?;
            pictures.push(processor.pixel_values(&image));
        }
    }
    let longest = sequences
        .iter()
        .map(|(ids, _)| ids.len())
        .max()
        .unwrap_or(0);
    let mut tokens = Vec::with_capacity(batch.len() * longest);
    let mut roles = Vec::with_capacity(batch.len());
    for (ids, r) in &sequences {
        let pad = longest - ids.len();
        tokens.extend(std::iter::repeat_n(processor.pad_id(), pad));
        tokens.extend(ids);
        let mut full = vec![TokenRole::Pad; pad];
        full.extend(r);
        roles.push(full);
    }
    let images = if pictures.is_empty() {
        Tensor::zeros([0], (tch::Kind::Float, tch::Device::Cpu))
    } else {
        Tensor::stack(&pictures, 0)
    };
    Ok(Rows {
        images,
        tokens: Tensor::from_slice(&tokens).view([batch.len() as i64, longest as i64]),
        roles,
        tasks: batch.iter().map(|r| row_task(items[r.item].task)).collect(),
        anchor: batch
            .iter()
            .map(|r| r.anchor.and_then(|a| position.get(&a).copied()))
            .collect(),
    })
}
