"""Incremental decoding of any registered model, for sampling.

A Decoder holds the model's cache for a batch of sequences: `.logits` (B, V) predicts the token after
the last one; `push(tokens (B,))` appends one token per row and costs one position's work (the
attention layers read their KV caches, idea 1's running sum is O(1) per token, the CNN reads only the
new token's image), instead of a full forward over the whole context.
"""
from __future__ import annotations

import torch

from models import LanguageModel


class Decoder:
    @torch.no_grad()
    def __init__(self, model: LanguageModel, idx: torch.Tensor):
        if idx.size(1) > model.cfg.block_size:
            raise ValueError(f"prompt of {idx.size(1)} tokens is longer than block_size={model.cfg.block_size}")
        self.model, self.cache, self.t = model, {}, idx.size(1)
        self.logits = model(idx, cache=self.cache)[0][:, -1]  # (B, V)

    @torch.no_grad()
    def push(self, tokens: torch.Tensor) -> None:
        if self.t >= self.model.cfg.block_size:
            raise ValueError(f"the decoder holds block_size={self.t} tokens; slide the window with a full forward")
        self.logits = self.model(tokens.view(-1, 1), cache=self.cache, start=self.t)[0][:, -1]  # (B, V)
        self.t += 1
