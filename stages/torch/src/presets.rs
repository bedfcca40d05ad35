//! Model shapes of the size presets. Images are 32x32 (the embedded benchmark's size); the
//! smaller presets use 8x8 patches (16 patches), the larger 4x4 (64 patches).

use mipipe_stage_torch_types::{Family, Size};

use crate::layers::DecoderConfig;
use crate::model::ModelConfig;
use crate::vision::VisionConfig;

/// The model of a family at a size preset, for a vocabulary of `vocab` tokens.
pub fn model_config(family: Family, size: Size, vocab: i64) -> ModelConfig {
    // (patch, vision width, vision blocks, vision heads, width, layers, heads, ffn, queries,
    // Q-Former layers)
    let (patch, v_hidden, v_layers, v_heads, hidden, layers, heads, ffn, queries, q_layers) =
        match size {
            Size::Xs => (8, 48, 1, 2, 64, 2, 4, 160, 8, 1),
            Size::S => (8, 64, 2, 4, 128, 3, 4, 320, 8, 1),
            Size::M => (4, 128, 2, 4, 256, 4, 8, 768, 16, 2),
            Size::L => (4, 256, 4, 8, 512, 8, 8, 1536, 32, 2),
        };
    ModelConfig {
        family,
        vision: VisionConfig {
            image_size: 32,
            patch,
            hidden: v_hidden,
            layers: v_layers,
            heads: v_heads,
        },
        decoder: DecoderConfig::llama(vocab, hidden, layers, heads, ffn, 512),
        queries,
        qformer_layers: q_layers,
    }
}
