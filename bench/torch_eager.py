#!/usr/bin/env python3
"""The `fft_mix` training step of `mipipe-stage-torch`, written in plain PyTorch eager.

The same architecture, sizes, batch and optimizer as `examples/method_step_time.rs`: a ViT
(conv patch embedding, learned positions, pre-LayerNorm blocks with biased attention and a GELU
MLP), LLaVA's 2-layer MLP projector, and a Llama-style decoder (RMSNorm, rotary embeddings,
causal scaled_dot_product_attention with a boolean mask, SwiGLU), vision frozen, AdamW, answer
cross-entropy. Prints seconds per step (mean of N after one warm-up step).

Usage: python bench/torch_eager.py [steps]   (needs torch 2.11; bench/torch.sh installs it)
"""
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, heads, bias):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.o_proj = nn.Linear(dim, dim, bias=bias)
        self.heads = heads

    def forward(self, x, rotary=None, mask=None):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).contiguous().view(b, t, h))


class Rotary:
    def __init__(self, head_dim, max_len):
        inv = torch.exp(torch.arange(0, head_dim, 2).float() / head_dim * -math.log(10000.0))
        angles = torch.arange(max_len).float()[:, None] * inv[None, :]
        angles = torch.cat([angles, angles], -1)
        self.cos, self.sin = angles.cos(), angles.sin()

    def __call__(self, x):
        t, half = x.shape[2], x.shape[3] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * self.cos[:t] + rotated * self.sin[:t]


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class DecoderBlock(nn.Module):
    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(dim), Attention(dim, heads, bias=False)
        self.ffn_norm = RMSNorm(dim)
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x, rotary, mask):
        x = x + self.attn(self.attn_norm(x), rotary, mask)
        h = self.ffn_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class EncoderBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, bias=True)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 128, 4, stride=4)
        self.position = nn.Parameter(torch.randn(1, 64, 128) * 0.02)
        self.vision_blocks = nn.ModuleList([EncoderBlock(128, 4) for _ in range(2)])
        self.vision_norm = nn.LayerNorm(128)
        self.linear_1, self.linear_2 = nn.Linear(128, 256), nn.Linear(256, 256)
        self.embed_tokens = nn.Embedding(512, 256)
        self.blocks = nn.ModuleList([DecoderBlock(256, 8, 768) for _ in range(4)])
        self.norm = RMSNorm(256)
        self.lm_head = nn.Linear(256, 512, bias=False)
        self.rotary = Rotary(32, 256)

    def forward(self, images, tokens, padding):
        x = self.patch_embed((images - 0.5) * 2.0).flatten(2).transpose(1, 2) + self.position
        for block in self.vision_blocks:
            x = block(x)
        image = self.linear_2(F.gelu(self.linear_1(self.vision_norm(x))))
        h = torch.cat([image, self.embed_tokens(tokens)], 1)
        b, t = h.shape[0], h.shape[1]
        keys = torch.cat([torch.ones(b, image.shape[1], dtype=torch.bool), padding], 1)
        mask = torch.ones(t, t, dtype=torch.bool).tril().view(1, 1, t, t) & keys.view(b, 1, 1, t)
        for block in self.blocks:
            h = block(h, self.rotary, mask)
        return self.lm_head(self.norm(h))


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.manual_seed(0)
    model = Model()
    for module in [model.patch_embed, model.vision_blocks, model.vision_norm]:
        for p in module.parameters():
            p.requires_grad_(False)
    model.position.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(8, 3, 32, 32)
    tokens = torch.randint(0, 512, (8, 48))
    padding = torch.ones(8, 48, dtype=torch.bool)
    padding[:, -1] = False
    answer = torch.zeros(8, 64 + 48)
    answer[:, 64 + 46] = 1.0
    targets = torch.cat([torch.zeros(8, 64, dtype=torch.long), tokens], 1)

    def step():
        logits = model(images, tokens, padding)
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, 512), targets[:, 1:].reshape(-1), reduction="none")
        weight = answer[:, 1:].reshape(-1)
        loss = (losses * weight).sum() / weight.sum().clamp_min(1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(f'{{"implementation": "pytorch-eager", "seconds_per_step": {(time.perf_counter() - start) / steps:.5f}, "threads": {torch.get_num_threads()}}}')


if __name__ == "__main__":
    main()
