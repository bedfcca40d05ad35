//! Llama-style decoder blocks: RMSNorm, rotary position embeddings, causal self-attention with
//! `scaled_dot_product_attention`, SwiGLU feed-forward. Parameter paths equal module paths
//! (`layers.0.attn.q_proj.weight`), so safetensors checkpoints map one to one.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Decoder hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecoderConfig {
    /// Vocabulary size.
    pub vocab: i64,
    /// Hidden width.
    pub hidden: i64,
    /// Layers.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Feed-forward width.
    pub ffn: i64,
    /// Longest sequence.
    pub max_len: i64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
}

/// Root-mean-square layer norm.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm at `path` (`path.weight`).
    pub fn new(path: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: path.ones("weight", &[dim]),
            eps,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (variance + self.eps).rsqrt() * &self.weight
    }
}

/// Rotary position embedding tables.
#[derive(Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Tables for `max_len` positions of `head_dim`-wide heads.
    pub fn new(head_dim: i64, max_len: i64, device: tch::Device) -> Self {
        let inv = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device))
            .divide_scalar(head_dim as f64)
            .multiply_scalar(-(10_000f64.ln()))
            .exp();
        let positions = Tensor::arange(max_len, (Kind::Float, device)).unsqueeze(1);
        let angles = positions * inv.unsqueeze(0);
        let angles = Tensor::cat(&[&angles, &angles], -1);
        Self {
            cos: angles.cos(),
            sin: angles.sin(),
        }
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let seq = x.size()[2];
        let half = x.size()[3] / 2;
        let cos = self.cos.narrow(0, 0, seq);
        let sin = self.sin.narrow(0, 0, seq);
        let x1 = x.narrow(-1, 0, half);
        let x2 = x.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x * cos + rotated * sin
    }
}

/// Multi-head attention: causal self-attention in the decoder, bidirectional in the vision
/// encoder, and cross-attention (queries from one sequence, keys from another) in the Q-Former.
#[derive(Debug)]
pub struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    o_proj: nn::Linear,
    heads: i64,
}

/// Which positions may attend to which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masking {
    /// Each position sees itself and earlier ones (the decoder).
    Causal,
    /// Every position sees every other (vision encoder, Q-Former).
    Full,
}

impl Attention {
    /// Projections at `path.{q,k,v,o}_proj`: queries from width `query_dim`, keys and values
    /// from width `key_dim`, output `query_dim`.
    pub fn new(path: nn::Path, query_dim: i64, key_dim: i64, heads: i64, bias: bool) -> Self {
        let config = nn::LinearConfig {
            bias,
            ..Default::default()
        };
        Self {
            q_proj: nn::linear(&path / "q_proj", query_dim, query_dim, config),
            k_proj: nn::linear(&path / "k_proj", key_dim, query_dim, config),
            v_proj: nn::linear(&path / "v_proj", key_dim, query_dim, config),
            o_proj: nn::linear(&path / "o_proj", query_dim, query_dim, config),
            heads,
        }
    }

    /// Self-attention over `x` (`[batch, seq, dim]`); `padding` (`[batch, seq]`, true for real
    /// tokens) hides padded keys; `rotary` rotates queries and keys.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: Option<&Rotary>,
        padding: Option<&Tensor>,
        masking: Masking,
    ) -> Tensor {
        self.attend(x, x, rotary, padding, masking)
    }

    /// Queries from `x`, keys and values from `context`.
    pub fn attend(
        &self,
        x: &Tensor,
        context: &Tensor,
        rotary: Option<&Rotary>,
        padding: Option<&Tensor>,
        masking: Masking,
    ) -> Tensor {
        let (b, t, h) = x.size3().expect("[batch, seq, dim]");
        let s = context.size()[1];
        let head_dim = h / self.heads;
        let split = |y: Tensor, len: i64| y.view([b, len, self.heads, head_dim]).transpose(1, 2);
        let mut q = split(x.apply(&self.q_proj), t);
        let mut k = split(context.apply(&self.k_proj), s);
        let v = split(context.apply(&self.v_proj), s);
        if let Some(rotary) = rotary {
            q = rotary.apply(&q);
            k = rotary.apply(&k);
        }
        let mut mask = match masking {
            Masking::Causal => Some(
                Tensor::ones([t, s], (Kind::Bool, x.device()))
                    .tril(0)
                    .view([1, 1, t, s]),
            ),
            Masking::Full => None,
        };
        if let Some(p) = padding {
            let keys = p.view([b, 1, 1, s]);
            mask = Some(match mask {
                Some(m) => m.logical_and(&keys),
                None => keys.expand([b, 1, t, s], false),
            });
        }
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None::<f64>, false);
        y.transpose(1, 2)
            .contiguous()
            .view([b, t, h])
            .apply(&self.o_proj)
    }
}

/// SwiGLU feed-forward.
#[derive(Debug)]
pub struct SwiGlu {
    gate_proj: nn::Linear,
    up_proj: nn::Linear,
    down_proj: nn::Linear,
}

impl SwiGlu {
    /// Projections at `path.{gate,up,down}_proj`.
    pub fn new(path: nn::Path, config: &DecoderConfig) -> Self {
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        Self {
            gate_proj: nn::linear(&path / "gate_proj", config.hidden, config.ffn, no_bias),
            up_proj: nn::linear(&path / "up_proj", config.hidden, config.ffn, no_bias),
            down_proj: nn::linear(&path / "down_proj", config.ffn, config.hidden, no_bias),
        }
    }
}

impl Module for SwiGlu {
    fn forward(&self, x: &Tensor) -> Tensor {
        (x.apply(&self.gate_proj).silu() * x.apply(&self.up_proj)).apply(&self.down_proj)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: SwiGlu,
}

impl Block {
    /// A block at `path`.
    pub fn new(path: nn::Path, config: &DecoderConfig) -> Self {
        Self {
            attn_norm: RmsNorm::new(&path / "attn_norm", config.hidden, config.norm_eps),
            attn: Attention::new(
                &path / "attn",
                config.hidden,
                config.hidden,
                config.heads,
                false,
            ),
            ffn_norm: RmsNorm::new(&path / "ffn_norm", config.hidden, config.norm_eps),
            ffn: SwiGlu::new(&path / "ffn", config),
        }
    }

    /// Residual attention then residual feed-forward.
    pub fn forward(&self, x: &Tensor, rotary: &Rotary, padding: Option<&Tensor>) -> Tensor {
        let x = x + self.attn.forward(
            &x.apply(&self.attn_norm),
            Some(rotary),
            padding,
            Masking::Causal,
        );
        &x + x.apply(&self.ffn_norm).apply(&self.ffn)
    }
}

/// The language model: token embeddings, blocks, final norm, output head.
#[derive(Debug)]
pub struct Decoder {
    /// Token embeddings (`embed_tokens.weight`).
    pub embed_tokens: nn::Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: nn::Linear,
    rotary: Rotary,
}

impl Decoder {
    /// A decoder at `path`.
    pub fn new(path: nn::Path, config: &DecoderConfig) -> Self {
        let blocks = (0..config.layers)
            .map(|i| Block::new(&path / "layers" / i, config))
            .collect();
        Self {
            embed_tokens: nn::embedding(
                &path / "embed_tokens",
                config.vocab,
                config.hidden,
                Default::default(),
            ),
            blocks,
            norm: RmsNorm::new(&path / "norm", config.hidden, config.norm_eps),
            lm_head: nn::linear(
                &path / "lm_head",
                config.hidden,
                config.vocab,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            ),
            rotary: Rotary::new(config.hidden / config.heads, config.max_len, path.device()),
        }
    }

    /// Logits `[batch, seq, vocab]` from input embeddings `[batch, seq, hidden]` (so image
    /// tokens and perturbed embeddings enter the same way as text).
    pub fn forward_embeddings(&self, embeddings: &Tensor, padding: Option<&Tensor>) -> Tensor {
        let mut x = embeddings.shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x, &self.rotary, padding);
        }
        x.apply(&self.norm).apply(&self.lm_head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    fn config() -> DecoderConfig {
        DecoderConfig {
            vocab: 32,
            hidden: 32,
            layers: 2,
            heads: 4,
            ffn: 64,
            max_len: 16,
            norm_eps: 1e-6,
        }
    }

    #[test]
    fn parameter_paths_are_module_paths() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = Decoder::new(vs.root(), &config());
        let names: Vec<String> = vs.variables().into_keys().collect();
        for expected in [
            "embed_tokens.weight",
            "layers.1.attn.q_proj.weight",
            "layers.0.ffn.gate_proj.weight",
            "norm.weight",
            "lm_head.weight",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn attention_is_causal() {
        let _rng = crate::rng_lock();
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let decoder = Decoder::new(vs.root(), &config());
        let tokens = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([1, 6]);
        let changed = Tensor::from_slice(&[1i64, 2, 3, 9, 9, 9]).view([1, 6]);
        let a = decoder.forward_embeddings(&tokens.apply(&decoder.embed_tokens), None);
        let b = decoder.forward_embeddings(&changed.apply(&decoder.embed_tokens), None);
        let prefix_diff = (a.narrow(1, 0, 3) - b.narrow(1, 0, 3))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            prefix_diff < 1e-6,
            "later tokens leaked into earlier positions: {prefix_diff}"
        );
    }

    #[test]
    fn a_tiny_language_model_learns_a_sequence_on_cpu() {
        let _rng = crate::rng_lock();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let decoder = Decoder::new(vs.root(), &config());
        let mut opt = nn::AdamW::default().build(&vs, 3e-3).unwrap();
        let tokens = Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]).view([1, 12]);
        let inputs = tokens.narrow(1, 0, 11);
        let targets = tokens.narrow(1, 1, 11);
        let mut losses = Vec::new();
        for _ in 0..40 {
            let logits = decoder.forward_embeddings(&inputs.apply(&decoder.embed_tokens), None);
            let loss = logits
                .view([-1, 32])
                .cross_entropy_for_logits(&targets.view([-1]));
            opt.backward_step(&loss);
            losses.push(loss.double_value(&[]));
        }
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(
            losses[39] < losses[0] * 0.2,
            "loss did not go down: {losses:?}"
        );
    }
}
