"""Reference losses for the study's table: the unigram and bigram cross-entropy of exactly the validation
windows the arms are scored on (counts from the train split), ln V, and nats/token as bits per byte.

Why: a validation loss means little alone. Next to ln V (a uniform guess), the unigram loss (token
frequencies only) and the bigram loss (the previous token only), it shows how much of the gap an arm
closes with context; a model that fails to beat the bigram uses almost no context. Bits per byte
removes the tokenizer from the unit, so char and GPT-2 BPE runs can be compared.

Shapes: V vocabulary, N train tokens, P distinct adjacent pairs of the train split, (B, T) the
validation windows: x[b, t] is the token before the target y[b, t]; y == -1 marks a position not scored.

Smoothing. Unigram: add-one (Laplace), p(w) = (c(w) + 1) / (N + V). Bigram: interpolated Witten-Bell,
p(w|u) = (c(u,w) + n1(u) p(w)) / (c(u) + n1(u)), where c(u) counts the pairs that start with u and n1(u)
the distinct tokens seen after u: the more kinds of followers a context has had, the more weight the
unigram gets. An unseen context (c(u) = 0) falls back to the unigram. Every probability is positive,
so every loss is finite. The bigram table is sparse: a dense V x V table for GPT-2 (50304^2) is 20 GB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


CHUNK = 1 << 24  # train tokens counted at once: bounds the int64 copies and the sort (~0.5 GB)


@dataclass(frozen=True)
class NgramCounts:
    vocab_size: int
    n_tokens: int                  # N: train tokens counted
    unigram: np.ndarray            # (V,) c(w)
    pair_codes: np.ndarray         # (P,) sorted distinct u * V + w of adjacent train tokens (u, w)
    pair_counts: np.ndarray        # (P,) c(u, w)
    context_totals: np.ndarray     # (V,) c(u) = sum_w c(u, w); the last train token starts no pair
    followers: np.ndarray          # (V,) n1(u) = #{w : c(u, w) > 0}

    def unigram_probs(self) -> np.ndarray:
        """(V,) add-one smoothed p(w) = (c(w) + 1) / (N + V)."""
        return (self.unigram + 1.0) / (self.n_tokens + self.vocab_size)


def ngram_counts(train_ids: np.ndarray, vocab_size: int, chunk: int = CHUNK) -> NgramCounts:
    """Unigram and sparse bigram counts of a token stream (N,), e.g. train.bin as a np.memmap.

    Pairs are counted across document boundaries (the separator is a token like any other). Memory
    grows with the number of distinct pairs; for OpenWebText's ~9B tokens pass a prefix (a memmap slice)
    and report n_tokens.
    """
    if np.ndim(train_ids) != 1 or len(train_ids) < 2:
        raise ValueError(f"train_ids must be a 1-D stream of at least 2 tokens, got shape {np.shape(train_ids)}")
    V, N = int(vocab_size), len(train_ids)
    unigram = np.zeros(V, dtype=np.int64)
    codes, counts = [], []
    for start in range(0, N - 1, chunk):
        ids = np.asarray(train_ids[start:start + chunk + 1], dtype=np.int64)  # one token of overlap for the pair
        check_ids(ids, V, "train_ids")
        unigram += np.bincount(ids[:-1] if start + chunk + 1 < N else ids, minlength=V)
        c, k = np.unique(ids[:-1] * V + ids[1:], return_counts=True)  # int64: V^2 < 2^63
        codes.append(c)
        counts.append(k)
    pair_codes, inverse = np.unique(np.concatenate(codes), return_inverse=True)  # merge the chunks
    pair_counts = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)  # (P,)
    contexts = pair_codes // V
    context_totals = np.bincount(contexts, weights=pair_counts, minlength=V).astype(np.int64)
    return NgramCounts(V, N, unigram, pair_codes, pair_counts, context_totals, np.bincount(contexts, minlength=V))


def check_ids(ids: np.ndarray, vocab_size: int, name: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{name} holds ids outside 0..{vocab_size - 1}: min {ids.min()}, max {ids.max()}")


def scored(counts: NgramCounts, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, u, w): the scored positions (y != -1) and the contexts and targets, 0 where not scored."""
    x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
    mask = y != -1
    u, w = np.where(mask, x, 0), np.where(mask, y, 0)  # (B, T)
    check_ids(u, counts.vocab_size, "x")
    check_ids(w, counts.vocab_size, "y")
    return mask, u, w


def unigram_nll(counts: NgramCounts, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B, T) -ln p(y) in nats under the add-one unigram; nan where y == -1."""
    mask, _, w = scored(counts, x, y)
    return np.where(mask, -np.log(counts.unigram_probs()[w]), np.nan)


def bigram_nll(counts: NgramCounts, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(B, T) -ln p(y | x) in nats under the interpolated Witten-Bell bigram; nan where y == -1."""
    mask, u, w = scored(counts, x, y)
    codes = u * counts.vocab_size + w                                    # (B, T)
    at = np.minimum(np.searchsorted(counts.pair_codes, codes), len(counts.pair_codes) - 1)
    c_uw = np.where(counts.pair_codes[at] == codes, counts.pair_counts[at], 0)  # 0 for an unseen pair
    c_u, n1 = counts.context_totals[u], counts.followers[u]              # (B, T)
    p_w = counts.unigram_probs()[w]
    p = np.where(c_u > 0, (c_uw + n1 * p_w) / np.maximum(c_u + n1, 1), p_w)
    return np.where(mask, -np.log(p), np.nan)


def reference_losses(counts: NgramCounts, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean nats/token over the scored positions: uniform (ln V), unigram and bigram."""
    return {"uniform": math.log(counts.vocab_size), "unigram": float(np.nanmean(unigram_nll(counts, x, y))),
            "bigram": float(np.nanmean(bigram_nll(counts, x, y)))}


def count_bytes(lengths: np.ndarray, y: np.ndarray) -> int:
    """UTF-8 bytes of the scored targets (y != -1), given token_bytes' lengths."""
    y = np.asarray(y, dtype=np.int64)
    return int(lengths[y[y != -1]].sum())


def bits_per_byte(nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """nats/token -> bits/byte: the total nats over the tokens, in bits, over the bytes they spell."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {n_bytes}")
    return nats_per_token * n_tokens / (n_bytes * math.log(2))


@dataclass(frozen=True)
class Reference:
    """The references of one study: nats/token on its validation windows, their size, and each reference
    in bits per byte (as summary.json holds them)."""
    uniform: float
    unigram: float
    bigram: float
    tokens: int     # scored tokens of the windows
    bytes: int      # UTF-8 bytes those tokens spell
    uniform_bits_per_byte: float = field(init=False)
    unigram_bits_per_byte: float = field(init=False)
    bigram_bits_per_byte: float = field(init=False)

    def __post_init__(self):
        for name in ("uniform", "unigram", "bigram"):
            object.__setattr__(self, f"{name}_bits_per_byte", self.bits_per_byte(getattr(self, name)))

    def bits_per_byte(self, nats_per_token: float) -> float:
        return bits_per_byte(nats_per_token, self.tokens, self.bytes)

    @property
    def vocab_size(self) -> int:
        """V of the uniform reference ln V: the dataset's vocabulary, not a model's (padded) embedding."""
        return round(math.exp(self.uniform))


def study_reference(config: dict) -> Reference | None:
    """The references on the validation windows a run with this resolved config is scored on (its
    data, eval_iters, evaluation batch size and block_size); None for a synthetic task, which has no
    text and no train split to count."""
    from launch.paths import in_root
    from data import SYNTHETIC_TASKS
    from data.loader import TokenDataset
    from data.tokenizer import load_tokenizer
    from engine.evaluation import eval_batch

    if config["data"]["dataset"] in SYNTHETIC_TASKS:
        return None
    data = TokenDataset(in_root(config["data"]["data_dir"]), config["data"]["dataset"])
    t, T = config["train"], config["model"]["block_size"]
    batches = [eval_batch(data, t.get("eval_split", "val"), i, t.get("eval_batch_size") or t["batch_size"], T) for i in range(t["eval_iters"])]
    x, y = (np.concatenate([b[k].numpy() for b in batches]) for k in (0, 1))  # (windows, T) each
    losses = reference_losses(ngram_counts(data.splits["train"], data.vocab_size), x, y)
    n_bytes = count_bytes(load_tokenizer(data.meta).token_bytes(), y)
    return Reference(losses["uniform"], losses["unigram"], losses["bigram"], int((y != -1).sum()), n_bytes)
