"""Autoregressive sampling for any model that honours the registry contract (models/__init__.py).

Shapes: B batch, T tokens, V vocabulary.
The filters apply in a fixed order: temperature, then top-k, then top-p on the distribution that
top-k left (renormalised), the order Holtzman et al. (2020) and most libraries use. Ties are
resolved by value, never by position: a token tied with the last one kept is kept too, so the
result does not depend on how a sort orders equal numbers.
"""
from __future__ import annotations

import torch

from models import LanguageModel
from models.decoding import Decoder


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError on settings that have no meaning; cheap, so callers check before loading a model."""
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Logits (B, V) -> logits (B, V) whose softmax is the distribution to sample from.

    Tokens that may not be drawn are set to -inf. temperature 0 is greedy: only the argmax (the
    first one on an exact tie) stays finite, so sampling from the result is deterministic.
    """
    check_sampling_args(temperature, top_k, top_p)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax and cumulative sums need more than 8 mantissa bits
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if temperature == 0:
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.argmax(-1, keepdim=True), True)  # (B, V) one True per row
        return torch.where(keep, logits, neg_inf)
    logits = logits / temperature  # new tensor: the caller's logits are never modified
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) the k-th largest
        logits = torch.where(logits < kth, neg_inf, logits)
    if top_p is not None and top_p < 1:  # p = 1 keeps everything, even probabilities that round to 0
        probs = torch.softmax(logits, dim=-1)  # (B, V)
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)  # (B, V)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V) mass of the tokens ahead
        n_keep = (mass_before < top_p).sum(-1, keepdim=True)  # (B, 1) >= 1: mass_before[0] = 0 < p
        threshold = sorted_probs.gather(-1, n_keep - 1)  # (B, 1) probability of the last token kept
        logits = torch.where(probs < threshold, neg_inf, logits)
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from logits (B, V) -> (B,) int64. Greedy draws no random numbers."""
    logits = filter_logits(logits, temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate(model: LanguageModel, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, vocab_size: int | None = None) -> torch.Tensor:
    """Extend idx (B, T0) int64 by max_new_tokens sampled tokens -> (B, T0 + max_new_tokens).

    The model stays in the mode the caller set (eval for sampling). Once the sequence is longer than
    model.cfg.block_size, the model sees only the last block_size tokens (a sliding window).
    Every model decodes incrementally (models/decoding.py) while the whole sequence fits in
    block_size; the windowed full forward takes over from there. The generator, if
    given, must live on idx's device. vocab_size: draw only ids below it (a model's vocabulary is
    padded to a multiple of 64 for speed; the padding ids mean nothing and cannot be decoded).
    """
    check_sampling_args(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (B, T) int64 tensor with T >= 1, got {tuple(idx.shape)} {idx.dtype}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    block_size = model.cfg.block_size
    decoder = Decoder(model, idx) if idx.size(1) <= block_size and max_new_tokens > 0 else None
    for step in range(max_new_tokens):
        if decoder is not None:
            logits = decoder.logits  # (B, V)
        else:
            logits, _ = model(idx[:, -block_size:])  # (B, T', V), T' <= block_size
            logits = logits[:, -1, :]  # (B, V) the prediction for the next position
        logits = logits[:, :vocab_size]  # (B, V') drop padding ids; a no-op when vocab_size is None
        next_tok = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        idx = torch.cat([idx, next_tok[:, None].to(idx.device)], dim=1)  # (B, T + 1)
        if decoder is not None:
            if idx.size(1) <= block_size and step < max_new_tokens - 1:
                decoder.push(next_tok)  # the decoder's context still fits: keep it incremental
            else:
                decoder = None  # beyond block_size (or done): the window must slide, recompute
    return idx
