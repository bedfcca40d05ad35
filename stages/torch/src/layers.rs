//! Llama-style decoder blocks: RMSNorm, rotary position embeddings, causal self-attention with
//! `scaled_dot_product_attention`, SwiGLU feed-forward. Parameter paths equal module paths
//! (`layers.0.attn.q_proj.weight`), so safetensors checkpoints map one to one.
//!
//! Positions are explicit: every token carries its position id, counted over the real tokens of
//! its row only (as transformers derives them from the attention mask), so how much padding a
//! row gets from its batch changes nothing it computes. A [`KvCache`] keeps each layer's keys and
//! values, so decoding a token costs one position, not the whole sequence.
//!
//! The language model is initialised as Llama is (`initializer_range` 0.02): its linear weights
//! and token embeddings are N(0, 0.02²), biases zero. The scale matters beyond training speed:
//! the paper's ε, α and σ are absolute sizes in embedding space, so their strength depends on
//! it. The vision side (its own pretrained tower in the paper's models) keeps PyTorch's default
//! initialisation ([`Init::Torch`]).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::lora::{Adapters, Projection};

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
    /// Longest sequence it is meant for (`max_position_embeddings`; informational: rotary
    /// angles are computed per position, so longer sequences run, as in transformers).
    pub max_len: i64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Key/value heads (grouped-query attention: each serves `heads / kv_heads` query heads).
    pub kv_heads: i64,
    /// Width of one head (Llama: `hidden / heads` unless the checkpoint says otherwise).
    pub head_dim: i64,
    /// Rotary base (`rope_theta`).
    pub rope_theta: f64,
    /// Whether the output head shares the token embeddings' weight.
    pub tie_embeddings: bool,
}

impl DecoderConfig {
    /// A Llama-shaped decoder of these sizes with one key/value head per query head, heads of
    /// `hidden / heads`, rotary base 10,000 and its own output head (the small models).
    pub fn llama(vocab: i64, hidden: i64, layers: i64, heads: i64, ffn: i64, max_len: i64) -> Self {
        Self {
            vocab,
            hidden,
            layers,
            heads,
            ffn,
            max_len,
            norm_eps: 1e-6,
            kv_heads: heads,
            head_dim: hidden / heads,
            rope_theta: 10_000.0,
            tie_embeddings: false,
        }
    }
}

/// Standard deviation of Llama-style initialisation (`initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// How a linear layer starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// N(0, 0.02²) weights, zero biases (the language model).
    Llama,
    /// PyTorch's `nn.Linear` default (Kaiming-uniform; the vision side).
    Torch,
}

/// A linear layer at `path` (`path.weight`, `path.bias`).
pub fn linear(path: nn::Path, input: i64, output: i64, bias: bool, init: Init) -> nn::Linear {
    let config = match init {
        Init::Llama => nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: INIT_STD,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias,
        },
        Init::Torch => nn::LinearConfig {
            bias,
            ..Default::default()
        },
    };
    nn::linear(path, input, output, config)
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
    /// As transformers' `LlamaRMSNorm`: normalised in fp32, cast back to the input's kind, then
    /// scaled by the gain.
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        (x32 * (variance + self.eps).rsqrt()).to_kind(kind) * &self.weight
    }
}

/// Rotary position embedding: the inverse frequencies, with each position's angles computed
/// when needed (as transformers' `LlamaRotaryEmbedding` does), so no sequence is too long.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    /// Frequencies for `head_dim`-wide heads with base `theta`, computed as transformers
    /// computes them (`1 / theta^(2i/d)` in fp32; angles `position * inv_freq`).
    pub fn new(head_dim: i64, theta: f64, device: tch::Device) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            .divide_scalar(head_dim as f64);
        let inv_freq = Tensor::from(theta)
            .to_kind(Kind::Float)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        Self { inv_freq }
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` by each token's position id
    /// (`positions`: `[batch, seq]`, int64).
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (b, _, t, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        let half = d / 2;
        let angles =
            positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, half]);
        let angles = Tensor::cat(&[&angles, &angles], -1).view([b, 1, t, d]);
        let cos = angles.cos().to_kind(x.kind());
        let sin = angles.sin().to_kind(x.kind());
        let x1 = x.narrow(-1, 0, half);
        let x2 = x.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        x * cos + rotated * sin
    }
}

/// Position ids `[batch, seq]` from a mask of real tokens (`[batch, seq]`, true or 1 for real):
/// each real token's index among its row's real tokens; padding repeats its neighbour's id
/// (it is never attended to, so the value does not matter).
pub fn position_ids(real: &Tensor) -> Tensor {
    (real.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

/// Keys and values of every decoder layer for the positions seen so far.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    /// How many positions are cached.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |(k, _)| k.size()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy that shares the stored tensors: extending the fork leaves this cache as it is
    /// (for scoring several continuations of one prompt).
    pub fn fork(&self) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                .collect(),
        }
    }
}

/// Whether autograd records operations here (not inside `no_grad`).
fn grad_mode() -> bool {
    let probe = Tensor::ones([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (probe * 2.0).requires_grad()
}

/// What the decoder attends with besides the new tokens' embeddings.
pub struct Attending<'a> {
    /// Position ids of the new tokens, `[batch, new]`.
    pub positions: &'a Tensor,
    /// Which keys are real, `[batch, cached + new]` (bool); `None`: all of them.
    pub keys: Option<&'a Tensor>,
}

/// The shape of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape<'a> {
    /// Width of the queries' input and of the output.
    pub query_dim: i64,
    /// Width of the keys' and values' input.
    pub key_dim: i64,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads (fewer than `heads`: grouped-query attention).
    pub kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Whether the projections have biases.
    pub bias: bool,
    /// Name of the output projection (`o_proj` in Llama, `out_proj` in CLIP).
    pub output: &'a str,
}

impl AttentionShape<'_> {
    /// Plain multi-head attention of width `dim` (heads of `dim / heads`), `o_proj` output.
    pub fn square(dim: i64, key_dim: i64, heads: i64, bias: bool) -> AttentionShape<'static> {
        AttentionShape {
            query_dim: dim,
            key_dim,
            heads,
            kv_heads: heads,
            head_dim: dim / heads,
            bias,
            output: "o_proj",
        }
    }
}

/// Multi-head attention: causal self-attention in the decoder, bidirectional in the vision
/// encoder, and cross-attention (queries from one sequence, keys from another) in the Q-Former.
/// Grouped-query attention repeats each key/value head for its group of query heads, as
/// transformers' `repeat_kv` does.
#[derive(Debug)]
pub struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Projections at `path.{q,k,v}_proj` and `path.{shape.output}`.
    pub fn new(path: nn::Path, shape: AttentionShape, init: Init) -> Self {
        Self::with_adapters(path, shape, init, None)
    }

    /// The same, with LoRA adapters on the projections `adapters` targets.
    pub fn with_adapters(
        path: nn::Path,
        shape: AttentionShape,
        init: Init,
        adapters: Option<&Adapters>,
    ) -> Self {
        let inner = shape.heads * shape.head_dim;
        let kv = shape.kv_heads * shape.head_dim;
        let projection = |name: &str, input: i64, output: i64| {
            Projection::new(&path, name, input, output, shape.bias, init, adapters)
        };
        Self {
            q_proj: projection("q_proj", shape.query_dim, inner),
            k_proj: projection("k_proj", shape.key_dim, kv),
            v_proj: projection("v_proj", shape.key_dim, kv),
            o_proj: projection(shape.output, inner, shape.query_dim),
            heads: shape.heads,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
        }
    }

    /// Bidirectional self-attention over `x` (`[batch, seq, dim]`), no positions (the vision
    /// encoder and the Q-Former add theirs to the input).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.attend(x, x)
    }

    /// Queries from `x`, keys and values from `context`, every key visible.
    pub fn attend(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (q, k, v) = self.project(x, context);
        self.combine(&q, &k, &v, None)
    }

    /// Causal self-attention of new tokens `x` over `cache` (extended with them) and themselves,
    /// rotated by their position ids; `keys` hides padded keys.
    pub fn causal(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        attending: &Attending,
        cache: Option<&mut (Tensor, Tensor)>,
    ) -> Tensor {
        let (q, k, v) = self.project(x, x);
        let q = rotary.apply(&q, attending.positions);
        let k = rotary.apply(&k, attending.positions);
        let (k, v) = match cache {
            Some(stored) => {
                let k = if stored.0.numel() == 0 {
                    k
                } else {
                    Tensor::cat(&[&stored.0, &k], 2)
                };
                let v = if stored.1.numel() == 0 {
                    v
                } else {
                    Tensor::cat(&[&stored.1, &v], 2)
                };
                *stored = (k.shallow_clone(), v.shallow_clone());
                (k, v)
            }
            None => (k, v),
        };
        let (b, t) = (q.size()[0], q.size()[2]);
        let s = k.size()[2];
        // Query i is position `s - t + i` of the combined sequence: it sees keys up to itself.
        let mut mask = Tensor::ones([t, s], (Kind::Bool, x.device()))
            .tril(s - t)
            .view([1, 1, t, s]);
        if let Some(keys) = attending.keys {
            mask = mask.logical_and(&keys.view([b, 1, 1, s]));
        }
        self.combine(&q, &k, &v, Some(mask))
    }

    /// Queries `[batch, heads, t, head_dim]`, keys and values `[batch, kv_heads, s, head_dim]`.
    fn project(&self, x: &Tensor, context: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, t, _) = x.size3().expect("[batch, seq, dim]");
        let s = context.size()[1];
        let d = self.head_dim;
        let split = |y: Tensor, len: i64, heads: i64| y.view([b, len, heads, d]).transpose(1, 2);
        (
            split(x.apply(&self.q_proj), t, self.heads),
            split(context.apply(&self.k_proj), s, self.kv_heads),
            split(context.apply(&self.v_proj), s, self.kv_heads),
        )
    }

    fn combine(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<Tensor>) -> Tensor {
        let (b, _, t, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let group = self.heads / self.kv_heads;
        let (k, v) = if group == 1 {
            (k.shallow_clone(), v.shallow_clone())
        } else {
            (
                k.repeat_interleave_self_int(group, 1, None),
                v.repeat_interleave_self_int(group, 1, None),
            )
        };
        let y =
            Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, false, None::<f64>, false);
        y.transpose(1, 2)
            .contiguous()
            .view([b, t, self.heads * d])
            .apply(&self.o_proj)
    }
}

/// SwiGLU feed-forward.
#[derive(Debug)]
pub struct SwiGlu {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl SwiGlu {
    /// Projections at `path.{gate,up,down}_proj`, with LoRA adapters where `adapters` says.
    pub fn new(path: nn::Path, config: &DecoderConfig, adapters: Option<&Adapters>) -> Self {
        let (h, f) = (config.hidden, config.ffn);
        let projection = |name: &str, input: i64, output: i64| {
            Projection::new(&path, name, input, output, false, Init::Llama, adapters)
        };
        Self {
            gate_proj: projection("gate_proj", h, f),
            up_proj: projection("up_proj", h, f),
            down_proj: projection("down_proj", f, h),
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
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: SwiGlu,
}

impl Block {
    /// A block at `path`, with LoRA adapters where `adapters` says.
    pub fn new(path: nn::Path, config: &DecoderConfig, adapters: Option<&Adapters>) -> Self {
        let shape = AttentionShape {
            query_dim: config.hidden,
            key_dim: config.hidden,
            heads: config.heads,
            kv_heads: config.kv_heads,
            head_dim: config.head_dim,
            bias: false,
            output: "o_proj",
        };
        Self {
            input_layernorm: RmsNorm::new(
                &path / "input_layernorm",
                config.hidden,
                config.norm_eps,
            ),
            self_attn: Attention::with_adapters(&path / "self_attn", shape, Init::Llama, adapters),
            post_attention_layernorm: RmsNorm::new(
                &path / "post_attention_layernorm",
                config.hidden,
                config.norm_eps,
            ),
            mlp: SwiGlu::new(&path / "mlp", config, adapters),
        }
    }

    /// Residual causal attention then residual feed-forward.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        attending: &Attending,
        cache: Option<&mut (Tensor, Tensor)>,
    ) -> Tensor {
        let x =
            x + self
                .self_attn
                .causal(&x.apply(&self.input_layernorm), rotary, attending, cache);
        &x + x.apply(&self.post_attention_layernorm).apply(&self.mlp)
    }
}

/// Gradient checkpointing of a decoder's blocks (off until [`Decoder::set_checkpointing`]).
/// A forward pass in grad mode then keeps each block's input only, not its activations, and
/// records a segment; the backward pass ([`Decoder::backward_checkpoints`],
/// [`Decoder::input_gradient`]) recomputes one block at a time from its input and carries the
/// gradient down: activation memory of one block instead of all of them, for one more forward
/// pass. libtorch's C++ API has no `torch.utils.checkpoint`, so this is done by hand.
#[derive(Debug, Default)]
struct Checkpoints {
    on: std::cell::Cell<bool>,
    segments: std::cell::RefCell<Vec<Segment>>,
}

/// One checkpointed forward pass.
#[derive(Debug)]
struct Segment {
    /// The embeddings it was given, with their graph (projector, token embeddings, δ).
    input: Tensor,
    positions: Tensor,
    keys: Option<Tensor>,
    /// The input of each block, detached.
    saved: Vec<Tensor>,
    /// The last block's output as a leaf: the head's graph starts here.
    top: Tensor,
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
    checkpoints: Checkpoints,
}

impl Decoder {
    /// A decoder at `path`, its output head at `path.lm_head`.
    pub fn new(path: nn::Path, config: &DecoderConfig) -> Self {
        let head = &path / "lm_head";
        Self::with_head(path, head, config)
    }

    /// A decoder at `body` with its output head at `head` (`head.weight`; unused when the
    /// configuration ties the head to the token embeddings), as Hugging Face checkpoints keep
    /// `lm_head` beside the model rather than inside it.
    pub fn with_head(body: nn::Path, head: nn::Path, config: &DecoderConfig) -> Self {
        Self::with_adapters(body, head, config, None)
    }

    /// The same, with LoRA adapters on the projections `adapters` targets.
    pub fn with_adapters(
        body: nn::Path,
        head: nn::Path,
        config: &DecoderConfig,
        adapters: Option<&Adapters>,
    ) -> Self {
        let blocks = (0..config.layers)
            .map(|i| Block::new(&body / "layers" / i, config, adapters))
            .collect();
        let embed_tokens = nn::embedding(
            &body / "embed_tokens",
            config.vocab,
            config.hidden,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: INIT_STD,
                },
                ..Default::default()
            },
        );
        let norm = RmsNorm::new(&body / "norm", config.hidden, config.norm_eps);
        let lm_head = if config.tie_embeddings {
            nn::Linear {
                ws: embed_tokens.ws.shallow_clone(),
                bs: None,
            }
        } else {
            linear(head, config.hidden, config.vocab, false, Init::Llama)
        };
        Self {
            embed_tokens,
            blocks,
            norm,
            lm_head,
            rotary: Rotary::new(config.head_dim, config.rope_theta, body.device()),
            checkpoints: Checkpoints::default(),
        }
    }

    /// Gradient checkpointing on or off (see [`Checkpoints`]); turning it off forgets any
    /// recorded segment.
    pub fn set_checkpointing(&self, on: bool) {
        self.checkpoints.on.set(on);
        self.checkpoints.segments.borrow_mut().clear();
    }

    /// Completes the backward pass of a loss whose `backward()` has run over checkpointed
    /// forward passes: each recorded segment's gradient is carried down its blocks (their
    /// parameters accumulating gradients) and into the graph of its input embeddings.
    pub fn backward_checkpoints(&self) {
        let segments = std::mem::take(&mut *self.checkpoints.segments.borrow_mut());
        let mut reached = Vec::new();
        for segment in segments {
            let grad = segment.top.grad();
            if !grad.defined() || !segment.input.requires_grad() {
                continue;
            }
            let grad = self.blocks_backward(&segment, grad, true);
            reached.push((segment.input * grad).sum(Kind::Float));
        }
        if !reached.is_empty() {
            // One pass over the inputs' graphs, which segments may share.
            Tensor::stack(&reached, 0).sum(Kind::Float).backward();
        }
    }

    /// The gradient of `loss` with respect to `wrt` (a tensor the input of the last recorded
    /// segment was computed from, as PGD's δ), without parameter gradients, when checkpointing
    /// is on; `None` when it is off.
    pub fn input_gradient(&self, loss: &Tensor, wrt: &Tensor) -> Option<Tensor> {
        let segment = self.checkpoints.segments.borrow_mut().pop()?;
        let top = Tensor::run_backward(&[loss], &[&segment.top], false, false)
            .pop()
            .expect("one gradient");
        let grad = self.blocks_backward(&segment, top, false);
        let reached = (&segment.input * grad).sum(Kind::Float);
        Tensor::run_backward(&[&reached], &[wrt], false, false).pop()
    }

    /// Carries `grad` (of the last block's output) down a segment's blocks, recomputing each
    /// from its saved input; with `params`, the blocks' parameters accumulate gradients.
    /// Returns the gradient of the segment's input.
    fn blocks_backward(&self, segment: &Segment, mut grad: Tensor, params: bool) -> Tensor {
        let attending = Attending {
            positions: &segment.positions,
            keys: segment.keys.as_ref(),
        };
        for (block, saved) in self.blocks.iter().zip(&segment.saved).rev() {
            let x = saved.detach().set_requires_grad(true);
            let y = block.forward(&x, &self.rotary, &attending, None);
            let reached = (y * &grad).sum(Kind::Float);
            grad = if params {
                reached.backward();
                x.grad()
            } else {
                Tensor::run_backward(&[&reached], &[&x], false, false)
                    .pop()
                    .expect("one gradient")
            };
        }
        grad
    }

    /// Logits `[batch, seq, vocab]` from input embeddings `[batch, seq, hidden]` (so image
    /// tokens and perturbed embeddings enter the same way as text); `real` (`[batch, seq]`,
    /// true for real tokens) hides padding and sets the position ids; `None`: no padding.
    pub fn forward_embeddings(&self, embeddings: &Tensor, real: Option<&Tensor>) -> Tensor {
        let (b, t, _) = embeddings.size3().expect("[batch, seq, hidden]");
        let positions = match real {
            Some(real) => position_ids(real),
            None => Tensor::arange(t, (Kind::Int64, embeddings.device()))
                .unsqueeze(0)
                .expand([b, t], false),
        };
        let keys = real.map(|r| r.to_kind(Kind::Bool));
        let attending = Attending {
            positions: &positions,
            keys: keys.as_ref(),
        };
        if !self.checkpoints.on.get() || !grad_mode() {
            return self.forward_cached(embeddings, &attending, None);
        }
        let mut saved = Vec::with_capacity(self.blocks.len());
        let top = tch::no_grad(|| {
            let mut x = embeddings.detach();
            for block in &self.blocks {
                saved.push(x.shallow_clone());
                x = block.forward(&x, &self.rotary, &attending, None);
            }
            x
        })
        .set_requires_grad(true);
        let logits = top.apply(&self.norm).apply(&self.lm_head);
        self.checkpoints.segments.borrow_mut().push(Segment {
            input: embeddings.shallow_clone(),
            positions: positions.shallow_clone(),
            keys,
            saved,
            top,
        });
        logits
    }

    /// Logits of new tokens given what `cache` holds (which it then also holds), or of a whole
    /// sequence without a cache.
    pub fn forward_cached(
        &self,
        embeddings: &Tensor,
        attending: &Attending,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        if let Some(cache) = cache.as_deref_mut() {
            if cache.layers.is_empty() {
                let empty = Tensor::zeros([0], (Kind::Float, embeddings.device()));
                cache.layers = (0..self.blocks.len())
                    .map(|_| (empty.shallow_clone(), empty.shallow_clone()))
                    .collect();
            }
        }
        let mut x = embeddings.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let stored = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = block.forward(&x, &self.rotary, attending, stored);
        }
        x.apply(&self.norm).apply(&self.lm_head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    fn config() -> DecoderConfig {
        DecoderConfig::llama(32, 32, 2, 4, 64, 16)
    }

    #[test]
    fn parameter_paths_are_module_paths() {
        let _rng = crate::rng_lock();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = Decoder::new(vs.root(), &config());
        let names: Vec<String> = vs.variables().into_keys().collect();
        for expected in [
            "embed_tokens.weight",
            "layers.1.self_attn.q_proj.weight",
            "layers.0.mlp.gate_proj.weight",
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
