//! Peak memory and step time of one training step with the decoder's blocks checkpointed or
//! not, on one model, in this process: `bench/checkpointing.sh` runs it once per setting (a
//! process's peak resident memory, `VmHWM`, only grows) and prints the ratios.
//!
//! `cargo run --release -p mipipe-stage-torch --example checkpointing_memory -- on|off METHOD
//! [steps]` prints one JSON line.

#![allow(clippy::print_stdout)]

use std::time::Instant;

use mipipe_stage_torch::layers::DecoderConfig;
use mipipe_stage_torch::methods::{training_loss, Method, MethodConfig, Rows};
use mipipe_stage_torch::model::{Family, ModelConfig, MultimodalModel};
use mipipe_stage_torch::objectives::{RowTask, TokenRole};
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

/// A decoder deep and long enough that activations, not weights, dominate the peak.
fn config() -> ModelConfig {
    ModelConfig {
        family: Family::Llava,
        vision: mipipe_stage_torch::vision::VisionConfig {
            image_size: 32,
            patch: 4,
            hidden: 64,
            layers: 1,
            heads: 4,
        },
        decoder: DecoderConfig::llama(512, 256, 8, 8, 768, 512),
        queries: 16,
        qformer_layers: 1,
    }
}

/// 8 rows like D_mixed (image-heavy with variants, text-heavy, VQA) of `seq` text tokens.
fn batch(seq: usize) -> Rows {
    let mut roles = Vec::new();
    let mut tasks = Vec::new();
    let mut anchor = Vec::new();
    for row in 0..8 {
        let mut r = vec![TokenRole::Question; seq];
        r[seq - 2] = TokenRole::Answer;
        r[seq - 1] = TokenRole::Pad;
        roles.push(r);
        let (task, a) = match row {
            0 | 1 => (RowTask::ImageHeavy, None),
            2 | 3 => (RowTask::ImageHeavy, Some(row - 2)),
            4 | 5 => (RowTask::TextHeavy, None),
            _ => (RowTask::Vqa, None),
        };
        tasks.push(task);
        anchor.push(a);
    }
    Rows {
        images: Tensor::rand([8, 3, 32, 32], (Kind::Float, tch::Device::Cpu)),
        tokens: Tensor::randint(512, [8, seq as i64], (Kind::Int64, tch::Device::Cpu)),
        roles,
        tasks,
        anchor,
    }
}

/// This process's peak resident memory in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let checkpointing = args.get(1).map(String::as_str) == Some("on");
    let method = match args.get(2).map(String::as_str) {
        Some("ours") => Method::Ours,
        Some("adv") => Method::Adv,
        _ => Method::FftMix,
    };
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    tch::manual_seed(0);
    let rows = batch(256);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = MultimodalModel::new(vs.root(), &config());
    model.freeze_for_finetune(&vs);
    model.decoder.set_checkpointing(checkpointing);
    let mut opt = nn::AdamW::default().build(&vs, 1e-4).expect("optimizer");
    let step_config = MethodConfig::paper(method);
    let before = peak_rss();
    let mut step = || {
        opt.zero_grad();
        let loss = training_loss(&model, &rows, &step_config);
        loss.total.backward();
        model.decoder.backward_checkpoints();
        opt.step();
    };
    step();
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    println!(
        "{{\"checkpointing\": {checkpointing}, \"method\": \"{method:?}\", \"seconds_per_step\": {per_step:.4}, \"peak_rss_bytes\": {}, \"peak_rss_before_training_bytes\": {before}}}",
        peak_rss()
    );
}
