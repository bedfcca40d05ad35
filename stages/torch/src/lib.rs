//! mipipe-stage-torch: models and training on libtorch through `tch`, and the
//! `mipipe-torch-worker` executable that runs the `pretrain`, `finetune` and `predict` kinds.
//!
//! Only this crate reaches tch. The kinds' params live in `mipipe-stage-torch-types` so the
//! `mipipe` binary can plan them without loading libtorch; [`kinds::TchBackend`] does the work:
//! the decoder and vision building blocks, the three projector families (LLaVA MLP, Qwen 2x2
//! merger, InstructBLIP Q-Former), the paper's objectives (answer CE, KL/JS consistency, RG,
//! masked raw-gradient PGD) and the training loop (AdamW, warm-up + cosine, clipping, logs).

pub mod checkpoint;
pub mod decode;
pub mod device;
pub mod encode;
pub mod hf;
pub mod kinds;
pub mod layers;
pub mod lora;
pub mod methods;
pub mod mixture;
pub mod model;
pub mod objectives;
pub mod presets;
pub mod tokenizer;
pub mod training;
pub mod vision;

/// Tests that draw from libtorch's global random generator take this lock, so that a test
/// checking bitwise determinism is not disturbed by another test's draws.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every kind of this crate with the libtorch backend: what the worker registers.
pub fn register(registry: &mut mipipe_engine::Registry) {
    use std::sync::Arc;
    let backend: Arc<dyn mipipe_stage_torch_types::TorchBackend> = Arc::new(kinds::TchBackend);
    registry.register(mipipe_stage_torch_types::PretrainStage::with_backend(
        backend.clone(),
    ));
    registry.register(mipipe_stage_torch_types::FinetuneStage::with_backend(
        backend.clone(),
    ));
    registry.register(mipipe_stage_torch_types::PredictStage::with_backend(
        backend,
    ));
}
