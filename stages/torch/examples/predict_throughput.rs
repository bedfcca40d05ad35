//! `predict`'s throughput with the key-value cache against the uncached decoding it replaced,
//! on a real checkpoint and the test rows of a real items table, in one run.
//!
//! `cargo run --release -p mipipe-stage-torch --example predict_throughput -- MODEL_DIR
//! ITEMS.parquet [items] [batch_size] [max_new_tokens]` prints one JSON line per path and one
//! with the ratio; `bench/predict.sh` finds the ablation's checkpoint and items and runs it.
//! "uncached" is the previous algorithm: one full forward pass per generated token and one full
//! pass over prompt + option per option. Both paths must give the same answers; the example
//! says how many differ and the largest option-score difference.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use mipipe_stage_schema::{read_items, Item};
use mipipe_stage_torch::decode::{generate_uncached, score_uncached, Decoding, Prompts};
use mipipe_stage_torch::encode::{answer_ids, encode_sequences, prompt_tokens, row_task, Sequence};
use mipipe_stage_torch::kinds::{option_text_scores, Sidecar};
use mipipe_stage_torch::model::MultimodalModel;
use mipipe_stage_torch::tokenizer::{Tokenizer, EOS, PAD};
use mipipe_stage_torch_types::AnswerFormat;
use tch::nn;

type Answers = Vec<(Vec<i64>, Vec<f64>)>;

fn sequences<'a>(
    chunk: &'a [Item],
    tokenizer: &Tokenizer,
    option: Option<usize>,
) -> Vec<Sequence<'a>> {
    chunk
        .iter()
        .map(|item| {
            let (prompt, roles) = prompt_tokens(item, tokenizer);
            let answer = option
                .map(|o| {
                    answer_ids(
                        item,
                        o.min(item.options.len() - 1),
                        AnswerFormat::Text,
                        tokenizer,
                    )
                })
                .unwrap_or_default();
            Sequence {
                image: item.image.as_deref(),
                prompt,
                roles,
                answer,
                task: row_task(item.task),
                anchor: None,
            }
        })
        .collect()
}

fn prompts(chunk: &[Item], tokenizer: &Tokenizer, size: i64) -> Prompts {
    let rows =
        encode_sequences(&sequences(chunk, tokenizer, None), tokenizer.id(PAD), size).unwrap();
    Prompts {
        padding: rows.tokens.ne(tokenizer.id(PAD)),
        images: rows.images,
        tokens: rows.tokens,
    }
}

fn cached(
    model: &MultimodalModel,
    chunk: &[Item],
    tokenizer: &Tokenizer,
    size: i64,
    max_new: usize,
) -> Answers {
    let decoding = Decoding::prefill(model, &prompts(chunk, tokenizer, size));
    let scores = option_text_scores(&decoding, chunk, tokenizer);
    let generated = decoding.generate(max_new, tokenizer.id(EOS));
    generated.into_iter().zip(scores).collect()
}

fn uncached(
    model: &MultimodalModel,
    chunk: &[Item],
    tokenizer: &Tokenizer,
    size: i64,
    max_new: usize,
) -> Answers {
    let generated = generate_uncached(
        model,
        &prompts(chunk, tokenizer, size),
        max_new,
        tokenizer.id(EOS),
    )
    .tokens;
    let most = chunk.iter().map(|i| i.options.len()).max().unwrap_or(0);
    let mut scores = vec![Vec::new(); chunk.len()];
    for option in 0..most {
        // As the previous `predict` did: a batch of the rows that have this option.
        let having: Vec<usize> = (0..chunk.len())
            .filter(|&r| option < chunk[r].options.len())
            .collect();
        let subset: Vec<Item> = having.iter().map(|&r| chunk[r].clone()).collect();
        let rows = encode_sequences(
            &sequences(&subset, tokenizer, Some(option)),
            tokenizer.id(PAD),
            size,
        )
        .unwrap();
        for (&row, score) in having.iter().zip(score_uncached(model, &rows)) {
            scores[row].push(score);
        }
    }
    generated.into_iter().zip(scores).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = std::path::Path::new(args.get(1).expect("MODEL_DIR"));
    let items_path = std::path::Path::new(args.get(2).expect("ITEMS.parquet"));
    let limit: usize = args.get(3).map_or(512, |a| a.parse().expect("items"));
    let batch: usize = args.get(4).map_or(64, |a| a.parse().expect("batch size"));
    let max_new: usize = args
        .get(5)
        .map_or(8, |a| a.parse().expect("max_new_tokens"));
    tch::set_num_threads(1);
    let sidecar: Sidecar = mipipe_stage_torch::checkpoint::read_sidecar(model_dir).unwrap();
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let model = MultimodalModel::new(vs.root(), &sidecar.model);
    mipipe_stage_torch::checkpoint::load(&mut vs, model_dir).unwrap();
    let items: Vec<Item> = read_items(items_path)
        .unwrap()
        .into_iter()
        .filter(|i| i.split == "test")
        .take(limit)
        .collect();
    let size = sidecar.model.vision.image_size;
    let tokenizer = &sidecar.tokenizer;
    let mut results = Vec::new();
    for (name, path) in [
        ("uncached", uncached as fn(&_, &_, &_, _, _) -> Answers),
        ("cached", cached),
    ] {
        let started = Instant::now();
        let answers: Answers = items
            .chunks(batch)
            .flat_map(|chunk| path(&model, chunk, tokenizer, size, max_new))
            .collect();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{{\"path\": \"{name}\", \"items\": {}, \"seconds\": {seconds:.3}, \"items_per_second\": {:.1}}}",
            items.len(),
            items.len() as f64 / seconds
        );
        results.push((seconds, answers));
    }
    let (before, after) = (&results[0], &results[1]);
    let differing = before
        .1
        .iter()
        .zip(&after.1)
        .filter(|(a, b)| a.0 != b.0)
        .count();
    let largest = before
        .1
        .iter()
        .zip(&after.1)
        .flat_map(|(a, b)| a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f64::max);
    println!(
        "{{\"speedup\": {:.2}, \"generated_answers_differing\": {differing}, \"largest_option_score_difference\": {largest:.2e}}}",
        before.0 / after.0
    );
}
