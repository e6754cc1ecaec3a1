"""Read a prepared dataset (data/<name>/{train,val}.bin + meta.json) and draw training batches.

A batch is a pure function of (seed, split, step, micro-batch index): the random offsets come from a
generator seeded with exactly those numbers. So the data position of a run is just its step (resume
is exact without storing loader state), and a micro-batch is the same whichever process draws it
(2 processes with 1 micro-batch each see what 1 process with 2 micro-batches sees).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "val")
# The validation split's two halves by document (prepare.py records where the first half ends): studies
# choose learning rates on the windows of one and report on the windows of the other, so no text that an
# lr was chosen on is ever reported.
VAL_HALVES = ("val_tune", "val_report")
STREAMS = (*SPLITS, *VAL_HALVES)  # every split a batch can be drawn from; its index seeds the draw


class DataError(ValueError):
    """A missing or inconsistent dataset; the message says how to fix it."""


def load_meta(folder: Path) -> dict:
    path = folder / "meta.json"
    if not path.is_file():
        raise DataError(f"dataset {folder.name!r} is not prepared ({path} is missing); run: "
                        f"python data/prepare.py {folder.name}")
    redo = f"prepare the dataset again: python data/prepare.py {folder.name}"
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); {redo}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; {redo}")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise DataError(f"{path}: vocab_size must be a positive integer, got {vocab!r}; {redo}")
    if meta.get("dtype", "uint16") not in ("uint16", "uint32"):
        raise DataError(f"{path}: dtype must be uint16 or uint32, got {meta.get('dtype')!r}; {redo}")
    return meta


def open_split(folder: Path, split: str, meta: dict) -> np.ndarray:
    """Memory-map one split, refusing a file that disagrees with meta.json."""
    path = folder / f"{split}.bin"
    redo = f"prepare it again: python data/prepare.py {folder.name}"
    if not path.is_file():
        raise DataError(f"{path} is missing; {redo}")
    dtype = np.dtype(meta.get("dtype", "uint16"))
    expected = meta.get(f"{split}_tokens")
    if path.stat().st_size % dtype.itemsize:
        raise DataError(f"{path} has {path.stat().st_size} bytes, not a whole number of {dtype} tokens; {redo}")
    tokens = np.memmap(path, dtype=dtype, mode="r")
    if expected is not None and len(tokens) != expected:
        raise DataError(f"{path} holds {len(tokens)} tokens but meta.json says {expected}; {redo}")
    return tokens


def validation_cut(meta: dict, val: np.ndarray) -> int | None:
    """Where the validation split's first half of documents ends (prepare.py records it); for a dataset
    prepared before that, derived from its end-of-text tokens where documents carry one (GPT-2 BPE); a
    single document halved by position; None when it cannot be known."""
    if isinstance(meta.get("val_tune_tokens"), int):
        cut = meta["val_tune_tokens"]
    elif meta.get("eot") is not None:
        ends = np.flatnonzero(np.asarray(val) == meta["eot"])  # each document ends with one
        cut = int(ends[(len(ends) + 1) // 2 - 1]) + 1 if len(ends) >= 2 else len(val) // 2
    else:
        return None
    return cut if 0 < cut < len(val) else None


class TokenDataset:
    """A prepared token dataset: flat arrays of ids, sampled as random windows of block_size + 1."""

    def __init__(self, data_dir: str | Path, name: str):
        self.folder = Path(data_dir) / name
        self.meta = load_meta(self.folder)
        self.vocab_size: int = int(self.meta["vocab_size"])
        self.splits = {s: open_split(self.folder, s, self.meta) for s in SPLITS}
        cut = validation_cut(self.meta, self.splits["val"])
        if cut is not None:
            self.splits |= {"val_tune": self.splits["val"][:cut], "val_report": self.splits["val"][cut:]}

    def require(self, split: str) -> np.ndarray:
        """The tokens of a split, or a DataError saying how to get it."""
        if split not in self.splits:
            files = [s["path"] for s in self.meta.get("sources", []) if "path" in s]
            raise DataError(f"dataset {self.folder.name!r} has no {split} split (it was prepared before the "
                            f"validation documents were halved for tuning and reporting); prepare it again: "
                            f"python data/prepare.py {self.folder.name}"
                            + (f" (a corpus of your own: with --files {' '.join(files)})" if files else ""))
        return self.splits[split]

    def check_block_size(self, block_size: int) -> None:
        for split, tokens in ((s, self.splits[s]) for s in SPLITS):
            if len(tokens) <= block_size:
                raise DataError(f"the {split} split of {self.folder.name!r} has {len(tokens)} tokens, too few for "
                                f"one sequence of block_size={block_size}; use a smaller model.block_size or more data")

    def batch(self, split: str, batch_size: int, block_size: int, *, seed: int, step: int,
              micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both (batch_size, block_size) int64 on the CPU; y is x shifted left by one token. Windows of
        a validation half (VAL_HALVES) lie wholly inside it."""
        tokens = self.require(split)
        if len(tokens) <= block_size:
            raise DataError(f"the {split} split of {self.folder.name!r} has {len(tokens)} tokens, too few for one "
                            f"sequence of block_size={block_size}; use a smaller model.block_size or more data")
        rng = np.random.default_rng([seed, STREAMS.index(split), step, micro])
        starts = rng.integers(0, len(tokens) - block_size, size=batch_size)
        windows = np.stack([tokens[s:s + block_size + 1] for s in starts]).astype(np.int64)  # (B, T+1)
        if windows.max() >= self.vocab_size:  # cheap here, unlike a scan of billions of tokens up front
            raise DataError(f"{self.folder / split}.bin holds token id {windows.max()} but meta.json says the "
                            f"vocabulary has {self.vocab_size}; the file does not belong to this meta.json: "
                            f"prepare it again: python data/prepare.py {self.folder.name}")
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
