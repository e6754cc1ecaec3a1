"""The causal token mixers of the image models, behind one contract and one registry (MIXERS).

Shapes: B batch, n tokens of this call (T for a whole sequence), d width, D = C*H*W a flattened
token image, nh image heads, hs = d // nh query/key size, Dv = D // nh the part of an image one head carries.

Contract (Mixer): a mixer owns the map that paints each token's image and the causal operation that
shares images between positions.
    a, A = mixer(x, cache=None, start=0)   # x (B, n, d) -> painted a (B, n, D), mixed A (B, n, D)
    mixer.macs_per_token(T)                # multiply-adds per token, painting included
    mixer.components()                     # {"mapping": [...], "mixer": [...]} for counts and gradient norms
A_t may depend on x_0 .. x_t only. With a cache (a dict the decoder owns) the mixer keeps its state
under its own key and continues at position `start`: the same code computes the full forward and the
incremental step, so the two agree by construction (tests/test_image_lm.py checks it for every mixer).
Adding a mixer is a class here and one line in MIXERS; the registry-wide tests then cover it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.gpt import Cache, causal_attention


def causal_cumsum(a: torch.Tensor, mean: bool = False, carry: torch.Tensor | None = None,
                  start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sum A_t = carry + a_0 + ... + a_t over dim 1 (idea 1), or the running mean A_t / (t + 1)
    with t counted from the sequence start (`start` is the position of a[:, 0]).

    Returns (A in a's dtype, the float32 sum at the last position: the carry of the next call).
    Accumulated in (at least) float32 whatever the input dtype: a bf16 running sum of 1024 images
    would round at every step (8 significant bits), so its error would grow with t; in float32 the
    only bf16 rounding left is the final cast, one half-ulp of the result. The backward (a reversed
    running sum of the gradient) is accumulated in float32 too, by autograd through the same casts.
    """
    total = torch.cumsum(a, dim=1, dtype=torch.promote_types(a.dtype, torch.float32))  # (B, n, D)
    if carry is not None:
        total = total + carry.unsqueeze(1)
    out = total
    if mean:
        count = torch.arange(start + 1, start + a.size(1) + 1, device=a.device, dtype=total.dtype)  # (n,)
        out = total / count.view(1, -1, *([1] * (a.dim() - 2)))
    return out.to(a.dtype), total[:, -1]


class Mixer(nn.Module):
    """Base of the mixers: `paint` is the token -> image map, a_t = paint(x_t) (B, n, D)."""

    paint_bias = False

    def __init__(self, d: int, channels: int, height: int, width: int, heads: int = 1, bias: bool = True):
        super().__init__()
        self.D = channels * height * width
        self.paint = nn.Linear(d, self.D, bias=bias and self.paint_bias)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.paint(x)  # (B, n, D)
        return a, self.mix(a, x, cache, start)

    def mix(self, a: torch.Tensor, x: torch.Tensor, cache: Cache | None, start: int) -> torch.Tensor:
        raise NotImplementedError

    def macs_per_token(self, T: int) -> int:
        return self.paint.in_features * self.D

    def components(self) -> dict[str, list[nn.Module]]:
        return {"mapping": [self.paint], "mixer": []}


class NoMixing(Mixer):
    """The control: A_t = a_t, each token reads only its own image; what the image stage does without
    any exchange between positions (the warm-up attention, if any, still mixes before it)."""

    def mix(self, a, x, cache, start):
        return a


class RunningSum(Mixer):
    """Idea 1. Pixel p's activation from token t is q_p . k_t with k_t = W_k x_t, i.e. (W_k^T q_p) . x_t:
    the D pixel queries composed with the key map are the D rows of one matrix P = Q W_k in R^{D x d},
    so the whole painting is one linear map a_t = P x_t (nn.Linear(d, D), P unconstrained: the factored
    form with keys of width >= d spans the same maps). No bias: a running sum of a constant bias image
    would only grow as (t + 1) * b, a position counter the embeddings already provide.
    The decoding state is the float32 running sum (B, D): O(D) per token whatever the context length."""

    mean = False

    def mix(self, a, x, cache, start):
        A, carry = causal_cumsum(a, self.mean, cache.get(self) if cache is not None else None, start)
        if cache is not None:
            cache[self] = carry
        return A


class RunningMean(RunningSum):
    """Idea 1 with A_t / (t + 1): the mixed image keeps the scale of one image at every position."""

    mean = True


class ImageAttention(Mixer):
    """Idea 2: causal attention whose values are images. q, k (d -> d, nh heads of hs = d / nh) and the
    values v_t = paint(x_t) in R^D; head h owns channels [h*C/nh, (h+1)*C/nh), one contiguous slice of
    the flattened (C, H, W) layout. The decoding state is the KV cache (causal_attention)."""

    paint_bias = True

    def __init__(self, d: int, channels: int, height: int, width: int, heads: int = 1, bias: bool = True):
        super().__init__(d, channels, height, width, heads, bias)
        self.heads = heads
        self.c_attn = nn.Linear(d, 2 * d, bias=bias)  # q, k

    def mix(self, a, x, cache, start):
        B, n, d = x.shape
        q, k = (t.view(B, n, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(d, dim=2))  # (B, nh, n, hs)
        v = a.view(B, n, self.heads, -1).transpose(1, 2)  # (B, nh, n, Dv)
        return causal_attention(q, k, v, cache, self).transpose(1, 2).reshape(B, n, -1)  # (B, n, D)

    def macs_per_token(self, T: int) -> int:
        """paint d D, q and k 2 d^2, scores T d and weighted sum T D at the full T x T (as the math kernel
        computes it, masked half included, as the GPT's count)."""
        d = self.paint.in_features
        return super().macs_per_token(T) + 2 * d * d + T * d + T * self.D

    def components(self):
        return {"mapping": [self.paint], "mixer": [self.c_attn]}


MIXERS: dict[str, type[Mixer]] = {"sum": RunningSum, "mean": RunningMean, "attn": ImageAttention, "none": NoMixing}
