"""Checkpoints that survive crashes, verified on load, and loaded without executing pickled code.

Layout in a run directory:
  ckpt_<step>.pt    torch.save of plain containers and tensors (loadable with weights_only=True)
  ckpt.json         the manifest: newest first, each entry {file, sha256, step}; rewritten atomically
A checkpoint file is written under a temporary name, hashed while it streams, fsynced and renamed;
only then does the manifest (also written by rename) point at it, and only then are files beyond
the last KEEP deleted. So at every instant the manifest names complete, verifiable files, and a
crash, a kill -9 or a full disk costs at most the checkpoint being written.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from data.tokenizer import sha256_file

MANIFEST = "ckpt.json"
KEEP = 2  # the newest checkpoint plus one fallback in case it turns out unreadable


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message says what was found and what to do."""


class _HashingWriter:
    """File-like object that hashes bytes as torch.save streams them to disk."""

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, b) -> int:
        self.sha.update(b)
        try:
            return self.f.write(b)
        except OSError as e:  # torch's C++ writer re-raises it as a RuntimeError: keep the real one
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def read_manifest(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["checkpoints"]
        # only our own file names: a damaged or foreign manifest must not point outside out_dir
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)
                and re.fullmatch(r"ckpt_\d+\.pt", e["file"]) and isinstance(e.get("sha256"), str)
                and isinstance(e.get("step"), int)]
    except (json.JSONDecodeError, KeyError, TypeError):
        return []  # an unreadable manifest is treated like none: fall back to scanning files


def save_checkpoint(out_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write state (must contain an int 'step') as the newest checkpoint of out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"ckpt_{state['step']:08d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is not None:  # e.g. ENOSPC, which train.py tolerates
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. disk full: drop the partial file, the manifest still names the last good one
        raise
    _fsync_dir(out_dir)
    entries = [e for e in read_manifest(out_dir) if e["file"] != path.name]
    entries = [{"file": path.name, "sha256": writer.sha.hexdigest(), "step": state["step"]}] + entries
    try:
        _keep(out_dir, entries, KEEP)
    except BaseException:
        path.unlink(missing_ok=True)  # named by no manifest: nothing would ever delete it
        raise
    return path


def _keep(out_dir: Path, entries: list[dict], keep: int) -> None:
    """Point the manifest at the first `keep` entries, then delete the files of the others."""
    atomic_write_text(out_dir / MANIFEST, json.dumps({"checkpoints": entries[:keep]}, indent=1) + "\n")
    for old in entries[keep:]:
        (out_dir / old["file"]).unlink(missing_ok=True)


def keep_newest_only(out_dir: str | Path) -> None:
    """For a finished run: the fallback checkpoint has served its purpose; free its disk."""
    entries = read_manifest(Path(out_dir))
    if len(entries) > 1:
        _keep(Path(out_dir), entries, 1)


def _load_file(path: Path, map_location) -> dict:
    # weights_only=True: a checkpoint holds tensors and plain containers; nothing in it can run code.
    return torch.load(path, map_location=map_location, weights_only=True)


TRAIN_FIX = "start a new run with --train.init_from=scratch and a fresh --train.out_dir"


def inference_fix(out_dir: str | Path, option: str = "--out_dir") -> str:
    """What a command that reads a run (its `option`) advises when the run holds no usable checkpoint."""
    return f"train one first with `python train.py CONFIG --train.out_dir={out_dir}`, or point {option} at a run"


def load_checkpoint(out_dir: str | Path, map_location="cpu", *, log=print, fix: str = TRAIN_FIX) -> dict:
    """The newest checkpoint of out_dir that passes its checksum, falling back to older ones. With none,
    a CheckpointError says what was found, then `fix`: what the calling command's user should do."""
    out_dir = Path(out_dir)
    entries = read_manifest(out_dir)
    if not entries:  # no manifest: the files themselves, newest first, with no checksum to check
        entries = [{"file": p.name, "sha256": None, "step": None}
                   for p in sorted(out_dir.glob("ckpt_*.pt"), reverse=True)]
    problems = []
    for entry in entries:
        path = out_dir / entry["file"]
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        if entry["sha256"] and sha256_file(path) != entry["sha256"]:
            problems.append(f"{path.name}: checksum mismatch (truncated or corrupted)")
            continue
        try:
            state = _load_file(path, map_location)
        except pickle.UnpicklingError:  # weights_only refused a global: tampered or foreign
            problems.append(f"{path.name}: refused, it holds Python objects besides tensors (tampered or foreign; "
                            f"do not load it with weights_only=False)")
            continue
        except Exception as e:  # a damaged zip: report it and try the next one
            problems.append(f"{path.name}: unreadable ({type(e).__name__}: {str(e).strip().splitlines()[0]})")
            continue
        if problems:
            log(f"warning: skipped bad checkpoint(s) in {out_dir}: {'; '.join(problems)}; using {path.name}")
        return state
    detail = "; ".join(problems) or ("no ckpt_*.pt files" if out_dir.is_dir() else "no such directory")
    raise CheckpointError(f"no usable checkpoint in {out_dir} ({detail}); {fix}")


def has_checkpoint(out_dir: str | Path) -> bool:
    out_dir = Path(out_dir)
    return bool(read_manifest(out_dir)) or any(out_dir.glob("ckpt_*.pt"))


def load_for_inference(out_dir: str, device: str = "cpu", option: str = "--out_dir"):
    """(model in eval mode on device, resolved Config, dataset meta) from a run directory; `option` is how
    the calling command's user names that directory (for the error when it holds no checkpoint)."""
    from config import from_dict
    from data.loader import load_meta
    from models import build_model

    state = load_checkpoint(out_dir, map_location="cpu", fix=inference_fix(out_dir, option))
    try:
        cfg = from_dict(state["config"])
        model = build_model(cfg.model)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError) as e:  # ConfigError is a ValueError; load_state_dict raises RuntimeError
        raise CheckpointError(f"the checkpoint in {out_dir} does not fit this version's models ("
                              f"{str(e).splitlines()[0][:200]}); it was probably written by an older version "
                              f"(the models became one backbone: keys h.N.attn.* are now h.N.mixer.*); "
                              f"{inference_fix(out_dir, option)}") from None
    meta = state.get("data_meta") or load_meta(Path(cfg.data.data_dir) / cfg.data.dataset)
    return model.to(device).eval(), cfg, meta
