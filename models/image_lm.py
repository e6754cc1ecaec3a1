"""Token-to-image language models: each token paints a C x H x W image, images of the past are mixed
causally, a CNN reads every token's mixed image, and its pooled features predict the next token.

Shapes: B batch, T tokens, d = n_embd, V vocabulary, C x H x W a token image, D = C*H*W,
nh image heads (idea 2), F = the CNN's pooled feature width.

  front:   idx (B, T) -> Embedding + n_layer GPT Blocks (the "warm-up") -> x (B, T, d)
           [idea 2: + one attention-only residual layer, extra_attn, as the original had]
  stage:   LayerNorm -> token images (B, T, D), causally mixed:
             idea 1 ("image_sum"): a_t = P x_t, P in R^{D x d} (one nn.Linear; see SumImages), then a
                                   running sum A_t = a_0 + ... + a_t (or running mean)
             idea 2 ("image_attn"): causal attention, q, k in R^{d/nh} per head, values v_t = W_v x_t
                                   in R^D split by channel groups across the nh heads
           -> CNN on all B*T images, in chunks -> pooled features (B, T, F)
  head:    plain: LayerNorm(F) -> Linear(F, V), untied (F != d in general, and the CNN features are
                  not token embeddings)
           chained ("_chain"): n_chain stages, each x = x + c_proj(stage(x)) (F -> d, residual);
                  then LayerNorm(d) -> lm_head tied to the token embedding, as in GPT-2

NO INFORMATION BETWEEN TOKEN IMAGES. The CNN sees the B*T images of a batch as one batch of N images.
Anything that computes statistics over that batch -- BatchNorm in train mode, a pooling or a norm
across the image axis -- would let the features of token t depend on images of later tokens t' > t of
the same sequence (and on other sequences): predictions would see the future and the loss would be a
leak, not a result. So: only per-image norms in the CNN (models/cnn.py has no BatchNorm), pooling only
over H x W of one image, chunking only splits the image axis. The only paths between positions are the
two causal mixers and the warm-up attention; tests/test_registry.py proves causality for every model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from config import ConfigError
from models.cnn import CNN, build_cnn, validate_cnn
from models.gpt import Block, CausalSelfAttention, Embedding, GPTConfig, init_gpt2_, lm_loss
from models.mixers import causal_cumsum, image_value_attention


@dataclass
class ImageLMConfig:
    """Fields shared by every image model; the registered subclasses below add the idea-specific ones,
    so that config.py rejects a key that does not apply to the chosen model (e.g. image_heads for idea 1)."""
    name: str = "image_sum"
    block_size: int = 1024
    vocab_size: int = 0          # 0: filled in from the dataset (50257 -> 50304 for GPT-2 BPE)
    n_layer: int = 3             # warm-up GPT blocks before the first image stage (the original: 3)
    n_head: int = 12             # heads of the warm-up blocks
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    channels: int = 8            # C of a token image
    height: int = 32
    width: int = 32
    cnn: str = "vgg"             # vgg | vgg_wide | resnet | tv:<torchvision name> (models/cnn.py)
    cnn_norm: str = "none"       # none | group | layer -- per image, never BatchNorm
    cnn_pool: str = "end"        # end (global average pool after the last conv) | stages
    cnn_chunk: int = 0           # images per CNN call; 0: all B*T at once
    cnn_checkpoint: bool = False # recompute each chunk's activations in backward (memory ~ one chunk)
    channels_last: bool = False  # NHWC images and conv weights (often faster with cuDNN; benchmark)

    def gpt_config(self) -> GPTConfig:
        """The warm-up front's view of this config (models.gpt's Embedding and Block read it)."""
        return GPTConfig(name="gpt", block_size=self.block_size, vocab_size=self.vocab_size,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         dropout=self.dropout, bias=self.bias)

    def validate(self) -> None:
        for key in ("block_size", "n_head", "n_embd", "channels", "height", "width"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("n_layer", "cnn_chunk"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        validate_cnn(self.cnn, self.cnn_norm, self.cnn_pool)


@dataclass
class ImageSumConfig(ImageLMConfig):
    """Idea 1: per-pixel queries, causal running sum."""
    name: str = "image_sum"
    mixer: str = "sum"           # sum (the original) | mean (divide A_t by t + 1)

    def validate(self) -> None:
        super().validate()
        if self.mixer not in ("sum", "mean"):
            raise ConfigError(f"model.mixer = {self.mixer!r}; valid choices: sum, mean")


@dataclass
class ImageAttnConfig(ImageLMConfig):
    """Idea 2: causal attention whose values are images."""
    name: str = "image_attn"
    image_heads: int = 0         # 0: one head per channel (C heads); each head owns C / image_heads channels
    extra_attn: bool = True      # one attention-only residual layer after the warm-up (the original had it)

    @property
    def heads(self) -> int:
        return self.image_heads or self.channels

    def validate(self) -> None:
        super().validate()
        if self.image_heads < 0 or self.channels % self.heads or self.n_embd % self.heads:
            raise ConfigError(f"model.image_heads = {self.image_heads} must divide model.channels "
                              f"({self.channels}) and model.n_embd ({self.n_embd}); 0 means one per channel")


def _validate_chain(cfg) -> None:
    if cfg.n_chain <= 0:
        raise ConfigError(f"model.n_chain must be positive, got {cfg.n_chain}")


@dataclass
class ImageSumChainConfig(ImageSumConfig):
    name: str = "image_sum_chain"
    n_chain: int = 2             # image stages, each added back to the residual stream

    def validate(self) -> None:
        super().validate()
        _validate_chain(self)


@dataclass
class ImageAttnChainConfig(ImageAttnConfig):
    name: str = "image_attn_chain"
    n_chain: int = 2

    def validate(self) -> None:
        super().validate()
        _validate_chain(self)


# ----------------------------------------------------------------------------- causal mixing stages

def _cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: dict, key: str) -> torch.Tensor:
    """Attention of n new positions over the cached past plus themselves (incremental decoding).
    q, k (B, nh, n, hs), v (B, nh, n, Dv) -> (B, nh, n, Dv); the cache grows by n positions."""
    if key in cache:
        k, v = torch.cat([cache[key][0], k], dim=2), torch.cat([cache[key][1], v], dim=2)  # (B, nh, P+n, .)
    cache[key] = (k, v)
    n, total = q.size(2), k.size(2)
    if n == total:
        return image_value_attention(q, k, v)
    rows = torch.arange(total - n, total, device=q.device)[:, None]  # absolute positions of the queries
    return F.scaled_dot_product_attention(q, k, v, attn_mask=rows >= torch.arange(total, device=q.device))


def _self_attention_step(attn: CausalSelfAttention, x: torch.Tensor, cache: dict, key: str) -> torch.Tensor:
    """models.gpt.CausalSelfAttention on n new positions with a KV cache: x (B, n, d) -> (B, n, d)."""
    B, n, d = x.shape
    q, k, v = attn.c_attn(x).split(d, dim=2)
    q, k, v = (t.view(B, n, attn.n_head, d // attn.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, n, hs)
    y = _cached_attention(q, k, v, cache, key).transpose(1, 2).reshape(B, n, d)
    return attn.resid_dropout(attn.c_proj(y))


class AttnLayer(nn.Module):
    """Idea 2's extra layer: x + attention(LayerNorm(x)), an attention-only residual sublayer (no MLP).
    A full Block would just be one more warm-up layer (n_layer + 1); the original added attention."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln_1(x))

    def step(self, x: torch.Tensor, cache: dict, key: str) -> torch.Tensor:
        return x + _self_attention_step(self.attn, self.ln_1(x), cache, key)


class SumImages(nn.Module):
    """Idea 1. Pixel p's activation from token t is q_p . k_t with k_t = W_k x_t, i.e. (W_k^T q_p) . x_t:
    the D pixel queries composed with the key map are the D rows of one matrix P = Q W_k in R^{D x d},
    so the whole painting is one linear map a_t = P x_t (here nn.Linear(d, D), P unconstrained: the
    factored form with keys of width >= d spans the same maps). No bias: a running sum of a constant
    bias image would only grow as (t + 1) * b, a position counter the embeddings already provide."""

    def __init__(self, cfg: ImageSumConfig):
        super().__init__()
        self.mean = cfg.mixer == "mean"
        self.paint = nn.Linear(cfg.n_embd, cfg.channels * cfg.height * cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_cumsum(self.paint(x), mean=self.mean)  # (B, T, d) -> (B, T, D)

    def step(self, x: torch.Tensor, cache: dict, key: str, start: int) -> torch.Tensor:
        """n new positions starting at `start`; the running sum (B, D) in float32 is the whole state."""
        a = self.paint(x)  # (B, n, D)
        acc = torch.cumsum(a, dim=1, dtype=torch.promote_types(a.dtype, torch.float32))  # (B, n, D)
        if key in cache:
            acc = acc + cache[key][:, None]  # O(D) per token whatever the context length
        cache[key] = acc[:, -1]
        if self.mean:
            acc = acc / torch.arange(start + 1, start + a.size(1) + 1, device=a.device, dtype=acc.dtype).view(1, -1, 1)
        return acc.to(a.dtype)


class AttnImages(nn.Module):
    """Idea 2: q, k (d -> d, nh heads of d/nh) and image values v_t = W_v x_t in R^D. Head h owns
    channels [h*C/nh, (h+1)*C/nh): in the flattened (C, H, W) layout those are one contiguous slice."""

    def __init__(self, cfg: ImageAttnConfig):
        super().__init__()
        self.heads = cfg.heads
        self.c_attn = nn.Linear(cfg.n_embd, 2 * cfg.n_embd, bias=cfg.bias)                          # q, k
        self.paint = nn.Linear(cfg.n_embd, cfg.channels * cfg.height * cfg.width, bias=cfg.bias)    # values

    def _qkv(self, x: torch.Tensor):
        B, n, d = x.shape
        q, k = (t.view(B, n, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(d, dim=2))  # (B, nh, n, d/nh)
        v = self.paint(x).view(B, n, self.heads, -1).transpose(1, 2)  # (B, nh, n, D/nh)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        y = image_value_attention(*self._qkv(x))  # (B, nh, T, D/nh)
        return y.transpose(1, 2).reshape(B, T, -1)  # (B, T, D)

    def step(self, x: torch.Tensor, cache: dict, key: str, start: int) -> torch.Tensor:
        B, n, _ = x.shape
        return _cached_attention(*self._qkv(x), cache, key).transpose(1, 2).reshape(B, n, -1)


class ImageReader(nn.Module):
    """The CNN over the B*T token images, chunk by chunk, each image independently: (B, T, D) -> (B, T, F)."""

    def __init__(self, cfg: ImageLMConfig):
        super().__init__()
        self.shape = (cfg.channels, cfg.height, cfg.width)
        self.chunk, self.use_checkpoint, self.channels_last = cfg.cnn_chunk, cfg.cnn_checkpoint, cfg.channels_last
        self.cnn: CNN = build_cnn(cfg.cnn, cfg.channels, norm=cfg.cnn_norm, pool=cfg.cnn_pool)
        if cfg.channels_last:
            self.cnn.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, T, _ = images.shape
        flat = images.reshape(B * T, *self.shape)  # (N, C, H, W), N = B*T
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        chunks = flat.split(self.chunk) if self.chunk else (flat,)
        if self.use_checkpoint and torch.is_grad_enabled():
            # keeps only each chunk's input and pooled output; the activations are recomputed in backward
            feats = [checkpoint(self.cnn, c, use_reentrant=False) for c in chunks]
        else:
            feats = [self.cnn(c) for c in chunks]
        return torch.cat(feats).view(B, T, -1)  # (B, T, F)


class ImageStage(nn.Module):
    """x (B, T, d) -> LayerNorm -> causally mixed token images -> CNN -> pooled features (B, T, F).
    In a chain, c_proj (F -> d) maps the features back to the residual stream (applied by the model)."""

    reader: ImageReader  # the CNN, attached by ImageLM after its GPT-2 init (which must not touch it)

    def __init__(self, cfg: ImageLMConfig, features: int, chained: bool):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mix = AttnImages(cfg) if isinstance(cfg, ImageAttnConfig) else SumImages(cfg)
        self.c_proj = nn.Linear(features, cfg.n_embd, bias=cfg.bias) if chained else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reader(self.mix(self.ln(x)))

    def step(self, x: torch.Tensor, cache: dict, key: str, start: int) -> torch.Tensor:
        return self.reader(self.mix.step(self.ln(x), cache, key, start))


# ----------------------------------------------------------------------------- the model

class ImageLM(nn.Module):
    """Idea 1 or idea 2 (by config class), plain (one stage, head on the CNN features) or chained."""

    def __init__(self, cfg: ImageLMConfig):
        super().__init__()
        self.cfg = cfg
        gcfg = cfg.gpt_config()
        self.emb = Embedding(gcfg)
        self.h = nn.ModuleList(Block(gcfg) for _ in range(cfg.n_layer))
        self.extra = AttnLayer(gcfg) if getattr(cfg, "extra_attn", False) else None
        n_chain = getattr(cfg, "n_chain", 0)
        readers = [ImageReader(cfg) for _ in range(max(1, n_chain))]
        F_ = readers[0].cnn.out_features
        self.stages = nn.ModuleList(ImageStage(cfg, F_, chained=n_chain > 0) for _ in readers)
        width = cfg.n_embd if n_chain else F_  # plain: the head reads the pooled CNN features, normalised
        self.ln_f = nn.LayerNorm(width, bias=cfg.bias)  # (a CNN without norms has no fixed output scale;
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)  # LayerNorm keeps the initial loss ~ ln V)
        # GPT-2 init everywhere but in the CNNs, which keep their own (He) init; residual projections
        # (c_proj) are scaled by 1/sqrt(residual branches): 2 per warm-up block, 1 per chain stage and extra layer.
        branches = 2 * cfg.n_layer + n_chain + (self.extra is not None)
        init_gpt2_(self, max(1, branches) / 2)  # before the CNNs are attached: they keep their He init
        for stage, reader in zip(self.stages, readers):
            stage.reader = reader
        if n_chain:
            self.lm_head.weight = self.emb.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def _head(self, x: torch.Tensor, stage_fn) -> torch.Tensor:
        """The stages and the head, given stage_fn(i, x) -> features (B, T, F): x (B, T, d) -> logits."""
        if self.stages[0].c_proj is None:
            return self.lm_head(self.ln_f(stage_fn(0, x)))  # (B, T, V)
        for i, stage in enumerate(self.stages):
            x = x + stage.c_proj(stage_fn(i, x))  # (B, T, d)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.emb(idx)  # (B, T, d)
        for block in self.h:
            x = block(x)
        if self.extra is not None:
            x = self.extra(x)
        logits = self._head(x, lambda i, x: self.stages[i](x))
        return logits, lm_loss(logits, targets)

    def extend(self, idx: torch.Tensor, cache: dict, start: int) -> torch.Tensor:
        """Logits (B, n, V) of n new tokens idx (B, n) at positions start.., given the cache of the
        earlier positions (updated in place): the same computation as forward, incrementally."""
        pos = torch.arange(start, start + idx.size(1), device=idx.device)
        x = self.emb.drop(self.emb.wte(idx) + self.emb.wpe(pos))  # (B, n, d)
        for i, block in enumerate(self.h):
            x = x + _self_attention_step(block.attn, block.ln_1(x), cache, f"h{i}")
            x = x + block.mlp(block.ln_2(x))
        if self.extra is not None:
            x = self.extra.step(x, cache, "extra")
        return self._head(x, lambda i, x: self.stages[i].step(x, cache, f"stage{i}", start))

    def decoder(self, idx: torch.Tensor) -> "Decoder":
        return Decoder(self, idx)

    def param_counts(self) -> dict[str, int]:
        """Parameters per component, each counted once (a tied head counts with the embedding)."""
        stages = list(self.stages)
        groups = {
            "embedding": [self.emb], "warmup": [self.h], "extra_attn": [self.extra],
            "mapping": [m for s in stages for m in (s.ln, s.mix.paint)],       # LayerNorm + token -> image
            "mixer": [s.mix.c_attn for s in stages if isinstance(s.mix, AttnImages)],  # idea 2's q, k
            "cnn": [s.reader for s in stages], "proj": [s.c_proj for s in stages], "head": [self.ln_f, self.lm_head],
        }
        seen: set[int] = set()
        counts = {}
        for name, modules in groups.items():
            params = [p for m in modules if m is not None for p in m.parameters()]
            counts[name] = sum(p.numel() for p in params if id(p) not in seen and not seen.add(id(p)))
        return counts

    def flops_per_token(self) -> float:
        """Training FLOPs per token at T = block_size: 3 x forward (backward = two forwards).

        Forward = 2 x the multiply-adds per token listed here, matmuls and convs only (the convention
        of FlopCounterMode, which tests/test_image_lm.py matches exactly), plus the CNN's own count:
          front    n_layer * (12 d^2 + 2 T d) [+ extra_attn: 4 d^2 + 2 T d], GPT's count
          mapping  d * D per stage (idea 2: the value map), D = C*H*W
          mixer    idea 2: 2 d^2 (q, k) + T d (scores) + T D (weighted sum) at full T -- the T x T
                   product that the math kernel computes, masked half included (as GPT's count);
                   idea 1: 0 -- the running sum is D adds per token, elementwise, left out
          cnn      cnn.forward_flops(H, W) per stage (already FLOPs, not multiply-adds)
          head     plain: F V; chained: n_chain * F d (c_proj) + d V
        Left out: embeddings, LayerNorms, GELU, softmax, ReLU, pooling, the running sum (all elementwise).
        """
        c, T, d = self.cfg, self.cfg.block_size, self.cfg.n_embd
        D = c.channels * c.height * c.width
        F_ = self.stages[0].reader.cnn.out_features
        macs = c.n_layer * (12 * d * d + 2 * T * d) + (self.extra is not None) * (4 * d * d + 2 * T * d)
        idea2 = isinstance(self.stages[0].mix, AttnImages)
        stage = d * D + idea2 * (2 * d * d + T * d + T * D)
        if self.stages[0].c_proj is None:
            macs += stage + F_ * c.vocab_size
        else:
            macs += len(self.stages) * (stage + F_ * d) + d * c.vocab_size
        cnn = len(self.stages) * self.stages[0].reader.cnn.forward_flops(c.height, c.width)
        return 3.0 * (2.0 * macs + cnn)


class Decoder:
    """Incremental decoding, for sampling: .logits (B, V) predicts the token after the last one;
    push(tokens (B,)) appends one token per row. Mixing costs O(1) per token for idea 1 (the running
    sum is the state) and O(t) for idea 2 and the warm-up attention (KV caches); the CNN reads only
    the new token's image, instead of all T images as a full forward would."""

    @torch.no_grad()
    def __init__(self, model: ImageLM, idx: torch.Tensor):
        if idx.size(1) > model.cfg.block_size:
            raise ValueError(f"prompt of {idx.size(1)} tokens is longer than block_size={model.cfg.block_size}")
        self.model, self.cache, self.t = model, {}, idx.size(1)
        self.logits = model.extend(idx, self.cache, 0)[:, -1]  # (B, V)

    @torch.no_grad()
    def push(self, tokens: torch.Tensor) -> None:
        if self.t >= self.model.cfg.block_size:
            raise ValueError(f"the decoder holds block_size={self.t} tokens; slide the window with a full forward")
        self.logits = self.model.extend(tokens.view(-1, 1), self.cache, self.t)[:, -1]  # (B, V)
        self.t += 1
