"""Baseline GPT: the GPT-2 architecture (Radford et al. 2019), and the front of the image models.

Shapes: B batch, T tokens, n new tokens (incremental decoding), d = n_embd width, nh heads,
hs = d // nh head size, V padded vocabulary.
Module names follow GPT-2 (wte, wpe, h, ln_f, c_attn, c_proj, c_fc, lm_head) so that Hugging Face
weights load by a key-by-key copy (models/hf_gpt2.py).

Incremental decoding: every module that mixes positions takes an optional `cache` (a dict that the
caller owns and passes to every call) and keeps its own state in it under its own key (the module
itself). `start` is the position of the first token of the call. The full forward is the same code
with no cache, so decoding equals the forward pass by construction (and by test).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from schema import ConfigError, option

Cache = dict  # {module: its decoding state}; one per sequence batch, owned by a Decoder


@dataclass
class GPTConfig:
    name: str = option("gpt", "the registered model (models/__init__.py)")
    block_size: int = option(1024, "longest context; position embeddings exist for these positions only")
    vocab_size: int = option(0, "0: the dataset's vocabulary padded up to a multiple of 64 (50257 -> 50304)")
    n_layer: int = option(12, "transformer blocks")
    n_head: int = option(12, "attention heads per block")
    n_embd: int = option(768, "width d")
    dropout: float = option(0.0, "dropout on embeddings, attention weights and residual branches")
    bias: bool = option(True, "biases in linears and LayerNorms (GPT-2 has them)")

    def validate(self) -> None:
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: Cache | None, owner: nn.Module,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Causal softmax attention of n new positions: q, k (B, nh, n, hs), v (B, nh, n, Dv) -> (B, nh, n, Dv).

    With a cache, the keys and values that `owner` cached for the earlier positions come first and
    the new ones are appended. Dv may differ from hs (idea 2's values are images): torch's fused
    attention accepts that (scale 1/sqrt(hs), from q) and its dispatcher picks a kernel that supports
    it, at worst the math path. Masked weights are exact zeros times future values: the future
    changes nothing, but a NaN in the future does reach the past through the fused kernels (0 * NaN).
    """
    if cache is not None:
        if owner in cache:
            past_k, past_v = cache[owner]
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, nh, P+n, .)
        cache[owner] = (k, v)
    n, total = q.size(2), k.size(2)
    if n == total:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    rows = torch.arange(total - n, total, device=q.device)[:, None]  # absolute positions of the queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=rows >= torch.arange(total, device=q.device),
                                          dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, n, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, n, hs)
        y = causal_attention(q, k, v, cache, self, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, n, d)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x)). Either half may be left out:
    attn=False is a token-wise MLP block (no mixing between positions), mlp=False an attention-only layer."""

    def __init__(self, cfg: GPTConfig, attn: bool = True, mlp: bool = True):
        super().__init__()
        if attn:
            self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.attn = CausalSelfAttention(cfg)
        if mlp:
            self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.mlp = MLP(cfg)
        self.has_attn, self.has_mlp = attn, mlp

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.has_attn:
            x = x + self.attn(self.ln_1(x), cache)
        if self.has_mlp:
            x = x + self.mlp(self.ln_2(x))
        return x

    def macs_per_token(self, T: int, d: int) -> int:
        """Multiply-adds per token: c_attn + c_proj (4 d^2) and the T x T scores and weighted sum (2 T d,
        the full product as the math kernel computes it); the MLP 8 d^2."""
        return self.has_attn * (4 * d * d + 2 * T * d) + self.has_mlp * 8 * d * d


def init_gpt2_(module: nn.Module, n_branches: float) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and residual projections (c_proj)
    scaled by 1/sqrt(n_branches) so the residual stream's variance does not grow with depth."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(n_branches) if name.endswith("c_proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class Embedding(nn.Module):
    """Token + learned position embeddings, shared by the GPT and the image models' front."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """idx (B, n) at positions start .. start + n - 1 -> (B, n, d)."""
        end = start + idx.size(1)
        if end > self.block_size:
            raise ValueError(f"sequence of {end} tokens is longer than model.block_size={self.block_size}")
        pos = torch.arange(start, end, device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy over positions whose target is not -1 (masked)."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def count_params(modules: list[nn.Module | None], seen: set[int]) -> int:
    """Parameters of `modules` not already in `seen` (ids; updated), so tied weights count once."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    return sum(p.numel() for p in params if id(p) not in seen and not seen.add(id(p)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = Embedding(cfg)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        init_gpt2_(self, 2 * cfg.n_layer)
        self.lm_head.weight = self.emb.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Cache | None = None,
                start: int = 0):
        x = self.emb(idx, start)  # (B, n, d)
        for block in self.h:
            x = block(x, cache)
        logits = self.lm_head(self.ln_f(x))  # (B, n, V)
        return logits, lm_loss(logits, targets)

    def components(self) -> dict[str, list[nn.Module]]:
        """The parts whose parameters and gradients are reported apart (the tied head is the embedding)."""
        return {"embedding": [self.emb], "blocks": [self.h], "head": [self.ln_f]}

    def param_counts(self) -> dict[str, int]:
        seen: set[int] = set()
        return {name: count_params(modules, seen) for name, modules in self.components().items()}

    def recompute_flops_per_token(self) -> float:
        """FLOPs per token that activation checkpointing adds to flops_per_token (none here)."""
        return 0.0

    def flops_per_token(self) -> float:
        """Training FLOPs per token at T = block_size: 3x forward (backward costs two forwards).

        Forward counts every multiply-add as 2 FLOPs: the blocks (Block.macs_per_token: linears and
        attention at the full T x T, as the math kernel computes it; flash kernels skip the masked
        half) and the head (d * V). Embeddings, LayerNorm, GELU, softmax and the loss are elementwise
        and left out (under 1% at GPT-2 size).
        """
        c = self.cfg
        macs = sum(block.macs_per_token(c.block_size, c.n_embd) for block in self.h) + c.n_embd * c.vocab_size
        return 3.0 * 2.0 * macs
