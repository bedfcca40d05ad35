//! Typed params of the libtorch kinds. Defaults: the paper's Table 13 where it gives one, the
//! authors' code where the paper is blank (RG's σ), and sizes small enough for the whole
//! ablation to train on two CPU cores in minutes.

use std::fmt;

use schemars::JsonSchema;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// The model family, mirroring the paper's three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// ViT -> 2-layer MLP -> one token per patch (LLaVA-1.5).
    Llava,
    /// ViT -> Q-Former with learned queries -> linear projection (InstructBLIP).
    Blip,
    /// ViT -> 2x2 patch merger (Qwen2.5-VL).
    Qwen,
}

/// Model size presets (docs/training.md lists their shapes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// The smallest: CI and `pipelines/quick.yaml`.
    Xs,
    /// The default of `pipelines/ablation.yaml`.
    S,
    /// Larger.
    M,
    /// Largest (a GPU is advisable).
    L,
}

/// An ablation method of the paper (the base model is `vanilla`, made by `pretrain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Full fine-tuning on D_VQA only.
    FftVqa,
    /// Full fine-tuning on D_mixed.
    FftMix,
    /// D_mixed + KL consistency.
    Kl,
    /// D_mixed + JS consistency.
    Js,
    /// D_mixed + random Gaussian noise on the irrelevant modality.
    Rg,
    /// D_mixed + PGD adversarial training.
    Adv,
    /// ADV + consistency over heuristic and adversarial variants.
    Ours,
}

impl Method {
    /// Every method, in the paper's order.
    pub const ALL: [Method; 7] = [
        Method::FftVqa,
        Method::FftMix,
        Method::Kl,
        Method::Js,
        Method::Rg,
        Method::Adv,
        Method::Ours,
    ];

    /// The divergence of the consistency term, if the method has one.
    pub fn divergence(self, ours: Divergence) -> Option<Divergence> {
        match self {
            Method::Kl => Some(Divergence::Kl),
            Method::Js => Some(Divergence::Js),
            Method::Ours => Some(ours),
            _ => None,
        }
    }
}

/// The consistency divergence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Divergence {
    /// KL(perturbed ‖ clean).
    Kl,
    /// Standard Jensen-Shannon: ½KL(p ‖ m) + ½KL(q ‖ m), m = ½(p + q).
    Js,
}

/// The ε-ball of PGD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Elementwise clamp to [-ε, ε] (the paper's and the code's).
    Linf,
    /// Each token's perturbation vector rescaled to norm ≤ ε.
    L2,
}

/// How δ starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PgdInit {
    /// N(0, ε²), then projected: the paper.
    Gaussian,
    /// U(-ε, ε): the authors' code.
    Uniform,
}

/// Which tokens of an image-heavy row PGD and RG may perturb (text-heavy rows: the image
/// tokens; VQA rows: none, either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PerturbTokens {
    /// The paper (§4, "perturbations only affect task-irrelevant tokens"): the words of the
    /// question and any text prepended to it, where the irrelevant modality's content is; not
    /// `<bos>`, the template (`Question :`, `Options :`, `A :`, `Answer :`), the options or the
    /// answer.
    #[default]
    Question,
    /// The authors' code (seed-repo.md §3.8): every prompt token that is not an image or
    /// answer token: `<bos>`, template, question and options alike.
    Prompt,
}

/// Which clean rows anchor the consistency term of `ours`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OursAnchors {
    /// Paper Eq. 9: every clean row that has a perturbed copy (image- and text-heavy rows),
    /// compared with each of its copies: heuristic, adversarial, adversarial of heuristic.
    #[default]
    Perturbed,
    /// The authors' code (seed-repo.md §3.9): every clean row, VQA rows included, whose
    /// adversarial copy equals the row (δ is 0 there), so they dilute the mean.
    All,
}

/// What a model is taught to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerFormat {
    /// The option letter (the paper's format); options are scored by the letter's probability.
    #[default]
    Letter,
    /// The option's own words; options are scored by the likelihood of their words.
    Text,
}

/// Where a stage computes: `auto` (the first CUDA device when libtorch_cuda and a GPU are
/// there, else the CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum Device {
    /// CUDA if available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device (index among the visible ones).
    Cuda(usize),
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("device `{other}` is not one of auto, cpu, cuda, cuda:N (N a number)")
                }),
        }
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// AdamW with a cosine schedule after a linear warm-up, and gradient clipping (paper Table 13).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerParams {
    /// Share of the steps spent warming the learning rate up linearly from 0.
    pub warmup: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub clip: f64,
}

impl Default for OptimizerParams {
    fn default() -> Self {
        Self {
            warmup: 0.03,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            clip: 1.0,
        }
    }
}

/// `pretrain` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainParams {
    /// Model family: `llava`, `blip` or `qwen`.
    pub family: Family,
    /// Size preset: `xs`, `s`, `m` or `l`.
    #[serde(default = "default_size")]
    pub size: Size,
    /// Seed of the initial weights and the batch order.
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: Device,
    /// Passes over the training data.
    #[serde(default = "default_pretrain_epochs")]
    pub epochs: u32,
    /// Rows per step.
    #[serde(default = "default_pretrain_batch")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[serde(default = "default_pretrain_lr")]
    pub lr: f64,
    /// AdamW, schedule and clipping.
    #[serde(default)]
    pub optimizer: OptimizerParams,
    /// Share of image-heavy instruction items whose prompt starts with a *truthful* description
    /// of the image ("The picture seems to describe a red circle."), as in the corpus: the
    /// shortcut that makes a base model trust text about images (docs/embedded-benchmark.md).
    #[serde(default = "default_hint_rate")]
    pub truthful_hint_rate: f64,
    /// What the model learns to answer: `letter` (the paper) or `text` (the option's words).
    /// Fine-tuning and prediction use the checkpoint's format.
    #[serde(default)]
    pub answer: AnswerFormat,
    /// Largest tokenizer vocabulary (words seen in the training text, most frequent first).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
}

fn default_size() -> Size {
    Size::S
}
fn default_pretrain_epochs() -> u32 {
    4
}
fn default_pretrain_batch() -> usize {
    32
}
fn default_pretrain_lr() -> f64 {
    2e-3
}
fn default_hint_rate() -> f64 {
    0.5
}
fn default_vocab() -> usize {
    4096
}

/// The consistency term of `kl`, `js` and `ours` (paper Eq. 7-9).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyParams {
    /// Weight λ of a KL consistency term (`kl`, and `ours` with `divergence: kl`).
    pub kl_weight: f64,
    /// Weight λ of a JS consistency term (`js`, and `ours` with `divergence: js`).
    pub js_weight: f64,
    /// Temperature τ of both distributions.
    pub tau: f64,
    /// No gradient through the clean branch.
    pub stop_gradient: bool,
    /// The divergence `ours` uses (the paper: JS).
    pub ours_divergence: Divergence,
    /// Which clean rows anchor `ours`'s consistency: `perturbed` (the paper) or `all` (the
    /// authors' code, VQA rows included).
    pub ours_anchors: OursAnchors,
}

impl Default for ConsistencyParams {
    fn default() -> Self {
        Self {
            kl_weight: 0.01,
            js_weight: 0.01,
            tau: 1.0,
            stop_gradient: true,
            ours_divergence: Divergence::Js,
            ours_anchors: OursAnchors::Perturbed,
        }
    }
}

impl ConsistencyParams {
    /// λ for a divergence.
    pub fn weight(&self, divergence: Divergence) -> f64 {
        match divergence {
            Divergence::Kl => self.kl_weight,
            Divergence::Js => self.js_weight,
        }
    }
}

/// PGD in embedding space (paper Eq. 4-6, Table 13).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PgdParams {
    /// Step size α of δ ← Π(δ + α·∇δ L).
    pub alpha: f64,
    /// Radius ε of the ball.
    pub epsilon: f64,
    /// Steps K.
    pub steps: usize,
    /// `linf` (the paper) or `l2`.
    pub norm: Norm,
    /// `gaussian` (the paper) or `uniform` (the authors' code).
    pub init: PgdInit,
}

impl Default for PgdParams {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            epsilon: 1e-3,
            steps: 2,
            norm: Norm::Linf,
            init: PgdInit::Gaussian,
        }
    }
}

/// LoRA adapters (Hu et al., 2021) on the language model's projections, in place of full
/// fine-tuning: each targeted weight W gets a trainable update (α/r)·B·A, B zero at the start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraParams {
    /// Rank r of each adapter.
    #[serde(default = "default_lora_rank")]
    pub rank: i64,
    /// Scale numerator α (the update is α/r · B·A).
    #[serde(default = "default_lora_alpha")]
    pub alpha: f64,
    /// Dropout on each adapter's input while training.
    #[serde(default = "default_lora_dropout")]
    pub dropout: f64,
    /// The projections that get adapters, by name (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`).
    #[serde(default = "default_lora_targets")]
    pub targets: Vec<String>,
}

fn default_lora_rank() -> i64 {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_lora_dropout() -> f64 {
    0.05
}
fn default_lora_targets() -> Vec<String> {
    [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    .map(String::from)
    .to_vec()
}

/// D_mixed (paper §4.1): anchors per batch by task.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MixtureParams {
    /// Share of image-heavy anchors (each with its MD and UF variants).
    pub image_ratio: f64,
    /// Share of text-heavy anchors (each with its RI, FB and FW variants).
    pub text_ratio: f64,
}

impl Default for MixtureParams {
    fn default() -> Self {
        Self {
            image_ratio: 0.25,
            text_ratio: 0.25,
        }
    }
}

/// `finetune` params. Only what the method uses enters the stage key: changing the JS weight
/// reruns `js` (and `ours` with JS), not `kl` or `adv`.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneParams {
    /// `fft_vqa`, `fft_mix`, `kl`, `js`, `rg`, `adv` or `ours`.
    pub method: Method,
    /// A pretrained checkpoint folder in the Hugging Face layout (LLaVA-1.5) to fine-tune,
    /// instead of a `model` input; its content enters the key. The output `model/` is then a
    /// checkpoint in the same layout.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// LoRA adapters instead of full fine-tuning (Hugging Face checkpoints only): the adapters
    /// and the projector train, the rest is frozen, and the output is merged (W + α/r·B·A).
    #[serde(default)]
    pub lora: Option<LoraParams>,
    /// The family the input checkpoint must be (checked; lets a matrix over families join
    /// `pretrain[family=...]`).
    #[serde(default)]
    pub family: Option<Family>,
    /// The size the input checkpoint must be (checked).
    #[serde(default)]
    pub size: Option<Size>,
    /// Seed of the batch order, the noise and δ's initialisation.
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: Device,
    /// Passes over the anchors (the paper: 1).
    #[serde(default = "default_finetune_epochs")]
    pub epochs: u32,
    /// Anchors per batch (the paper: 8); variants come on top.
    #[serde(default = "default_finetune_batch")]
    pub batch_size: usize,
    /// Peak learning rate. Default: 2e-5 with a Hugging Face `checkpoint` (every runnable
    /// LLaVA-1.5-7B config of the authors; the paper leaves it blank), 1e-3 for mipipe's own
    /// small models (null: that default).
    #[serde(default, rename = "lr")]
    pub lr_param: Option<f64>,
    /// AdamW, schedule and clipping.
    #[serde(default)]
    pub optimizer: OptimizerParams,
    /// D_mixed's ratios (not used by `fft_vqa`, which trains on VQA anchors only).
    #[serde(default)]
    pub mixture: MixtureParams,
    /// The precision a Hugging Face `checkpoint` trains in: `float32` (the default) or
    /// `bfloat16` (the model's weights and activations in bf16, AdamW stepping fp32 master
    /// weights; the output checkpoint is fp32). `float16` is refused: it needs loss scaling.
    #[serde(default, skip_serializing_if = "Dtype::is_float32")]
    pub dtype: Dtype,
    /// Gradient checkpointing of the language model's blocks: each block's activations are
    /// recomputed in the backward pass instead of kept (activation memory of one block, about
    /// one more forward pass of time). The gradients are the same up to summation order.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// The datasets whose clean `train` VQA rows are the VQA anchors (D_VQA, and D_mixed's VQA
    /// share), by their `dataset` column: the paper's InstructBLIP trains on LLaVA-Instruct and
    /// TextCaps, its other families on LLaVA-Instruct alone. Empty (the default): every VQA
    /// training row. A name with no such rows is an error.
    #[serde(default)]
    pub vqa_datasets: Vec<String>,
    /// Consistency (`kl`, `js`, `ours`).
    #[serde(default)]
    pub consistency: ConsistencyParams,
    /// Noise σ on the irrelevant modality's embeddings (`rg`; blank in the paper, the authors'
    /// code uses 0.05).
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// PGD (`adv`, `ours`).
    #[serde(default)]
    pub pgd: PgdParams,
    /// Which tokens of image-heavy rows PGD and RG perturb: `question` (the paper) or `prompt`
    /// (the authors' code).
    #[serde(default)]
    pub perturb_tokens: PerturbTokens,
}

fn default_finetune_epochs() -> u32 {
    1
}
fn default_finetune_batch() -> usize {
    8
}
impl FinetuneParams {
    /// The peak learning rate: `lr`, or the default for the model being fine-tuned.
    pub fn lr(&self) -> f64 {
        self.lr_param.unwrap_or(if self.checkpoint.is_some() {
            2e-5
        } else {
            1e-3
        })
    }
}
fn default_sigma() -> f64 {
    0.05
}

impl Serialize for FinetuneParams {
    /// The canonical form: the method's own settings only.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("method", &self.method)?;
        if let Some(checkpoint) = &self.checkpoint {
            map.serialize_entry("checkpoint", checkpoint)?;
        }
        if let Some(lora) = &self.lora {
            map.serialize_entry("lora", lora)?;
        }
        if let Some(family) = &self.family {
            map.serialize_entry("family", family)?;
        }
        if let Some(size) = &self.size {
            map.serialize_entry("size", size)?;
        }
        map.serialize_entry("seed", &self.seed)?;
        map.serialize_entry("device", &self.device)?;
        map.serialize_entry("epochs", &self.epochs)?;
        map.serialize_entry("batch_size", &self.batch_size)?;
        map.serialize_entry("lr", &self.lr())?;
        map.serialize_entry("optimizer", &self.optimizer)?;
        if !self.dtype.is_float32() {
            map.serialize_entry("dtype", &self.dtype)?;
        }
        if self.gradient_checkpointing {
            map.serialize_entry("gradient_checkpointing", &true)?;
        }
        if self.method != Method::FftVqa {
            map.serialize_entry("mixture", &self.mixture)?;
        }
        if !self.vqa_datasets.is_empty() {
            map.serialize_entry("vqa_datasets", &self.vqa_datasets)?;
        }
        if let Some(divergence) = self.method.divergence(self.consistency.ours_divergence) {
            let c = &self.consistency;
            let mut used = serde_json::Map::new();
            let weight_name = match divergence {
                Divergence::Kl => "kl_weight",
                Divergence::Js => "js_weight",
            };
            used.insert(weight_name.into(), c.weight(divergence).into());
            used.insert("tau".into(), c.tau.into());
            used.insert("stop_gradient".into(), c.stop_gradient.into());
            if self.method == Method::Ours {
                used.insert(
                    "ours_divergence".into(),
                    serde_json::to_value(c.ours_divergence).expect("enums serialise"),
                );
                used.insert(
                    "ours_anchors".into(),
                    serde_json::to_value(c.ours_anchors).expect("enums serialise"),
                );
            }
            map.serialize_entry("consistency", &used)?;
        }
        if self.method == Method::Rg {
            map.serialize_entry("sigma", &self.sigma)?;
        }
        if matches!(self.method, Method::Adv | Method::Ours) {
            map.serialize_entry("pgd", &self.pgd)?;
        }
        if matches!(self.method, Method::Rg | Method::Adv | Method::Ours) {
            map.serialize_entry("perturb_tokens", &self.perturb_tokens)?;
        }
        map.end()
    }
}

/// `predict` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictParams {
    /// A pretrained checkpoint folder in the Hugging Face layout (LLaVA-1.5:
    /// `llava-hf/llava-1.5-7b-hf` as downloaded, or as `save_pretrained` writes it), relative
    /// to the pipeline's folder or absolute, instead of a `model` input. Its content enters
    /// the key (hashed once, then remembered by size and modification time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The family the checkpoint must be (checked; a matrix key to join on).
    #[serde(default)]
    pub family: Option<Family>,
    /// The size the checkpoint must be (checked).
    #[serde(default)]
    pub size: Option<Size>,
    /// How the checkpoint must have been trained: `vanilla` (by `pretrain`) or a method
    /// (checked).
    #[serde(default)]
    pub method: Option<String>,
    /// The training seed the checkpoint must come from (checked).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The split to answer (`test`); rows of other splits are ignored.
    #[serde(default = "default_split")]
    pub split: String,
    /// The conditions to answer (`perturbation` values, e.g. `[none, rp]` for the clean rows);
    /// empty (the default) answers every row of `split`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// Answer every row in words, without its options (the paper's free-form VQA, Table 10):
    /// a multiple-choice row is asked as its question alone and its gold option's words become
    /// its reference answer; `evaluate` scores the generated answer by exact match and the
    /// VQA accuracy formula. Without it, open-ended rows (`meta.answers`) are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub free_form: bool,
    /// Text put before every question (and before any context the item carries), such as the
    /// chain-of-thought prompt of the paper's Table 9; empty (the default) adds nothing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt_prefix: String,
    /// Rows per forward pass.
    #[serde(default = "default_predict_batch")]
    pub batch_size: usize,
    /// Longest generated answer, in tokens (greedy decoding stops at `<eos>`).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: Device,
    /// Repetition penalty of greedy decoding, as transformers applies it: the logit of every
    /// token already in the row (prompt and answer so far) is divided by it where positive and
    /// multiplied where negative. 1 (the default) turns it off; the authors evaluate with 1.2.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repetition_penalty: f64,
    /// The dtype of the weights and activations of a Hugging Face `checkpoint`: `float32`
    /// (the default), `bfloat16` or `float16` (half the memory; what GPUs run 7B models in).
    #[serde(default, skip_serializing_if = "Dtype::is_float32")]
    pub dtype: Dtype,
}

/// A floating-point dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit IEEE.
    #[default]
    Float32,
    /// bfloat16.
    Bfloat16,
    /// IEEE half.
    Float16,
}

impl Dtype {
    /// Whether it is the default, `float32`.
    pub fn is_float32(&self) -> bool {
        *self == Dtype::Float32
    }
}

fn one() -> f64 {
    1.0
}
fn is_one(value: &f64) -> bool {
    *value == 1.0
}

fn default_split() -> String {
    "test".into()
}
fn default_predict_batch() -> usize {
    64
}
fn default_max_new_tokens() -> usize {
    4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(value: serde_json::Value) -> serde_json::Value {
        let params: FinetuneParams = serde_json::from_value(value).unwrap();
        let canonical = serde_json::to_value(&params).unwrap();
        let again: FinetuneParams = serde_json::from_value(canonical.clone()).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            canonical,
            "the canonical form is a fixed point"
        );
        canonical
    }

    #[test]
    fn only_the_settings_a_method_uses_enter_its_canonical_params() {
        let js_weight = |method: &str, w: f64| {
            canonical(json!({"method": method, "consistency": {"js_weight": w}}))
        };
        for method in ["fft_vqa", "fft_mix", "kl", "rg", "adv"] {
            assert_eq!(
                js_weight(method, 0.01),
                js_weight(method, 0.5),
                "{method} ignores the JS weight"
            );
        }
        for method in ["js", "ours"] {
            assert_ne!(js_weight(method, 0.01), js_weight(method, 0.5), "{method}");
        }
        let pgd = |method: &str| canonical(json!({"method": method, "pgd": {"epsilon": 0.1}}));
        assert_eq!(pgd("js"), canonical(json!({"method": "js"})));
        assert_ne!(pgd("adv"), canonical(json!({"method": "adv"})));
        let fft_vqa = canonical(json!({"method": "fft_vqa", "mixture": {"image_ratio": 0.5}}));
        assert!(fft_vqa.get("mixture").is_none(), "{fft_vqa}");
    }

    #[test]
    fn the_default_learning_rate_follows_the_model() {
        // The canonical form writes the resolved rate, so a default and its value share a key.
        assert_eq!(canonical(json!({"method": "ours"}))["lr"], json!(1e-3));
        assert_eq!(
            canonical(json!({"method": "ours", "checkpoint": "llava"}))["lr"],
            json!(2e-5)
        );
        assert_eq!(
            canonical(json!({"method": "ours", "checkpoint": "llava", "lr": 1e-6}))["lr"],
            json!(1e-6)
        );
        assert_eq!(
            canonical(json!({"method": "ours"})),
            canonical(json!({"method": "ours", "lr": 1e-3}))
        );
    }

    #[test]
    fn devices_parse_and_bad_ones_are_explained() {
        let parse = |s: &str| Device::try_from(s.to_string());
        assert_eq!(parse("cuda:1"), Ok(Device::Cuda(1)));
        assert_eq!(parse("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(parse("auto"), Ok(Device::Auto));
        assert!(parse("gpu").unwrap_err().contains("auto, cpu, cuda"));
    }
}
