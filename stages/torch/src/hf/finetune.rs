//! `finetune` on a pretrained LLaVA checkpoint: the paper's freezing (the vision tower frozen,
//! the projector and the language model trained; with `lora`, adapters on the language model
//! instead of its weights, merged into them at the end), any of the seven methods on batches from
//! [`super::encode`], and the result written as a checkpoint in the same Hugging Face layout
//! (the source's config, tokenizer, chat template and processor files, `model.safetensors` in
//! fp32, and `mipipe.json` naming the method and seed), which `predict` and transformers load.

use std::path::Path;

use mipipe_engine::{StageContext, StageError};
use mipipe_stage_schema::Item;
use mipipe_stage_torch_types::{Dtype, Family, FinetuneParams, Size};
use tch::Kind;

use super::llava::LlavaModel;
use super::processor::LlavaProcessor;
use crate::kinds::{failed, method_config, method_name};
use crate::lora::Adapters;
use crate::mixture::BatchRow;
use crate::training::{train, write_log, MasterWeights};

/// What a fine-tuned checkpoint says of its training, beside the Hugging Face files.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Labels {
    /// The method (`vanilla`: not fine-tuned by mipipe).
    pub method: String,
    /// The training seed.
    pub seed: u64,
    /// Where it was trained (`cpu`, `cuda:0`).
    pub trained_on: String,
    /// The precision it was trained in (absent: `float32`).
    #[serde(default, skip_serializing_if = "Dtype::is_float32")]
    pub dtype: Dtype,
}

/// The labels file of a fine-tuned checkpoint.
pub const LABELS_FILE: &str = "mipipe.json";

/// The files of a checkpoint folder besides its weights, copied into a fine-tuned one.
const CARRIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
];

/// Fine-tunes the checkpoint in `dir` over `plan`.
pub fn run(
    dir: &Path,
    device: tch::Device,
    params: &FinetuneParams,
    items: &[Item],
    plan: &[(u32, Vec<BatchRow>)],
    ctx: &StageContext,
) -> Result<(), StageError> {
    check_family_and_size(params.family, params.size, dir)?;
    check_checkpointing(params)?;
    let kind = match params.dtype {
        Dtype::Float32 => Kind::Float,
        Dtype::Bfloat16 => Kind::BFloat16,
        Dtype::Float16 => {
            return Err(StageError::failed(
                "`dtype: float16` training needs loss scaling, which mipipe does not do; \
                 use `bfloat16` (same memory, fp32's exponent range)",
            ))
        }
    };
    // Adapters draw their initialisation from the run's seed.
    tch::manual_seed(params.seed as i64);
    let adapters = params.lora.as_ref().map(Adapters::new);
    let (mut vs, mut model) =
        LlavaModel::load_with_adapters(dir, device, Kind::Float, adapters.as_ref())
            .map_err(failed)?;
    let processor = LlavaProcessor::load(dir, model.config()).map_err(failed)?;
    model.freeze_for_finetune(&vs);
    // In bf16 the master weights are the checkpoint's fp32 values, copied before the model
    // is converted.
    let mut master = (kind != Kind::Float).then(|| {
        let master = MasterWeights::of(&vs, &params.optimizer);
        model.set_kind(&mut vs, kind);
        master
    });
    let tie_embeddings = model.config().text.tie_embeddings;
    model
        .decoder
        .set_checkpointing(params.gradient_checkpointing);
    let log = train(
        &vs,
        master.as_mut(),
        &model,
        plan,
        |batch| super::encode::encode(&processor, items, batch),
        &method_config(params),
        params.lr(),
        &params.optimizer,
        ctx,
    )?;
    write_log(ctx.output_path("log")?, &log)?;
    // Trained in bf16: the checkpoint is the source's fp32 weights with the fp32 master
    // weights in place of the trained ones (the frozen tower is never rounded).
    let vs = match master {
        None => vs,
        Some(master) => {
            drop((vs, model));
            let (full, _) =
                LlavaModel::load_with_adapters(dir, device, Kind::Float, adapters.as_ref())
                    .map_err(failed)?;
            master.copy_into(&full);
            full
        }
    };
    let out = ctx.output_path("model")?;
    std::fs::create_dir_all(out)
        .map_err(|e| failed(format!("cannot create `{}`: {e}", out.display())))?;
    for name in CARRIED {
        let from = dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name))
                .map_err(|e| failed(format!("cannot copy `{}`: {e}", from.display())))?;
        }
    }
    if let Some(lora) = &params.lora {
        let merged = crate::lora::merge(&vs, lora);
        ctx.log(&format!(
            "merged {} LoRA adapters into their weights",
            merged.len() / 2
        ));
    }
    super::weights::save(&vs, out, Kind::Float, tie_embeddings).map_err(failed)?;
    let labels = Labels {
        method: method_name(params.method),
        seed: params.seed,
        trained_on: crate::device::name(device),
        dtype: params.dtype,
    };
    let json = serde_json::to_vec_pretty(&labels).map_err(failed)?;
    std::fs::write(out.join(LABELS_FILE), json)
        .map_err(|e| failed(format!("cannot write {LABELS_FILE}: {e}")))
}

/// Checkpointing recomputes each block, so a block must compute the same thing twice: LoRA's
/// dropout would draw a different mask on the recomputation.
fn check_checkpointing(params: &FinetuneParams) -> Result<(), StageError> {
    match &params.lora {
        Some(lora) if params.gradient_checkpointing && lora.dropout > 0.0 => {
            Err(StageError::failed(format!(
                "`gradient_checkpointing` recomputes each block, and LoRA's dropout ({}) would \
                 draw another mask the second time; set `lora.dropout: 0` to use both",
                lora.dropout
            )))
        }
        _ => Ok(()),
    }
}

/// A `family` label must be `llava`, and `size` (which labels mipipe's own models) absent.
pub fn check_family_and_size(
    family: Option<Family>,
    size: Option<Size>,
    dir: &Path,
) -> Result<(), StageError> {
    if let Some(family) = family.filter(|f| *f != Family::Llava) {
        return Err(StageError::failed(format!(
            "`family: {family:?}` but `{}` is a LLaVA checkpoint",
            dir.display()
        )));
    }
    if size.is_some() {
        return Err(StageError::failed(
            "`size` labels mipipe's own models; a Hugging Face checkpoint has none",
        ));
    }
    Ok(())
}

/// The labels of a checkpoint folder: its `mipipe.json`, or `vanilla` for a pretrained one.
pub fn labels(dir: &Path) -> Result<Option<Labels>, String> {
    match std::fs::read(dir.join(LABELS_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("`{}/{LABELS_FILE}`: {e}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read `{}/{LABELS_FILE}`: {e}",
            dir.display()
        )),
    }
}

/// Whether a folder holds a Hugging Face LLaVA checkpoint (its `config.json` says
/// `"model_type": "llava"`) rather than one of mipipe's own.
pub fn is_llava_checkpoint(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("model_type").and_then(|t| t.as_str()) == Some("llava"))
}
