//! A LLaVA checkpoint's `config.json`, read with transformers' defaults: the hub's
//! `llava-hf/llava-1.5-7b-hf` spells out only what differs from them (its `text_config` names the
//! vocabulary and little else), so every absent field takes the value `LlavaConfig`,
//! `LlamaConfig` and `CLIPVisionConfig` (with LLaVA's vision defaults) would give it.

use std::path::Path;

use serde::Deserialize;

use crate::layers::DecoderConfig;
use crate::vision::{Activation, EncoderShape};

/// Which vision layers feed the projector: one (`-2`: the penultimate) or several, concatenated.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayer {
    /// One layer's hidden states.
    One(i64),
    /// Several layers' hidden states, concatenated along the width.
    Many(Vec<i64>),
}

/// The CLIP vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// Width.
    pub hidden: i64,
    /// MLP width.
    pub intermediate: i64,
    /// Encoder layers.
    pub layers: i64,
    /// Heads.
    pub heads: i64,
    /// Input side in pixels.
    pub image_size: i64,
    /// Patch side in pixels.
    pub patch: i64,
    /// MLP activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Input channels.
    pub channels: i64,
}

impl ClipConfig {
    /// Patches per image (without the class token).
    pub fn patches(&self) -> i64 {
        (self.image_size / self.patch).pow(2)
    }

    /// The shape of each encoder layer.
    pub fn block_shape(&self) -> EncoderShape {
        EncoderShape {
            dim: self.hidden,
            heads: self.heads,
            ffn: self.intermediate,
            activation: self.activation,
            norm_eps: self.norm_eps,
        }
    }
}

/// Everything that shapes a LLaVA model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlavaConfig {
    /// The language model.
    pub text: DecoderConfig,
    /// The vision tower.
    pub vision: ClipConfig,
    /// The placeholder token that image features replace.
    pub image_token_id: i64,
    /// Image tokens per picture.
    pub image_seq_length: i64,
    /// The projector's activation.
    pub projector_activation: Activation,
    /// Whether the projector's layers have biases.
    pub projector_bias: bool,
    /// Which vision layers feed the projector.
    pub feature_layer: FeatureLayer,
    /// `default` drops the class token, `full` keeps it.
    pub keep_class_token: bool,
    /// Token ids of the language model's special tokens, where the config names them.
    pub bos_token_id: Option<i64>,
    /// End of sequence.
    pub eos_token_id: Option<i64>,
    /// Padding.
    pub pad_token_id: Option<i64>,
}

impl LlavaConfig {
    /// Reads `config.json` of a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("config.json");
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let raw: RawLlava = serde_json::from_slice(&bytes)
            .map_err(|e| format!("`{}` is not a LLaVA config: {e}", path.display()))?;
        raw.resolve()
            .map_err(|e| format!("`{}`: {e}", path.display()))
    }

    /// The vision layers whose hidden states feed the projector, as indices into the list of
    /// hidden states (0: the embeddings after `pre_layrnorm`, i: the output of layer i).
    pub fn feature_indices(&self) -> Result<Vec<usize>, String> {
        let count = self.vision.layers + 1;
        let layers = match &self.feature_layer {
            FeatureLayer::One(i) => vec![*i],
            FeatureLayer::Many(list) => list.clone(),
        };
        layers
            .into_iter()
            .map(|i| {
                let index = if i < 0 { count + i } else { i };
                if (0..count).contains(&index) {
                    Ok(index as usize)
                } else {
                    Err(format!(
                        "vision_feature_layer {i} is outside the {count} hidden states of a \
                         {}-layer vision tower",
                        self.vision.layers
                    ))
                }
            })
            .collect()
    }

    /// Image tokens the language model sees per picture.
    pub fn tokens_per_image(&self) -> i64 {
        self.vision.patches() + i64::from(self.keep_class_token)
    }
}

fn default_image_token() -> i64 {
    32000
}
fn default_seq_length() -> i64 {
    576
}
fn default_gelu() -> String {
    "gelu".into()
}
fn default_strategy() -> String {
    "default".into()
}
fn default_feature_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct RawLlava {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    text_config: RawLlama,
    #[serde(default)]
    vision_config: RawClip,
    #[serde(default = "default_image_token", alias = "image_token_id")]
    image_token_index: i64,
    #[serde(default = "default_seq_length")]
    image_seq_length: i64,
    #[serde(default = "default_gelu")]
    projector_hidden_act: String,
    #[serde(default = "default_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "default_feature_layer")]
    vision_feature_layer: FeatureLayer,
    #[serde(default = "yes")]
    multimodal_projector_bias: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    pad_token_id: Option<i64>,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawLlama {
    model_type: Option<String>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    hidden_act: String,
    max_position_embeddings: i64,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    attention_bias: bool,
    mlp_bias: bool,
    tie_word_embeddings: bool,
    bos_token_id: Option<i64>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<i64>,
}

impl Default for RawLlama {
    /// `LlamaConfig()`'s defaults (Llama-2-7B's shape).
    fn default() -> Self {
        Self {
            model_type: None,
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_parameters: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

#[derive(Deserialize, Default)]
struct RawRope {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default, rename = "type")]
    legacy_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawClip {
    model_type: Option<String>,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    image_size: i64,
    patch_size: i64,
    hidden_act: String,
    layer_norm_eps: f64,
    num_channels: i64,
}

impl Default for RawClip {
    /// `LlavaConfig`'s vision defaults (CLIP ViT-L/14 at 336 px) over `CLIPVisionConfig()`'s.
    fn default() -> Self {
        Self {
            model_type: None,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            num_channels: 3,
        }
    }
}

impl RawLlava {
    fn resolve(self) -> Result<LlavaConfig, String> {
        if let Some(kind) = self.model_type.as_deref() {
            if kind != "llava" {
                return Err(format!(
                    "model_type `{kind}` is not `llava`; this loader reads LLaVA-1.5 checkpoints \
                     (LlavaForConditionalGeneration)"
                ));
            }
        }
        let t = self.text_config;
        if let Some(kind) = t.model_type.as_deref() {
            if kind != "llama" {
                return Err(format!(
                    "text_config.model_type `{kind}` is not `llama` (LLaVA-1.5's language model)"
                ));
            }
        }
        if t.hidden_act != "silu" {
            return Err(format!(
                "text_config.hidden_act `{}`: only `silu` (Llama's SwiGLU) is implemented",
                t.hidden_act
            ));
        }
        if t.attention_bias || t.mlp_bias {
            return Err(
                "text_config.attention_bias / mlp_bias: Llama layers with biases are not \
                 implemented"
                    .into(),
            );
        }
        for rope in [&t.rope_parameters, &t.rope_scaling].into_iter().flatten() {
            let kind = rope.rope_type.as_deref().or(rope.legacy_type.as_deref());
            if !matches!(kind, None | Some("default")) {
                return Err(format!(
                    "text_config: rope type `{}` is not implemented (only the default rotary \
                     embedding)",
                    kind.unwrap_or_default()
                ));
            }
        }
        let rope_theta = t
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(t.rope_theta)
            .unwrap_or(10_000.0);
        let heads = t.num_attention_heads;
        let kv_heads = t.num_key_value_heads.unwrap_or(heads);
        if heads % kv_heads != 0 {
            return Err(format!(
                "text_config: {heads} attention heads cannot be grouped over {kv_heads} \
                 key/value heads"
            ));
        }
        let eos_token_id = match &t.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::Array(ids)) => ids.first().and_then(|v| v.as_i64()),
            _ => None,
        };
        let text = DecoderConfig {
            vocab: t.vocab_size,
            hidden: t.hidden_size,
            layers: t.num_hidden_layers,
            heads,
            ffn: t.intermediate_size,
            max_len: t.max_position_embeddings,
            norm_eps: t.rms_norm_eps,
            kv_heads,
            head_dim: t.head_dim.unwrap_or(t.hidden_size / heads),
            rope_theta,
            tie_embeddings: self.tie_word_embeddings || t.tie_word_embeddings,
        };
        let v = self.vision_config;
        if let Some(kind) = v.model_type.as_deref() {
            if kind != "clip_vision_model" {
                return Err(format!(
                    "vision_config.model_type `{kind}` is not `clip_vision_model`"
                ));
            }
        }
        let activation = |name: &str, field: &str| {
            Activation::from_hf(name).ok_or_else(|| {
                format!("{field} `{name}` is not implemented (`gelu` or `quick_gelu`)")
            })
        };
        let vision = ClipConfig {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            image_size: v.image_size,
            patch: v.patch_size,
            activation: activation(&v.hidden_act, "vision_config.hidden_act")?,
            norm_eps: v.layer_norm_eps,
            channels: v.num_channels,
        };
        let keep_class_token = match self.vision_feature_select_strategy.as_str() {
            "default" => false,
            "full" => true,
            other => {
                return Err(format!(
                    "vision_feature_select_strategy `{other}`: expected `default` or `full`"
                ))
            }
        };
        let config = LlavaConfig {
            text,
            vision,
            image_token_id: self.image_token_index,
            image_seq_length: self.image_seq_length,
            projector_activation: activation(&self.projector_hidden_act, "projector_hidden_act")?,
            projector_bias: self.multimodal_projector_bias,
            feature_layer: self.vision_feature_layer,
            keep_class_token,
            bos_token_id: t.bos_token_id,
            eos_token_id,
            pad_token_id: self.pad_token_id.or(t.pad_token_id),
        };
        config.feature_indices()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub's llava-1.5-7b-hf config.json, as it is published.
    const LLAVA_15_7B: &str = r#"{
      "architectures": ["LlavaForConditionalGeneration"],
      "ignore_index": -100,
      "image_token_index": 32000,
      "model_type": "llava",
      "pad_token_id": 32001,
      "projector_hidden_act": "gelu",
      "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064
      },
      "tie_word_embeddings": false,
      "torch_dtype": "float16",
      "transformers_version": "4.36.0.dev0",
      "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000
      },
      "vision_feature_layer": -2,
      "vision_feature_select_strategy": "default",
      "vocab_size": 32064
    }"#;

    #[test]
    fn the_published_7b_config_reads_with_transformers_defaults() {
        let raw: RawLlava = serde_json::from_str(LLAVA_15_7B).unwrap();
        let config = raw.resolve().unwrap();
        assert_eq!(config.text.vocab, 32064);
        assert_eq!(
            (config.text.hidden, config.text.layers, config.text.heads),
            (4096, 32, 32)
        );
        assert_eq!((config.text.kv_heads, config.text.head_dim), (32, 128));
        assert_eq!(config.text.ffn, 11008);
        assert_eq!(config.text.rope_theta, 10_000.0);
        assert_eq!(config.text.max_len, 4096);
        assert_eq!(config.vision.activation, Activation::QuickGelu);
        assert_eq!(config.vision.patches(), 576);
        assert_eq!(config.tokens_per_image(), 576);
        assert_eq!(config.feature_indices().unwrap(), vec![23]);
        assert_eq!(config.pad_token_id, Some(32001));
        assert!(!config.text.tie_embeddings);
    }

    #[test]
    fn unsupported_variants_are_refused_with_the_field_named() {
        for (patch, field) in [
            (r#""model_type": "qwen2_vl""#, "model_type"),
            (r#""vision_feature_layer": -30"#, "vision_feature_layer"),
            (
                r#""vision_feature_select_strategy": "cls""#,
                "vision_feature_select_strategy",
            ),
            (r#""projector_hidden_act": "relu""#, "projector_hidden_act"),
        ] {
            let mut value: serde_json::Value = serde_json::from_str(LLAVA_15_7B).unwrap();
            let (key, v) = patch.split_once(": ").unwrap();
            value[key.trim_matches('"')] = serde_json::from_str(v).unwrap();
            let raw: RawLlava = serde_json::from_value(value).unwrap();
            let error = raw.resolve().unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        }
        let mut value: serde_json::Value = serde_json::from_str(LLAVA_15_7B).unwrap();
        value["text_config"]["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
        let raw: RawLlava = serde_json::from_value(value).unwrap();
        assert!(raw.resolve().unwrap_err().contains("rope type `linear`"));
    }
}
