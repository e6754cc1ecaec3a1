"""Causal softmax attention: the GPT's token mixer (`attn`), and the kernel idea 2's image attention
shares (models/image.py).

Shapes: B batch, n new positions, P cached positions, d width, nh heads, hs = d // nh head size, Dv the
size of one head's value (hs here; idea 2's values are images).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import Cache, TokenMixer, linear_flops


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
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n, total, q.device), dropout_p=dropout_p)


def causal_mask(n: int, total: int, device: torch.device) -> torch.Tensor:
    """(n, total) bool: the last n of `total` positions each see themselves and every position before."""
    rows = torch.arange(total - n, total, device=device)[:, None]  # absolute positions of the queries
    return rows >= torch.arange(total, device=device)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The causal softmax weights (B, nh, n, P+n) that causal_attention applies, written out (for traces)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    return scores.masked_fill(~causal_mask(q.size(2), k.size(2), q.device), float("-inf")).softmax(-1)


def attention_flops(T: int, d_qk: int, d_v: int) -> float:
    """Forward FLOPs per token of causal attention over T positions: the T scores of width d_qk and the
    weighted sum of T values of width d_v, at the full T x T (as the math kernel computes it; flash
    kernels skip the masked half)."""
    return 2.0 * T * (d_qk + d_v)


class CausalSelfAttention(TokenMixer):
    """GPT-2's multi-head causal self-attention (module names as GPT-2's: c_attn, c_proj)."""

    def __init__(self, d: int, n_head: int, bias: bool, dropout: float):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        B, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, n, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, n, hs)
        y = causal_attention(q, k, v, cache, self, self.dropout if self.training else 0.0)
        if self.trace is not None:
            keys = cache[self][0] if cache is not None else k
            self.record(attention=attention_weights(q, keys))
        y = y.transpose(1, 2).contiguous().view(B, n, d)
        return self.resid_dropout(self.c_proj(y))

    def components(self) -> dict[str, list[nn.Module]]:
        return {"attn": [self]}

    def forward_flops_per_token(self, T: int) -> float:
        d = self.c_proj.in_features
        return linear_flops(self.c_attn) + linear_flops(self.c_proj) + attention_flops(T, d, d)
