//! The vision side: a ViT patch encoder and the three projector families of the paper
//! (LLaVA's 2-layer MLP, Qwen's 2x2 patch merger, InstructBLIP's Q-Former).

use tch::nn::{self, Module};
use tch::Tensor;

use crate::layers::{linear, Attention, AttentionShape, Init};

/// ViT hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VisionConfig {
    /// Image side in pixels.
    pub image_size: i64,
    /// Patch side in pixels.
    pub patch: i64,
    /// Width.
    pub hidden: i64,
    /// Blocks.
    pub layers: i64,
    /// Heads.
    pub heads: i64,
}

impl VisionConfig {
    /// The shape of its blocks: an MLP four times as wide, exact GELU.
    pub fn block_shape(&self) -> EncoderShape {
        EncoderShape {
            dim: self.hidden,
            heads: self.heads,
            ffn: 4 * self.hidden,
            activation: Activation::Gelu,
            norm_eps: 1e-5,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> i64 {
        self.image_size / self.patch
    }
}

/// The activation of a vision MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The exact (erf) GELU.
    Gelu,
    /// CLIP's `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl Activation {
    /// From a Hugging Face `hidden_act` / `projector_hidden_act` name.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "quick_gelu" => Some(Self::QuickGelu),
            _ => None,
        }
    }

    /// Applies it.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

/// The shape of one vision encoder block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderShape {
    /// Width.
    pub dim: i64,
    /// Heads.
    pub heads: i64,
    /// MLP width.
    pub ffn: i64,
    /// MLP activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
}

/// A layer norm of width `dim` at `path` (`weight`, `bias`).
pub fn layer_norm(path: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        path,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// A pre-LayerNorm transformer block with bidirectional attention and an MLP, named as
/// transformers' `CLIPEncoderLayer` (`layer_norm1`, `self_attn.{q,k,v,out}_proj`, `layer_norm2`,
/// `mlp.fc1`, `mlp.fc2`).
#[derive(Debug)]
pub struct EncoderBlock {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
}

impl EncoderBlock {
    /// A block at `path`.
    pub fn new(path: nn::Path, shape: &EncoderShape) -> Self {
        let attention = AttentionShape {
            output: "out_proj",
            ..AttentionShape::square(shape.dim, shape.dim, shape.heads, true)
        };
        Self {
            layer_norm1: layer_norm(&path / "layer_norm1", shape.dim, shape.norm_eps),
            self_attn: Attention::new(&path / "self_attn", attention, Init::Torch),
            layer_norm2: layer_norm(&path / "layer_norm2", shape.dim, shape.norm_eps),
            fc1: linear(
                &path / "mlp" / "fc1",
                shape.dim,
                shape.ffn,
                true,
                Init::Torch,
            ),
            fc2: linear(
                &path / "mlp" / "fc2",
                shape.ffn,
                shape.dim,
                true,
                Init::Torch,
            ),
            activation: shape.activation,
        }
    }

    /// `x`: `[batch, seq, dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.self_attn.forward(&x.apply(&self.layer_norm1));
        let hidden = self
            .activation
            .apply(&x.apply(&self.layer_norm2).apply(&self.fc1));
        &x + hidden.apply(&self.fc2)
    }
}

/// A ViT: patch embedding (a strided convolution), learned positions, blocks, final norm.
#[derive(Debug)]
pub struct VisionEncoder {
    patch_embed: nn::Conv2D,
    position: Tensor,
    blocks: Vec<EncoderBlock>,
    norm: nn::LayerNorm,
    config: VisionConfig,
}

impl VisionEncoder {
    /// An encoder at `path`.
    pub fn new(path: nn::Path, config: &VisionConfig) -> Self {
        let patches = config.grid() * config.grid();
        Self {
            patch_embed: nn::conv2d(
                &path / "patch_embed",
                3,
                config.hidden,
                config.patch,
                nn::ConvConfig {
                    stride: config.patch,
                    ..Default::default()
                },
            ),
            position: path.randn("position", &[1, patches, config.hidden], 0.0, 0.02),
            blocks: (0..config.layers)
                .map(|i| EncoderBlock::new(&path / "blocks" / i, &config.block_shape()))
                .collect(),
            norm: nn::layer_norm(&path / "norm", vec![config.hidden], Default::default()),
            config: config.clone(),
        }
    }

    /// Patch features `[batch, grid*grid, hidden]` (row-major patches) from images
    /// `[batch, 3, size, size]` with values in `[0, 1]`.
    pub fn forward(&self, images: &Tensor) -> Tensor {
        let x = (images - 0.5) * 2.0;
        let x = x.apply(&self.patch_embed).flatten(2, 3).transpose(1, 2) + &self.position;
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x.apply(&self.norm)
    }

    /// Its configuration.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }
}

/// LLaVA: a 2-layer MLP from vision width to the language model's width, one token per patch
/// (transformers' `LlavaMultiModalProjector`).
#[derive(Debug)]
pub struct MlpProjector {
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    activation: Activation,
}

impl MlpProjector {
    /// At `path` (`linear_1`, `linear_2`), with biases and the exact GELU between.
    pub fn new(path: nn::Path, vision: i64, hidden: i64) -> Self {
        Self::with(path, vision, hidden, true, Activation::Gelu)
    }

    /// At `path`, with or without biases and with `activation` between the layers.
    pub fn with(
        path: nn::Path,
        vision: i64,
        hidden: i64,
        bias: bool,
        activation: Activation,
    ) -> Self {
        Self {
            linear_1: linear(&path / "linear_1", vision, hidden, bias, Init::Torch),
            linear_2: linear(&path / "linear_2", hidden, hidden, bias, Init::Torch),
            activation,
        }
    }
}

impl MlpProjector {
    /// The layer whose output the language model reads.
    pub fn output_layer(&self) -> &nn::Linear {
        &self.linear_2
    }
}

impl Module for MlpProjector {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.activation
            .apply(&x.apply(&self.linear_1))
            .apply(&self.linear_2)
    }
}

/// Qwen: each 2x2 block of neighbouring patches is concatenated and merged by an MLP, so the
/// language model sees a quarter of the tokens.
#[derive(Debug)]
pub struct PatchMerger {
    norm: nn::LayerNorm,
    mlp: MlpProjector,
    grid: i64,
}

impl PatchMerger {
    /// At `path` (`norm`, `mlp.linear_1`, `mlp.linear_2`); `grid` must be even.
    pub fn new(path: nn::Path, vision: i64, hidden: i64, grid: i64) -> Self {
        assert!(
            grid % 2 == 0,
            "the 2x2 merger needs an even patch grid, got {grid}"
        );
        Self {
            norm: nn::layer_norm(&path / "norm", vec![vision], Default::default()),
            mlp: MlpProjector::new(&path / "mlp", 4 * vision, hidden),
            grid,
        }
    }
}

impl PatchMerger {
    /// The layer whose output the language model reads.
    pub fn output_layer(&self) -> &nn::Linear {
        self.mlp.output_layer()
    }
}

impl Module for PatchMerger {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, _, c) = x.size3().expect("[batch, patches, dim]");
        let g = self.grid;
        x.apply(&self.norm)
            .view([b, g / 2, 2, g / 2, 2, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, (g / 2) * (g / 2), 4 * c])
            .apply(&self.mlp)
    }
}

/// InstructBLIP: learned query tokens that self-attend and cross-attend to the patch features,
/// then a linear projection; the language model sees one token per query.
#[derive(Debug)]
pub struct QFormer {
    queries: Tensor,
    layers: Vec<(
        nn::LayerNorm,
        Attention,
        nn::LayerNorm,
        Attention,
        nn::LayerNorm,
        nn::Linear,
        nn::Linear,
    )>,
    language_projection: nn::Linear,
}

impl QFormer {
    /// At `path` (`query_tokens`, `layers.N.*`, `language_projection`).
    pub fn new(
        path: nn::Path,
        vision: i64,
        hidden: i64,
        queries: i64,
        layers: i64,
        heads: i64,
    ) -> Self {
        let dim = vision;
        Self {
            queries: path.randn("query_tokens", &[1, queries, dim], 0.0, 0.02),
            layers: (0..layers)
                .map(|i| {
                    let p = &path / "layers" / i;
                    (
                        nn::layer_norm(&p / "self_norm", vec![dim], Default::default()),
                        Attention::new(
                            &p / "self_attn",
                            AttentionShape::square(dim, dim, heads, true),
                            Init::Torch,
                        ),
                        nn::layer_norm(&p / "cross_norm", vec![dim], Default::default()),
                        Attention::new(
                            &p / "cross_attn",
                            AttentionShape::square(dim, vision, heads, true),
                            Init::Torch,
                        ),
                        nn::layer_norm(&p / "ffn_norm", vec![dim], Default::default()),
                        linear(&p / "fc1", dim, 4 * dim, true, Init::Torch),
                        linear(&p / "fc2", 4 * dim, dim, true, Init::Torch),
                    )
                })
                .collect(),
            language_projection: linear(
                &path / "language_projection",
                dim,
                hidden,
                true,
                Init::Torch,
            ),
        }
    }
}

impl QFormer {
    /// The layer whose output the language model reads.
    pub fn output_layer(&self) -> &nn::Linear {
        &self.language_projection
    }
}

impl Module for QFormer {
    fn forward(&self, patches: &Tensor) -> Tensor {
        let b = patches.size()[0];
        let mut q = self.queries.expand([b, -1, -1], false);
        for (self_norm, self_attn, cross_norm, cross_attn, ffn_norm, fc1, fc2) in &self.layers {
            q = &q + self_attn.forward(&q.apply(self_norm));
            q = &q + cross_attn.attend(&q.apply(cross_norm), patches);
            q = &q + q.apply(ffn_norm).apply(fc1).gelu("none").apply(fc2);
        }
        q.apply(&self.language_projection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn config() -> VisionConfig {
        VisionConfig {
            image_size: 16,
            patch: 4,
            hidden: 24,
            layers: 1,
            heads: 4,
        }
    }

    #[test]
    fn each_family_gives_its_number_of_image_tokens() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let encoder = VisionEncoder::new(vs.root() / "vision", &config());
        let images = Tensor::rand([2, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let patches = encoder.forward(&images);
        assert_eq!(patches.size(), [2, 16, 24]);
        let llava = MlpProjector::new(vs.root() / "llava", 24, 32);
        assert_eq!(
            patches.apply(&llava).size(),
            [2, 16, 32],
            "one token per patch"
        );
        let qwen = PatchMerger::new(vs.root() / "qwen", 24, 32, 4);
        assert_eq!(
            patches.apply(&qwen).size(),
            [2, 4, 32],
            "a quarter of the patches"
        );
        let blip = QFormer::new(vs.root() / "blip", 24, 32, 6, 1, 4);
        assert_eq!(
            patches.apply(&blip).size(),
            [2, 6, 32],
            "one token per query"
        );
    }

    #[test]
    fn the_merger_combines_spatial_neighbours() {
        let _rng = crate::rng_lock();
        // With an identity-like check: permuting two patches inside one 2x2 block changes the
        // merged token of that block only.
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let merger = PatchMerger::new(vs.root(), 3, 5, 4);
        let x = Tensor::randn([1, 16, 3], (Kind::Float, tch::Device::Cpu));
        let swapped = x.copy();
        // Patch 0 (row 0, col 0) and patch 5 (row 1, col 1) are both in block 0.
        swapped.get(0).get(0).copy_(&x.get(0).get(5));
        swapped.get(0).get(5).copy_(&x.get(0).get(0));
        let a = x.apply(&merger);
        let b = swapped.apply(&merger);
        let diff: Vec<f64> = (0..4)
            .map(|t| {
                (a.get(0).get(t) - b.get(0).get(t))
                    .abs()
                    .max()
                    .double_value(&[])
            })
            .collect();
        assert!(diff[0] > 1e-6, "{diff:?}");
        assert!(diff[1..].iter().all(|d| *d < 1e-6), "{diff:?}");
    }
}
