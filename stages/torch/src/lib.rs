//! mipipe-stage-torch: models and training on libtorch through `tch` (issue 3, in progress).
//!
//! Only this crate reaches tch. What exists so far: the libtorch bootstrap (rpath, version pin)
//! the decoder building blocks and the vision encoder with the three projector families (LLaVA
//! MLP, Qwen 2x2 merger, InstructBLIP Q-Former) and the paper's objectives (answer CE, KL/JS
//! consistency, RG, masked raw-gradient PGD), with tests; the stage kinds come next.

pub mod checkpoint;
pub mod decode;
pub mod encode;
pub mod layers;
pub mod methods;
pub mod mixture;
pub mod model;
pub mod objectives;
pub mod tokenizer;
pub mod vision;

/// Tests that draw from libtorch's global random generator take this lock, so that a test
/// checking bitwise determinism is not disturbed by another test's draws.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
