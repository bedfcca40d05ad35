//! Step time of every ablation method relative to `fft_mix`, on one model, in one run.
//!
//! `cargo run --release -p mipipe-stage-torch --example method_step_time -- [family] [steps]
//! [fft_mix]` prints JSON lines; `bench/torch.sh` runs it beside `bench/torch_eager.py`. The paper's analysis
//! (App. E) bounds ADV with K = 2 at about 1.66x FFT.

#![allow(clippy::print_stdout)]

use std::time::Instant;

#[path = "shared/batch.rs"]
mod batch;
use batch::d_mixed_batch;

use mipipe_stage_torch::layers::DecoderConfig;
use mipipe_stage_torch::methods::{training_loss, Method, MethodConfig};
use mipipe_stage_torch::model::{Family, ModelConfig, MultimodalModel};
use tch::nn::{self, OptimizerConfig};

fn config(family: Family) -> ModelConfig {
    ModelConfig {
        family,
        vision: mipipe_stage_torch::vision::VisionConfig {
            image_size: 32,
            patch: 4,
            hidden: 128,
            layers: 2,
            heads: 4,
        },
        decoder: DecoderConfig::llama(512, 256, 4, 8, 768, 256),
        queries: 16,
        qformer_layers: 2,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let family = match args.get(1).map(String::as_str) {
        Some("blip") => Family::Blip,
        Some("qwen") => Family::Qwen,
        _ => Family::Llava,
    };
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    tch::manual_seed(0);
    let rows = d_mixed_batch(48);
    let all = [
        Method::FftMix,
        Method::FftVqa,
        Method::Kl,
        Method::Js,
        Method::Rg,
        Method::Adv,
        Method::Ours,
    ];
    // A third argument `fft_mix` times only that method (for the PyTorch comparison).
    let methods = if args.get(3).map(String::as_str) == Some("fft_mix") {
        &all[..1]
    } else {
        &all[..]
    };
    let mut base = None;
    for &method in methods {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &config(family));
        model.freeze_for_finetune(&vs);
        let mut opt = nn::AdamW::default().build(&vs, 1e-4).expect("optimizer");
        let step_config = MethodConfig::paper(method);
        // Warm-up step (allocations, first-call costs).
        opt.backward_step(&training_loss(&model, &rows, &step_config).total);
        let start = Instant::now();
        for _ in 0..steps {
            let loss = training_loss(&model, &rows, &step_config);
            opt.backward_step(&loss.total);
        }
        let per_step = start.elapsed().as_secs_f64() / steps as f64;
        let base_time = *base.get_or_insert(per_step);
        println!(
            "{{\"family\": \"{family:?}\", \"method\": \"{method:?}\", \"seconds_per_step\": {per_step:.5}, \"relative_to_fft_mix\": {:.3}}}",
            per_step / base_time
        );
    }
}
