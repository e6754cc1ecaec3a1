"""One backbone for every model, and the registry of its token mixers (MetaFormer's lesson: keep the
block, swap the token mixer).

Shapes: B batch, T tokens (n in one decoding call), d = n_embd width, V padded vocabulary, F the pooled
CNN features of the plain head.

    idx (B, T) -> Embedding (token + position) -> n_layer blocks -> LayerNorm -> lm_head -> logits (B, T, V)
    block:  x = x + mixer(ln_1(x))      (absent for mixer "none")
            x = x + mlp(ln_2(x))        (where the layer has an MLP)

Each layer's token mixer comes from `model.mixers`, by name, from MIXERS: attention, the image block
(models/image.py), 1-D convolutions (models/conv.py), or none. A new mixer is a TokenMixer class
(models/layers.py) and one line in MIXERS; every registry-wide test then covers it (tests/helpers.py).
The GPT is this backbone with attention and an MLP in every layer (module names as GPT-2's, so that its
weights load key by key: models/hf_gpt2.py); the image models of the original study are presets that
place image blocks after attention blocks (models/presets.py).

head: "tied" (the default) reads the residual stream through ln_f and the lm_head tied to the token
embedding (Press & Wolf 2017), as GPT-2. The original image models are read differently, by their last
(image) layer without a residual: "proj" puts its projected features in place of the stream, "plain"
reads its pooled CNN features themselves through LayerNorm(F) and an untied Linear(F, V).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn as nn

from models.attention import CausalSelfAttention
from models.cnn import CNN, CNN_HELP, NORMS, validate_cnn
from models.conv import GatedConv, Hyena, ImplicitFilter, ShortConv
from models.image import ImageMixer
from models.layers import MLP, Cache, Embedding, TokenMixer, count_params, init_gpt2_, lm_loss
from schema import ConfigError, option


class MixerEntry(NamedTuple):
    build: Callable[..., TokenMixer] | None  # (model config, project) -> the mixer; None for "none"
    mlp: bool                                # the layer has an MLP unless model.mlp says otherwise
    summary: str                             # one line for --help


def _image(mixing: str) -> Callable[..., TokenMixer]:
    return lambda cfg, project: ImageMixer(cfg, mixing, project)


# The token mixer registry. Image blocks have no MLP by default: their CNN is the block's token-wise work,
# as in the original's chained models.
MIXERS: dict[str, MixerEntry] = {
    "attn": MixerEntry(lambda c, p: CausalSelfAttention(c.n_embd, c.n_head, c.bias, c.dropout), True,
                       "causal softmax self-attention, n_head heads (GPT-2)"),
    "none": MixerEntry(None, True, "no token mixing: the layer is its MLP alone (the no-mixing control)"),
    "conv": MixerEntry(lambda c, p: ShortConv(c.n_embd, c.conv_kernel, c.bias, c.dropout), True,
                       "short causal depthwise convolution of width conv_kernel, with projections (H3, Mamba)"),
    "gated_conv": MixerEntry(lambda c, p: GatedConv(c.n_embd, c.conv_kernel, c.bias, c.dropout), True,
                             "gated causal convolution, a * sigmoid(g) (Dauphin et al.'s GCNN)"),
    "hyena": MixerEntry(lambda c, p: Hyena(c.n_embd, c.conv_kernel, c.block_size, c.filter_width, c.bias, c.dropout),
                        True, "order-2 Hyena: short convolutions, implicit long filters by FFT, gating"),
    "image_sum": MixerEntry(_image("sum"), False, "image block, idea 1: painted images summed causally, read by the CNN"),
    "image_mean": MixerEntry(_image("mean"), False, "image block, idea 1 with the running mean"),
    "image_attn": MixerEntry(_image("attn"), False, "image block, idea 2: attention whose values are images"),
    "image_none": MixerEntry(_image("none"), False, "image block without mixing: each token reads its own image"),
}
MIXER_HELP = "; ".join(f"{name}: {entry.summary}" for name, entry in MIXERS.items())
OWN_INIT = (CNN, nn.Conv1d, ImplicitFilter)  # modules that keep their own initialisation (init_gpt2_)


class Layer(NamedTuple):
    mixer: str
    mlp: bool


@dataclass
class LMConfig:
    name: str = option("lm", "the registered model (models/__init__.py)")
    block_size: int = option(1024, "longest context; position embeddings exist for these positions only")
    vocab_size: int = option(0, "0: the dataset's vocabulary padded up to a multiple of 64 (50257 -> 50304)")
    n_layer: int = option(12, "blocks")
    n_head: int = option(12, "attention heads of an attn layer")
    n_embd: int = option(768, "width d")
    dropout: float = option(0.0, "dropout on embeddings, attention weights and residual branches")
    bias: bool = option(True, "biases in linears and LayerNorms (GPT-2 has them)")
    mixers: list[str] = option(["attn"], f"the token mixer of each layer, or one for every layer. {MIXER_HELP}")
    mlp: list[bool] = option([], "an MLP after each layer's mixer, or one value for every layer; empty: each mixer's "
                             "default (the image blocks: none; the others: one)")
    head: str = option("tied", "tied: ln_f and the lm_head tied to the embedding; proj / plain: the last layer (an "
                       "image block without MLP) is read without a residual, its features projected to width d "
                       "(proj) or themselves through an untied lm_head (plain, the original's)", ("tied", "proj", "plain"))
    conv_kernel: int = option(4, "conv, gated_conv, hyena: width of the short causal convolution")
    filter_width: int = option(64, "hyena: width of the MLP that generates the long filters")
    channels: int = option(8, "image blocks: C of a token image")
    height: int = option(32, "image blocks: H of a token image")
    width: int = option(32, "image blocks: W of a token image")
    image_heads: int = option(0, "image_attn: heads, each owning channels / image_heads channels; 0: one per channel")
    own_image: bool = option(False, "image blocks: the CNN reads the token's own image a_t beside the mixed A_t")
    img_norm: str = option("group", "image blocks: per-image norm of the CNN's input: group (each channel of each "
                           "image), layer (each image), none (the original; it collapses, see docs/image_block.md)",
                           NORMS)
    cnn: str = option("vgg", f"image blocks: the CNN trunk. {CNN_HELP}")
    cnn_width: int = option(64, "channels of the first CNN stage (the original: 64); every layer scales with it")
    # cnn_norm and cnn_pool are checked by models.cnn.validate_cnn, whose message says why there is no BatchNorm
    cnn_norm: str = option("group", "per-image norm in the CNN: group (the default), layer, or none (the original "
                           "VGG); never BatchNorm")
    cnn_pool: str = option("end", "end: global average pool after the last conv; stages: 2x2 max-pools between stages")
    cnn_chunk: int = option(0, "images per CNN call; 0: all B*T at once")
    cnn_checkpoint: bool = option(False, "recompute each chunk's CNN activations in backward (memory ~ one chunk)")
    channels_last: bool = option(False, "NHWC images and conv weights")

    def layers(self) -> list[Layer]:
        mixers = self.mixers * self.n_layer if len(self.mixers) == 1 else self.mixers
        mlps = self.mlp * self.n_layer if len(self.mlp) == 1 else self.mlp
        return [Layer(m, mlps[i] if mlps else MIXERS[m].mlp) for i, m in enumerate(mixers)]

    def output_head(self) -> str:
        return self.head

    def validate(self) -> None:
        for key in ("block_size", "n_head", "n_embd", "channels", "height", "width", "conv_kernel", "filter_width"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be positive, got {getattr(self, key)}")
        for key in ("cnn_chunk", "image_heads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {getattr(self, key)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        self.validate_layers()
        layers = self.layers()
        names = {layer.mixer for layer in layers}
        heads = self.image_heads or self.channels
        if self.image_heads and "image_attn" not in names:
            raise ConfigError("model.image_heads applies to image_attn layers (model.mixer = \"attn\" of the image "
                              "presets); remove it")
        if "image_attn" in names and (self.channels % heads or self.n_embd % heads):
            raise ConfigError(f"model.image_heads = {self.image_heads} must divide model.channels ({self.channels}) "
                              f"and model.n_embd ({self.n_embd}); 0 means one per channel")
        validate_cnn(self.cnn, self.cnn_norm, self.cnn_pool, self.cnn_width)
        if self.name == "gpt" and any(layer != Layer("attn", True) for layer in layers):
            raise ConfigError("model.name = \"gpt\" has attention and an MLP in every layer; for other layers use "
                              "model.name = \"lm\" with model.mixers and model.mlp")

    def validate_layers(self) -> None:
        """The layer list that model.mixers and model.mlp describe, and the head that reads it."""
        if self.n_layer <= 0:
            raise ConfigError(f"model.n_layer must be positive, got {self.n_layer}")
        unknown = [m for m in self.mixers if m not in MIXERS]
        if unknown:
            raise ConfigError(f"model.mixers: unknown mixer {unknown[0]!r}; choices: {', '.join(MIXERS)}")
        for key in ("mixers", "mlp"):
            if len(getattr(self, key)) not in ({1, self.n_layer} | ({0} if key == "mlp" else set())):
                raise ConfigError(f"model.{key} has {len(getattr(self, key))} entries for model.n_layer = "
                                  f"{self.n_layer}: give one per layer, or one for every layer")
        check_layers(self.layers(), self.output_head())


def check_layers(layers: list[Layer], head: str) -> None:
    if not layers:
        raise ConfigError("the model has no layers; give it at least one")
    if Layer("none", False) in layers:
        raise ConfigError("a layer with mixer \"none\" and no MLP does nothing; give it an MLP (model.mlp) or remove it")
    if head != "tied" and not (layers[-1].mixer.startswith("image_") and not layers[-1].mlp):
        raise ConfigError(f"model.head = \"{head}\" reads the last layer's image features; the last layer is "
                          f"{layers[-1].mixer}{' with an MLP' if layers[-1].mlp else ''}. Use model.head = \"tied\"")


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + mixer(ln_1(x)), then x + mlp(ln_2(x)), either half optional."""

    def __init__(self, cfg: LMConfig, layer: Layer, project: bool = True):
        super().__init__()
        self.has_mixer, self.has_mlp = layer.mixer != "none", layer.mlp
        if self.has_mixer:
            self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.mixer = MIXERS[layer.mixer].build(cfg, project)
        if self.has_mlp:
            self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
            self.mlp = MLP(cfg.n_embd, cfg.bias, cfg.dropout)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, start: int = 0) -> torch.Tensor:
        if self.has_mixer:
            x = x + self.mixer(self.ln_1(x), cache, start)
        if self.has_mlp:
            x = x + self.mlp(self.ln_2(x))
        return x

    def flops_per_token(self, T: int) -> float:
        return (self.mixer.flops_per_token(T) if self.has_mixer else 0.0) + \
            (3.0 * self.mlp.forward_flops_per_token() if self.has_mlp else 0.0)

    def components(self, prefix: str) -> dict[str, list[nn.Module]]:
        """{prefix.part: modules}: the mixer's parts (ln_1 with its input part) and the MLP (with ln_2)."""
        parts: dict[str, list[nn.Module]] = {}
        if self.has_mixer:
            mixer_parts = self.mixer.components()
            first = self.mixer.input_part or next(iter(mixer_parts))
            for part, modules in mixer_parts.items():
                parts[f"{prefix}.{part}"] = ([self.ln_1] if part == first else []) + modules
        if self.has_mlp:
            parts[f"{prefix}.mlp"] = [self.ln_2, self.mlp]
        return parts


class LM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        layers, head = cfg.layers(), cfg.output_head()
        self.emb = Embedding(cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.dropout)
        self.h = nn.ModuleList(Block(cfg, layer, project=not (head == "plain" and i == len(layers) - 1))
                               for i, layer in enumerate(layers))
        width = self.h[-1].mixer.out_features if head == "plain" else cfg.n_embd
        self.ln_f = nn.LayerNorm(width, bias=cfg.bias)  # (a CNN without norms has no fixed output scale;
        self.lm_head = nn.Linear(width, cfg.vocab_size, bias=False)  # LayerNorm keeps the initial loss ~ ln V)
        # residual branches: every mixer and MLP, but a last layer read without a residual (head proj / plain)
        branches = sum(b.has_mixer + b.has_mlp for b in self.h) - (head != "tied")
        init_gpt2_(self, max(1, branches), keep=OWN_INIT)
        if head != "plain":
            self.lm_head.weight = self.emb.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Cache | None = None,
                start: int = 0):
        x = self.emb(idx, start)  # (B, n, d)
        for block in self.h[:-1]:
            x = block(x, cache, start)
        last = self.h[-1]
        if self.cfg.output_head() == "tied":
            x = last(x, cache, start)
        else:  # the last image layer's output is the stream: (B, n, d) projected, or (B, n, F) plain
            x = last.mixer(last.ln_1(x), cache, start)
        logits = self.lm_head(self.ln_f(x))  # (B, n, V)
        return logits, lm_loss(logits, targets)

    def components(self) -> dict[str, list[nn.Module]]:
        """The parts whose parameters and gradients are reported apart: the embedding (with the tied head's
        weight, which is the embedding), each layer's mixer parts and MLP (h<i>.<part>), and the head (ln_f,
        and the lm_head when untied)."""
        parts: dict[str, list[nn.Module]] = {"embedding": [self.emb]}
        for i, block in enumerate(self.h):
            parts.update(block.components(f"h{i}"))
        parts["head"] = [self.ln_f, self.lm_head]
        parts = {name: [m for m in modules if m is not None] for name, modules in parts.items()}
        return {name: modules for name, modules in parts.items() if modules}

    def param_counts(self) -> dict[str, int]:
        seen: set[int] = set()
        return {name: count_params(modules, seen) for name, modules in self.components().items()}

    def flops_per_token(self) -> float:
        """Training FLOPs per token at T = block_size (forward + backward; tests/test_backbone.py checks it
        against torch's FLOP counter for every mixer): each block's mixer and MLP, and the head (2 d V per
        token forward, x3). Embeddings, LayerNorms, GELU, softmax and the loss are elementwise, left out."""
        T = self.cfg.block_size
        return sum(b.flops_per_token(T) for b in self.h) + 3.0 * 2.0 * self.lm_head.in_features * self.cfg.vocab_size

    def recompute_flops_per_token(self) -> float:
        """FLOPs per token that activation checkpointing (cnn_checkpoint) adds: hardware = model + this."""
        T = self.cfg.block_size
        return sum(b.mixer.recompute_flops_per_token(T) for b in self.h if b.has_mixer)


@contextlib.contextmanager
def tracing(model: nn.Module) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Inside, each token mixer records what it can show of itself ({module name: {tensor name: tensor}},
    filled by the forward passes run inside): the image blocks their painted and mixed images (and idea 2's
    attention weights), attention its weights, the gated convolution its gates, Hyena its filters."""
    mixers = {name: m for name, m in model.named_modules() if isinstance(m, TokenMixer)}
    for m in mixers.values():
        m.trace = {}
    try:
        yield {name: m.trace for name, m in mixers.items()}
    finally:
        for m in mixers.values():
            m.trace = None
