//! From rows of the unified table to the tensors of a training batch.
//!
//! Prompt (the authors' evaluation format, seed-repo.md §1.8, without a chat template since our
//! models have none): `<bos> Question : {context} {question} Options : A : {option} B : ... Answer :`
//! then the answer letter and `<eos>` (taught, unlike the authors' training strings, so models
//! learn to stop). Only the letter and `<eos>` are answer tokens. An open-ended row (free-form
//! VQA, [`Item::is_open_ended`]) has no `Options :` part and is answered in words: its answer
//! tokens are the reference answer it is trained on, then `<eos>`, whatever the answer format.
//! Images are decoded from PNG and resized (nearest neighbour) to the model's size; rows without
//! an image get a black one.

use tch::{Kind, Tensor};

use mipipe_stage_schema::{parse_option, Item, Prediction, Task};
use mipipe_stage_torch_types::AnswerFormat;

use crate::methods::Rows;
use crate::mixture::BatchRow;
use crate::objectives::{RowTask, TokenRole};
use crate::tokenizer::{Tokenizer, BOS, EOS, PAD};

/// The prompt of an item (everything before the answer) as text segments, each with the role
/// its tokens play: the template (`Question :`, `Options :`, `A :`, `Answer :`), the question
/// with any prepended context, and the options' words (none for an open-ended row).
pub fn prompt_segments(item: &Item) -> Vec<(String, TokenRole)> {
    let context = item_context(item);
    let mut segments = vec![("Question :".to_string(), TokenRole::Template)];
    if let Some(context) = context {
        segments.push((context, TokenRole::Question));
    }
    segments.push((item.question.clone(), TokenRole::Question));
    if !item.is_open_ended() {
        segments.push(("Options :".to_string(), TokenRole::Template));
        for (i, option) in item.options.iter().enumerate() {
            segments.push((format!("{} :", letter(i)), TokenRole::Template));
            segments.push((option.clone(), TokenRole::Option));
        }
    }
    segments.push(("Answer :".to_string(), TokenRole::Template));
    segments
}

/// The item with `prefix` before its question and any context: the context (`meta.context`) is
/// folded into the question after the prefix, as both are question tokens.
pub fn with_prompt_prefix(mut item: Item, prefix: &str) -> Item {
    if prefix.is_empty() {
        return item;
    }
    let context = item_context(&item);
    if context.is_some() {
        let mut meta: serde_json::Value =
            serde_json::from_str(item.meta.as_deref().unwrap_or("{}")).unwrap_or_default();
        if let Some(object) = meta.as_object_mut() {
            object.remove("context");
        }
        item.meta = Some(meta.to_string());
    }
    item.question = [Some(prefix.to_string()), context, Some(item.question)]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    item
}

/// The text prepended to an item's question (its `meta`'s `context`: a lecture, a hint, or
/// the UF perturbation's facts), if any.
pub fn item_context(item: &Item) -> Option<String> {
    meta_field(item, "context")?.as_str().map(str::to_string)
}

/// One field of an item's `meta` JSON object, if the item has one.
fn meta_field(item: &Item, key: &str) -> Option<serde_json::Value> {
    let mut meta: serde_json::Value = serde_json::from_str(item.meta.as_deref()?).ok()?;
    meta.get_mut(key).map(serde_json::Value::take)
}

/// The prediction of one item: its identity, the parsed letter of the raw answer, the
/// options' log-probabilities and the option its perturbation points at (`meta.points_at`);
/// for an open-ended row its reference answers instead of a letter and scores.
pub fn prediction(item: &Item, raw_text: String, option_logprobs: Vec<f64>) -> Prediction {
    let points_at = meta_field(item, "points_at")
        .and_then(|p| p.as_u64())
        .map(|p| p as usize);
    let references = item.reference_answers();
    let open = references.is_some();
    Prediction {
        references,
        points_at,
        unknown_share: None,
        id: item.id.clone(),
        origin_id: item.origin_id.clone(),
        dataset: item.dataset.clone(),
        task: item.task.as_str().to_string(),
        perturbation: item.perturbation.clone(),
        answer: item.answer,
        options: item.options.clone(),
        predicted: (!open)
            .then(|| parse_option(&raw_text, &item.options).map(letter))
            .flatten(),
        raw_text,
        option_logprobs: (!open).then_some(option_logprobs),
    }
}

/// The prompt text of an item (everything before the answer).
pub fn prompt(item: &Item) -> String {
    prompt_segments(item)
        .into_iter()
        .map(|(text, _)| text)
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text of an item the tokenizer is built from: its prompt, and for an open-ended row the
/// answer it is trained on (a multiple-choice row's options are in its prompt).
pub fn vocabulary_text(item: &Item) -> String {
    let prompt = prompt(item);
    match item.is_open_ended() {
        true => format!("{prompt} {}", item.options[item.answer]),
        false => prompt,
    }
}

/// The letter of option `index`.
pub fn letter(index: usize) -> String {
    ((b'A' + index as u8) as char).to_string()
}

/// Decodes a PNG to `[3, size, size]` floats in [0, 1] (nearest-neighbour resize).
pub fn image_tensor(png_bytes: Option<&[u8]>, size: i64) -> Result<Tensor, String> {
    let Some(bytes) = png_bytes else {
        return Ok(Tensor::zeros(
            [3, size, size],
            (Kind::Float, tch::Device::Cpu),
        ));
    };
    let image = mipipe_stage_schema::RgbImage::from_png(bytes)?;
    let (w, h) = (image.width as usize, image.height as usize);
    let mut out = vec![0f32; (3 * size * size) as usize];
    for y in 0..size as usize {
        for x in 0..size as usize {
            let sx = x * w / size as usize;
            let sy = y * h / size as usize;
            let p = (sy * w + sx) * 3;
            for c in 0..3 {
                let v = image.pixels[p + c];
                out[c * (size * size) as usize + y * size as usize + x] = v as f32 / 255.0;
            }
        }
    }
    Ok(Tensor::from_slice(&out).view([3, size, size]))
}

/// One row to encode: an image, prompt ids and answer ids (the supervised tokens).
pub struct Sequence<'a> {
    /// PNG bytes, or none (a black image).
    pub image: Option<&'a [u8]>,
    /// Ids before the answer (starting with `<bos>`).
    pub prompt: Vec<i64>,
    /// The role of each prompt id.
    pub roles: Vec<TokenRole>,
    /// Supervised ids (empty for a prompt to answer).
    pub answer: Vec<i64>,
    /// The row's task (decides the PGD / RG mask).
    pub task: RowTask,
    /// For a heuristic variant, the position of its clean row in the batch.
    pub anchor: Option<usize>,
}

/// The ids of an item's prompt (`<bos>` first) and the role of each.
pub fn prompt_tokens(item: &Item, tokenizer: &Tokenizer) -> (Vec<i64>, Vec<TokenRole>) {
    let mut ids = vec![tokenizer.id(BOS)];
    let mut roles = vec![TokenRole::Template];
    for (text, role) in prompt_segments(item) {
        let segment = tokenizer.encode(&text);
        roles.extend(std::iter::repeat_n(role, segment.len()));
        ids.extend(segment);
    }
    (ids, roles)
}

/// The ids of an item's prompt.
pub fn prompt_ids(item: &Item, tokenizer: &Tokenizer) -> Vec<i64> {
    prompt_tokens(item, tokenizer).0
}

/// The answer ids of option `option` in `format`, then `<eos>`; an open-ended row's option
/// (its reference answer) always in words.
pub fn answer_ids(
    item: &Item,
    option: usize,
    format: AnswerFormat,
    tokenizer: &Tokenizer,
) -> Vec<i64> {
    let format = if item.is_open_ended() {
        AnswerFormat::Text
    } else {
        format
    };
    let mut ids = match format {
        AnswerFormat::Letter => vec![tokenizer.id(&letter(option))],
        AnswerFormat::Text => tokenizer.encode(&item.options[option]),
    };
    ids.push(tokenizer.id(EOS));
    ids
}

/// The task of an item as the objectives see it.
pub fn row_task(task: Task) -> RowTask {
    match task {
        Task::ImageHeavy => RowTask::ImageHeavy,
        Task::TextHeavy => RowTask::TextHeavy,
        Task::Vqa => RowTask::Vqa,
    }
}

/// Tensors of a batch of sequences: every row padded on the left to the longest, so answers
/// (and, for prompts, the next-token position) line up at the end.
pub fn encode_sequences(sequences: &[Sequence], pad: i64, image_size: i64) -> Result<Rows, String> {
    let longest = sequences
        .iter()
        .map(|s| s.prompt.len() + s.answer.len())
        .max()
        .unwrap_or(0);
    let mut tokens = Vec::with_capacity(sequences.len() * longest);
    let mut roles = Vec::with_capacity(sequences.len());
    for s in sequences {
        let padding = longest - s.prompt.len() - s.answer.len();
        tokens.extend(std::iter::repeat_n(pad, padding));
        tokens.extend(&s.prompt);
        tokens.extend(&s.answer);
        let mut r = vec![TokenRole::Pad; padding];
        debug_assert_eq!(s.roles.len(), s.prompt.len(), "a role for every prompt id");
        r.extend(s.roles.iter().copied());
        r.extend(std::iter::repeat_n(TokenRole::Answer, s.answer.len()));
        roles.push(r);
    }
    let images = sequences
        .iter()
        .map(|s| image_tensor(s.image, image_size))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rows {
        images: Tensor::stack(&images, 0),
        tokens: Tensor::from_slice(&tokens).view([sequences.len() as i64, longest as i64]),
        roles,
        tasks: sequences.iter().map(|s| s.task).collect(),
        anchor: sequences.iter().map(|s| s.anchor).collect(),
    })
}

/// Tokenises a training batch of table rows (prompt, answer letter, `<eos>`).
pub fn encode(
    items: &[Item],
    batch: &[BatchRow],
    tokenizer: &Tokenizer,
    format: AnswerFormat,
    image_size: i64,
) -> Result<Rows, String> {
    let position = crate::mixture::anchor_positions(batch);
    let sequences: Vec<Sequence> = batch
        .iter()
        .map(|row| {
            let item = &items[row.item];
            let (prompt, roles) = prompt_tokens(item, tokenizer);
            Sequence {
                image: item.image.as_deref(),
                prompt,
                roles,
                answer: answer_ids(item, item.answer, format, tokenizer),
                task: row_task(item.task),
                anchor: row.anchor.and_then(|a| position.get(&a).copied()),
            }
        })
        .collect();
    encode_sequences(&sequences, tokenizer.id(PAD), image_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, task: Task, condition: &str, question: &str, meta: Option<&str>) -> Item {
        Item {
            id: format!("{id}#{condition}"),
            dataset: "d".into(),
            task,
            split: "train".into(),
            image: None,
            question: question.into(),
            options: vec!["circle".into(), "square".into(), "star".into()],
            answer: 2,
            perturbation: condition.into(),
            origin_id: id.into(),
            facts: None,
            meta: meta.map(String::from),
        }
    }

    #[test]
    fn prompts_letter_the_options_and_keep_context_first() {
        let plain = item(
            "a",
            Task::ImageHeavy,
            "none",
            "What shape is in this picture?",
            None,
        );
        assert_eq!(
            prompt(&plain),
            "Question : What shape is in this picture? Options : A : circle B : square C : star Answer :"
        );
        let with_context = item(
            "a",
            Task::ImageHeavy,
            "uf",
            "What shape?",
            Some(r#"{"context":"Snow is hot."}"#),
        );
        assert!(prompt(&with_context).starts_with("Question : Snow is hot. What shape?"));
    }

    #[test]
    fn a_prompt_prefix_comes_before_the_context_and_the_question() {
        let with_context = item(
            "a",
            Task::ImageHeavy,
            "uf",
            "What shape?",
            Some(r#"{"context":"Snow is hot.","points_at":1}"#),
        );
        let prefixed = with_prompt_prefix(with_context.clone(), "Think first.");
        assert_eq!(
            prompt(&prefixed),
            "Question : Think first. Snow is hot. What shape? Options : A : circle B : square C : star Answer :"
        );
        // The context is not repeated; the rest of `meta` stays.
        assert_eq!(item_context(&prefixed), None);
        assert_eq!(
            meta_field(&prefixed, "points_at"),
            Some(serde_json::json!(1))
        );
        let plain = item("b", Task::TextHeavy, "rp", "How many?", None);
        assert_eq!(
            prompt(&with_prompt_prefix(plain, "Think first.")),
            "Question : Think first. How many? Options : A : circle B : square C : star Answer :"
        );
        assert_eq!(with_prompt_prefix(with_context.clone(), ""), with_context);
    }

    #[test]
    fn batches_are_left_padded_with_answer_roles_and_anchor_positions() {
        let items = vec![
            item("a", Task::ImageHeavy, "none", "What shape?", None),
            item(
                "a",
                Task::ImageHeavy,
                "uf",
                "Snow is hot and the moon is cheese. What shape?",
                None,
            ),
        ];
        let tokenizer = Tokenizer::train(
            items
                .iter()
                .map(prompt)
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
            200,
        );
        let batch = [
            BatchRow {
                item: 0,
                anchor: None,
            },
            BatchRow {
                item: 1,
                anchor: Some(0),
            },
        ];
        let rows = encode(&items, &batch, &tokenizer, AnswerFormat::Letter, 8).unwrap();
        let (b, t) = rows.tokens.size2().unwrap();
        assert_eq!(b, 2);
        assert_eq!(rows.roles[0].len(), t as usize);
        assert_eq!(rows.roles[0].last(), Some(&TokenRole::Answer));
        assert_eq!(
            rows.roles[0][0],
            TokenRole::Pad,
            "the shorter row is padded on the left"
        );
        let last_tokens: Vec<i64> =
            Vec::<i64>::try_from(rows.tokens.narrow(1, t - 2, 2).flatten(0, 1)).unwrap();
        assert_eq!(
            last_tokens,
            [
                tokenizer.id("C"),
                tokenizer.id(EOS),
                tokenizer.id("C"),
                tokenizer.id(EOS)
            ]
        );
        assert_eq!(rows.anchor, [None, Some(0)]);
        assert_eq!(rows.images.size(), [2, 3, 8, 8]);
    }

    #[test]
    fn an_open_ended_row_shows_no_options_and_is_answered_in_words() {
        let mut open = item(
            "v",
            Task::Vqa,
            "none",
            "What does the sign say?",
            Some(r#"{"answers":["stop here","stop"]}"#),
        );
        open.options = vec!["stop here".into()];
        open.answer = 0;
        assert_eq!(prompt(&open), "Question : What does the sign say? Answer :");
        let tokenizer = Tokenizer::train([vocabulary_text(&open).as_str()], 200);
        assert!(
            !tokenizer
                .encode("stop here")
                .contains(&tokenizer.id(crate::tokenizer::UNK)),
            "the answer's words are in the vocabulary"
        );
        let batch = [BatchRow {
            item: 0,
            anchor: None,
        }];
        for format in [AnswerFormat::Letter, AnswerFormat::Text] {
            let rows = encode(std::slice::from_ref(&open), &batch, &tokenizer, format, 8).unwrap();
            let tokens = Vec::<i64>::try_from(rows.tokens.flatten(0, 1)).unwrap();
            let answer: Vec<i64> = tokens
                .iter()
                .zip(&rows.roles[0])
                .filter(|(_, r)| **r == TokenRole::Answer)
                .map(|(t, _)| *t)
                .collect();
            let mut words = tokenizer.encode("stop here");
            words.push(tokenizer.id(EOS));
            assert_eq!(
                answer, words,
                "{format:?}: the reference answer, then <eos>"
            );
            assert!(!rows.roles[0].contains(&TokenRole::Option));
        }
        // A multiple-choice row keeps its options.
        let closed = item("c", Task::Vqa, "none", "What does the sign say?", None);
        assert!(prompt(&closed).contains("Options : A : circle"));
    }

    #[test]
    fn png_images_are_resized_to_the_model() {
        let mut png_bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png_bytes, 2, 2);
            encoder.set_color(png::ColorType::Rgb);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
                .unwrap();
        }
        let t = image_tensor(Some(&png_bytes), 4).unwrap();
        assert_eq!(t.size(), [3, 4, 4]);
        assert_eq!(t.double_value(&[0, 0, 0]), 1.0, "top-left is red");
        assert_eq!(t.double_value(&[1, 0, 3]), 1.0, "top-right is green");
        assert_eq!(t.double_value(&[2, 3, 0]), 1.0, "bottom-left is blue");
    }
}

#[cfg(test)]
mod training_tests {
    use super::*;
    use crate::layers::DecoderConfig;
    use crate::methods::{training_loss, Method, MethodConfig};
    use crate::mixture::{batches, Mixture};
    use crate::model::{Family, ModelConfig, MultimodalModel};
    use tch::nn::{self, OptimizerConfig};

    fn solid_png(rgb: [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&rgb.repeat(64)).unwrap();
        drop(writer);
        out
    }

    /// Image-heavy items whose answer is the picture's colour, with MD/UF variants that name
    /// the wrong colour; text-heavy items answered by their text; VQA items.
    fn table() -> Vec<Item> {
        let colours = [("red", [220, 30, 30]), ("blue", [30, 60, 220])];
        let mut items = Vec::new();
        let base =
            |id: String, task, condition: &str, question: String, answer: usize, image| Item {
                id: format!("{id}#{condition}"),
                dataset: "d".into(),
                task,
                split: "train".into(),
                image,
                question,
                options: vec!["red".into(), "blue".into()],
                answer,
                perturbation: condition.into(),
                origin_id: id,
                facts: None,
                meta: None,
            };
        for i in 0..8 {
            let (name, rgb) = colours[i % 2];
            let wrong = colours[(i + 1) % 2].0;
            let id = format!("img{i}");
            let q = "What color is the picture?".to_string();
            items.push(base(
                id.clone(),
                Task::ImageHeavy,
                "none",
                q.clone(),
                i % 2,
                Some(solid_png(rgb)),
            ));
            items.push(base(
                id.clone(),
                Task::ImageHeavy,
                "md",
                format!("The picture seems to describe a {wrong}. {q}"),
                i % 2,
                Some(solid_png(rgb)),
            ));
            items.push(base(
                id.clone(),
                Task::ImageHeavy,
                "uf",
                format!("Snow is hot. {q}"),
                i % 2,
                Some(solid_png(rgb)),
            ));
            let tid = format!("txt{i}");
            let tq = format!("Which word is {name}?");
            for c in ["rp", "ri", "fb", "fw"] {
                items.push(base(
                    tid.clone(),
                    Task::TextHeavy,
                    c,
                    tq.clone(),
                    i % 2,
                    Some(solid_png([128, 128, 128])),
                ));
            }
            items.push(base(
                format!("vqa{i}"),
                Task::Vqa,
                "none",
                q.clone(),
                i % 2,
                Some(solid_png(rgb)),
            ));
            items.push(base(
                format!("vqb{i}"),
                Task::Vqa,
                "none",
                q,
                i % 2,
                Some(solid_png(rgb)),
            ));
        }
        items
    }

    #[test]
    fn fine_tuning_on_encoded_mixed_batches_lowers_the_loss() {
        let _rng = crate::rng_lock();
        tch::manual_seed(21);
        let items = table();
        let prompts: Vec<String> = items.iter().map(prompt).collect();
        let tokenizer = Tokenizer::train(prompts.iter().map(String::as_str), 128);
        let config = ModelConfig {
            decoder: DecoderConfig::llama(tokenizer.len() as i64, 32, 2, 4, 64, 64),
            ..crate::model::tests::tiny(Family::Llava)
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &config);
        model.freeze_for_finetune(&vs);
        let mut opt = nn::AdamW::default().build(&vs, 5e-3).unwrap();
        let plan = batches(&items, &Mixture::mixed(4), 3).unwrap();
        assert!(!plan.is_empty());
        let encoded: Vec<Rows> = plan
            .iter()
            .map(|b| encode(&items, b, &tokenizer, AnswerFormat::Letter, 8).unwrap())
            .collect();
        let method = MethodConfig::paper(Method::Ours);
        let mut first = None;
        let mut last = 0.0;
        for epoch in 0..15 {
            let mut total = 0.0;
            for rows in &encoded {
                let loss = training_loss(&model, rows, &method);
                total += loss.terms[0].1;
                opt.backward_step(&loss.total);
            }
            if epoch == 0 {
                first = Some(total);
            }
            last = total;
        }
        let first = first.unwrap();
        assert!(
            last.is_finite() && last < first * 0.5,
            "loss {first} -> {last}"
        );

        // The trained model answers clean image-heavy prompts from the picture: greedy decoding
        // and the option-letter log-probabilities agree with the gold letter.
        let clean: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].perturbation == "none" && items[i].task == Task::ImageHeavy)
            .collect();
        let rows: Vec<BatchRow> = clean
            .iter()
            .map(|&i| BatchRow {
                item: i,
                anchor: None,
            })
            .collect();
        let encoded = encode(&items, &rows, &tokenizer, AnswerFormat::Letter, 8).unwrap();
        let prompt_len = encoded.tokens.size()[1] - 2;
        let prompts = crate::decode::Prompts {
            images: encoded.images.shallow_clone(),
            tokens: encoded.tokens.narrow(1, 0, prompt_len),
            padding: encoded
                .tokens
                .narrow(1, 0, prompt_len)
                .ne(tokenizer.id(PAD)),
        };
        let letters = [tokenizer.id("A"), tokenizer.id("B")];
        let generation = crate::decode::generate(&model, &prompts, 4, tokenizer.id(EOS));
        let logprobs = generation
            .first_logprobs
            .index_select(1, &Tensor::from_slice(&letters));
        let picks: Vec<i64> = Vec::<i64>::try_from(logprobs.argmax(-1, false)).unwrap();
        let generated = generation.tokens;
        for (n, &i) in clean.iter().enumerate() {
            assert_eq!(picks[n] as usize, items[i].answer, "{}", items[i].id);
            assert_eq!(generated[n], [letters[items[i].answer]], "{}", items[i].id);
        }
    }
}
