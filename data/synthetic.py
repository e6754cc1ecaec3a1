"""Synthetic tasks generated on the fly: copy and multi-query associative recall (MQAR).

Loss on web text says *that* a model loses; these tasks say *why*: can it route a token's content
over a fixed distance (copy), or look a value up by its key wherever the key was written (MQAR)?
They run through the same trainer, configs and study runner as text (data.dataset = "copy" | "mqar").

Difficulty knobs: sequence length (model.block_size = T), pairs or tokens to copy (data.task_pairs
= K) and vocabulary (data.task_vocab = V). Token 0 is the filler in both tasks.

copy (the copy-memory task of Hochreiter & Schmidhuber 1997 / Arjovsky et al. 2016, with K symbols):
    seq = s_1 .. s_K  0 .. 0 (T - 2K fillers)  SEP  s_1 .. s_K        (T + 1 tokens; SEP = 1)
    x = seq[:T], y = seq[1:] scored only where it is a copied token: y = s_i at the position of SEP
    (i = 1) or of the copy's s_{i-1}. Symbols are uniform on [2, V). Every scored prediction looks back
    exactly T - K positions, so T sets the distance to route over and K the amount to hold.

mqar (Arora et al. 2023, "Zoology", section 3 / appendix: their multiquery_ar generator, as we read it):
    x = k_1 v_1 .. k_K v_K | query section of T - 2K tokens, all 0 except K keys
    Keys are K distinct ids from [1, V//2), values K distinct ids from [V//2, V), paired in order.
    The query section is cut into S = (T - 2K) // 2 slots of two positions; key k_i is queried at
    position 2K + 2 g_i, and the K slots g_i are drawn *without replacement*, one after another, each
    with probability proportional to power_a * (g + 1) ** (power_a - 1) over the slots g = 0 .. S-1
    still free (numpy's choice(replace=False, p=...), which zoology calls); power_a = 0.01, so
    p(g) ~ 1 / (g + 1)**0.99: most queries come soon after the kv section, a heavy tail comes late.
    The gap is thus counted in slots from the end of the kv section, not from the key's own pair.
    y = v_i at the query position of k_i (the value is predicted right after its key is read), -1
    everywhere else: loss and accuracy count only the K queries.
    Departures from zoology: the fillers stay 0 (zoology's default random_non_queries=True replaces
    them with uniform tokens), and zoology's `vocab_size > input_seq_len` assert is not made (nothing
    here needs it); its T >= 4K is what check_block_size asks for.

A batch is a pure function of (seed, split, step, micro), like data/loader.py's windows, so resume and
distributed runs see the same sequences; train and val draw from different streams, so validation
sequences are fresh samples (the task has no fixed corpus to overfit).
"""
from __future__ import annotations

import numpy as np
import torch

from data.loader import STREAMS, DataError

TASKS = ("copy", "mqar")
FILLER = 0         # both tasks: positions that carry no information
COPY_SEP = 1       # copy: the separator after which the symbols are repeated
POWER_A = 0.01     # mqar: zoology's default exponent of the gap distribution


def distinct_uniform(rng: np.random.Generator, batch: int, n: int, k: int) -> np.ndarray:
    """(batch, k) distinct indices in [0, n) per row, a uniformly random ordered k-subset.

    Floyd's algorithm (Bentley & Floyd 1987) vectorised over the batch: k steps whatever n is, so a
    vocabulary of 8192 costs no more than one of 64 (scoring all n ids per row would cost B * n)."""
    chosen = np.empty((batch, k), dtype=np.int64)
    for i, j in enumerate(range(n - k, n)):  # a loop over the k draws, never over tokens or rows
        t = rng.integers(0, j + 1, size=batch)                                 # (B,) in [0, j]
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, j, t)  # Floyd: j cannot be taken yet, and keeps every subset equally likely
    order = np.argsort(rng.random((batch, k)), axis=1)  # Floyd's order favours late j: shuffle it
    return np.take_along_axis(chosen, order, axis=1)


def weighted_draws(rng: np.random.Generator, batch: int, weights: np.ndarray, k: int) -> np.ndarray:
    """(batch, k) distinct indices into `weights` per row, in draw order, drawn one after another with
    probability proportional to the weights of those left (numpy's choice(replace=False, p=...)).

    Efraimidis & Spirakis (2006): the k smallest of E_j / w_j with E_j ~ Exp(1), in increasing order,
    have exactly the law of those successive draws; so the batch needs no loop over sequences."""
    n = len(weights)
    scores = rng.standard_exponential((batch, n)) / weights                   # (B, n)
    chosen = np.argpartition(scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (batch, 1))
    order = np.argsort(np.take_along_axis(scores, chosen, axis=1), axis=1)      # (B, k): draw order
    return np.take_along_axis(chosen, order, axis=1)


def gap_probs(n_slots: int, power_a: float = POWER_A) -> np.ndarray:
    """p(g) for g = 0 .. n_slots-1: proportional to power_a * (g + 1) ** (power_a - 1) (zoology's p)."""
    p = power_a * np.arange(1, n_slots + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def mqar_batch(rng: np.random.Generator, batch: int, block_size: int, vocab_size: int,
               n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 arrays (batch, block_size) of the MQAR task (module docstring)."""
    B, T, K, half = batch, block_size, n_pairs, vocab_size // 2
    keys = 1 + distinct_uniform(rng, B, half - 1, K)                            # (B, K) in [1, V//2)
    values = half + distinct_uniform(rng, B, vocab_size - half, K)               # (B, K) in [V//2, V)
    n_slots = (T - 2 * K) // 2
    slots = weighted_draws(rng, B, gap_probs(n_slots), K)             # (B, K): slot of k_i's query
    x = np.full((B, T), FILLER, dtype=np.int64)
    x[:, 0:2 * K:2], x[:, 1:2 * K:2] = keys, values
    rows, where = np.arange(B)[:, None], 2 * K + 2 * slots                     # (B, 1), (B, K)
    x[rows, where] = keys
    y = np.full((B, T), -1, dtype=np.int64)
    y[rows, where] = values
    return x, y


def copy_batch(rng: np.random.Generator, batch: int, block_size: int, vocab_size: int,
               n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) int64 arrays (batch, block_size) of the copy task (module docstring)."""
    T, K = block_size, n_tokens
    symbols = rng.integers(COPY_SEP + 1, vocab_size, size=(batch, K))         # (B, K)
    seq = np.full((batch, T + 1), FILLER, dtype=np.int64)                      # x and y are windows of seq
    seq[:, :K], seq[:, T - K], seq[:, T + 1 - K:] = symbols, COPY_SEP, symbols
    y = np.full((batch, T), -1, dtype=np.int64)
    y[:, T - K:] = symbols                                                     # from SEP on: the next symbol
    return seq[:, :T], y


class SyntheticTask:
    """A task with the dataset interface train.py uses (vocab_size, meta, check_block_size, batch)."""

    def __init__(self, name: str, *, vocab_size: int, n_pairs: int):
        if name not in TASKS:
            raise DataError(f"unknown synthetic task {name!r}; known: {', '.join(TASKS)}")
        if n_pairs < 1:
            raise DataError(f"data.task_pairs = {n_pairs}; give at least 1 ({'pair' if name == 'mqar' else 'token'})")
        if name == "mqar" and vocab_size // 2 - 1 < n_pairs:
            raise DataError(f"mqar with data.task_vocab = {vocab_size} has {max(vocab_size // 2 - 1, 0)} key ids "
                            f"([1, {vocab_size // 2})), too few for {n_pairs} distinct keys per sequence; set "
                            f"data.task_vocab >= {2 * n_pairs + 2} or data.task_pairs <= {max(vocab_size // 2 - 1, 0)}")
        if name == "copy" and vocab_size < COPY_SEP + 2:
            raise DataError(f"copy with data.task_vocab = {vocab_size} has no symbol ids (0 is the filler, 1 the "
                            f"separator); set data.task_vocab >= 3")
        self.name, self.n_pairs, self.vocab_size = name, n_pairs, vocab_size
        self.meta: dict = {"name": name, "tokenizer": "synthetic", "vocab_size": vocab_size, "task": name,
                           "n_pairs": n_pairs, "filler": FILLER}
        self.meta.update({"sep": COPY_SEP} if name == "copy" else {"power_a": POWER_A})

    def min_block_size(self) -> int:
        # copy: K symbols, SEP and K - 1 copied symbols fit in 2K inputs; mqar: K pairs + K query slots of 2
        return 2 * self.n_pairs if self.name == "copy" else 4 * self.n_pairs

    def check_block_size(self, block_size: int) -> None:
        need = self.min_block_size()
        if block_size < need:
            what = (f"{self.n_pairs} symbols, the separator and their copy" if self.name == "copy" else
                    f"{self.n_pairs} key-value pairs and {self.n_pairs} query slots of 2 tokens")
            raise DataError(f"{self.name}: model.block_size = {block_size} cannot hold {what}; set "
                            f"model.block_size >= {need} or data.task_pairs <= {block_size // (need // self.n_pairs)}")

    def batch(self, split: str, batch_size: int, block_size: int, *, seed: int, step: int,
              micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (batch_size, block_size) int64 on the CPU; y = -1 where nothing is scored."""
        self.check_block_size(block_size)
        rng = np.random.default_rng([seed, STREAMS.index(split), step, micro])  # the halves: streams of their own
        make = copy_batch if self.name == "copy" else mqar_batch
        x, y = make(rng, batch_size, block_size, self.vocab_size, self.n_pairs)
        return torch.from_numpy(x), torch.from_numpy(y)
