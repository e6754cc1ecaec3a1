"""kill -9 at random moments (scripts/fault_inject.py), and resume in a fresh process.

A SIGKILL may cost the steps since the last checkpoint and nothing else: every checkpoint the manifest
names stays readable, the next launch resumes from the newest one, and the finished run has the
weights, bit for bit, of a run never interrupted."""
import importlib.util
import json

import pytest
import torch

from config import load_config
from engine.checkpoint import load_checkpoint
from helpers import ROOT, tiny_overrides, write_char_dataset
from engine.trainer import train


def fault_inject():
    spec = importlib.util.spec_from_file_location("fault_inject", ROOT / "scripts" / "fault_inject.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_kills_inside_checkpoint_writes_and_between_them_lose_nothing_else(tmp_path):
    fi = fault_inject()
    # ckpt / manifest kills freeze the process inside the write before killing it: they land there for certain
    # the manifest kill first: it may take a few checkpoints to catch one (a write of microseconds)
    s = fi.run_campaign(trials=3, seed=0, out=tmp_path, max_iters=36, dropout=0.0,
                        modes=["manifest", "timer", "ckpt"], echo=print)
    assert s["kills"] == 3 and s["kills_in_ckpt_write"] >= 2, s
    assert s["resumes_ok"] == 3 and s["resume_failures"] == 0, s
    assert s["unreadable_checkpoints"] == 0 and s["checkpoints_verified"] > 0, s
    assert s["max_steps_lost"] <= fi.EVAL_INTERVAL, s
    assert s["finished"] and s["final_weights_equal"] and s["loss_curves_equal"] and s["ok"], s


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    return root


def test_peak_flops_leaves_the_global_rng_alone():
    """MFU's CPU peak is measured with random matrices; drawing them from the global generator moves the
    dropout stream of whoever calls it (train.py calls it after restoring a checkpoint's RNG state)."""
    from engine.perf import cpu_matmul_flops, peak_flops
    cpu_matmul_flops.cache_clear()  # a fresh process: the measurement really runs
    before = torch.get_rng_state().clone()
    peak_flops(torch.device("cpu"))
    assert torch.equal(before, torch.get_rng_state())


def test_resume_in_a_fresh_process_with_dropout_matches_a_run_never_stopped(data_dir, tmp_path):
    from engine.perf import cpu_matmul_flops
    common = {"model.dropout": 0.1, "optim.lr_decay_iters": 20}

    def fresh_process(out, **extra):  # what a new process starts with: no cached CPU peak
        cpu_matmul_flops.cache_clear()
        train(load_config(None, tiny_overrides(data_dir, out, **common, **extra)))

    fresh_process(tmp_path / "straight")
    fresh_process(tmp_path / "stopped", **{"train.max_iters": 10})
    fresh_process(tmp_path / "stopped", **{"train.init_from": '"resume"'})
    a, b = load_checkpoint(tmp_path / "straight")["model"], load_checkpoint(tmp_path / "stopped")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class Kill(BaseException):
    """Stands in for SIGKILL in-process: nothing in train.py catches it, nothing after it runs."""


def curve(out_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time_s", "tokens_per_s", "mfu")}
            for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_kill_right_after_a_checkpoint_keeps_that_steps_metrics_line(data_dir, tmp_path, monkeypatch):
    import engine.trainer as train_module
    from engine.checkpoint import save_checkpoint

    def save_then_die(out_dir, state):
        save_checkpoint(out_dir, state)
        if state["step"] == 10:
            raise Kill
    run = lambda out, **extra: train(load_config(None, tiny_overrides(data_dir, out, **extra)))
    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", save_then_die)
        with pytest.raises(Kill):
            run(tmp_path / "killed")
    run(tmp_path / "killed", **{"train.init_from": '"resume"'})
    run(tmp_path / "straight")
    assert curve(tmp_path / "killed") == curve(tmp_path / "straight")
