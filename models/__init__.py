"""The model registry: one backbone (models/backbone.py), presets of it by name, one contract for all.

    model = build_model(cfg.model)              # cfg.model is the dataclass registered for its name
    logits, loss = model(idx, targets=None)     # idx (B, T) int64 -> logits (B, T, V); loss None without targets
                                                # targets == -1 are ignored by the loss
    logits, _ = model(idx, cache=c, start=t)    # incremental: n new tokens at positions t.., state kept in c
    model.param_counts() -> {component: n}      # parameters per component, each counted once
    model.components() -> {component: modules}  # the same parts, for per-component gradient norms
    model.flops_per_token() -> float            # training FLOPs per token (forward + backward) at T = block_size
    model.recompute_flops_per_token() -> float  # what activation checkpointing adds on top (hardware FLOPs)
    with tracing(model) as records: model(idx)  # what each token mixer shows of itself (images, attention, ...)
    Decoder(model, idx)                         # incremental decoding for sampling (models/decoding.py)
Every model is causal: logits at position t depend on idx[:, :t+1] only.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn as nn

from models.backbone import LM, MIXERS, LMConfig, tracing
from models.layers import Cache
from models.presets import ImageConfig, preset
from schema import ConfigError

__all__ = ["MODELS", "MIXERS", "LM", "LMConfig", "LanguageModel", "build_model", "config_class", "tiny_config",
           "tracing"]


@runtime_checkable
class LanguageModel(Protocol):
    """What train.py, sample.py, eval.py and the study's report use of a model; nothing else."""
    cfg: LMConfig

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Cache | None = None,
                 start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def components(self) -> dict[str, list[nn.Module]]: ...

    def param_counts(self) -> dict[str, int]: ...

    def flops_per_token(self) -> float: ...

    def recompute_flops_per_token(self) -> float: ...


class Entry(NamedTuple):
    config: type    # the dataclass that [model] is validated against: LMConfig or a preset of it
    tiny: dict      # overrides giving a CPU-sized preset for tests
    summary: str    # one line for --help


TINY = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
TINY_IMAGE = dict(TINY, n_layer=1, channels=4, height=4, width=4)  # 1 warm-up block, 4 x 4 x 4 images, the 9-conv VGG
MODELS: dict[str, Entry] = {
    "lm": Entry(LMConfig, dict(TINY, channels=4, height=4, width=4, filter_width=16),
                "the backbone: each layer's token mixer from model.mixers"),
    "gpt": Entry(preset(LMConfig, "GPTConfig", name="gpt"), TINY,
                 "GPT-2: attention and an MLP in every layer, tied head"),
    "image_sum": Entry(preset(ImageConfig, "ImageSumConfig", name="image_sum"), TINY_IMAGE,
                       "idea 1: warm-up blocks, then an image block mixing by the running sum"),
    "image_attn": Entry(preset(ImageConfig, "ImageAttnConfig", name="image_attn", mixer="attn", extra_attn=True),
                        TINY_IMAGE, "idea 2: warm-up blocks, one attention layer, an image block mixing by attention"),
    "image_sum_chain": Entry(preset(ImageConfig, "ImageSumChainConfig", name="image_sum_chain", n_chain=2),
                             TINY_IMAGE, "idea 1 chained: n_chain residual image blocks"),
    "image_attn_chain": Entry(preset(ImageConfig, "ImageAttnChainConfig", name="image_attn_chain", mixer="attn",
                                     extra_attn=True, n_chain=2), TINY_IMAGE,
                              "idea 2 chained: n_chain residual image blocks"),
}


def config_class(name: str) -> type:
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name].config


def tiny_config(name: str, **overrides):
    """The tiny preset of a registered model, for tests and smoke runs."""
    entry = MODELS[name]
    return dataclasses.replace(entry.config(name=name, **entry.tiny), **overrides)


def build_model(model_cfg) -> LanguageModel:
    if model_cfg.vocab_size <= 0:
        raise ConfigError("model.vocab_size is unset; it is sized from the dataset's meta.json (config.resolve_vocab)")
    model_cfg.validate()
    return LM(model_cfg)
