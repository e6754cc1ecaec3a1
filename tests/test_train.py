import json
import math
import os
import subprocess
import sys

import pytest
import torch

from config import ConfigError, load_config
from engine.budget import Budget
from engine.checkpoint import CheckpointError, load_checkpoint, read_manifest, save_checkpoint
from helpers import ROOT, tiny_overrides, write_char_dataset
from engine.trainer import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    return root


def run(data_dir, out_dir, **extra):
    return train(load_config(None, tiny_overrides(data_dir, out_dir, **extra)))


def final_weights(out_dir):
    return load_checkpoint(out_dir)["model"]


def test_metrics_lines_carry_the_compute_axes(data_dir, tmp_path):
    run(data_dir, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [l["step"] for l in lines]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 20
    evals = [l for l in lines if "val_loss" in l]
    assert [l["step"] for l in evals] == [0, 10, 20]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3         # it learns (measured: 4.17 -> 3.36)
    tokens_per_step = 4 * 1 * 32
    for l in lines[1:]:
        assert {"step", "tokens", "flops", "time_s", "lr", "loss", "tokens_per_s"} <= l.keys()
        assert l["tokens"] == l["step"] * tokens_per_step
        assert l["flops"] == pytest.approx(l["tokens"] * json.loads((tmp_path / "run" / "run.json").read_text())["flops_per_token"])
    assert all(b["time_s"] >= a["time_s"] for a, b in zip(lines, lines[1:]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 64 and saved["train"]["max_iters"] == 20  # resolved: 59 characters padded to 64


def test_resume_ends_with_the_same_weights_as_a_run_never_stopped(data_dir, tmp_path):
    # dropout on, so the restored RNG state matters as much as the weights and the optimizer
    common = {"model.dropout": 0.1, "optim.lr_decay_iters": 20}
    run(data_dir, tmp_path / "straight", **common)
    run(data_dir, tmp_path / "stopped", **common, **{"train.max_iters": 10})
    run(data_dir, tmp_path / "stopped", **common, **{"train.init_from": '"resume"'})
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    resumed = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(l).items() if k not in ("time_s", "tokens_per_s", "mfu")}
                           for l in lines]
    assert strip(straight) == strip(resumed)  # same curve, no duplicated or missing steps


def test_scratch_refuses_to_overwrite_an_earlier_run(data_dir, tmp_path):
    run(data_dir, tmp_path / "r", **{"train.max_iters": 10})
    with pytest.raises(ConfigError, match="init_from=resume"):
        run(data_dir, tmp_path / "r")
    assert read_manifest(tmp_path / "r")[0]["step"] == 10  # the checkpoint is untouched


def test_resume_with_other_model_settings_is_refused(data_dir, tmp_path):
    run(data_dir, tmp_path / "r", **{"train.max_iters": 10})
    with pytest.raises(ConfigError, match="model.n_embd"):
        run(data_dir, tmp_path / "r", **{"train.init_from": '"resume"', "model.n_embd": 64})


def test_resume_with_other_lr_multipliers_is_refused(data_dir, tmp_path):
    """optim.lr_mult decides the optimizer's parameter groups: a resumed run must keep them."""
    run(data_dir, tmp_path / "r", **{"train.max_iters": 10})
    with pytest.raises(ConfigError, match="optim.lr_mult = {}; resume with the same optim.lr_mult"):
        run(data_dir, tmp_path / "r", **{"train.init_from": '"resume"', "optim.lr_mult": "{attn = 2.0}"})


def test_a_checkpoint_from_before_the_backbone_is_named_as_such(data_dir, tmp_path):
    """Written by the GPT of earlier versions (its blocks' attention under h.N.attn, no model.mixers): resuming
    it and reading it for inference both say so and name the fix, instead of a key mismatch."""
    from engine.checkpoint import CheckpointError, load_for_inference
    out = tmp_path / "r"
    run(data_dir, out, **{"train.max_iters": 10})
    state = load_checkpoint(out)
    state["model"] = {k.replace(".mixer.", ".attn."): v for k, v in state["model"].items()}
    for key in ("mixers", "mlp", "head", "conv_kernel", "filter_width"):
        state["config"]["model"].pop(key)
    save_checkpoint(out, {**state, "step": 11})
    with pytest.raises(ConfigError, match="written by an older version .* has no conv_kernel, filter_width, head, "
                                          "mixers, mlp.*--train.init_from=scratch"):
        run(data_dir, out, **{"train.init_from": '"resume"', "train.max_iters": 20})
    with pytest.raises(CheckpointError, match="does not fit this version's models .*h.N.attn.* are now h.N.mixer"):
        load_for_inference(str(out))


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path):
    out = tmp_path / "r"
    run(data_dir, out)  # checkpoints at steps 10 and 20; a finished run keeps only the newest
    assert [e["step"] for e in read_manifest(out)] == [20] and len(list(out.glob("ckpt_*.pt"))) == 1
    save_checkpoint(out, {**load_checkpoint(out), "step": 30})  # as if training had gone on
    newest, previous = read_manifest(out)
    with open(out / newest["file"], "r+b") as f:  # flip bytes in the middle of the file
        f.seek(os.path.getsize(out / newest["file"]) // 2)
        f.write(b"\x00garbage\x00")
    messages = []
    state = load_checkpoint(out, log=messages.append)
    assert state["step"] == previous["step"] == 20
    assert "checksum mismatch" in messages[0]
    (out / previous["file"]).write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(out)


def test_budget_inside_the_warmup_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="warmup_iters=5"):
        run(data_dir, tmp_path / "r", **{"train.max_tokens": 500})
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # refused before any work


def test_vocab_smaller_than_the_dataset_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        run(data_dir, tmp_path / "r", **{"model.vocab_size": 8})


def test_grad_accum_that_does_not_split_over_processes_is_refused(data_dir, tmp_path, monkeypatch):
    from engine.runtime import Runtime
    from engine.trainer import local_micro_batches
    cfg = load_config(None, tiny_overrides(data_dir, tmp_path, **{"train.grad_accum": 3}))
    with pytest.raises(ConfigError, match="multiple of 2"):
        local_micro_batches(cfg, Runtime(torch.device("cpu"), torch.float32, world_size=2))


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(data_dir, tmp_path):
    """2 processes x 1 micro-batch (gloo, CPU) must reach the weights of 1 process x 2 micro-batches."""
    args = tiny_overrides(data_dir, tmp_path / "ddp", **{"train.grad_accum": 2, "train.max_iters": 6,
                                                        "train.eval_interval": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    (tmp_path / "empty.toml").write_text("")  # both runs: defaults + the same overrides
    result = subprocess.run(torchrun + ["train.py", str(tmp_path / "empty.toml"), *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run(data_dir, tmp_path / "single", **{"train.grad_accum": 2, "train.max_iters": 6, "train.eval_interval": 3})
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    for key in a:  # equal up to the order of floating-point summation
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    ddp_val = [json.loads(l)["val_loss"] for l in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
               if "val_loss" in l]
    one_val = [json.loads(l)["val_loss"] for l in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
               if "val_loss" in l]
    assert ddp_val == pytest.approx(one_val, rel=1e-5)  # evaluation shared over ranks gives the same mean


GOLDEN = ROOT / "tests" / "golden" / "tiny_gpt_loss.json"


def test_tiny_config_matches_the_golden_loss_curve(data_dir, tmp_path):
    """A refactor must not move the loss curve of the tiny config. Regenerate deliberately with
    UPDATE_GOLDEN=1 pytest tests/test_train.py -k golden, and say why in the commit."""
    run(data_dir, tmp_path / "g")
    curve = {str(l["step"]): l["loss"] for l in map(json.loads, (tmp_path / "g" / "metrics.jsonl").read_text().splitlines())
             if "loss" in l}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert curve.keys() == golden.keys()
    for step in golden:  # float32 on the CPU: identical up to kernel summation order across machines
        assert curve[step] == pytest.approx(golden[step], rel=1e-4, abs=1e-5), step


def read_metrics(out_dir):
    return [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("budget", [{"train.max_tokens": 2000}, {"train.max_flops": 3e8}])
def test_token_and_flop_budgets_stop_at_the_first_step_that_reaches_them(data_dir, tmp_path, budget):
    result = run(data_dir, tmp_path / "b", **budget, **{"train.n_evals": 2, "train.eval_interval": 0})
    saved = json.loads((tmp_path / "b" / "result.json").read_text())
    key, limit = next(iter(budget.items()))
    spent = saved[key.split("max_")[1]]
    per_step = spent / saved["step"]
    assert limit <= spent < limit + per_step  # reached, and not by more than one step
    assert saved["val_loss"] == result["val_loss"] and saved["parameters"] > 0
    lines = read_metrics(tmp_path / "b")
    cfg = load_config(None, tiny_overrides(data_dir, tmp_path, **budget))
    schedule = Budget(cfg.train, cfg.optim, 4 * 32, saved["flops_per_token"])
    assert lines[-1]["lr"] == schedule.lr(saved["step"] - 1, 0.0)  # the last step ran on the schedule...
    assert schedule.lr(saved["step"], 0.0) == cfg.optim.min_lr      # ...which ends at the budget
    evals = [l["step"] for l in lines if "val_loss" in l]
    assert evals == [0, -(-saved["step"] // 2), saved["step"]]  # ...and evaluations at the first step past each half


@pytest.mark.slow
def test_clock_budget_stops_after_the_training_time_and_excludes_evaluation(data_dir, tmp_path):
    run(data_dir, tmp_path / "t", **{"train.max_time_s": 3.0, "train.n_evals": 3, "train.eval_interval": 0,
                                     "train.eval_iters": 20, "optim.warmup_iters": 0, "train.log_interval": 1})
    lines = read_metrics(tmp_path / "t")
    final, evals = lines[-1], [l for l in lines if "val_loss" in l]
    step_times = [b["time_s"] - a["time_s"] for a, b in zip(lines, lines[1:])]
    assert 3.0 <= final["time_s"] < 3.0 + max(step_times) + 1e-9  # stops on the first step past the clock
    assert evals[-1] is final and len(evals) == 4                  # step 0, then thirds of the clock
    for a, b in zip(lines[1:], lines[2:]):  # the cosine follows the clock, from lr down towards min_lr
        expected = 3e-4 + 0.5 * (1 + math.cos(math.pi * a["time_s"] / 3.0)) * (3e-3 - 3e-4)
        assert b["lr"] == pytest.approx(expected, rel=1e-9)


def test_a_wsd_fork_continued_with_a_smaller_budget_equals_that_budget_trained_straight(data_dir, tmp_path):
    """The study's cheap budget ladder: a long wsd run checkpoints at the step where a shorter budget
    starts its decay; continuing from there with the shorter budget gives that budget's run bit for bit
    (dropout on, so the RNG state matters)."""
    common = {"model.dropout": 0.1, "optim.schedule": '"wsd"', "optim.decay_frac": 0.25}
    run(data_dir, tmp_path / "short", **common, **{"train.max_iters": 12})
    fork = 12 - 3  # decay_start of 12 steps at decay_frac 0.25
    run(data_dir, tmp_path / "long", **common, **{"train.max_iters": 24, "train.fork_steps": f"[{fork}]"})
    import shutil
    shutil.copytree(tmp_path / "long" / "forks" / str(fork), tmp_path / "branch")
    run(data_dir, tmp_path / "branch", **common, **{"train.max_iters": 12, "train.init_from": '"resume"'})
    a, b = final_weights(tmp_path / "short"), final_weights(tmp_path / "branch")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(l) for l in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    lr = {line["step"]: line["lr"] for line in lines}
    assert lr[10] == lr[15] == 3e-3 and lr[20] < 3e-3  # constant from the warm-up (5 steps) to the decay (18..24)


def test_the_final_evaluation_reports_loss_by_position_and_by_window(data_dir, tmp_path):
    """Against a plain loop over the same evaluation windows with the final weights."""
    import torch.nn.functional as F

    from config import resolve_vocab
    from data import open_dataset
    from engine.evaluation import eval_batch
    from models import build_model
    run(data_dir, tmp_path / "r")
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    cfg = load_config(None, tiny_overrides(data_dir, tmp_path / "r"))
    data = open_dataset(cfg.data)
    cfg = resolve_vocab(cfg, data.vocab_size)
    model = build_model(cfg.model)
    model.load_state_dict(final_weights(tmp_path / "r"))
    model.eval()
    per_window, per_position = [], [[] for _ in range(cfg.model.block_size)]
    for i in range(cfg.train.eval_iters):
        x, y = eval_batch(data, "val", i, cfg.train.batch_size, cfg.model.block_size)
        with torch.no_grad():
            logits, _ = model(x)
        for b in range(x.size(0)):
            losses = [F.cross_entropy(logits[b, t], y[b, t]).item() for t in range(x.size(1))]
            per_window.append(sum(losses) / len(losses))
            for t, v in enumerate(losses):
                per_position[t].append(v)
    assert result["val_window_losses"] == pytest.approx(per_window, abs=1e-5)
    assert result["val_loss_by_position"] == pytest.approx([sum(v) / len(v) for v in per_position], abs=1e-5)
    assert result["val_loss"] == pytest.approx(sum(per_window) / len(per_window), abs=1e-5)
