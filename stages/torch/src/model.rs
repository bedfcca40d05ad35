//! The multimodal model: a ViT, one of three projector families, and the Llama-style decoder,
//! with image tokens placed before the text (as LLaVA, InstructBLIP and Qwen-VL do).
//!
//! A batch is laid out `[image tokens][left padding][text]`; position ids count real tokens
//! only, so the text of every row starts at position `n_image` whatever its batch.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::layers::{Decoder, DecoderConfig};
use crate::vision::{MlpProjector, PatchMerger, QFormer, VisionConfig, VisionEncoder};

pub use mipipe_stage_torch_types::Family;

/// Everything that defines a model's shapes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Family.
    pub family: Family,
    /// Vision encoder.
    pub vision: VisionConfig,
    /// Language model.
    pub decoder: DecoderConfig,
    /// Q-Former queries (blip).
    pub queries: i64,
    /// Q-Former layers (blip).
    pub qformer_layers: i64,
}

#[derive(Debug)]
enum Projector {
    Mlp(MlpProjector),
    Merger(PatchMerger),
    QFormer(QFormer),
}

/// Vision encoder + projector + decoder, at `vision.*`, `projector.*`, `decoder.*`.
#[derive(Debug)]
pub struct MultimodalModel {
    vision: VisionEncoder,
    projector: Projector,
    /// The language model.
    pub decoder: Decoder,
    config: ModelConfig,
}

impl MultimodalModel {
    /// Builds the model's variables under `root`.
    pub fn new(root: nn::Path, config: &ModelConfig) -> Self {
        let vision = VisionEncoder::new(&root / "vision", &config.vision);
        let (v, h) = (config.vision.hidden, config.decoder.hidden);
        let projector = match config.family {
            Family::Llava => Projector::Mlp(MlpProjector::new(&root / "projector", v, h)),
            Family::Qwen => Projector::Merger(PatchMerger::new(
                &root / "projector",
                v,
                h,
                config.vision.grid(),
            )),
            Family::Blip => Projector::QFormer(QFormer::new(
                &root / "projector",
                v,
                h,
                config.queries,
                config.qformer_layers,
                config.vision.heads,
            )),
        };
        Self {
            vision,
            projector,
            decoder: Decoder::new(&root / "decoder", &config.decoder),
            config: config.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Image tokens in the language model's width: `[batch, n_image_tokens, hidden]`.
    pub fn image_tokens(&self, images: &Tensor) -> Tensor {
        let patches = self.vision.forward(images);
        match &self.projector {
            Projector::Mlp(p) => p.forward(&patches),
            Projector::Merger(p) => p.forward(&patches),
            Projector::QFormer(p) => p.forward(&patches),
        }
    }

    /// How many image tokens precede the text.
    pub fn image_token_count(&self) -> i64 {
        let grid = self.config.vision.grid();
        match self.config.family {
            Family::Llava => grid * grid,
            Family::Qwen => grid * grid / 4,
            Family::Blip => self.config.queries,
        }
    }

    /// Input embeddings `[batch, n_image + seq, hidden]`: image tokens, then text tokens.
    pub fn embed(&self, images: &Tensor, tokens: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.image_tokens(images),
                tokens.apply(&self.decoder.embed_tokens),
            ],
            1,
        )
    }

    /// The mask of real tokens over the combined sequence from the text part's (`[batch, seq]`,
    /// true for real tokens): image tokens are always real.
    pub fn real_tokens(&self, padding: &Tensor) -> Tensor {
        let b = padding.size()[0];
        let image = Tensor::ones(
            [b, self.image_token_count()],
            (Kind::Bool, padding.device()),
        );
        Tensor::cat(&[image, padding.to_kind(Kind::Bool)], 1)
    }

    /// Logits over the combined sequence; `padding` covers the text part (`[batch, seq]`, true
    /// for real tokens); image tokens are always real.
    pub fn logits(&self, embeddings: &Tensor, padding: Option<&Tensor>) -> Tensor {
        let real = padding.map(|p| self.real_tokens(p));
        self.decoder.forward_embeddings(embeddings, real.as_ref())
    }

    /// Rescales the projector's output layer so that the image tokens of `images` have the RMS
    /// of the token embeddings (Llama-style, [`crate::layers::INIT_STD`]): at initialisation
    /// both modalities enter the language model at one scale, so a perturbation of a given size
    /// is equally strong on either. Returns the RMS of both before the rescaling.
    pub fn match_image_scale(&self, images: &Tensor) -> (f64, f64) {
        tch::no_grad(|| {
            let text = rms(&self.decoder.embed_tokens.ws);
            let image = rms(&self.image_tokens(images));
            let layer = match &self.projector {
                Projector::Mlp(p) => p.output_layer(),
                Projector::Merger(p) => p.output_layer(),
                Projector::QFormer(p) => p.output_layer(),
            };
            let scale = text / image.max(1e-12);
            let mut weight = layer.ws.shallow_clone();
            let _ = weight.g_mul_scalar_(scale);
            if let Some(bias) = &layer.bs {
                let mut bias = bias.shallow_clone();
                let _ = bias.g_mul_scalar_(scale);
            }
            (text, image)
        })
    }

    /// Freezes what fine-tuning leaves alone (paper §5, App. B): the vision encoder, and for
    /// InstructBLIP the Q-Former except its language projection.
    pub fn freeze_for_finetune(&self, vs: &nn::VarStore) {
        for (name, var) in vs.variables() {
            let frozen = name.starts_with("vision.")
                || (self.config.family == Family::Blip
                    && name.starts_with("projector.")
                    && !name.starts_with("projector.language_projection."));
            if frozen {
                let _ = var.set_requires_grad(false);
            }
        }
    }
}

/// Root mean square of every element.
pub fn rms(x: &Tensor) -> f64 {
    x.detach()
        .to_kind(Kind::Float)
        .pow_tensor_scalar(2)
        .mean(Kind::Float)
        .sqrt()
        .double_value(&[])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny(family: Family) -> ModelConfig {
        ModelConfig {
            family,
            vision: VisionConfig {
                image_size: 8,
                patch: 4,
                hidden: 16,
                layers: 1,
                heads: 2,
            },
            decoder: DecoderConfig::llama(16, 16, 1, 2, 32, 32),
            queries: 2,
            qformer_layers: 1,
        }
    }

    #[test]
    fn image_tokens_come_first_with_the_family_count() {
        let _rng = crate::rng_lock();
        for family in [Family::Llava, Family::Blip, Family::Qwen] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = MultimodalModel::new(vs.root(), &tiny(family));
            let images = Tensor::rand([3, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
            let tokens = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([3, 2]);
            let embeddings = model.embed(&images, &tokens);
            let n = model.image_token_count();
            assert_eq!(embeddings.size(), [3, n + 2, 16], "{family:?}");
            assert_eq!(model.logits(&embeddings, None).size(), [3, n + 2, 16]);
        }
    }

    #[test]
    fn fine_tuning_freezes_the_vision_side_as_the_paper_does() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = MultimodalModel::new(vs.root(), &tiny(Family::Blip));
        model.freeze_for_finetune(&vs);
        for (name, var) in vs.variables() {
            let trainable = var.requires_grad();
            let expected =
                name.starts_with("decoder.") || name.starts_with("projector.language_projection.");
            assert_eq!(trainable, expected, "{name}");
        }
    }

    #[test]
    fn image_tokens_start_at_the_text_embeddings_scale() {
        let _rng = crate::rng_lock();
        for family in [Family::Llava, Family::Blip, Family::Qwen] {
            tch::manual_seed(4);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let model = MultimodalModel::new(vs.root(), &tiny(family));
            let images = Tensor::rand([4, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
            let (text, _) = model.match_image_scale(&images);
            assert!(
                (text - crate::layers::INIT_STD).abs() < 0.005,
                "{family:?}: Llava-style token embeddings, RMS {text}"
            );
            let image = rms(&tch::no_grad(|| model.image_tokens(&images)));
            assert!(
                (image / text - 1.0).abs() < 1e-4,
                "{family:?}: image tokens at RMS {image}, text at {text}"
            );
        }
    }
}
