"""The model registry: one entry per model family, one contract for all (LanguageModel).

    model = build_model(cfg.model)              # cfg.model is the dataclass registered for its name
    logits, loss = model(idx, targets=None)     # idx (B, T) int64 -> logits (B, T, V); loss None without targets
                                                # targets == -1 are ignored by the loss
    logits, _ = model(idx, cache=c, start=t)    # incremental: n new tokens at positions t.., state kept in c
    model.param_counts() -> {component: n}      # parameters per component, each counted once
    model.components() -> {component: modules}  # the same parts, for per-component gradient norms
    model.flops_per_token() -> float            # training FLOPs per token (forward + backward) at T = block_size
    model.recompute_flops_per_token() -> float  # what activation checkpointing adds on top (hardware FLOPs)
    Decoder(model, idx)                         # incremental decoding for sampling (models/decoding.py)
Every model is causal: logits at position t depend on idx[:, :t+1] only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn as nn

from models.gpt import GPT, Cache, GPTConfig
from models.image_lm import ImageAttnChainConfig, ImageAttnConfig, ImageLM, ImageSumChainConfig, ImageSumConfig
from schema import ConfigError


@runtime_checkable
class LanguageModel(Protocol):
    """What train.py, sample.py, eval.py and the analysis use of a model; nothing else."""
    cfg: GPTConfig | ImageSumConfig

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: Cache | None = None,
                 start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def components(self) -> dict[str, list[nn.Module]]: ...

    def param_counts(self) -> dict[str, int]: ...

    def flops_per_token(self) -> float: ...

    def recompute_flops_per_token(self) -> float: ...


class Entry(NamedTuple):
    config: type                          # the dataclass that [model] is validated against
    builder: Callable[..., nn.Module]
    tiny: dict                            # overrides giving a CPU-sized preset for tests
    summary: str                          # one line for --help


TINY_IMAGE = dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, channels=4, height=4, width=4)
MODELS: dict[str, Entry] = {
    "gpt": Entry(GPTConfig, GPT, dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32),
                 "GPT-2: token + position embeddings, pre-LN blocks, tied head"),
    # token-to-image models (models/image_lm.py); tiny: 1 warm-up block, 4 x 4 x 4 images, the original 9-conv VGG
    "image_sum": Entry(ImageSumConfig, ImageLM, TINY_IMAGE, "idea 1: token images, causal running sum, CNN"),
    "image_attn": Entry(ImageAttnConfig, ImageLM, TINY_IMAGE, "idea 2: attention whose values are images, CNN"),
    "image_sum_chain": Entry(ImageSumChainConfig, ImageLM, TINY_IMAGE, "idea 1 chained: n_chain residual stages"),
    "image_attn_chain": Entry(ImageAttnChainConfig, ImageLM, TINY_IMAGE, "idea 2 chained: n_chain residual stages"),
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
    return MODELS[model_cfg.name].builder(model_cfg)
