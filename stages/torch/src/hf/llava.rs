//! LLaVA-1.5 as transformers' `LlavaForConditionalGeneration` computes it: CLIP hidden states of
//! the configured layer(s), the class token dropped (`default`) or kept (`full`), the two-layer
//! projector, and the Llama language model, with each `<image>` placeholder of the prompt
//! replaced by one image feature (in order: the first picture's features fill the first
//! placeholders).
//!
//! Batches are left-padded; position ids count each row's real tokens only, as
//! transformers' `generate` derives them from the attention mask, so a row's logits do not
//! depend on what else is in its batch.

use std::path::Path;

use tch::{nn, Kind, Tensor};

use super::clip::ClipVision;
use super::config::LlavaConfig;
use crate::decode::Decoding;
use crate::layers::Decoder;
use crate::lora::Adapters;
use crate::methods::{Layout, Rows, Trainable};
use crate::objectives::TokenRole;
use crate::vision::MlpProjector;

/// A LLaVA model whose variables are named by the checkpoint's canonical keys.
#[derive(Debug)]
pub struct LlavaModel {
    vision: ClipVision,
    projector: MlpProjector,
    /// The language model (`language_model.model.*`, head `language_model.lm_head`).
    pub decoder: Decoder,
    config: LlavaConfig,
    feature_indices: Vec<usize>,
    adapters: Option<Adapters>,
    kind: Kind,
}

impl LlavaModel {
    /// The model's variables under `root`, randomly initialised.
    pub fn new(root: nn::Path, config: &LlavaConfig) -> Result<Self, String> {
        Self::with_adapters(root, config, None)
    }

    /// The same, with LoRA adapters on the language model's projections that `adapters`
    /// targets.
    pub fn with_adapters(
        root: nn::Path,
        config: &LlavaConfig,
        adapters: Option<&Adapters>,
    ) -> Result<Self, String> {
        let feature_indices = config.feature_indices()?;
        let vision = ClipVision::new(&root / "vision_tower" / "vision_model", &config.vision);
        let projector = MlpProjector::with(
            &root / "multi_modal_projector",
            config.vision.hidden * feature_indices.len() as i64,
            config.text.hidden,
            config.projector_bias,
            config.projector_activation,
        );
        let language = &root / "language_model";
        let decoder = Decoder::with_adapters(
            &language / "model",
            &language / "lm_head",
            &config.text,
            adapters,
        );
        Ok(Self {
            vision,
            projector,
            decoder,
            config: config.clone(),
            feature_indices,
            adapters: adapters.cloned(),
            kind: Kind::Float,
        })
    }

    /// Reads a checkpoint folder in the Hugging Face layout into a new VarStore on `device`,
    /// with `kind` as the variables' dtype (the checkpoint's tensors are converted on copy).
    pub fn load(
        dir: &Path,
        device: tch::Device,
        kind: Kind,
    ) -> Result<(nn::VarStore, Self), String> {
        Self::load_with_adapters(dir, device, kind, None)
    }

    /// The same, with fresh LoRA adapters (which change nothing until trained).
    pub fn load_with_adapters(
        dir: &Path,
        device: tch::Device,
        kind: Kind,
        adapters: Option<&Adapters>,
    ) -> Result<(nn::VarStore, Self), String> {
        let config = LlavaConfig::load(dir)?;
        let mut vs = nn::VarStore::new(device);
        let mut model = Self::with_adapters(vs.root(), &config, adapters)?;
        if kind != Kind::Float {
            model.set_kind(&mut vs, kind);
        }
        super::weights::load(&vs, dir)?;
        Ok((vs, model))
    }

    /// Converts the model's variables (all of `vs`) to `kind`, which it then computes in.
    pub fn set_kind(&mut self, vs: &mut nn::VarStore, kind: Kind) {
        vs.set_kind(kind);
        self.kind = kind;
    }

    /// The configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Image features `[pictures, tokens_per_image, hidden]` of pixel values
    /// `[pictures, 3, size, size]` (as the processor makes them).
    pub fn image_features(&self, pixel_values: &Tensor) -> Tensor {
        let pixel_values = pixel_values.to_kind(self.kind);
        let states = self
            .vision
            .hidden_states(&pixel_values, &self.feature_indices);
        let states: Vec<Tensor> = states
            .into_iter()
            .map(|s| {
                if self.config.keep_class_token {
                    s
                } else {
                    s.narrow(1, 1, s.size()[1] - 1)
                }
            })
            .collect();
        Tensor::cat(&states, -1).apply(&self.projector)
    }

    /// Input embeddings `[batch, seq, hidden]` of `input_ids` (`[batch, seq]`), the `<image>`
    /// placeholders replaced by the features of `pixel_values`; the count of placeholders must
    /// be the count of features.
    pub fn embed(
        &self,
        input_ids: &Tensor,
        pixel_values: Option<&Tensor>,
    ) -> Result<Tensor, String> {
        let text = input_ids.apply(&self.decoder.embed_tokens);
        let placeholders = input_ids.eq(self.config.image_token_id);
        let count = placeholders.sum(Kind::Int64).int64_value(&[]);
        let Some(pixels) = pixel_values else {
            return if count == 0 {
                Ok(text)
            } else {
                Err(format!(
                    "the prompts hold {count} image tokens but no picture was given"
                ))
            };
        };
        let features = self.image_features(pixels);
        let (pictures, per_image, hidden) = features.size3().expect("[pictures, tokens, hidden]");
        if count != pictures * per_image {
            return Err(format!(
                "the prompts hold {count} image tokens, the {pictures} picture(s) give {} \
                 features ({per_image} each)",
                pictures * per_image
            ));
        }
        let mask = placeholders.unsqueeze(-1).expand_as(&text);
        Ok(text.masked_scatter(
            &mask,
            &features
                .reshape([pictures * per_image, hidden])
                .to_kind(text.kind()),
        ))
    }

    /// Logits `[batch, seq, vocab]` of input embeddings with the attention mask of a left-padded
    /// batch (`[batch, seq]`, 1 for real tokens). Embeddings in another dtype (fp32 after a PGD
    /// or RG perturbation was added in fp32) are cast to the model's.
    pub fn logits(&self, embeddings: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.decoder.forward_embeddings(
            &embeddings.to_kind(self.kind),
            Some(&attention_mask.to_kind(Kind::Bool)),
        )
    }

    /// The prompts encoded once, for greedy generation and continuation scores with the KV
    /// cache.
    pub fn prefill(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pixel_values: Option<&Tensor>,
    ) -> Result<Decoding<'_>, String> {
        let embeddings = tch::no_grad(|| self.embed(input_ids, pixel_values))?;
        Ok(Decoding::prefill_embeddings(
            &self.decoder,
            &embeddings,
            attention_mask,
        ))
    }

    /// Freezes what the paper's fine-tuning leaves alone: the vision tower (the projector and
    /// the language model train). With LoRA adapters, the language model's own weights are
    /// frozen too: the adapters and the projector train (LLaVA's LoRA recipe).
    pub fn freeze_for_finetune(&self, vs: &nn::VarStore) {
        for (name, var) in vs.variables() {
            let frozen = name.starts_with("vision_tower.")
                || (self.adapters.is_some()
                    && name.starts_with("language_model.")
                    && !crate::lora::is_adapter(&name));
            if frozen {
                let _ = var.set_requires_grad(false);
            }
        }
    }
}

impl Trainable for LlavaModel {
    /// The placeholders are in the text already ([`super::encode`]); `rows.images` holds one
    /// picture per row that has one (none: an empty tensor).
    fn lay_out(&self, rows: &Rows) -> Layout {
        let pixels = (rows.images.numel() > 0).then_some(&rows.images);
        let embeddings = self
            .embed(&rows.tokens, pixels)
            .expect("the encoder puts one placeholder per image feature");
        let (b, t) = rows.tokens.size2().expect("[batch, seq]");
        let real: Vec<bool> = rows
            .roles
            .iter()
            .flat_map(|r| r.iter().map(|role| *role != TokenRole::Pad))
            .collect();
        Layout {
            embeddings,
            roles: rows.roles.clone(),
            targets: rows.tokens.shallow_clone(),
            real: Tensor::from_slice(&real)
                .view([b, t])
                .to_device(rows.tokens.device()),
        }
    }

    fn logits_of(&self, embeddings: &Tensor, real: &Tensor) -> Tensor {
        self.logits(embeddings, real)
    }

    fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn set_training(&self, on: bool) {
        if let Some(adapters) = &self.adapters {
            adapters.set_training(on);
        }
    }
}
