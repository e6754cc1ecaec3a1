"""The set-up every user of a config does first: open the dataset, size the vocabulary from it, build
the model, and count the tokens of one optimizer step. The trainer, the study's preflight, train.py
--summary and bench.py all call set_up, so they cannot disagree on any of the four.

    s = set_up(cfg)                                   # training: the data must be there and hold a block
    s = set_up(cfg, data="if_prepared")               # bench.py: random ids stand in for missing data
    s = set_up(cfg, data="vocab", device="meta")      # shapes and FLOPs only: nothing allocated
    s.cfg, s.data, s.model, s.tokens_per_step
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from config import Config, ConfigError, resolve_vocab
from data import DataError, Dataset, open_dataset
from models import LanguageModel, build_model

# train: the run trains on the data: it must open and hold a block (the trainer, the study's preflight)
# if_prepared: opened when it is there; else model.vocab_size must be set (bench.py: random ids stand in)
# vocab: opened only when model.vocab_size is 0, to size it (train.py --summary)
DataUse = Literal["train", "if_prepared", "vocab"]


@dataclass
class Setup:
    cfg: Config                 # model.vocab_size sized from the data
    data: Dataset | None        # None where the data use did not need it
    model: LanguageModel

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return tokens_per_step(t.batch_size, t.grad_accum, self.cfg.model.block_size)


def tokens_per_step(batch_size: int, grad_accum: int, block_size: int) -> int:
    """Tokens of one optimizer step over all processes (grad_accum counts micro-batches of every process)."""
    return batch_size * grad_accum * block_size


def open_for(cfg: Config, use: DataUse) -> Dataset | None:
    if use == "train" or (use == "vocab" and cfg.model.vocab_size == 0):
        return open_dataset(cfg.data)
    if use == "vocab":
        return None
    try:
        return open_dataset(cfg.data)
    except DataError:
        if cfg.model.vocab_size == 0:
            raise ConfigError(f"dataset {cfg.data.dataset!r} is not prepared and model.vocab_size is 0: prepare it "
                              f"(python data/prepare.py {cfg.data.dataset}) or pass --model.vocab_size=N") from None
        return None


def set_up(cfg: Config, data: DataUse = "train", device: str | torch.device | None = None) -> Setup:
    """The dataset (as `data` says), the config with its vocabulary sized from it, and the model built from
    train.seed (the same initial weights on every process and in every tool) on `device` (None: torch's
    default; "meta": shapes only)."""
    dataset = open_for(cfg, data)
    if dataset is not None:
        cfg = resolve_vocab(cfg, dataset.vocab_size)
        if data == "train":
            dataset.check_block_size(cfg.model.block_size)
    torch.manual_seed(cfg.train.seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model(cfg.model)
    return Setup(cfg, dataset, model)
