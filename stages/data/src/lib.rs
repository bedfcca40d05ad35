//! mipipe-stage-data: data stage kinds.
//!
//! - `synth`: the embedded benchmark: a small multimodal world generated deterministically
//!   from a seed (shapes, colours, creatures, arithmetic), with image-heavy, text-heavy and VQA
//!   multiple-choice sets and a pretraining corpus. See `docs/embedded-benchmark.md`.
//! - `convert`: real datasets from their published formats (image class folders, OpenBookQA,
//!   MMLU, ScienceQA, MMBench, SEED-Bench, LLaVA-Instruct, TextCaps) to the unified table.
//! - `perturb`: the paper's conditions (UF, MD, OCR noise; RP, RI, FB, FW, screenshots) as rows
//!   of the unified table, each naming its clean item in `origin_id`.
//! - `select`: the rows of one split (and some datasets) of unified tables, so that training
//!   stages read the training rows alone and a change to the test rows retrains nothing.
//!
//! Every table is the unified multiple-choice VQA table of `mipipe-stage-schema`, written as Parquet with
//! the cache's pinned settings. All randomness comes from [`ItemRng`], keyed by
//! (seed, dataset, item id, condition), so results never depend on thread count.

mod convert;
mod draw;
mod perturb;
mod select;
mod synth;
mod world;

pub use convert::{
    normalize_image, ConvertParams, ConvertStage, Format, HfColumns, HfPreset, OnError,
};
pub use draw::{Background, Canvas, Shape};
pub use mipipe_stage_schema as schema;
pub use mipipe_stage_schema::ItemRng;
pub use perturb::{Condition, PerturbParams, PerturbStage, TextPlacement, UNRELATED_FACTS};
pub use select::{SelectParams, SelectStage};
pub use synth::{generate_corpus, generate_items, SynthParams, SynthStage, DATASETS};
