"""Token-to-image language models: each token paints a C x H x W image, images of the past are mixed
causally, a CNN reads every token's mixed image, and its pooled features predict the next token.

Shapes: B batch, T tokens (n in one decoding call), d = n_embd, V vocabulary, C x H x W a token image,
D = C*H*W, F = the CNN's pooled feature width.

  front:   idx (B, T) -> Embedding + n_layer warm-up blocks -> x (B, T, d)
           warmup = "gpt": GPT blocks (attention + MLP); "mlp": MLP-only blocks, no attention anywhere
           [extra_attn: + one attention-only residual layer, as idea 2's original had]
  stage:   LayerNorm -> mixer (models/mixers.py, by model.mixer): paints a_t and mixes causally into A_t
             sum / mean (idea 1: running sum / mean), attn (idea 2: attention with image values),
             none (the control: A_t = a_t)
           -> per-image norm (img_norm) -> CNN on all B*T images (A_t, or [a_t, A_t] with own_image),
              in chunks -> pooled features (B, T, F)
  head:    residual (n_chain = k >= 1, the default k = 1): k image blocks, each x = x + c_proj(stage(x))
                  (F -> d), then LayerNorm(d) -> lm_head tied to the token embedding, as in GPT-2
           plain form (n_chain = 0): one stage whose features the head reads, by model.head:
             proj: c_proj(features) (F -> d) -> LayerNorm(d) -> the tied lm_head
             plain (the original): LayerNorm(F) -> Linear(F, V), untied
           front only (image_stage = false, the control): LayerNorm(d) -> the tied lm_head on the front

WHY THE RESIDUAL IMAGE BLOCK AND THE NORMS (the defaults; the original is n_chain = 0, head = "plain",
img_norm = "none", cnn_norm = "none"). Trained in the plain form, every image model collapses to predicting the unigram
distribution within ~50-100 steps: measured on tiny Shakespeare (the tiny preset, lr 2e-3, batch 16),
the gradient reaching the front falls from 0.5 to 5e-5 and the loss stays at the unigram's 3.2 nats,
with the original wiring and also with a per-image norm of the CNN input, the projected tied head
(head = "proj"), norms inside the CNN, a ResNet trunk or the token's own image beside the mixed one; at
lr 3e-4 it does not collapse but learns slowly. Our reading: the token-independent part of the signal
(the unigram, carried by biases that Adam moves ~1e-3 per step, against token embeddings of N(0, 0.02))
grows until it dominates; each scale-invariant norm after it then divides the token-specific part, and
its gradient, by that ratio, which feeds the common part further. The residual block lets the front reach
the head directly, as in a GPT, but is not enough alone: with the norm-free VGG, idea 2, the chains and
the MLP warm-up still collapsed in the same test (pooled CNN features grow without bound and take over the
residual stream). With per-image GroupNorm inside the CNN as well (cnn_norm = "group"), every model
reaches 2.5-2.6 nats in those 150 steps (tests/test_registry.py: every default model beats the unigram on
real text; the plain form's collapse is a test too). At the default study's scale (configs/char_image.toml,
1.5e12 FLOPs, seed 0) the CNN norms also give 2.402 against 2.430 nats, and zeroing the image block's
output at evaluation costs 0.098 nats with them against 0.043 without: the image path carries more. A per-image, per-channel norm of the CNN input (img_norm) makes the
CNN's input scale independent of t for a running sum. The plain form stays available as configured.

NO INFORMATION BETWEEN TOKEN IMAGES. The CNN sees the B*T images of a batch as one batch of N images.
Anything that computes statistics over that batch -- BatchNorm in train mode, a pooling or a norm
across the image axis -- would let the features of token t depend on images of later tokens t' > t of
the same sequence (and on other sequences): predictions would see the future and the loss would be a
leak, not a result. So: only per-image norms in the CNN (models/cnn.py has no BatchNorm), pooling only
over H x W of one image, chunking only splits the image axis. The only paths between positions are the
mixer and the warm-up attention; tests/test_registry.py proves causality for every model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from models.cnn import CNN, build_cnn, validate_cnn
from models.gpt import Block, Cache, Embedding, GPTConfig, count_params, init_gpt2_, lm_loss
from models.mixers import MIXERS
from schema import ConfigError, option


@dataclass
class ImageLMConfig:
    name: str = option("image_sum", "the registered model (models/__init__.py)")
    block_size: int = option(1024, "longest context")
    vocab_size: int = option(0, "0: the dataset's vocabulary padded up to a multiple of 64")
    n_layer: int = option(3, "warm-up blocks before the first image stage (the original: 3)")
    n_head: int = option(12, "heads of the warm-up attention")
    n_embd: int = option(768, "width d of the front")
    dropout: float = option(0.0, "dropout in the front")
    bias: bool = option(True, "biases in the front's linears and LayerNorms")
    warmup: str = option("gpt", "warm-up blocks: gpt (attention + MLP) or mlp (MLP only: no attention anywhere "
                         "before the image stage, the convolution-only control)", ("gpt", "mlp"))
    extra_attn: bool = option(False, "one attention-only residual layer after the warm-up (idea 2's original)")
    image_stage: bool = option(True, "false: the front alone with a tied head (the front-only control)")
    mixer: str = option("sum", "causal mixer of token images (models/mixers.py)", tuple(MIXERS))
    image_heads: int = option(0, "mixer attn: heads, each owning channels / image_heads channels; 0: one per channel")
    own_image: bool = option(False, "the CNN reads the token's own image a_t beside the mixed A_t (2C channels)")
    n_chain: int = option(1, "k > 0: k residual image blocks, then the tied head; 0: one stage whose CNN "
                         "features the head reads (the original's plain form, see model.head)")
    channels: int = option(8, "C of a token image")
    height: int = option(32, "H of a token image")
    width: int = option(32, "W of a token image")
    cnn: str = option("vgg", "vgg | vgg_wide | resnet | tv:<torchvision classifier> (models/cnn.py)")
    cnn_width: int = option(64, "channels of the first CNN stage (the original: 64); every layer scales with it")
    cnn_norm: str = option("group", "per-image norm in the CNN: group (the default), layer, or none (the "
                           "original VGG); never BatchNorm")
    img_norm: str = option("group", "per-image norm of the CNN's input: group (each channel of each image), layer "
                           "(each image), none (the original; it collapses, see the module docstring)",
                           ("group", "layer", "none"))
    head: str = option("proj", "n_chain = 0 only: proj (features -> width d -> tied head) or plain (the "
                       "original: features -> untied head)", ("proj", "plain"))
    cnn_pool: str = option("end", "end: global average pool after the last conv; stages: 2x2 max-pools between stages")
    cnn_chunk: int = option(0, "images per CNN call; 0: all B*T at once")
    cnn_checkpoint: bool = option(False, "recompute each chunk's CNN activations in backward (memory ~ one chunk)")
    channels_last: bool = option(False, "NHWC images and conv weights")

    @property
    def heads(self) -> int:
        return self.image_heads or self.channels

    def gpt_config(self) -> GPTConfig:
        """The front's view of this config (models.gpt's Embedding and Block read it)."""
        return GPTConfig(name="gpt", block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias)

    def validate(self) -> None:
        for key in ("block_size", "n_head", "n_embd", "channels", "height", "width"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("n_layer", "cnn_chunk", "n_chain"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.mixer != "attn" and self.image_heads:
            raise ConfigError(f"model.image_heads applies to model.mixer = \"attn\", not {self.mixer!r}; remove it")
        if self.image_heads < 0 or self.channels % self.heads or self.n_embd % self.heads:
            raise ConfigError(f"model.image_heads = {self.image_heads} must divide model.channels "
                              f"({self.channels}) and model.n_embd ({self.n_embd}); 0 means one per channel")
        if self.n_chain and self.head != "proj":
            raise ConfigError(f"model.head = {self.head!r} applies to the plain form (model.n_chain = 0); with "
                              f"n_chain = {self.n_chain} the residual stream feeds the tied head: remove model.head "
                              f"or set model.n_chain = 0")
        validate_cnn(self.cnn, self.cnn_norm, self.cnn_pool, self.cnn_width)


# Registered defaults (models/__init__.py): idea 1, idea 2 and their chained forms.
@dataclass
class ImageSumConfig(ImageLMConfig):
    name: str = option("image_sum", "the registered model (models/__init__.py)")


@dataclass
class ImageAttnConfig(ImageLMConfig):
    name: str = option("image_attn", "the registered model (models/__init__.py)")
    mixer: str = option("attn", "causal mixer of token images (models/mixers.py)", tuple(MIXERS))
    extra_attn: bool = option(True, "one attention-only residual layer after the warm-up (idea 2's original)")


@dataclass
class ImageSumChainConfig(ImageSumConfig):
    name: str = option("image_sum_chain", "the registered model (models/__init__.py)")
    n_chain: int = option(2, "0: the head reads one stage's CNN features; k > 0: k residual image stages")


@dataclass
class ImageAttnChainConfig(ImageAttnConfig):
    name: str = option("image_attn_chain", "the registered model (models/__init__.py)")
    n_chain: int = option(2, "0: the head reads one stage's CNN features; k > 0: k residual image stages")


class ImageReader(nn.Module):
    """The CNN over the B*T token images, chunk by chunk, each image independently: (B, T, D') -> (B, T, F)."""

    def __init__(self, cfg: ImageLMConfig, in_channels: int):
        super().__init__()
        self.shape = (in_channels, cfg.height, cfg.width)
        self.chunk, self.use_checkpoint, self.channels_last = cfg.cnn_chunk, cfg.cnn_checkpoint, cfg.channels_last
        groups = {"group": in_channels, "layer": 1}.get(cfg.img_norm)  # statistics of one image only
        self.in_norm = nn.GroupNorm(groups, in_channels) if groups else nn.Identity()
        self.cnn: CNN = build_cnn(cfg.cnn, in_channels, norm=cfg.cnn_norm, pool=cfg.cnn_pool, width=cfg.cnn_width)
        if cfg.channels_last:
            self.cnn.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, T, _ = images.shape
        flat = images.reshape(B * T, *self.shape)  # (N, C', H, W), N = B*T
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        chunks = flat.split(self.chunk) if self.chunk else (flat,)
        read = lambda images: self.cnn(self.in_norm(images))  # noqa: E731
        if self.use_checkpoint and torch.is_grad_enabled():
            # keeps only each chunk's input and pooled output; the activations are recomputed in backward
            feats = [checkpoint(read, c, use_reentrant=False) for c in chunks]
        else:
            feats = [read(c) for c in chunks]
        return torch.cat(feats).view(B, T, -1)  # (B, T, F)


class ImageStage(nn.Module):
    """x (B, n, d) -> LayerNorm -> painted and causally mixed token images -> CNN -> features (B, n, F).
    c_proj (F -> d) maps the features back to width d (the proj head, or a chain's residual stream),
    applied by the model."""

    reader: ImageReader  # the CNN, attached by ImageLM after its GPT-2 init (which must not touch it)

    def __init__(self, cfg: ImageLMConfig, features: int, project: bool):
        super().__init__()
        self.own_image = cfg.own_image
        self.ln = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mix = MIXERS[cfg.mixer](cfg.n_embd, cfg.channels, cfg.height, cfg.width, cfg.heads, cfg.bias)
        self.c_proj = nn.Linear(features, cfg.n_embd, bias=cfg.bias) if project else None

    def images(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, A): each token's painted image and its causally mixed image, (B, n, D) each."""
        return self.mix(self.ln(x), cache, start)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        a, A = self.images(x, cache, start)
        return self.reader(torch.cat([a, A], dim=-1) if self.own_image else A)  # (B, n, F); [a, A]: 2C channels


class ImageLM(nn.Module):
    """Idea 1 or idea 2 (by model.mixer), plain (one stage, head on the CNN features), chained, or the
    front alone (the control)."""

    def __init__(self, cfg: ImageLMConfig):
        super().__init__()
        self.cfg = cfg
        gcfg = cfg.gpt_config()
        self.emb = Embedding(gcfg)
        self.h = nn.ModuleList(Block(gcfg, attn=cfg.warmup == "gpt") for _ in range(cfg.n_layer))
        self.extra = Block(gcfg, mlp=False) if cfg.extra_attn else None
        in_channels = cfg.channels * (2 if cfg.own_image else 1)
        readers = [ImageReader(cfg, in_channels) for _ in range(max(1, cfg.n_chain) * cfg.image_stage)]
        F_ = readers[0].cnn.out_features if readers else cfg.n_embd
        self.tied = not (readers and cfg.n_chain == 0 and cfg.head == "plain")
        self.stages = nn.ModuleList(ImageStage(cfg, F_, project=self.tied) for _ in readers)
        width = cfg.n_embd if self.tied else F_  # plain: the head reads the pooled CNN features, normalised
        self.ln_f = nn.LayerNorm(width, bias=cfg.bias)  # (a CNN without norms has no fixed output scale;
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)  # LayerNorm keeps the initial loss ~ ln V)
        # GPT-2 init everywhere but in the CNNs, which keep their own (He) init; residual projections
        # (c_proj) are scaled by 1/sqrt(residual branches): one per attention or MLP sublayer and chain stage.
        branches = sum(b.has_attn + b.has_mlp for b in self.h) + cfg.n_chain * cfg.image_stage + cfg.extra_attn
        init_gpt2_(self, max(1, branches))  # before the CNNs are attached: they keep their He init
        for stage, reader in zip(self.stages, readers):
            stage.reader = reader
        if self.tied:
            self.lm_head.weight = self.emb.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def front(self, idx: torch.Tensor, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        """idx (B, n) -> x (B, n, d): embedding, warm-up blocks and the extra attention layer."""
        x = self.emb(idx, start)
        for block in self.h:
            x = block(x, cache)
        return self.extra(x, cache) if self.extra is not None else x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Cache | None = None,
                start: int = 0):
        x = self.front(idx, cache, start)  # (B, n, d)
        if not self.tied:  # the original head: normalised pooled features -> untied vocabulary map
            return self.finish(self.stages[0](x, cache, start), targets)  # (B, n, F) -> logits
        for stage in self.stages:
            y = stage.c_proj(stage(x, cache, start))  # (B, n, d)
            x = x + y if self.cfg.n_chain else y  # a chain adds to the residual stream; the proj head replaces
        return self.finish(x, targets)

    def finish(self, x: torch.Tensor, targets: torch.Tensor | None):
        logits = self.lm_head(self.ln_f(x))  # (B, n, V)
        return logits, lm_loss(logits, targets)

    def components(self) -> dict[str, list[nn.Module]]:
        """The parts whose parameters and gradients are reported apart (a tied head is the embedding)."""
        stages = list(self.stages)
        mixer_parts = [s.mix.components() for s in stages]
        return {"embedding": [self.emb], "front": [self.h, self.extra],
                "mapping": [s.ln for s in stages] + [m for p in mixer_parts for m in p["mapping"]],
                "mixer": [m for p in mixer_parts for m in p["mixer"]],
                "cnn": [s.reader for s in stages], "proj": [s.c_proj for s in stages],
                "head": [self.ln_f, self.lm_head]}

    def param_counts(self) -> dict[str, int]:
        seen: set[int] = set()
        return {name: count_params(modules, seen) for name, modules in self.components().items()}

    def recompute_flops_per_token(self) -> float:
        """FLOPs per token that cnn_checkpoint adds to flops_per_token: each stage's CNN forward runs once
        more in backward. Hardware FLOPs = model FLOPs + this."""
        if not self.cfg.cnn_checkpoint:
            return 0.0
        return float(sum(stage.reader.cnn.forward_flops(self.cfg.height, self.cfg.width) for stage in self.stages))

    def flops_per_token(self) -> float:
        """Training FLOPs per token at T = block_size: 3 x forward (backward = two forwards).

        Forward = 2 x the multiply-adds per token listed here, matmuls and convs only (the convention
        of FlopCounterMode, which tests/test_image_lm.py matches exactly), plus the CNN's own count:
          front    the blocks' Block.macs_per_token (attention at the full T x T, as GPT's count)
          stage    the mixer's macs_per_token: painting d D, plus idea 2's q, k and attention
          cnn      cnn.forward_flops(H, W) per stage (already FLOPs, not multiply-adds)
          head     plain: F V; chained: n_chain F d (c_proj) + d V; front only: d V
        Left out: embeddings, LayerNorms, GELU, softmax, ReLU, pooling, the running sum (all elementwise).
        """
        c, T, d = self.cfg, self.cfg.block_size, self.cfg.n_embd
        blocks = [*self.h] + ([self.extra] if self.extra is not None else [])
        macs = sum(b.macs_per_token(T, d) for b in blocks) + self.lm_head.in_features * c.vocab_size
        cnn = 0.0
        for stage in self.stages:
            macs += stage.mix.macs_per_token(T) + (stage.c_proj.weight.numel() if stage.c_proj is not None else 0)
            cnn += stage.reader.cnn.forward_flops(c.height, c.width)
        return 3.0 * (2.0 * macs + cnn)
