"""Baseline GPT: the GPT-2 architecture (Radford et al. 2019), and the warm-up stack of the image models.

Shapes: B batch, T tokens, C = n_embd width, nh heads, hs = C // nh head size, V padded vocabulary.
Module names follow GPT-2 (wte, wpe, h, ln_f, c_attn, c_proj, c_fc, lm_head) so that Hugging Face
weights load by a key-by-key copy (models/hf_gpt2.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import ConfigError


@dataclass
class GPTConfig:
    name: str = "gpt"
    block_size: int = 1024    # longest context; position embeddings exist for these positions only
    vocab_size: int = 0       # 0: the dataset's vocabulary padded up to a multiple of 64 (50257 -> 50304)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True         # GPT-2 has biases in linears and LayerNorms

    def validate(self) -> None:
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
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
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def init_gpt2_(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and residual projections (c_proj)
    scaled by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        if T > self.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than model.block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean next-token cross-entropy over positions whose target is not -1 (masked)."""
    if targets is None:
        return None
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = Embedding(cfg)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        init_gpt2_(self, cfg.n_layer)
        self.lm_head.weight = self.emb.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.emb(idx)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, lm_loss(logits, targets)

    def param_counts(self) -> dict[str, int]:
        """Parameters per component (the tied head is counted once, with the embedding)."""
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"embedding": count(self.emb), "blocks": count(self.h), "ln_f": count(self.ln_f)}

    def flops_per_token(self) -> float:
        """Training FLOPs per token at T = block_size: 3x forward (backward costs two forwards).

        Forward counts every multiply-add as 2 FLOPs: the linears (2 * their weights per token), the
        head (2 * C * V) and attention scores and weighted sum (2 * 2 * T * C per layer, the full T x T
        product as the math kernel computes it; flash kernels skip the masked half). Embeddings,
        LayerNorm, GELU, softmax and the loss are elementwise and left out (under 1% at GPT-2 size).
        """
        c = self.cfg
        linear = c.n_layer * (3 * c.n_embd ** 2 + c.n_embd ** 2 + 8 * c.n_embd ** 2)
        attention = c.n_layer * 2 * c.block_size * c.n_embd
        forward = 2 * (linear + attention + c.n_embd * c.vocab_size)
        return 3.0 * forward
