"""Scoring a model: the trainer's fixed validation windows, and every token of a text scored once.

Evaluation windows come from a fixed seed and a step number no training run reaches: every
evaluation of every run (any model, any training seed) scores the same windows, which are never
the windows of a training step. Comparisons across arms and seeds are then paired.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from config import Config
from data import Dataset
from engine import runtime
from models import LanguageModel, tracing

EVAL_SEED, EVAL_STEP = 0, 2 ** 40


def eval_batch(data: Dataset, split: str, i: int, batch_size: int, block_size: int):
    """The i-th evaluation batch of a split: the same for every run that shares these numbers."""
    return data.batch(split, batch_size, block_size, seed=EVAL_SEED, step=EVAL_STEP, micro=i)


@torch.no_grad()
def evaluate(model: LanguageModel, data: Dataset, cfg: Config, rt: runtime.Runtime,
             detailed: bool = False) -> dict[str, float | list[float]]:
    """Mean loss and accuracy over the same batches of each split at every evaluation (eval_iters of val,
    drawn from train.eval_split, and train_eval_iters of train), shared out over the processes; a process
    with no batch still joins the all-reduce, so none can deadlock. Models with attention add each
    attention layer's entropy against uniform on one window (attn_entropy_h<i>, attention_entropies). `detailed` adds, for val, the mean loss at each
    position of the window (val_loss_by_position, T values) and each window's mean loss
    (val_window_losses, in window order): the study's context-use curve and paired statistics."""
    model.eval()
    t = cfg.train
    iters = {"train": t.eval_iters if t.train_eval_iters < 0 else t.train_eval_iters, "val": t.eval_iters}
    out = {}
    for split, n_batches in iters.items():
        if n_batches == 0:
            continue
        acc = SplitScore(n_batches * (t.eval_batch_size or t.batch_size), cfg.model.block_size, rt.device)
        source = t.eval_split if split == "val" else split  # the validation windows this run is scored on
        for i in range(rt.rank, n_batches, rt.world_size):
            x, y = eval_batch(data, source, i, t.eval_batch_size or t.batch_size, cfg.model.block_size)
            x, y = x.to(rt.device), y.to(rt.device)
            with rt.autocast():
                logits, loss = model(x, y)
            acc.add(i, logits, loss, y, detailed and split == "val")
        out.update(acc.result(split, rt, detailed and split == "val"))
    if any(layer.mixer in ATTENTION_MIXERS for layer in cfg.model.layers()):
        x, _ = eval_batch(data, t.eval_split, 0, 1, cfg.model.block_size)
        out.update(attention_entropies(unwrapped(model), x[:, :ENTROPY_TOKENS].to(rt.device), rt))
    model.train()
    return out


ENTROPY_TOKENS = 256  # positions of the one validation window whose attention entropy is logged
ATTENTION_MIXERS = ("attn", "image_attn")  # the mixers whose trace shows attention weights


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself inside a DDP wrapper and/or torch.compile's (a trace on those would recompile)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def attention_entropies(model: LanguageModel, x: torch.Tensor, rt: runtime.Runtime) -> dict[str, float]:
    """attn_entropy_h<i> for every layer whose mixer shows attention weights (attention, idea 2's image
    attention), on one window x (1, n): how close its routing is to a running mean (see relative_entropy)."""
    with tracing(model) as records, rt.autocast():
        model(x)
    return {f"attn_entropy_h{i}": relative_entropy(records[f"h.{i}.mixer"]["attention"])
            for i in range(len(model.h)) if "attention" in records.get(f"h.{i}.mixer", {})}


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """-sum_s w_ts ln w_ts of each query row of attention weights (..., n, n) -> (..., n), in float64."""
    w = weights.double()
    return -(w * torch.log(w.clamp_min(1e-300))).sum(-1)  # 0 ln 0 = 0


def relative_entropy(weights: torch.Tensor) -> float:
    """Mean over batch, heads and query rows t >= 1 of H_t / ln(t + 1), for causal attention weights
    (B, nh, n, n): each row's entropy against that of the uniform row over its t + 1 visible keys. 1 is a
    running mean (the weights never left their initial uniformity), 0 puts all weight on one key."""
    n = weights.size(-1)
    uniform = torch.log(torch.arange(1, n + 1, dtype=torch.float64, device=weights.device))  # (n,): ln(t + 1)
    return float((row_entropy(weights)[..., 1:] / uniform[1:]).mean()) if n > 1 else 1.0


class SplitScore:
    """Sums over one split's evaluation batches, all-reduced across processes at the end."""

    def __init__(self, n_windows: int, block_size: int, device: torch.device):
        self.loss_sum, self.batches, self.hits, self.scored = 0.0, 0, 0, 0
        self.by_position = torch.zeros(2, block_size, dtype=torch.float64, device=device)  # nll sums, counts
        self.windows = torch.zeros(n_windows, dtype=torch.float64, device=device)  # each window's mean nll

    def add(self, i: int, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor, detailed: bool) -> None:
        mask = y != -1  # accuracy where the loss is scored (every position for text)
        self.loss_sum, self.batches = self.loss_sum + loss.item(), self.batches + 1
        self.hits += (logits.argmax(-1) == y)[mask].sum().item()
        self.scored += mask.sum().item()
        if detailed:
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="none")  # (B, T)
            nll = nll.double() * mask
            self.by_position += torch.stack([nll.sum(0), mask.sum(0).double()])
            B = y.size(0)
            self.windows[i * B:(i + 1) * B] = nll.sum(1) / mask.sum(1).clamp(min=1)

    def result(self, split: str, rt: runtime.Runtime, detailed: bool) -> dict:
        loss_sum, batches, hits, scored = runtime.all_reduce_sum([self.loss_sum, self.batches, self.hits,
                                                                  self.scored], rt)
        out = {f"{split}_loss": loss_sum / batches, f"{split}_acc": hits / max(scored, 1)}
        if detailed:
            by_position, windows = runtime.all_reduce_tensor(self.by_position, rt), runtime.all_reduce_tensor(
                self.windows, rt)
            out[f"{split}_loss_by_position"] = (by_position[0] / by_position[1].clamp(min=1)).tolist()
            out[f"{split}_window_losses"] = windows.tolist()
        return out


def amp(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


# Scoring any token stream (eval.py). Window j reads ids[s_j : s_j + L_j] and predicts ids[s_j + 1 : s_j + L_j + 1]
# (L_j = block_size, or fewer for the last window); s_j = j * stride. Of each window after the first only the
# targets past the previous window's end are scored, so every target ids[1:] is scored exactly once
# (stride = block_size: non-overlapping windows, each token with the context its window gives it;
# stride S < block_size: the Hugging Face sliding-window recipe, every scored token with at least
# block_size - S tokens before it in its window, at block_size / S times the compute).
CE_CHUNK = 1 << 22  # logits per cross-entropy call in token_nll


@torch.inference_mode()
def token_nll(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
    """Cross-entropy (nats, float32) of each target y (B, T) given inputs x (B, T): the values whose mean
    is the trainer's loss (models.layers.lm_loss: float32 logits, the same cross-entropy). Computed over
    rows of about 4M logits at a time, so its softmax temporaries stay small (16 MB) whatever B x T x V;
    each row's value is the same as in one call."""
    with amp(x.device, dtype):
        logits, _ = model(x)  # (B, T, V)
    flat, targets = logits.flatten(0, 1), y.flatten()  # (B*T, V), (B*T,)
    rows = max(1, CE_CHUNK // flat.size(1))
    nll = [F.cross_entropy(flat[i:i + rows].float(), targets[i:i + rows], reduction="none")
           for i in range(0, len(flat), rows)]
    return torch.cat(nll).view(y.shape)  # (B, T)


def score_batch(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Summed cross-entropy (nats) of targets y (B, T) given inputs x (B, T), from the model's logits."""
    return token_nll(model, x, y, dtype).double().sum().item()


def windows(n_tokens: int, block_size: int, stride: int = 0) -> np.ndarray:
    """(W, 3) int64 rows (start s, length L, first scored index f) of the windows over n_tokens ids:
    window j predicts ids[s+1 : s+L+1] and scores its targets f..L-1; together they score ids[1:] once.
    stride 0 means block_size (non-overlapping windows)."""
    S = stride or block_size
    if not 0 < S <= block_size:
        raise ValueError(f"stride {S} must be in 1..block_size ({block_size})")
    n = n_tokens - 1  # targets
    if n < 1:
        return np.zeros((0, 3), dtype=np.int64)
    starts = np.arange(0, n, S, dtype=np.int64)
    ends = np.minimum(starts + block_size, n)
    keep = int(np.argmax(ends == n)) + 1  # up to the first window that reaches the last target
    starts, ends = starts[:keep], ends[:keep]
    first = np.concatenate([[0], ends[:-1]]) - starts  # past the previous window's end
    return np.stack([starts, ends - starts, first], axis=1)


@torch.inference_mode()
def score_ids(model: LanguageModel, ids: np.ndarray, block_size: int, batch_size: int, device: torch.device,
              dtype: torch.dtype = torch.float32, stride: int = 0) -> np.ndarray:
    """Cross-entropy (nats, float32) of every target ids[1:] in order, over windows(len(ids), block_size,
    stride). Full windows go batch_size at a time as strided views of ids (nothing is materialised
    beyond one batch), the shorter last one alone; the losses stay on the device until the end."""
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    T, S = block_size, stride or block_size
    spans = windows(len(ids_t), T, S)
    out = torch.empty(max(len(ids_t) - 1, 0), dtype=torch.float32, device=device)
    n_full = int((spans[:, 1] == T).sum())
    assert (spans[1:n_full, 2] == T - S).all()  # full windows after the first score their last S targets
    if n_full:
        xs, ys = ids_t[:-1].unfold(0, T, S)[:n_full], ids_t[1:].unfold(0, T, S)[:n_full]  # (n_full, T) views
    pos = 0
    for i in range(0, n_full, batch_size):
        x, y = xs[i:i + batch_size].to(device), ys[i:i + batch_size].to(device)  # (B, T)
        nll = token_nll(model, x, y, dtype)  # (B, T)
        if i == 0:  # the first window scores all its targets, the later ones their last S
            out[:T], nll, pos = nll[0], nll[1:], T
        kept = nll[:, T - S:].flatten()
        out[pos:pos + kept.numel()], pos = kept, pos + kept.numel()
    if n_full < len(spans):  # the shorter last window
        s, L, f = (int(v) for v in spans[-1])
        nll = token_nll(model, ids_t[None, s:s + L].to(device), ids_t[None, s + 1:s + L + 1].to(device), dtype)
        out[pos:pos + L - f], pos = nll[0, f:], pos + L - f
    assert pos == len(out), (pos, len(out))
    return out.cpu().numpy()
