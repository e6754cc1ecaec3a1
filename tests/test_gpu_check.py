"""scripts/gpu_check.py: its smoke mode end to end on the CPU (the code paths the GPU run takes, tiny
shapes), its arithmetic, the attention-backend detection (tools/sdpa.py) as torch on the CPU decides
it, the batch search (tools/timing.py), and its import graph without wandb, datasets and scipy (the GPU
machine's python3 has none of them)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from models import MIXERS
import torch

from tools import sdpa, timing
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"
ABSENT = ("wandb", "datasets", "scipy")
# Run a script with the GPU machine's missing packages made unimportable (None in sys.modules)
BLOCKED = "import runpy, sys; sys.modules.update({m: None for m in %r}); sys.argv = %r; runpy.run_path(%r, run_name=%r)"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


gpu_check = load_script()


def run_blocked(argv: list[str], run_name: str, timeout: int) -> subprocess.CompletedProcess:
    code = BLOCKED % (ABSENT, [str(SCRIPT), *argv], str(SCRIPT), run_name)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_imports_without_wandb_datasets_scipy():
    code = (BLOCKED % (ABSENT, [str(SCRIPT)], str(SCRIPT), "gpu_check")
            + "\ntry:\n    import wandb\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('wandb imported')"
            + f"\nloaded = [m for m in sys.modules if m.split('.')[0] in {ABSENT!r} and sys.modules[m] is not None]"
            + "\nassert not loaded, loaded\nprint('ok', 'torch' in sys.modules, 'models' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "True", "True"]


@pytest.mark.slow
def test_smoke_runs_every_row_on_the_cpu(tmp_path):
    """--smoke: every config at every variant, the attention detection, bf16 vs float32 training, the
    batch search, the table; nothing fails, with wandb, datasets and scipy unimportable."""
    done = run_blocked(["--smoke", "--out", str(tmp_path)], "__main__", timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "error" in r or r["kind"] == "skipped"]
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    assert [r["name"] for r in by_kind["step"]] == list(gpu_check.CONFIGS)
    assert [r["name"] for r in by_kind["mixer"]] == [f"mixer:{m}" for m in MIXERS]  # every token mixer at T = 1024
    assert [r["name"] for r in by_kind["max_batch"]] == list(gpu_check.CONFIGS)
    assert [r["name"] for r in by_kind["channels_last"]] == [n for n in gpu_check.CONFIGS if n != gpu_check.GPT]
    assert [r["name"] for r in by_kind["compile"]] == [gpu_check.GPT, gpu_check.IDEA2]
    for r in by_kind["step"] + by_kind["mixer"] + by_kind["compile"] + by_kind["channels_last"] + by_kind["max_batch"]:
        assert r["ms_per_iter"] > 0 and r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["peak_memory_bytes"] > 0
        assert r["hfu"] > r["mfu"] if r["cnn_checkpoint"] else r["hfu"] == r["mfu"]
    assert all(r["channels_last"] for r in by_kind["channels_last"])
    assert all(r["batch_size"] == 4 and r["stopped_by"] == "--max-batch 4" for r in by_kind["max_batch"])
    assert all(r["compile_s"] > 0 for r in by_kind["compile"])
    (attention,) = by_kind["attention"]
    assert attention["detected"] == attention["dispatcher_choice"] == "MATH"  # v's head size differs from q's
    assert attention["profiled_backends"] == ["MATH"] and attention["max_abs_err"] == 0.0
    assert [r["name"] for r in by_kind["train"]] == [gpu_check.GPT, gpu_check.IDEA2]
    assert all(r["pass"] and r["loss_fell"] for r in by_kind["train"])
    report = (tmp_path / "gpu_check.md").read_text()
    assert report in done.stdout and report.count("\n| owt_") == 22  # 7 + 6 + 7 + 2 table rows
    assert "**MATH**" in report and report.count("**PASS**") == 2


def test_mfu_and_hfu_against_a_hand_computation(monkeypatch):
    # GPT-2 small, 8 x 1024 tokens in 100 ms: 81,920 tokens/s x 854,654,976 FLOPs = 7.0013e13 FLOP/s,
    # over the H200's 989e12 = 7.08%
    figures = gpu_check.flops_figures(100.0, 8 * 1024, 854_654_976, 854_654_976, 989e12)
    assert figures["tokens_per_s"] == pytest.approx(81_920)
    assert figures["mfu"] == pytest.approx(0.0707920, rel=1e-5) and figures["hfu"] == figures["mfu"]
    # idea 1 VGG, 2 x 1024 tokens in 50 ms: 40,960 tokens/s; model 2,053,029,888 FLOPs/token -> 8.50%;
    # hardware adds one VGG forward per token image (613,416,960) -> 2,666,446,848 -> 11.04%
    figures = gpu_check.flops_figures(50.0, 2 * 1024, 2_053_029_888, 2_666_446_848, 989e12)
    assert figures["mfu"] == pytest.approx(0.0850274, rel=1e-5)
    assert figures["hfu"] == pytest.approx(0.1104324, rel=1e-5)
    assert gpu_check.flops_figures(50.0, 2048, 1e9, 1e9, None)["mfu"] is None  # an unknown GPU has no MFU
    # the datasheet peak is looked up by device name (engine/perf.py)
    for name, peak in (("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert gpu_check.peak_flops(torch.device("cuda", 0)) == peak


@pytest.mark.parametrize("config, recompute", [("owt_gpt2", 0), ("owt_idea1_vgg", 613_416_960),
                                               ("owt_idea2_vgg", 613_416_960), ("owt_idea1_chain", 2 * 613_416_960)])
def test_hardware_flops_add_one_cnn_forward_per_checkpointed_stage(config, recompute):
    # VGG on 8 x 32 x 32: 2 FLOPs x 9 taps x 1024 pixels x (8 x 64 + 8 convs of 64 x 64) = 613,416,960
    assert 2 * 9 * 1024 * (8 * 64 + 8 * 64 * 64) == 613_416_960
    cfg = gpu_check.load(config, gpu_check.Plan())
    with torch.device("meta"):
        model = gpu_check.build_model(cfg.model)
    assert model.recompute_flops_per_token() == recompute
    if recompute:
        cfg = gpu_check.load(config, gpu_check.Plan(), "--model.cnn_checkpoint=false")
        with torch.device("meta"):
            assert gpu_check.build_model(cfg.model).recompute_flops_per_token() == 0


def test_idea2_attention_shapes_come_from_the_model():
    """The original idea 2: 8 heads of one 32 x 32 channel each: q, k of 768 / 8 = 96, v of 1024 per head."""
    q, k, v = gpu_check.attention_shapes(gpu_check.load(gpu_check.IDEA2, gpu_check.Plan()))
    assert q == k == (2, 8, 1024, 96) and v == (2, 8, 1024, 1024)


def qkv(head: int, value_head: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, 16, d, generator=g).requires_grad_() for d in (head, head, value_head))


def test_backend_detection_on_the_cpu():
    """torch on the CPU has two kernels, flash (same head size for q, k and v) and math: idea 2's shapes
    (v wider than q) run on math, equal head sizes on the CPU's flash kernel; the detection, torch's own
    choice and the profiled op agree, and the output matches the float32 math kernel."""
    q, k, v = qkv(8, 32)
    detected, refused = sdpa.detect_backend(q, k, v)
    assert detected == sdpa.dispatcher_choice(q, k, v) == "MATH"
    assert set(refused) == {"FLASH_ATTENTION", "EFFICIENT_ATTENTION"}  # tried first, in the priority order
    profile = sdpa.profiled_backend(q, k, v)
    assert profile["profiled_backends"] == ["MATH"]
    assert "aten::_scaled_dot_product_attention_math" in profile["profiled_ops"]

    q, k, v = qkv(8, 8)
    detected, refused = sdpa.detect_backend(q, k, v)
    assert detected == sdpa.dispatcher_choice(q, k, v) == "FLASH_ATTENTION" and not refused
    profile = sdpa.profiled_backend(q, k, v)
    assert profile["profiled_backends"] == ["FLASH_ATTENTION"]
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in profile["profiled_ops"]
    errors = sdpa.errors_against_math(q, k, v)
    assert 0 < errors["max_abs_err"] < 1e-5 and errors["rel_err"] < 1e-6  # flash vs math, both float32
    assert all(t.grad is None for t in (q, k, v))  # the probes leave no gradients behind


def test_float32_exact_turns_tf32_off_and_back():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as runtime.setup on a GPU
    try:
        with pytest.raises(ZeroDivisionError), timing.float32_exact():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            1 / 0
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_priority_order_is_torchs():
    order = sdpa.priority_order()
    assert order[0] == torch.nn.attention.SDPBackend.FLASH_ATTENTION and torch.nn.attention.SDPBackend.MATH in order
    assert [b.value for b in order] == [b for b in torch._C._get_sdp_priority_order() if b in {0, 1, 2, 3}]


def test_batch_search_stops_at_out_of_memory_and_frees_it():
    cleaned = []

    def try_batch(b: int):
        def step():
            if b > 16:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return {"ms_per_iter": float(b), "try_s": 0.01, "batch_size": b}
        return timing.catch_oom(step, cleanup=lambda: cleaned.append(b))

    found = timing.search_batch(try_batch, 2, 512, 10.0, lambda: 100.0)
    assert found["largest"]["batch_size"] == 16 and found["stopped_by"].startswith("out of memory (CUDA out of")
    assert [b for b, _ in found["tried"]] == [2, 4, 8, 16, 32] and cleaned == [32]
    # the caps: the largest batch asked for, a try predicted too long, the time left
    assert timing.search_batch(try_batch, 2, 8, 10.0, lambda: 100.0)["stopped_by"] == "--max-batch 8"
    slow = lambda b: ({"ms_per_iter": 1.0, "try_s": 0.1 * b}, None)  # noqa: E731
    found = timing.search_batch(slow, 2, 512, 1.0, lambda: 100.0)  # tries of 0.2, 0.4, 0.8 s; next ~1.6
    assert found["largest"]["try_s"] == pytest.approx(0.8) and found["stopped_by"].startswith("next try ~2 s")
    assert timing.search_batch(slow, 2, 512, 100.0, lambda: 1.0)["stopped_by"].startswith("time budget")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not out of memory
        timing.catch_oom(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


def test_rows_past_the_time_limit_are_skipped_and_errors_reported(tmp_path, capsys):
    check = gpu_check.Check(tmp_path, limit_s=5.0)
    assert check.row("step", "a", lambda: {"x": 1})["x"] == 1
    assert check.row("compile", "b", lambda: {"x": 2}, estimate_s=60.0) is None
    assert "error" in check.row("step", "c", lambda: 1 / 0)
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["step", "skipped", "step"]
    assert rows[1]["reason"].startswith("needs ~60 s") and rows[2]["error"].startswith("ZeroDivisionError")
    assert capsys.readouterr().out.count("\n") == 3  # one JSON line per row
    report = gpu_check.markdown(check.rows)
    assert "- skipped: compile b: needs ~60 s" in report and "- ERROR in step c: ZeroDivisionError" in report


def test_compare_curves_tolerance():
    ref = [4.0 - 0.02 * i for i in range(100)]  # windows of 25: means 3.76 .. 2.26
    assert gpu_check.compare_curves(ref, [x + 0.05 for x in ref], 25)["pass"]  # within 0.1 nat at the end
    assert not gpu_check.compare_curves(ref, [x + 0.2 for x in ref], 25)["pass"]  # the last window is 0.2 off
    assert not gpu_check.compare_curves(ref, ref[:-1] + [math.nan], 25)["pass"]
    early = [x + (0.3 if i < 25 else 0.0) for i, x in enumerate(ref)]  # 0.3 off early: within 10% of 3.76
    assert gpu_check.compare_curves(ref, early, 25)["pass"]
    early = [x + (1.0 if i < 25 else 0.0) for i, x in enumerate(ref)]  # 1 nat off early: not
    assert not gpu_check.compare_curves(ref, early, 25)["pass"]


def test_markov_process_has_a_known_floor():
    table = gpu_check.markov_table(50304)
    assert table.shape == (512, 4) and all(len(set(row.tolist())) == 4 for row in table)
    x, y = gpu_check.markov_batch(table, 3, 64, step=7)
    assert x.shape == y.shape == (3, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert all(int(y[b, t]) in table[int(x[b, t])].tolist() for b in range(3) for t in range(64))
    assert torch.equal(gpu_check.markov_batch(table, 3, 64, step=7)[0], x)  # a pure function of the step
