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
from models import LanguageModel

EVAL_SEED, EVAL_STEP = 0, 2 ** 40


def eval_batch(data: Dataset, split: str, i: int, batch_size: int, block_size: int):
    """The i-th evaluation batch of a split: the same for every run that shares these numbers."""
    return data.batch(split, batch_size, block_size, seed=EVAL_SEED, step=EVAL_STEP, micro=i)


@torch.no_grad()
def evaluate(model: LanguageModel, data: Dataset, cfg: Config, rt: runtime.Runtime,
             detailed: bool = False) -> dict[str, float | list[float]]:
    """Mean loss and accuracy over the same batches of each split at every evaluation (eval_iters of
    val, train_eval_iters of train), shared out over the processes; a process with no batch still
    joins the all-reduce, so none can deadlock. `detailed` adds, for val, the mean loss at each
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
        for i in range(rt.rank, n_batches, rt.world_size):
            x, y = eval_batch(data, split, i, t.eval_batch_size or t.batch_size, cfg.model.block_size)
            x, y = x.to(rt.device), y.to(rt.device)
            with rt.autocast():
                logits, loss = model(x, y)
            acc.add(i, logits, loss, y, detailed and split == "val")
        out.update(acc.result(split, rt, detailed and split == "val"))
    model.train()
    return out


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


@torch.no_grad()
def score_batch(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Summed cross-entropy (nats) of targets y (B, T) given inputs x (B, T), from the model's logits."""
    with amp(x.device, dtype):
        logits, _ = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()


def windows(n_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of non-overlapping windows whose targets cover ids[1:] exactly once."""
    return [(s, min(block_size, n_tokens - 1 - s)) for s in range(0, n_tokens - 1, block_size)]


@torch.no_grad()
def score_ids(model: LanguageModel, ids: np.ndarray, block_size: int, batch_size: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> tuple[float, int]:
    """(summed cross-entropy, number of tokens scored) over the windows of ids; full windows go in
    batches, the shorter last one alone."""
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    spans = windows(len(ids_t), block_size)
    total, count = 0.0, 0
    full = [s for s, n in spans if n == block_size]
    for i in range(0, len(full), batch_size):
        starts = full[i:i + batch_size]
        x = torch.stack([ids_t[s:s + block_size] for s in starts]).to(device)           # (B, T)
        y = torch.stack([ids_t[s + 1:s + block_size + 1] for s in starts]).to(device)   # (B, T)
        total, count = total + score_batch(model, x, y, dtype), count + y.numel()
    for s, n in spans:
        if n < block_size:  # the remainder
            x, y = ids_t[None, s:s + n].to(device), ids_t[None, s + 1:s + n + 1].to(device)  # (1, n)
            total, count = total + score_batch(model, x, y, dtype), count + n
    return total, count
