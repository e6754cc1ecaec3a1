"""The image block as a token mixer (`image_sum`, `image_mean`, `image_attn`, `image_none`): each token
paints a C x H x W image, the images of the past are mixed causally, a CNN reads every token's mixed
image, and its pooled features are projected back to width d.

Shapes: B batch, n tokens of the call (T for a whole sequence), d width, C x H x W a token image,
D = C*H*W a flattened image, nh image heads, hs = d // nh their query/key size, Dv = D // nh the part of
an image one head carries, F the CNN's pooled feature width.

    x (B, n, d) -> paint a_t = P x_t (B, n, D) -> causal mix A_t (B, n, D) -> per-image norm -> CNN on
    the B*n images A_t (or [a_t, A_t] with own_image), in chunks -> features (B, n, F) -> c_proj (B, n, d)

The mixings (MIXINGS): `sum` and `mean` (idea 1: running sum or mean of the painted images), `attn` (idea 2:
causal attention whose values are images), `none` (the control: A_t = a_t).

NO INFORMATION BETWEEN TOKEN IMAGES. The CNN sees the B*n images of a batch as one batch of images.
Anything that computes statistics over that batch -- BatchNorm in train mode, a pooling or a norm
across the image axis -- would let the features of token t depend on images of later tokens of the
same sequence (and on other sequences): predictions would see the future and the loss would be a
leak, not a result. So: only per-image norms (models/cnn.py has no BatchNorm), pooling only over H x W
of one image, chunking only splits the image axis. The mixing is the only path between positions;
tests/test_registry.py proves causality for every model.

Why the defaults differ from the original (a residual block, per-image norms before and inside the CNN):
docs/image_block.md gives the measurements.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.attention import attention_flops, attention_weights, causal_attention
from models.cnn import CNN, build_cnn
from models.layers import Cache, TokenMixer, linear_flops


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


class Mixing(nn.Module):
    """Paints each token's image, a_t = paint(x_t) (B, n, D), and mixes the images causally into A_t."""

    paint_bias = False

    def __init__(self, d: int, image_size: int, heads: int, bias: bool):
        super().__init__()
        self.D = image_size
        self.paint = nn.Linear(d, image_size, bias=bias and self.paint_bias)

    def forward(self, x: torch.Tensor, cache: Cache | None, start: int,
                extras: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, A), (B, n, D) each; `extras`, when given, receives what the mixing can show of itself
        (idea 2: its attention weights)."""
        a = self.paint(x)  # (B, n, D)
        return a, self.mix(a, x, cache, start, extras)

    def mix(self, a: torch.Tensor, x: torch.Tensor, cache: Cache | None, start: int, extras: dict | None) -> torch.Tensor:
        raise NotImplementedError

    def forward_flops_per_token(self, T: int) -> float:
        return linear_flops(self.paint)

    def route(self) -> list[nn.Module]:
        """The modules that decide which positions mix (none for a fixed mixing)."""
        return []


class NoMixing(Mixing):
    """The control: A_t = a_t, each token reads only its own image."""

    def mix(self, a, x, cache, start, extras):
        return a


class RunningSum(Mixing):
    """Idea 1. Pixel p's activation from token t is q_p . k_t with k_t = W_k x_t, i.e. (W_k^T q_p) . x_t:
    the D pixel queries composed with the key map are the D rows of one matrix P = Q W_k in R^{D x d},
    so the whole painting is one linear map a_t = P x_t (nn.Linear(d, D), P unconstrained: the factored
    form with keys of width >= d spans the same maps). No bias: a running sum of a constant bias image
    would only grow as (t + 1) * b, a position counter the embeddings already provide.
    The decoding state is the float32 running sum (B, D): O(D) per token whatever the context length."""

    mean = False

    def mix(self, a, x, cache, start, extras):
        A, carry = causal_cumsum(a, self.mean, cache.get(self) if cache is not None else None, start)
        if cache is not None:
            cache[self] = carry
        return A


class RunningMean(RunningSum):
    """Idea 1 with A_t / (t + 1): the mixed image keeps the scale of one image at every position."""

    mean = True


class ImageAttention(Mixing):
    """Idea 2: causal attention whose values are images. q, k (d -> d, nh heads of hs = d / nh) and the
    values v_t = paint(x_t) in R^D; head h owns channels [h*C/nh, (h+1)*C/nh), one contiguous slice of
    the flattened (C, H, W) layout. The decoding state is the KV cache (causal_attention)."""

    paint_bias = True

    def __init__(self, d: int, image_size: int, heads: int, bias: bool):
        super().__init__(d, image_size, heads, bias)
        self.heads = heads
        self.c_attn = nn.Linear(d, 2 * d, bias=bias)  # q, k

    def mix(self, a, x, cache, start, extras):
        B, n, d = x.shape
        q, k = (t.view(B, n, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(d, dim=2))  # (B, nh, n, hs)
        v = a.view(B, n, self.heads, -1).transpose(1, 2)  # (B, nh, n, Dv)
        A = causal_attention(q, k, v, cache, self)
        if extras is not None:
            extras["attention"] = attention_weights(q, cache[self][0] if cache is not None else k)  # (B, nh, n, P+n)
        return A.transpose(1, 2).reshape(B, n, -1)  # (B, n, D)

    def forward_flops_per_token(self, T: int) -> float:
        d = self.paint.in_features
        return super().forward_flops_per_token(T) + linear_flops(self.c_attn) + attention_flops(T, d, self.D)

    def route(self):
        return [self.c_attn]


MIXINGS: dict[str, type[Mixing]] = {"sum": RunningSum, "mean": RunningMean, "attn": ImageAttention, "none": NoMixing}


class ImageReader(nn.Module):
    """The CNN over the B*n token images, chunk by chunk, each image independently: (B, n, D') -> (B, n, F)."""

    def __init__(self, cfg, in_channels: int):
        super().__init__()
        self.shape = (in_channels, cfg.height, cfg.width)
        self.chunk, self.use_checkpoint, self.channels_last = cfg.cnn_chunk, cfg.cnn_checkpoint, cfg.channels_last
        groups = {"group": in_channels, "layer": 1}.get(cfg.img_norm)  # statistics of one image only
        self.in_norm = nn.GroupNorm(groups, in_channels) if groups else nn.Identity()
        self.cnn: CNN = build_cnn(cfg.cnn, in_channels, norm=cfg.cnn_norm, pool=cfg.cnn_pool, width=cfg.cnn_width)
        if cfg.channels_last:
            self.cnn.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, n, _ = images.shape
        flat = images.reshape(B * n, *self.shape)  # (N, C', H, W), N = B*n
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        chunks = flat.split(self.chunk) if self.chunk else (flat,)
        read = lambda images: self.cnn(self.in_norm(images))  # noqa: E731
        if self.use_checkpoint and torch.is_grad_enabled():
            # keeps only each chunk's input and pooled output; the activations are recomputed in backward
            feats = [checkpoint(read, c, use_reentrant=False) for c in chunks]
        else:
            feats = [read(c) for c in chunks]
        return torch.cat(feats).view(B, n, -1)  # (B, n, F)

    def forward_flops_per_token(self) -> float:
        return self.cnn.forward_flops(*self.shape[1:])


class ImageMixer(TokenMixer):
    """The image block's token mixer: paint -> mix (by `mixing`) -> per-image norm -> CNN -> c_proj (F -> d).
    project=False leaves out c_proj: the features themselves are the output (the original's plain head).
    `cfg` is the model's config (models/backbone.py LMConfig): the image options are its fields."""

    def __init__(self, cfg, mixing: str, project: bool = True):
        super().__init__()
        self.own_image = cfg.own_image
        D = cfg.channels * cfg.height * cfg.width
        self.mixing = MIXINGS[mixing](cfg.n_embd, D, cfg.image_heads or cfg.channels, cfg.bias)
        self.reader = ImageReader(cfg, cfg.channels * (2 if cfg.own_image else 1))
        self.out_features = self.reader.cnn.out_features
        self.c_proj = nn.Linear(self.out_features, cfg.n_embd, bias=cfg.bias) if project else None

    def forward(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        extras = {} if self.trace is not None else None
        a, A = self.mixing(x, cache, start, extras)  # (B, n, D) each
        self.record(painted=a, mixed=A, **(extras or {}))
        feats = self.reader(torch.cat([a, A], dim=-1) if self.own_image else A)  # (B, n, F); [a, A]: 2C channels
        return self.c_proj(feats) if self.c_proj is not None else feats

    def forward_flops_per_token(self, T: int) -> float:
        proj = linear_flops(self.c_proj) if self.c_proj is not None else 0.0
        return self.mixing.forward_flops_per_token(T) + self.reader.forward_flops_per_token() + proj

    def recompute_flops_per_token(self, T: int) -> float:
        """cnn_checkpoint runs each CNN forward once more in backward."""
        return self.reader.forward_flops_per_token() if self.reader.use_checkpoint else 0.0

    def components(self) -> dict[str, list[nn.Module]]:
        return {"paint": [self.mixing.paint], "route": self.mixing.route(), "cnn": [self.reader],
                "proj": [self.c_proj]}
