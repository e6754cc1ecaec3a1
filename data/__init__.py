"""Token data for training: prepared datasets on disk (loader.py, written by prepare.py), synthetic
tasks generated on the fly (synthetic.py), and the document readers both preparation and evaluation
use (documents.py). Both kinds of dataset honour one contract (Dataset), so the trainer never asks
which one it has."""
from __future__ import annotations

from typing import Protocol

import torch

from data.loader import DataError, TokenDataset
from data.synthetic import TASKS as SYNTHETIC_TASKS
from data.synthetic import SyntheticTask

__all__ = ["DataError", "Dataset", "SYNTHETIC_TASKS", "open_dataset"]


class Dataset(Protocol):
    vocab_size: int  # ids are in [0, vocab_size)
    meta: dict       # meta.json of a prepared dataset, or the task's settings

    def check_block_size(self, block_size: int) -> None:
        """Raise DataError if no sequence of block_size tokens can be drawn."""

    def batch(self, split: str, batch_size: int, block_size: int, *, seed: int, step: int,
              micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 (batch_size, block_size) on the CPU, a pure function of the arguments;
        y is the next token of x, -1 where nothing is scored."""


def open_dataset(data_cfg) -> Dataset:
    """The dataset a config's [data] names: a synthetic task generated on the fly, or a prepared folder."""
    if data_cfg.dataset in SYNTHETIC_TASKS:
        return SyntheticTask(data_cfg.dataset, vocab_size=data_cfg.task_vocab, n_pairs=data_cfg.task_pairs)
    return TokenDataset(data_cfg.data_dir, data_cfg.dataset)
