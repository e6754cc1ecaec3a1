"""Runs that meet bad numbers, bad data and pre-emption: nothing but the steps since the last
checkpoint may be lost, and every failure must say what to do."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import engine.trainer as train_module
from config import load_config
from data.loader import DataError, TokenDataset
from engine.checkpoint import load_checkpoint, read_manifest
from engine.guard import Diverged, LossGuard
from helpers import ROOT, tiny_overrides, write_char_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    return root


def poisoned_steps(monkeypatch, bad_calls: set[int]):
    """Make the listed calls of train_step report a NaN loss (after really taking the step)."""
    real, calls = train_module.train_step, []

    def step(*args, **kwargs):
        loss, norms = real(*args, **kwargs)
        calls.append(loss)
        return (float("nan") if len(calls) in bad_calls else loss), norms
    monkeypatch.setattr(train_module, "train_step", step)
    return calls


def test_nan_loss_rolls_back_to_the_checkpoint_and_skips_the_bad_batches(data_dir, tmp_path, monkeypatch):
    calls = poisoned_steps(monkeypatch, {14})  # step 13 (0-based) goes bad; the last checkpoint is at 10
    out = tmp_path / "r"
    result = train_module.train(load_config(None, tiny_overrides(data_dir, out)))
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    events = [l for l in lines if "event" in l]
    assert events == [{"step": 10, "event": "rollback", "reason": "loss is nan", "bad_step": 13, "rollbacks": 1}]
    curve = [l["step"] for l in lines if "event" not in l]
    assert curve == sorted(set(curve)) and curve[-1] == 20  # no step logged twice
    assert len(calls) == 20 + 4  # steps 10..13 were redone
    state = load_checkpoint(out)
    assert state["step"] == 20 and state["data_shift"] == 4 and state["rollbacks"] == 1
    assert np.isfinite(result["val_loss"])


def test_repeated_bad_losses_give_up_with_advice(data_dir, tmp_path, monkeypatch):
    poisoned_steps(monkeypatch, set(range(12, 100)))
    cfg = load_config(None, tiny_overrides(data_dir, tmp_path / "r", **{"train.max_rollbacks": 2}))
    with pytest.raises(Diverged, match="after 2 rollback.*lower optim.lr"):
        train_module.train(cfg)
    assert read_manifest(tmp_path / "r")[0]["step"] == 10  # the good checkpoint survives


def test_nan_before_any_checkpoint_says_so(data_dir, tmp_path, monkeypatch):
    poisoned_steps(monkeypatch, {2})
    with pytest.raises(Diverged, match="before any checkpoint"):
        train_module.train(load_config(None, tiny_overrides(data_dir, tmp_path / "r")))


def test_loss_guard_flags_spikes_only_against_a_full_window():
    guard = LossGuard(spike_factor=3.0, window=4)
    assert [guard.check(x) for x in (2.0, 9.0, 2.0, 2.0)] == [None] * 4  # window not full yet
    assert guard.check(2.1) is None
    assert "over 3.0x the recent mean" in guard.check(12.0)
    assert guard.check(float("inf")) == "loss is inf"


def test_token_ids_beyond_the_vocabulary_are_refused(data_dir, tmp_path):
    import shutil
    bad = tmp_path / "tiny_char"
    shutil.copytree(data_dir / "tiny_char", bad)
    ids = np.fromfile(bad / "train.bin", dtype=np.uint16)
    ids[:] = 60_000
    ids.tofile(bad / "train.bin")
    with pytest.raises(DataError, match="token id 60000.*prepare it again"):
        TokenDataset(tmp_path, "tiny_char").batch("train", 2, 8, seed=0, step=0, micro=0)


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_run_matches_a_straight_one(data_dir, tmp_path):
    args = tiny_overrides(data_dir, tmp_path / "p", **{"train.max_iters": 400, "train.eval_interval": 1000,
                                                      "train.log_interval": 1})
    (tmp_path / "c.toml").write_text("")
    proc = subprocess.Popen([sys.executable, "train.py", str(tmp_path / "c.toml"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "p" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "init_from=resume" in err and "Traceback" not in err
    stopped_at = read_manifest(tmp_path / "p")[0]["step"]
    assert 0 < stopped_at < 400
    resume = subprocess.run([sys.executable, "train.py", str(tmp_path / "c.toml"), *args, "--train.init_from=resume"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr
    straight = train_module.train(load_config(None, tiny_overrides(data_dir, tmp_path / "s", **{
        "train.max_iters": 400, "train.eval_interval": 1000, "train.log_interval": 1})))
    a, b = load_checkpoint(tmp_path / "p")["model"], load_checkpoint(tmp_path / "s")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["step"] == 400
