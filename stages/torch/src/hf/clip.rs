//! The CLIP vision tower as transformers' `CLIPVisionModel` computes it: a bias-free patch
//! convolution, a learned class token and positions, `pre_layrnorm` (sic, the checkpoint's
//! spelling), pre-norm encoder layers, and `post_layernorm` (kept for the round trip; LLaVA
//! reads hidden states before it).

use tch::nn;
use tch::Tensor;

use super::config::ClipConfig;
use crate::vision::{layer_norm, EncoderBlock};

/// The vision tower at `vision_tower.vision_model.*`.
#[derive(Debug)]
pub struct ClipVision {
    patch_embedding: nn::Conv2D,
    class_embedding: Tensor,
    position_embedding: nn::Embedding,
    pre_layrnorm: nn::LayerNorm,
    layers: Vec<EncoderBlock>,
    _post_layernorm: nn::LayerNorm,
    config: ClipConfig,
}

impl ClipVision {
    /// The tower's variables under `path`.
    pub fn new(path: nn::Path, config: &ClipConfig) -> Self {
        let embeddings = &path / "embeddings";
        let patch_embedding = nn::conv2d(
            &embeddings / "patch_embedding",
            config.channels,
            config.hidden,
            config.patch,
            nn::ConvConfig {
                stride: config.patch,
                bias: false,
                ..Default::default()
            },
        );
        let class_embedding = embeddings.randn("class_embedding", &[config.hidden], 0.0, 0.02);
        let position_embedding = nn::embedding(
            &embeddings / "position_embedding",
            config.patches() + 1,
            config.hidden,
            Default::default(),
        );
        let shape = config.block_shape();
        Self {
            patch_embedding,
            class_embedding,
            position_embedding,
            pre_layrnorm: layer_norm(&path / "pre_layrnorm", config.hidden, config.norm_eps),
            layers: (0..config.layers)
                .map(|i| EncoderBlock::new(&path / "encoder" / "layers" / i, &shape))
                .collect(),
            _post_layernorm: layer_norm(&path / "post_layernorm", config.hidden, config.norm_eps),
            config: config.clone(),
        }
    }

    /// The hidden states at `indices` (0: the embeddings after `pre_layrnorm`; i: the output of
    /// layer i), each `[batch, 1 + patches, hidden]`; layers past the last index are not run.
    pub fn hidden_states(&self, pixel_values: &Tensor, indices: &[usize]) -> Vec<Tensor> {
        let b = pixel_values.size()[0];
        let patches = pixel_values
            .apply(&self.patch_embedding)
            .flatten(2, 3)
            .transpose(1, 2);
        let class = self
            .class_embedding
            .to_kind(patches.kind())
            .view([1, 1, -1])
            .expand([b, 1, self.config.hidden], false);
        let positions = Tensor::arange(
            self.config.patches() + 1,
            (tch::Kind::Int64, patches.device()),
        );
        let mut x = Tensor::cat(&[class, patches], 1) + positions.apply(&self.position_embedding);
        x = x.apply(&self.pre_layrnorm);
        let last = indices.iter().copied().max().unwrap_or(0);
        let mut states: Vec<Option<Tensor>> = (0..=last).map(|_| None).collect();
        states[0] = Some(x.shallow_clone());
        for (i, layer) in self.layers.iter().enumerate().take(last) {
            x = layer.forward(&x);
            states[i + 1] = Some(x.shallow_clone());
        }
        indices
            .iter()
            .map(|&i| states[i].as_ref().expect("computed").shallow_clone())
            .collect()
    }
}
