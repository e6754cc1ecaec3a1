"""Hostile and broken surroundings: a poisoned checkpoint, a full disk, a truncated file, data that
disagrees with its meta.json, and distributed runs that lose a rank. Each must end in a clear
message (or a warning and carrying on), never in executed code, a hang, or a lost checkpoint."""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.checkpoint as checkpoint
import engine.trainer as train_module
from config import load_config
from data.loader import DataError, TokenDataset
from engine.checkpoint import CheckpointError, load_checkpoint, read_manifest, save_checkpoint, sha256_file
from helpers import ROOT, tiny_overrides, write_char_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    return root


def small_state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((64, 64), float(step))}, "rng": [torch.get_rng_state()]}


def two_checkpoints(out: Path) -> tuple[dict, dict]:
    """Checkpoints at steps 10 and 20 in out; returns the manifest entries (newest first)."""
    save_checkpoint(out, small_state(10))
    save_checkpoint(out, small_state(20))
    newest, previous = read_manifest(out)
    return newest, previous


def tmp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.tmp"))


# ------------------------------------------------------------------------------------------- safe loading

class Payload:
    """Unpickling this runs a shell command: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant_malicious_newest(out: Path, marker: Path) -> Path:
    """A checkpoint file whose pickle runs code, named first in the manifest with its true sha256,
    so the checksum passes and only weights_only=True stands between it and the shell."""
    evil = out / "ckpt_00000030.pt"
    torch.save({"step": 30, "model": Payload(marker)}, evil)
    entries = [{"file": evil.name, "sha256": sha256_file(evil), "step": 30}] + read_manifest(out)
    (out / checkpoint.MANIFEST).write_text(json.dumps({"checkpoints": entries}))
    return evil


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path):
    out, marker = tmp_path / "r", tmp_path / "pwned"
    two_checkpoints(out)
    evil = plant_malicious_newest(out, marker)
    messages = []
    state = load_checkpoint(out, log=messages.append)
    assert state["step"] == 20 and not marker.exists()
    assert "skipped bad checkpoint(s)" in messages[0] and "ckpt_00000030.pt: " in messages[0]
    assert messages[0].endswith("using ckpt_00000020.pt")
    (out / checkpoint.MANIFEST).unlink()  # no manifest: the files are scanned, still with weights_only
    assert load_checkpoint(out, log=messages.append)["step"] == 20 and not marker.exists()
    for f in ("ckpt_00000010.pt", "ckpt_00000020.pt"):
        (out / f).unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint.*ckpt_00000030.pt: "):
        load_checkpoint(out)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.exists()


def test_the_warning_about_a_refused_checkpoint_is_one_line_and_does_not_invite_an_unsafe_load(tmp_path):
    two_checkpoints(tmp_path)
    plant_malicious_newest(tmp_path, tmp_path / "pwned")
    messages = []
    load_checkpoint(tmp_path, log=messages.append)
    assert "\n" not in messages[0] and "set to `False` will likely succeed" not in messages[0], messages[0]


# ------------------------------------------------------------------------------------------- full disk

class FullDisk:
    """A file on a disk with `room` bytes left: writes what fits, then fails with ENOSPC, as write(2) does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            self.f.write(b[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk(monkeypatch, name: str, room: int = 1000, times: int = 1) -> list[str]:
    """The next `times` files engine/checkpoint.py opens whose name matches `name` hit a full disk."""
    hits, real_open = [], open

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and re.fullmatch(name, Path(path).name) and len(hits) < times:
            hits.append(Path(path).name)
            return FullDisk(f, room)
        return f
    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)
    return hits


def test_full_disk_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "r"
    save_checkpoint(out, small_state(10))
    manifest = (out / checkpoint.MANIFEST).read_bytes()
    hits = fill_disk(monkeypatch, r"ckpt_\d+\.pt\.tmp")
    with pytest.raises(OSError):  # the file's ENOSPC, not torch's RuntimeError wrapping it
        save_checkpoint(out, small_state(20))
    assert hits == ["ckpt_00000020.pt.tmp"]
    assert (out / checkpoint.MANIFEST).read_bytes() == manifest and tmp_files(out) == []
    assert not (out / "ckpt_00000020.pt").exists() and load_checkpoint(out)["step"] == 10


def test_full_disk_inside_a_checkpoint_write_is_reported_as_enospc(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, small_state(10))
    fill_disk(monkeypatch, r"ckpt_\d+\.pt\.tmp")
    with pytest.raises(OSError) as err:
        save_checkpoint(tmp_path, small_state(20))
    assert err.value.errno == errno.ENOSPC


def test_full_disk_while_writing_the_manifest_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "r"
    save_checkpoint(out, small_state(10))
    manifest = (out / checkpoint.MANIFEST).read_bytes()
    fill_disk(monkeypatch, re.escape(checkpoint.MANIFEST + ".tmp"), room=10)
    with pytest.raises(OSError) as err:
        save_checkpoint(out, small_state(20))
    assert err.value.errno == errno.ENOSPC
    assert (out / checkpoint.MANIFEST).read_bytes() == manifest and load_checkpoint(out)["step"] == 10


def test_full_disk_while_writing_the_manifest_leaves_no_litter(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, small_state(10))
    fill_disk(monkeypatch, re.escape(checkpoint.MANIFEST + ".tmp"), room=10)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, small_state(20))
    assert tmp_files(tmp_path) == [] and sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_00000010.pt"]


def run(data_dir, out, **extra):
    return train_module.train(load_config(None, tiny_overrides(data_dir, out, **extra)))


def test_training_warns_and_carries_on_when_the_disk_is_full_at_a_checkpoint(data_dir, tmp_path, monkeypatch,
                                                                               capsys):
    hits = fill_disk(monkeypatch, re.escape(checkpoint.MANIFEST + ".tmp"), room=10)  # the first checkpoint, step 10
    result = run(data_dir, tmp_path / "r")
    err = capsys.readouterr().err
    assert hits and result["step"] == 20 and load_checkpoint(tmp_path / "r")["step"] == 20
    assert "warning: could not write a checkpoint at step 10" in err and "No space left on device" in err, err


def test_training_carries_on_when_the_disk_fills_inside_a_checkpoint_file(data_dir, tmp_path, monkeypatch, capsys):
    fill_disk(monkeypatch, r"ckpt_\d+\.pt\.tmp")
    assert run(data_dir, tmp_path / "r")["step"] == 20
    assert "warning: could not write a checkpoint at step 10" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- truncation

def test_truncated_newest_checkpoint_falls_back_with_a_warning_naming_it(tmp_path):
    out = tmp_path / "r"
    newest, previous = two_checkpoints(out)
    path = out / newest["file"]
    os.truncate(path, path.stat().st_size // 2)
    messages = []
    assert load_checkpoint(out, log=messages.append)["step"] == previous["step"] == 10
    assert messages == [f"warning: skipped bad checkpoint(s) in {out}: ckpt_00000020.pt: checksum mismatch "
                        f"(truncated or corrupted); using ckpt_00000010.pt"]
    (out / checkpoint.MANIFEST).unlink()  # without the manifest, the cut zip itself fails to load
    messages.clear()
    assert load_checkpoint(out, log=messages.append)["step"] == 10
    assert "ckpt_00000020.pt: unreadable" in messages[0]


def test_resume_past_a_truncated_checkpoint_says_so_and_continues(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    run(data_dir, out)  # finished at step 20, keeping only that checkpoint
    save_checkpoint(out, {**load_checkpoint(out), "step": 30})  # a newer one, as if training had gone on
    newest = out / read_manifest(out)[0]["file"]
    os.truncate(newest, newest.stat().st_size // 2)
    capsys.readouterr()
    result = run(data_dir, out, **{"train.init_from": '"resume"', "train.max_iters": 40})
    stdout = capsys.readouterr().out
    assert "skipped bad checkpoint(s)" in stdout and "ckpt_00000030.pt: checksum mismatch" in stdout
    assert "start at step 20" in stdout and result["step"] == 40


# ------------------------------------------------------------------------------------------- tampered manifest

def test_a_manifest_cannot_make_pruning_delete_files_outside_the_run(tmp_path):
    out, victim = tmp_path / "r", tmp_path / "victim.txt"
    save_checkpoint(out, small_state(10))
    victim.write_text("precious")
    entries = read_manifest(out) + [{"file": "../victim.txt", "sha256": "0" * 64, "step": 5}]
    (out / checkpoint.MANIFEST).write_text(json.dumps({"checkpoints": entries}))
    save_checkpoint(out, small_state(20))
    assert victim.exists()


def test_a_manifest_with_wrong_types_is_skipped_not_a_crash(tmp_path):
    save_checkpoint(tmp_path, small_state(10))
    entries = [{"file": 5, "sha256": None, "step": "x"}] + read_manifest(tmp_path)
    (tmp_path / checkpoint.MANIFEST).write_text(json.dumps({"checkpoints": entries}))
    assert load_checkpoint(tmp_path, log=lambda *_: None)["step"] == 10


# ------------------------------------------------------------------------------------------- data vs meta.json

@pytest.fixture()
def dataset(tmp_path) -> Path:
    return write_char_dataset(tmp_path, n_chars=2000)


def edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


def load_dataset(folder: Path) -> None:
    data = TokenDataset(folder.parent, folder.name)
    data.batch("train", 4, 8, seed=0, step=0, micro=0)


def test_meta_dtype_that_disagrees_with_the_file_is_refused(dataset):
    edit_meta(dataset, dtype="uint32")  # the file holds uint16: half as many tokens as meta.json counts
    with pytest.raises(DataError) as err:
        load_dataset(dataset)
    for word in ["holds 900 tokens", "says 1800", "python data/prepare.py tiny_char"]:
        assert word in str(err.value)


def test_wider_dtype_without_token_counts_is_caught_by_the_vocabulary(dataset):
    edit_meta(dataset, dtype="uint32", train_tokens=None, val_tokens=None)  # an older meta.json: no counts
    with pytest.raises(DataError, match=r"token id \d+ but meta.json says the vocabulary has 49.*data/prepare.py"):
        load_dataset(dataset)


META_REASON = ("data/loader.py uses meta.json without checking it: {}; load_meta should check that it is an object "
               "with an int vocab_size > 0 and dtype uint16 or uint32, else DataError naming data/prepare.py")


@pytest.mark.parametrize("changes", [
    pytest.param({"dtype": "uint12"}),
    pytest.param({"dtype": "float16"}),
    pytest.param({"vocab_size": None}),
    pytest.param({"vocab_size": "many"}),
])
def test_meta_json_with_bad_fields_is_a_data_error(dataset, changes):
    edit_meta(dataset, **changes)
    with pytest.raises(DataError, match="python data/prepare.py tiny_char"):
        load_dataset(dataset)


def test_meta_json_that_is_not_an_object_is_a_data_error(dataset):
    (dataset / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="python data/prepare.py tiny_char"):
        load_dataset(dataset)


# ------------------------------------------------------------------------------------------- distributed

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_rank_without_validation_batches_does_not_deadlock_evaluation(data_dir, tmp_path):
    (tmp_path / "c.toml").write_text("")
    args = tiny_overrides(data_dir, tmp_path / "r", **{"train.grad_accum": 2, "train.max_iters": 6,
                                                      "train.eval_interval": 3, "train.eval_iters": 1})
    result = subprocess.run(TORCHRUN + ["train.py", str(tmp_path / "c.toml"), *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]
    assert [e["step"] for e in evals] == [0, 3, 6] and all(np.isfinite(e["val_loss"]) for e in evals)


def workers(pid: int) -> list[int]:
    """The worker processes torchrun started (its children)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers through /proc")
def test_a_rank_that_dies_makes_the_run_exit_instead_of_hanging(data_dir, tmp_path):
    (tmp_path / "c.toml").write_text("")
    args = tiny_overrides(data_dir, tmp_path / "r", **{"train.grad_accum": 2, "train.max_iters": 100_000,
                                                      "train.eval_interval": 50, "train.log_interval": 10})
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(TORCHRUN + ["train.py", str(tmp_path / "c.toml"), *args], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        metrics, deadline = tmp_path / "r" / "metrics.jsonl", time.time() + 120
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.1)
        ranks = {rank_of(w): w for w in workers(proc.pid)}
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.time()
        code = proc.wait(timeout=60)  # the agent notices the dead worker and stops the other one
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = (tmp_path / "stderr").read_text()
    assert code != 0 and elapsed < 60
    # torchrun's report names the dead rank as the root cause; the survivor's gloo error comes before it
    root_cause = err[err.find("Root Cause"):]
    assert "Root Cause" in err and re.search(r"rank\s*:\s*1\b", root_cause) and "SIGKILL" in root_cause, err[-3000:]
    for pid in ranks.values():  # no orphan left behind, blocked in a collective
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
