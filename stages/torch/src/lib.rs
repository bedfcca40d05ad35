//! mipipe-stage-torch: models and training on libtorch through `tch` (issue 3, in progress).
//!
//! Only this crate reaches tch. What exists so far: the libtorch bootstrap (rpath, version pin)
//! the decoder building blocks and the vision encoder with the three projector families (LLaVA
//! MLP, Qwen 2x2 merger, InstructBLIP Q-Former) and the paper's objectives (answer CE, KL/JS
//! consistency, RG, masked raw-gradient PGD), with tests; the stage kinds come next.

pub mod layers;
pub mod objectives;
pub mod vision;
