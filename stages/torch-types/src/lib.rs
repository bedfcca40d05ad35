//! The libtorch stage kinds (`pretrain`, `finetune`, `predict`) as the engine sees them:
//! typed params, declared outputs, versions. No libtorch here.
//!
//! Loading libtorch costs about 0.4 s and 115 MB per process, more than a whole no-op run of
//! the engine. So the `mipipe` binary registers these kinds *without* a backend: it can resolve,
//! key, plan and show them, and when one must run it hands the job to the worker executable
//! [`WORKER_BINARY`] (built from `mipipe-stage-torch`), which registers the same kinds *with*
//! the libtorch backend. One set of params types on both sides means one key.

mod params;

use std::sync::Arc;

use mipipe_engine::{OutputSpec, Stage, StageContext, StageError};

pub use params::*;

/// The executable that runs the libtorch kinds, installed next to `mipipe`.
pub const WORKER_BINARY: &str = "mipipe-torch-worker";

/// The real work of the three kinds, provided by the worker binary.
pub trait TorchBackend: Send + Sync {
    /// Trains a base model.
    fn pretrain(&self, params: &PretrainParams, ctx: &StageContext) -> Result<(), StageError>;
    /// Fine-tunes a checkpoint with one ablation method.
    fn finetune(&self, params: &FinetuneParams, ctx: &StageContext) -> Result<(), StageError>;
    /// Answers every item of a table.
    fn predict(&self, params: &PredictParams, ctx: &StageContext) -> Result<(), StageError>;
}

fn no_backend(kind: &str) -> StageError {
    StageError::environment(format!(
        "Stage kind `{kind}` runs in `{WORKER_BINARY}`, not in this process (it has no libtorch); the engine launches the worker by itself"
    ))
}

macro_rules! torch_kind {
    ($(#[$doc:meta])* $name:ident, $params:ty, $kind:literal, $version:literal, $summary:literal, $method:ident, $outputs:expr, $deps:expr) => {
        $(#[$doc])*
        #[derive(Clone, Default)]
        pub struct $name {
            backend: Option<Arc<dyn TorchBackend>>,
        }

        impl $name {
            /// The kind with its libtorch backend (the worker binary).
            pub fn with_backend(backend: Arc<dyn TorchBackend>) -> Self {
                Self { backend: Some(backend) }
            }
        }

        impl Stage for $name {
            type Params = $params;
            const KIND: &'static str = $kind;
            const VERSION: u32 = $version;
            const SUMMARY: &'static str = $summary;
            const WORKER_BINARY: Option<&'static str> = Some(WORKER_BINARY);

            fn outputs(params: &$params) -> Vec<OutputSpec> {
                let outputs: fn(&$params) -> Vec<OutputSpec> = $outputs;
                outputs(params)
            }

            fn workspace_deps(params: &$params) -> Vec<String> {
                let deps: fn(&$params) -> Vec<String> = $deps;
                deps(params)
            }

            fn wants_worker_process(_params: &$params) -> bool {
                true
            }

            fn run(&self, params: &$params, ctx: &StageContext) -> Result<(), StageError> {
                match &self.backend {
                    Some(backend) => backend.$method(params, ctx),
                    None => Err(no_backend($kind)),
                }
            }
        }
    };
}

torch_kind!(
    /// `pretrain`: the base ("Vanilla") model of a family, trained from scratch.
    PretrainStage,
    PretrainParams,
    "pretrain",
    4,
    "Train a base multimodal model (llava | blip | qwen) on a corpus and instruction items (libtorch)",
    pretrain,
    |_| vec![
        OutputSpec::dir("model", "model"),
        OutputSpec::file("log", "train_log.parquet"),
    ],
    |_| Vec::new()
);

torch_kind!(
    /// `finetune`: one ablation method of the paper on top of a checkpoint.
    FinetuneStage,
    FinetuneParams,
    "finetune",
    4,
    "Fine-tune a checkpoint with one ablation method: fft_vqa | fft_mix | kl | js | rg | adv | ours (libtorch)",
    finetune,
    |_| vec![
        OutputSpec::dir("model", "model"),
        OutputSpec::file("log", "train_log.parquet"),
    ],
    |p| p.checkpoint.iter().cloned().collect()
);

torch_kind!(
    /// `predict`: greedy answers and option-letter log-probabilities for every item.
    PredictStage,
    PredictParams,
    "predict",
    5,
    "Answer every item of a table with a checkpoint: greedy text and option-letter log-probabilities (libtorch)",
    predict,
    |_| vec![OutputSpec::file("predictions", "predictions.parquet")],
    |p| p.checkpoint.iter().cloned().collect()
);
