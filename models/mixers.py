"""Causal mixers of the image models: pure functions, tensors in, tensors out.

Shapes: B batch, T tokens, D = C*H*W a flattened token image, nh heads, hs query/key size per head,
Dv = (C / nh) * H * W the part of an image that one head carries.
Both mixers are causal: output t depends on inputs 0..t only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_cumsum(a: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Running sum A_t = a_0 + ... + a_t over dim 1 (idea 1), or running mean A_t / (t + 1).

    Accumulated in (at least) float32 whatever the input dtype: a bf16 running sum of 1024 images
    would round at every step (8 significant bits), so its error would grow with t; in float32 the
    only bf16 rounding left is the final cast, one half-ulp of the result. The backward (a reversed
    running sum of the gradient) is accumulated in float32 too, by autograd through the same casts.
    """
    acc = torch.promote_types(a.dtype, torch.float32)
    out = torch.cumsum(a, dim=1, dtype=acc)  # (B, T, D)
    if mean:
        count = torch.arange(1, a.size(1) + 1, device=a.device, dtype=acc)  # (T,)
        out = out / count.view(1, -1, *([1] * (a.dim() - 2)))
    return out.to(a.dtype)


def image_value_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention whose values are flattened images (idea 2).

    q, k (B, nh, T, hs); v (B, nh, T, Dv) with Dv usually much larger than hs -> (B, nh, T, Dv).
    torch's scaled_dot_product_attention accepts Dv != hs (scale 1/sqrt(hs), from q), so no hand-written
    path is needed: its dispatcher skips the kernels that need equal head sizes (flash) and, at worst,
    takes the math path -- the causal softmax weights (B, nh, T, T) computed once, the weighted sum
    one batched matmul, which is what a fallback would do. On CPU (checked) Dv != hs takes the math path;
    which CUDA kernel takes it (memory-efficient or math) is for a GPU benchmark to report. Tests pin
    the result, gradients included, against a per-position loop.
    Masked weights are exact zeros multiplied by future values: changing the future changes nothing,
    but NaN or inf in the future does reach the past (0 * NaN = NaN; checked for the CPU kernels).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, Dv)
