"""The pieces every model shares: embeddings, the MLP, the loss, GPT-2's initialisation, and the token
mixer contract that every mixer of the registry (models/backbone.py MIXERS) honours.

Shapes: B batch, T tokens of a sequence, n tokens of one call (T, or 1 when decoding), d width, V vocabulary.

Incremental decoding: every mixer takes an optional `cache` (a dict the caller owns and passes to every
call) and keeps its state in it under its own key (the module itself); `start` is the position of the
call's first token. The full forward is the same code with no cache, so decoding equals the forward by
construction (and by test: tests/test_backbone.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

Cache = dict  # {module: its decoding state}; one per sequence batch, owned by a Decoder


class TokenMixer(nn.Module):
    """The contract of a token mixer: the only place where positions exchange information.

        y = mixer(x, cache=None, start=0)   # x (B, n, d), already normalised -> y (B, n, d); y_t sees x_0..x_t
        mixer.flops_per_token(T)            # training FLOPs (forward + backward) per token at sequence length T
        mixer.recompute_flops_per_token(T)  # what activation checkpointing adds (hardware FLOPs)
        mixer.components()                  # {part: [modules]}: its parameters, grouped for counts and norms
        mixer.trace                         # None, or a dict that forward fills with named tensors (analysis)

    FLOPs follow torch.utils.flop_counter's convention: 2 per multiply-add of matmuls and convolutions
    (and FFTs, models/conv.py); elementwise work is left out. Most mixers cost 3x their forward in training
    (the backward computes two matmuls per forward matmul): they define forward_flops_per_token only.
    """

    trace: dict | None = None
    input_part: str = ""  # the part of components() its block's input norm (ln_1) belongs to; "": the first

    def forward_flops_per_token(self, T: int) -> float:
        raise NotImplementedError

    def flops_per_token(self, T: int) -> float:
        return 3.0 * self.forward_flops_per_token(T)

    def recompute_flops_per_token(self, T: int) -> float:
        return 0.0

    def components(self) -> dict[str, list[nn.Module]]:
        return {"mixer": [self]}

    def record(self, **tensors: torch.Tensor) -> None:
        """Keep detached copies of named intermediate tensors while a trace is open (models.tracing)."""
        if self.trace is not None:
            self.trace.update({k: v.detach() for k, v in tensors.items()})


def linear_flops(layer: nn.Linear) -> float:
    """Forward FLOPs per token of a linear layer: 2 per multiply-add."""
    return 2.0 * layer.in_features * layer.out_features


class MLP(nn.Module):
    def __init__(self, d: int, bias: bool, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * d, d, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def forward_flops_per_token(self) -> float:
        return linear_flops(self.c_fc) + linear_flops(self.c_proj)


class Embedding(nn.Module):
    """Token + learned position embeddings."""

    def __init__(self, vocab_size: int, block_size: int, d: int, dropout: float):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, d)
        self.wpe = nn.Embedding(block_size, d)
        self.drop = nn.Dropout(dropout)

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


def component_params(components: dict[str, list[nn.Module | None]]) -> dict[str, list[nn.Parameter]]:
    """Each component's parameters, a parameter shared by several (the tied head) in the first that holds it."""
    seen: set[int] = set()
    return {name: [p for m in modules if m is not None for p in m.parameters()
                   if id(p) not in seen and not seen.add(id(p))] for name, modules in components.items()}


def init_gpt2_(module: nn.Module, n_branches: int, keep: tuple[type, ...] = ()) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and residual projections (c_proj) scaled
    by 1/sqrt(n_branches) so the residual stream's variance does not grow with depth. Parameters inside
    modules of the `keep` types keep the initialisation they were built with (convolutions: N(0, 0.02)
    kernels would make a short convolution, or Hyena's product of three, start as good as zero)."""
    kept = {id(p) for m in module.modules() if isinstance(m, keep) for p in m.parameters()}
    for name, p in module.named_parameters():
        if id(p) in kept:
            continue
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(n_branches) if name.endswith("c_proj.weight") else 0.02
            nn.init.normal_(p, mean=0.0, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
