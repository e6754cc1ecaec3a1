"""The model registry: one entry per model family, one contract for all.

Contract, so that train.py, sample.py and the tests never branch on the model type:
  model = build_model(cfg.model)             # cfg.model is the dataclass registered for its name
  logits, loss = model(idx, targets=None)    # idx (B, T) int64 -> logits (B, T, V); loss None without targets
                                             # targets == -1 are ignored by the loss
  model.param_counts() -> {component: n}     # parameters per component, each counted once
  model.flops_per_token() -> float          # training FLOPs per token (forward + backward) at T = block_size
Every model is causal: logits at position t depend on idx[:, :t+1] only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch.nn as nn

from config import ConfigError
from models.gpt import GPT, GPTConfig
from models.image_lm import ImageAttnChainConfig, ImageAttnConfig, ImageLM, ImageSumChainConfig, ImageSumConfig


class Entry(NamedTuple):
    config: type                          # the dataclass that [model] is validated against
    builder: Callable[..., nn.Module]
    tiny: dict                            # overrides giving a CPU-sized preset for tests


MODELS: dict[str, Entry] = {
    "gpt": Entry(GPTConfig, GPT, dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)),
    # token-to-image models (models/image_lm.py): idea 1 (running sum), idea 2 (attention with image values),
    # and their chained forms; tiny: 1 warm-up block, 4 x 4 x 4 images, the original 9-conv VGG
    "image_sum": Entry(ImageSumConfig, ImageLM,
                       dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, channels=4, height=4, width=4)),
    "image_attn": Entry(ImageAttnConfig, ImageLM,
                       dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, channels=4, height=4, width=4)),
    "image_sum_chain": Entry(ImageSumChainConfig, ImageLM,
                       dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, channels=4, height=4, width=4)),
    "image_attn_chain": Entry(ImageAttnChainConfig, ImageLM,
                       dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32, channels=4, height=4, width=4)),
}


def config_class(name: str) -> type:
    if name not in MODELS:
        raise ConfigError(f"unknown model.name {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name].config


def tiny_config(name: str, **overrides):
    """The tiny preset of a registered model, for tests and smoke runs."""
    entry = MODELS[name]
    return dataclasses.replace(entry.config(name=name, **entry.tiny), **overrides)


def build_model(model_cfg) -> nn.Module:
    if model_cfg.vocab_size <= 0:
        raise ConfigError("model.vocab_size is unset; train.py fills it in from the dataset's meta.json")
    model_cfg.validate()
    return MODELS[model_cfg.name].builder(model_cfg)
