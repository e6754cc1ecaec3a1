"""GPU check: throughput, memory, torch.compile, channels_last, idea 2's attention kernel and bf16
training against float32, for every OpenWebText config, in one command of at most 8 minutes.

  python3 scripts/gpu_check.py --out $OUT --limit-s 420   # one H100/H200-class GPU; random ids, no data
  python scripts/gpu_check.py --smoke                     # the same code paths on the CPU, tiny shapes, seconds

The device call of a session that has a GPU (the device tool runs it in the repository root under the
GPU machine's own python3, torch 2.11; whatever is written under $OUT comes back; nothing to carry):

  PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT --limit-s 420      with timeout_s=540

One JSON line per row as it finishes, a markdown table at the end, both written to --out
(gpu_check.jsonl, gpu_check.md). The rows, most important first; an optional row that would pass
--limit-s is skipped with a `skipped` line that says so, and a row that fails is an `error` line:
  env            device, versions, the datasheet bf16 peak (engine/perf.py), a measured matmul rate
  attention      which scaled-dot-product-attention backend runs idea 2's attention at its training shapes
                 (captured from the model; values are images, so their head size differs from q's): each
                 backend alone (forward and backward) under sdpa_kernel([b]) in the dispatcher's priority
                 order, the first that runs being the one used; checked against torch's own choice and the
                 ops (GPU: kernels) of a profiler trace; its time; its error against the float32 math kernel
  mixer          every registered token mixer as the one block (with an MLP) of GPT-2 small's width at T = 1024,
                 two sequences a step: the step row's figures, per mixer
  step           each config at its configured micro-batch, eager; one iteration = one micro-batch forward,
                 backward and AdamW step (train.grad_accum=1): ms/iter, tokens/s, model and hardware FLOPs
                 per token (hardware adds the CNN forward that cnn_checkpoint recomputes), MFU and HFU
                 against the datasheet peak, peak allocated memory against `train.py --summary`'s estimate
  train          bf16 autocast against float32 (TF32 off) on a learnable Markov process, GPT-2 small and
                 idea 2 (compare_curves states the tolerance)
  compile        torch.compile: GPT-2 small and idea 2 first (compile seconds), the others at the end
  channels_last  the image models with NHWC images and conv weights
  max_batch      the largest micro-batch that fits: doubling from the configured one until
                 torch.cuda.OutOfMemoryError (memory freed between tries), --max-batch, or a try that would
                 take longer than --max-try-s or the time left
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from config import Config, load_config  # noqa: E402
from engine import runtime  # noqa: E402
from engine.optim import lr_at, make_optimizer, set_lr  # noqa: E402
from engine.perf import peak_flops, peak_memory_bytes  # noqa: E402
from engine.runlog import git_state  # noqa: E402
from engine.summary import summarize  # noqa: E402
from engine.trainer import train_step  # noqa: E402
from models import MIXERS, build_model  # noqa: E402
from tools.sdpa import (detect_backend, dispatcher_choice, errors_against_math, priority_order,  # noqa: E402
                        profiled_backend, sdpa_shapes)
from tools.timing import (catch_oom, float32_exact, free_memory, random_batches, rates,  # noqa: E402
                          reset_peak_memory, search_batch, time_ms, time_steps)

GiB = 2 ** 30
CONFIGS = ("owt_gpt2", "owt_idea1_vgg", "owt_idea1_resnet", "owt_idea2_vgg", "owt_idea2_vgg_wide",
           "owt_idea1_chain", "owt_idea2_chain")
GPT, IDEA2 = "owt_gpt2", "owt_idea2_vgg"
# Budget guesses (seconds) for rows whose cost is unknown until they run; inductor compiles GPT-2
# small's forward and backward in about a minute on a 16-core host.
COMPILE_GUESS_S, TRAIN_GUESS_S = 120.0, 45.0
# bf16 vs float32 training (compare_curves). Autocast keeps weights, AdamW state, the loss and the
# reductions of softmax and LayerNorm in float32; only the inputs of matmuls and convs are rounded to
# 8 significant bits (relative 2^-9). That perturbs the trajectory about as a change of seed does:
# hundredths of a nat after a few hundred steps. A real precision fault (overflow in attention scores,
# a kernel bug, activations or gradients out of range) shows as a NaN or as a gap of tenths that grows.
WINDOW_TOL = (0.25, 0.10)  # every window's mean: within max(0.25 nat, 10% of float32's)
FINAL_TOL = (0.10, 0.03)   # the last window's mean: within max(0.10 nat, 3% of float32's)
MARKOV_STATES, MARKOV_SUCCESSORS = 512, 4  # ids < 512, each followed by one of 4 successors: floor ln 4


@dataclass(frozen=True)
class Plan:
    """The sizes of one check: the GPU's, or the smoke run's tiny ones (the same code paths)."""
    device: str = "auto"
    tiny: tuple[str, ...] = ()          # overrides of every config (smoke: tiny shapes)
    tiny_image: tuple[str, ...] = ()    # more overrides of the image configs
    steps: int = 5                      # timed steps of a row (median), after `warmup` untimed ones
    warmup: int = 2
    search_steps: int = 2               # timed steps of each batch-search try, after one untimed one
    max_batch: int = 512
    max_try_s: float = 8.0
    train_steps: int = 300
    window: int = 25                    # steps per window of the compared loss curves
    train_gpt: tuple[str, ...] = ("--model.block_size=256", "--train.batch_size=8")
    train_image: tuple[str, ...] = ("--model.block_size=128", "--train.batch_size=4")
    compile_backend: str = "inductor"
    compile_rest: bool = True           # compile every config, not only GPT-2 and idea 2, if time is left
    matmul_n: int = 8192


# aot_eager: dynamo and AOTAutograd trace forward and backward as inductor's would, without code generation
SMOKE = Plan(device="cpu", steps=2, warmup=1, search_steps=1, max_batch=4, max_try_s=60.0, train_steps=40,
             window=10, compile_backend="aot_eager", compile_rest=False, matmul_n=256,
             tiny=("--model.block_size=32", "--model.vocab_size=64", "--model.n_layer=1", "--model.n_head=2",
                   "--model.n_embd=32", "--train.batch_size=2"),
             tiny_image=("--model.channels=4", "--model.height=2", "--model.width=2", "--model.cnn_chunk=16"),
             train_gpt=("--train.batch_size=4",), train_image=("--model.block_size=16", "--train.batch_size=4"))


def load(name: str, plan: Plan, *extra: str) -> Config:
    """configs/<name>.toml for one micro-batch per step, eager, on the plan's device; `extra` last."""
    path = ROOT / "configs" / f"{name}.toml"
    common = ["--train.grad_accum=1", "--train.compile=false", f'--train.device="{plan.device}"', *plan.tiny]
    cfg = load_config(path, [*common, *extra])
    if plan.tiny_image and hasattr(cfg.model, "channels"):
        cfg = load_config(path, [*common, *plan.tiny_image, *extra])
    return cfg


# ---- rows and the time budget ----------------------------------------------------------------------------

class Check:
    """The rows so far, the clock and the output file; each row is printed and written as it finishes."""

    def __init__(self, out: Path, limit_s: float):
        out.mkdir(parents=True, exist_ok=True)
        self.t0, self.limit_s, self.rows = time.perf_counter(), limit_s, []
        self.jsonl, self.md = (out / "gpu_check.jsonl").open("w"), out / "gpu_check.md"

    def left(self) -> float:
        return self.limit_s - (time.perf_counter() - self.t0)

    def emit(self, row: dict) -> dict:
        row = {**row, "elapsed_s": round(time.perf_counter() - self.t0, 1)}
        self.rows.append(row)
        line = json.dumps(row, default=str)
        print(line, flush=True)
        self.jsonl.write(line + "\n")
        self.jsonl.flush()
        return row

    def row(self, kind: str, name: str, fn: Callable[[], dict], estimate_s: float = 0.0) -> dict | None:
        """fn() -> fields as one row. Skipped, and said so, when estimate_s would pass --limit-s; an
        exception becomes an error row, so that one failing check does not cost the others."""
        if estimate_s > self.left():
            self.emit({"kind": "skipped", "name": name, "what": kind,
                       "reason": f"needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s left of --limit-s"})
            return None
        t0 = time.perf_counter()
        try:
            fields = fn()
        except Exception as e:  # noqa: BLE001 -- reported as a row; the other checks go on
            fields = {"error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}",
                      "traceback": traceback.format_exc(limit=-4)}
        free_memory()
        return self.emit({"kind": kind, "name": name, **fields, "row_s": round(time.perf_counter() - t0, 2)})


# ---- one config timed -------------------------------------------------------------------------------------

def flops_figures(ms_per_iter: float, tokens_per_iter: int, model_fpt: float, hw_fpt: float,
                  peak: float | None) -> dict:
    """tokens/s, and MFU (model FLOPs) and HFU (hardware FLOPs: recomputation included) of the peak."""
    model, hw = rates(ms_per_iter, tokens_per_iter, model_fpt, peak), rates(ms_per_iter, tokens_per_iter, hw_fpt, peak)
    return {"tokens_per_s": model["tokens_per_s"], "model_flops_per_token": model_fpt, "hw_flops_per_token": hw_fpt,
            "peak_flops": peak, "mfu": model["mfu"], "hfu": hw["mfu"]}


SUMMARIES: dict[str, dict] = {}  # `--summary` per model config: it builds a CPU model, seconds at GPT-2 size


class Subject:
    """One config's model (built on the device) and optimizer, and its `--summary` memory estimate."""

    def __init__(self, cfg: Config, rt: runtime.Runtime):
        self.cfg, self.rt = cfg, rt
        key = repr(cfg.model)
        if key not in SUMMARIES:
            SUMMARIES[key] = summarize(cfg)
        self.summary = SUMMARIES[key]
        torch.manual_seed(cfg.train.seed)
        with torch.device(rt.device):  # initialised where it runs: seconds saved per GPT-2-size model
            self.model = build_model(cfg.model)
        self.optimizer = make_optimizer(self.model, cfg.optim, rt.device.type)
        self.fpt = self.model.flops_per_token()
        self.hw_fpt = self.fpt + self.model.recompute_flops_per_token()

    def measure(self, batch_size: int, steps: int, warmup: int, step_model: torch.nn.Module | None = None) -> dict:
        """Time `steps` training iterations of one micro-batch of batch_size random sequences."""
        c, s = self.cfg, self.summary
        batches = random_batches(batch_size, c.model.block_size, c.model.vocab_size, 1)
        reset_peak_memory(self.rt.device)
        t0 = time.perf_counter()
        model = self.model if step_model is None else step_model  # (a compiled module's truth value is an error)
        times = time_steps(model, self.optimizer, batches, self.rt, c.optim.grad_clip, steps, warmup)
        ms = statistics.median(times) * 1e3
        estimate = (s["weights_bytes"] + s["grads_bytes"] + s["optimizer_bytes"]
                    + s["activation_bytes_per_sequence_fp32"] * batch_size)
        return {"batch_size": batch_size, "block_size": c.model.block_size, "ms_per_iter": ms,
                **flops_figures(ms, batch_size * c.model.block_size, self.fpt, self.hw_fpt, peak_flops(self.rt.device)),
                "peak_memory_bytes": peak_memory_bytes(self.rt.device), "estimate_bytes": estimate,
                "cnn_checkpoint": getattr(c.model, "cnn_checkpoint", None),
                "channels_last": getattr(c.model, "channels_last", None), "try_s": time.perf_counter() - t0}


def step_fields(cfg: Config, rt: runtime.Runtime, plan: Plan) -> dict:
    subject = Subject(cfg, rt)
    return {"variant": "channels_last" if getattr(cfg.model, "channels_last", False) else "eager",
            **subject.measure(cfg.train.batch_size, plan.steps, plan.warmup)}


def compile_fields(cfg: Config, rt: runtime.Runtime, plan: Plan) -> dict:
    """torch.compile'd steps; compile_s = the first step (tracing and code generation for forward and
    backward) less a steady step."""
    subject = Subject(cfg, rt)
    compiled = torch.compile(subject.model, backend=plan.compile_backend)
    try:
        first = subject.measure(cfg.train.batch_size, 1, 0, step_model=compiled)
        row = subject.measure(cfg.train.batch_size, plan.steps, 1, step_model=compiled)
    finally:
        torch._dynamo.reset()  # drop the compiled graphs and what they hold
    return {"variant": f"compile ({plan.compile_backend})", **row,
            "compile_s": (first["ms_per_iter"] - row["ms_per_iter"]) / 1e3}


def max_batch_fields(cfg: Config, rt: runtime.Runtime, plan: Plan, time_left: Callable[[], float]) -> dict:
    subject = Subject(cfg, rt)

    def attempt(b: int) -> tuple[dict | None, str | None]:
        return catch_oom(lambda: subject.measure(b, plan.search_steps, 1),
                         cleanup=lambda: subject.optimizer.zero_grad(set_to_none=True))

    found = search_batch(attempt, cfg.train.batch_size, plan.max_batch, plan.max_try_s, time_left)
    largest = found.pop("largest") or {}
    return {"variant": "max batch", "configured_batch_size": cfg.train.batch_size, **found, **largest}


# ---- idea 2's attention kernel ----------------------------------------------------------------------------

def attention_shapes(cfg: Config) -> tuple:
    """(q, k, v) shapes of the model's image attention (v's head size differs from q's), else of its
    last attention: from a forward on the meta device, so they are the model's own, not restated here."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    shapes = sdpa_shapes(model, torch.zeros(cfg.train.batch_size, cfg.model.block_size, dtype=torch.long,
                                            device="meta"))
    return ([s for s in shapes if s[2][-1] != s[0][-1]] or shapes)[-1]


def attention_fields(cfg: Config, rt: runtime.Runtime) -> dict:
    shapes = attention_shapes(cfg)
    g = torch.Generator(device=rt.device).manual_seed(0)
    q, k, v = (torch.randn(s, generator=g, device=rt.device, dtype=rt.dtype).requires_grad_() for s in shapes)
    detected, refused = detect_backend(q, k, v)

    def fwd_bwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def math_fwd_bwd():
        with sdpa_kernel([SDPBackend.MATH]):
            fwd_bwd()

    fields = {"q_shape": shapes[0], "v_shape": shapes[2], "dtype": str(rt.dtype).removeprefix("torch."),
              "priority_order": [b.name for b in priority_order()], "detected": detected,
              "dispatcher_choice": dispatcher_choice(q, k, v), "refused": refused,
              **profiled_backend(q, k, v), **errors_against_math(q, k, v)}
    with torch.no_grad():
        fields["fwd_ms"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), rt.device)
    fields["fwd_bwd_ms"] = time_ms(fwd_bwd, rt.device)
    fields["math_fwd_bwd_ms"] = time_ms(math_fwd_bwd, rt.device)
    return fields


# ---- bf16 against float32 training --------------------------------------------------------------------------

def markov_table(vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(S, K) distinct successors of each of S = min(MARKOV_STATES, V) states: a process whose next
    token has exactly ln K nats of entropy, so a model that learns it approaches a known floor."""
    g = torch.Generator().manual_seed(seed)
    states = min(MARKOV_STATES, vocab_size)
    return torch.rand(states, states, generator=g).argsort(dim=1)[:, :MARKOV_SUCCESSORS]


def markov_batch(table: torch.Tensor, batch_size: int, block_size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) (B, T): walks of the chain from random starts, a pure function of the step."""
    g = torch.Generator().manual_seed(1000 + step)
    seq = torch.empty(batch_size, block_size + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, table.size(0), (batch_size,), generator=g)
    pick = torch.randint(0, table.size(1), (batch_size, block_size), generator=g)
    for t in range(block_size):
        seq[:, t + 1] = table[seq[:, t], pick[:, t]]
    return seq[:, :-1], seq[:, 1:]


def train_curve(cfg: Config, rt: runtime.Runtime, table: torch.Tensor, steps: int) -> list[float]:
    """Per-step training losses from the config's seed (the same weights and batches for any dtype)."""
    torch.manual_seed(cfg.train.seed)
    with torch.device(rt.device):
        model = build_model(cfg.model)
    optimizer = make_optimizer(model, cfg.optim, rt.device.type)
    losses = []
    for step in range(steps):
        set_lr(optimizer, lr_at(step, cfg.optim, step / steps))
        batch = markov_batch(table, cfg.train.batch_size, cfg.model.block_size, step)
        losses.append(train_step(model, optimizer, [batch], rt, cfg.optim.grad_clip)[0])
    return losses


def compare_curves(ref: list[float], test: list[float], window: int) -> dict:
    """Window means of two loss curves (pointwise losses are too noisy); the test passes if every loss
    is finite, each window's mean is within WINDOW_TOL of the reference's and the last within FINAL_TOL
    (absolute nats, or relative to the reference, whichever is larger; see their comment for why)."""
    n = max(1, len(ref) // window)
    r = [statistics.fmean(ref[i * window:(i + 1) * window]) for i in range(n)]
    t = [statistics.fmean(test[i * window:(i + 1) * window]) for i in range(n)]
    gaps = [abs(a - b) for a, b in zip(r, t)]
    final_tol = max(FINAL_TOL[0], FINAL_TOL[1] * r[-1])
    within = all(g <= max(WINDOW_TOL[0], WINDOW_TOL[1] * a) for g, a in zip(gaps, r)) and gaps[-1] <= final_tol
    finite = all(math.isfinite(x) for x in [*ref, *test])
    return {"fp32_windows": [round(x, 4) for x in r], "bf16_windows": [round(x, 4) for x in t],
            "max_gap": max(gaps), "final_gap": gaps[-1], "final_tolerance": final_tol,
            "loss_fell": r[-1] < r[0], "pass": finite and within}


def train_fields(cfg: Config, rt: runtime.Runtime, plan: Plan) -> dict:
    table = markov_table(cfg.model.vocab_size)
    with float32_exact():  # a true float32 reference
        fp32 = train_curve(cfg, runtime.Runtime(rt.device, torch.float32), table, plan.train_steps)
    bf16 = train_curve(cfg, runtime.Runtime(rt.device, torch.bfloat16), table, plan.train_steps)
    return {"batch_size": cfg.train.batch_size, "block_size": cfg.model.block_size, "steps": plan.train_steps,
            "window": plan.window, "floor": math.log(MARKOV_SUCCESSORS), "fp32_last": fp32[-1], "bf16_last": bf16[-1],
            **compare_curves(fp32, bf16, plan.window)}


# ---- environment, the order of the rows, the report ----------------------------------------------------------

def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured n x n x n matmul FLOP/s on random data (METHOD: zeros run faster than real data)."""
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, generator=g, device=device, dtype=dtype) for _ in range(2))
    return 2 * n ** 3 / (time_ms(lambda: a @ b, device) / 1e3)


def env_fields(rt: runtime.Runtime, plan: Plan) -> dict:
    cuda = rt.device.type == "cuda"
    name = torch.cuda.get_device_name(rt.device) if cuda else platform.processor() or platform.machine()
    return {"device": str(rt.device), "dtype": str(rt.dtype).removeprefix("torch."), "device_name": name,
            "gpu_memory_bytes": torch.cuda.get_device_properties(rt.device).total_memory if cuda else None,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "git": git_state(),
            "peak_flops": peak_flops(rt.device), "matmul_flops": matmul_rate(rt.device, rt.dtype, plan.matmul_n)}


def run_checks(check: Check, plan: Plan, rt: runtime.Runtime, configs: tuple[str, ...]) -> None:
    """The rows, most important first: what must be known, then what is good to know while time is left."""
    image = [n for n in configs if n != GPT]
    check.row("env", str(rt.device), lambda: env_fields(rt, plan))
    if IDEA2 in configs:
        check.row("attention", IDEA2, lambda: attention_fields(load(IDEA2, plan), rt))
    step = {n: check.row("step", n, lambda n=n: step_fields(load(n, plan), rt, plan)) for n in configs}
    cost = {n: (r or {}).get("try_s", 1.0) for n, r in step.items()}  # seconds of one row at the configured batch
    for mixer in MIXERS:  # every token mixer as the one block of GPT-2 small's width, at T = 1024
        check.row("mixer", f"mixer:{mixer}", lambda m=mixer: step_fields(load(GPT, plan, *mixer_row(m)), rt, plan),
                  cost.get(GPT, 1.0))
    warmup = f"--optim.warmup_iters={max(1, plan.train_steps // 10)}"
    for name, extra in ((GPT, plan.train_gpt), (IDEA2, plan.train_image)):
        if name in configs:
            check.row("train", name, lambda n=name, e=extra: train_fields(load(n, plan, *e, warmup), rt, plan),
                      TRAIN_GUESS_S)
    first = [n for n in (GPT, IDEA2) if n in configs]
    for name in first:
        check.row("compile", name, lambda n=name: compile_fields(load(n, plan), rt, plan), COMPILE_GUESS_S)
    for name in image:
        check.row("channels_last", name, lambda n=name: step_fields(load(n, plan, "--model.channels_last=true"), rt,
                                                                    plan), 2 * cost[name])
    for name in configs:
        check.row("max_batch", name, lambda n=name: max_batch_fields(load(n, plan), rt, plan, check.left),
                  4 * cost[name])
    for name in (n for n in configs if n not in first and plan.compile_rest):
        check.row("compile", name, lambda n=name: compile_fields(load(n, plan), rt, plan), COMPILE_GUESS_S)


def mixer_row(mixer: str) -> tuple[str, ...]:
    """GPT-2 small's config with one block of this mixer and an MLP (the image blocks: the original's 8 x 32 x
    32 images and 9-conv VGG), two sequences a step: the mixers' costs side by side at T = 1024."""
    return ('--model.name="lm"', "--model.n_layer=1", f'--model.mixers=["{mixer}"]', "--model.mlp=[true]",
            "--train.batch_size=2")


def fmt(x: float | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x / scale, spec)


def step_table(rows: list[dict]) -> list[str]:
    lines = ["| config | variant | B x T | ms/iter | tokens/s | GFLOP/token model / hw | MFU | HFU | peak GiB "
             "| --summary est. GiB | peak / est. | compile s |", "|" + " --- |" * 12]
    for r in (r for r in rows if "ms_per_iter" in r and "variant" in r):
        cells = [r["name"], r["variant"], f"{r['batch_size']} x {r['block_size']}", fmt(r["ms_per_iter"]),
                 fmt(r["tokens_per_s"], ".0f"),
                 f"{fmt(r['model_flops_per_token'], '.4g', 1e9)} / {fmt(r['hw_flops_per_token'], '.4g', 1e9)}",
                 fmt(r["mfu"], ".1%"), fmt(r["hfu"], ".1%"), fmt(r["peak_memory_bytes"], ".2f", GiB),
                 fmt(r["estimate_bytes"], ".2f", GiB), fmt(r["peak_memory_bytes"] / r["estimate_bytes"], ".2f"),
                 fmt(r.get("compile_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def attention_line(r: dict) -> str:
    return (f"- idea 2's attention, q {r['q_shape']} v {r['v_shape']} {r['dtype']}: **{r['detected']}** "
            f"(tried in priority order {', '.join(r['priority_order'])}; torch's choice {r['dispatcher_choice']}; "
            f"profiled ops {', '.join(r['profiled_backends']) or 'n/a'}; kernels {', '.join(r['kernels']) or 'n/a'}); "
            f"forward {r['fwd_ms']:.2f} ms, forward + backward {r['fwd_bwd_ms']:.2f} ms (math kernel "
            f"{r['math_fwd_bwd_ms']:.2f} ms); against the float32 math kernel: max abs error {r['max_abs_err']:.2e}, "
            f"relative {r['rel_err']:.1e} (float32 inputs: {r['max_abs_err_fp32']:.1e})")


def train_line(r: dict) -> str:
    return (f"- bf16 vs float32 training, {r['name']} shape ({r['steps']} steps of {r['batch_size']} x "
            f"{r['block_size']} tokens, floor {r['floor']:.3f}): float32 {r['fp32_windows'][0]:.3f} -> "
            f"{r['fp32_windows'][-1]:.3f}, bf16 -> {r['bf16_windows'][-1]:.3f}; largest window gap {r['max_gap']:.3f}, "
            f"last {r['final_gap']:.3f} (tolerance {r['final_tolerance']:.3f}): **{'PASS' if r['pass'] else 'FAIL'}**")


def notes(rows: list[dict]) -> list[str]:
    """The attention, training and batch-search results, then what was skipped or failed."""
    lines = []
    for r in rows:
        if "error" in r or r["kind"] == "skipped":
            continue
        if r["kind"] == "attention":
            lines.append(attention_line(r))
        elif r["kind"] == "train":
            lines.append(train_line(r))
        elif r["kind"] == "max_batch":
            lines.append(f"- largest micro-batch, {r['name']}: {r.get('batch_size', 'none')} (configured "
                         f"{r['configured_batch_size']}; stopped by {r['stopped_by']}; tried {r['tried']})")
    for r in rows:
        if r["kind"] == "skipped":
            lines.append(f"- skipped: {r['what']} {r['name']}: {r['reason']}")
        elif "error" in r:
            lines.append(f"- ERROR in {r['kind']} {r['name']}: {r['error']}")
    return lines


def markdown(rows: list[dict]) -> str:
    env = next((r for r in rows if r["kind"] == "env" and "error" not in r), None)
    head = "GPU check"
    if env:
        head = (f"GPU check on {env['device_name']} ({env['device']}, torch {env['torch']}, {env['dtype']}): datasheet "
                f"peak {fmt(env['peak_flops'], '.3g', 1e12)} TFLOP/s, measured matmul "
                f"{fmt(env['matmul_flops'], '.3g', 1e12)} TFLOP/s. One iteration: one micro-batch forward, backward "
                f"and AdamW step; MFU counts model FLOPs, HFU adds the CNN forward that checkpointing recomputes"
                + ("; on the CPU, peak memory is the process's peak RSS" if env["device"] == "cpu" else "") + ".")
    return "\n".join([head, "", *step_table(rows), "", *notes(rows)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.jsonl and gpu_check.md")
    parser.add_argument("--limit-s", type=float, default=480.0, help="skip optional rows that would pass this")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the same code paths, seconds")
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--max-batch", type=int, default=None, help="largest micro-batch the search tries")
    parser.add_argument("--max-try-s", type=float, default=None, help="no batch-search try predicted longer than this")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of each bf16 / float32 training run")
    args = parser.parse_args(argv)
    configs = tuple(args.configs.split(","))
    if unknown := set(configs) - set(CONFIGS):
        parser.error(f"unknown --configs {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    plan = SMOKE if args.smoke else Plan(device=args.device)
    plan = replace(plan, **{k: v for k, v in (("max_batch", args.max_batch), ("max_try_s", args.max_try_s),
                                               ("train_steps", args.train_steps)) if v is not None})
    rt = runtime.setup(plan.device, "auto")
    check = Check(Path(args.out), args.limit_s)
    run_checks(check, plan, rt, configs)
    check.jsonl.close()
    report = markdown(check.rows)
    check.md.write_text(report)
    print(report)
    return 1 if any("error" in r for r in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
