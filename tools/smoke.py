"""Seconds-long runs: tiny character and byte datasets written straight from the embedded corpus, and
the overrides of a tiny GPT run on one. Used by the tests, scripts/fault_inject.py and smoke checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_char_dataset(root: Path, name: str = "tiny_char", n_chars: int = 50_000) -> Path:
    """The first n_chars of tiny Shakespeare as a character dataset in data/loader.py's format
    (independent of data/prepare.py, so trainer tests do not hinge on the preparation code)."""
    text = (ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:n_chars]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    return _write_dataset(root / name, ids, {"name": name, "tokenizer": "char", "vocab_size": len(chars),
                                             "chars": chars})


def write_byte_dataset(root: Path, name: str = "tiny_byte", n_chars: int = 50_000) -> Path:
    """The same text as write_char_dataset, one UTF-8 byte per token (tiny Shakespeare is ASCII: the
    bytes 128-255 never occur, so a model trained on it has never seen a multi-byte character)."""
    text = (ROOT / "data" / "corpora" / "tinyshakespeare.txt").read_text()[:n_chars]
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
    return _write_dataset(root / name, ids, {"name": name, "tokenizer": "byte", "vocab_size": 256})


def _write_dataset(folder: Path, ids: np.ndarray, meta: dict) -> Path:
    """train.bin (the first 90% of ids), val.bin and meta.json, as data/prepare.py lays out one document
    (its validation halves by position)."""
    n_train = int(0.9 * len(ids))
    folder.mkdir(parents=True, exist_ok=True)
    ids[:n_train].tofile(folder / "train.bin")
    ids[n_train:].tofile(folder / "val.bin")
    meta = meta | {"dtype": "uint16", "train_tokens": n_train, "val_tokens": len(ids) - n_train, "eot": None,
                   "split": "tokens", "val_tune_tokens": (len(ids) - n_train) // 2}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def tiny_overrides(data_dir: Path, out_dir: Path, **extra) -> list[str]:
    """CLI overrides for a seconds-long GPT run on the tiny dataset."""
    base = {"model.name": '"gpt"', "model.block_size": 32, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
            "data.data_dir": f'"{data_dir}"', "data.dataset": '"tiny_char"', "train.out_dir": f'"{out_dir}"',
            "train.device": '"cpu"', "train.batch_size": 4, "train.max_iters": 20, "train.eval_interval": 10,
            "train.eval_iters": 2, "train.log_interval": 5, "optim.warmup_iters": 5, "optim.lr": 3e-3,
            "optim.min_lr": 3e-4}
    base.update(extra)
    return [f"--{k}={v}" for k, v in base.items()]
