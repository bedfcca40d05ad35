//! Peak memory and step time of one training step with the decoder's blocks checkpointed or
//! not, on one model, in this process: `bench/checkpointing.sh` runs it once per setting (a
//! process's peak resident memory, `VmHWM`, only grows).
//!
//! `cargo run --release -p mipipe-stage-torch --example checkpointing_memory -- on|off METHOD
//! [steps]` prints one JSON line.

#![allow(clippy::print_stdout)]

use std::time::Instant;

#[path = "shared/batch.rs"]
mod batch;
use batch::d_mixed_batch;

use mipipe_stage_torch::layers::DecoderConfig;
use mipipe_stage_torch::methods::{training_loss, Method, MethodConfig};
use mipipe_stage_torch::model::{Family, ModelConfig, MultimodalModel};
use tch::nn::{self, OptimizerConfig};

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
    let rows = d_mixed_batch(256);
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
