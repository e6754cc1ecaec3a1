"""Timing training steps: the pieces bench.py and scripts/gpu_check.py share.

    batches = random_batches(batch_size, block_size, vocab_size, n_micro, seed)   # ids on the CPU
    seconds = time_steps(model, optimizer, batches, rt, grad_clip, steps, warmup)  # one per timed step
    figures = rates(ms_per_iter, tokens_per_iter, flops_per_token, peak)           # tokens/s, FLOP/s, MFU
    reset_peak_memory(device); ...; engine.perf.peak_memory_bytes(device)
    time_ms(fn, device)                              # median milliseconds of a call, synchronised
    free_memory()                                    # garbage and the allocator's cached blocks
    row, why = catch_oom(fn, cleanup)                # None and the reason when the GPU ran out of memory
    search_batch(try_batch, start, max_batch, max_try_s, time_left)  # the largest micro-batch that fits
    with float32_exact(): ...                        # float32 matmuls and convs without TF32 (references)

Throughput does not depend on the text, so random ids stand in for data that is not prepared.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Callable

import torch

from engine.runtime import Runtime
from engine.trainer import train_step


def random_batches(batch_size: int, block_size: int, vocab_size: int, n_micro: int,
                   seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n_micro (x, y) pairs of uniform random ids (batch_size, block_size), from a private generator."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, block_size)
    return [(torch.randint(0, vocab_size, shape, generator=g), torch.randint(0, vocab_size, shape, generator=g))
            for _ in range(n_micro)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list, rt: Runtime,
               grad_clip: float, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` optimizer steps of the trainer's own train_step, after `warmup`
    untimed ones (allocator, thread pools, cuDNN autotuning, compilation)."""
    times = []
    for i in range(warmup + steps):
        synchronize(rt.device)
        t0 = time.perf_counter()
        train_step(model, optimizer, batches, rt, grad_clip)  # ends in .item(): synchronised
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def rates(ms_per_iter: float, tokens_per_iter: int, flops_per_token: float, peak: float | None) -> dict:
    """tokens/s, achieved FLOP/s (flops_per_token per token) and its share of the peak (None without one)."""
    tokens_per_s = tokens_per_iter / (ms_per_iter / 1e3)
    achieved = tokens_per_s * flops_per_token
    return {"tokens_per_s": tokens_per_s, "achieved_flops": achieved, "mfu": achieved / peak if peak else None}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new allocator peak (GPU); the CPU's peak RSS cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int = 10) -> float:
    """Median milliseconds of fn() over `reps` calls, after one untimed call (kernel choice, workspaces)."""
    fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def free_memory() -> None:
    """Collect garbage and hand the allocator's cached blocks back to the GPU."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Out-of-memory errors that libraries raise as plain RuntimeErrors (cuBLAS / cuDNN workspaces)
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
               "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE")


def catch_oom(fn: Callable[[], dict], cleanup: Callable[[], None] = lambda: None) -> tuple[dict | None, str | None]:
    """(fn()'s result, None), or (None, the error's first line) if it ran out of GPU memory. Memory is
    freed after the exception, whose traceback holds the failed step's activations, is gone; cleanup()
    drops what the failed step left behind (half-accumulated gradients)."""
    result, why = None, None
    try:
        result = fn()
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
        if not (isinstance(e, torch.cuda.OutOfMemoryError) or any(m in str(e) for m in OOM_MARKERS)):
            raise
        why = f"out of memory ({(str(e).strip().splitlines() or [''])[0][:120]})"
        cleanup()
    free_memory()
    return result, why


def search_batch(try_batch: Callable[[int], tuple[dict | None, str | None]], start: int, max_batch: int,
                 max_try_s: float, time_left: Callable[[], float]) -> dict:
    """Doubling from `start`: the largest micro-batch whose try ran. try_batch(b) -> (its row with
    "ms_per_iter" and "try_s", None) or (None, why it failed). Stops at the first failure (out of
    memory), past max_batch, or when the next try (predicted: twice the last) would take longer than
    max_try_s or the time left. -> {"largest": row or None, "stopped_by": reason, "tried": [[b, ms or why]]}"""
    tried, largest, b = [], None, start
    while True:
        row, why = try_batch(b)
        tried.append([b, round(row["ms_per_iter"], 1) if row else "failed"])
        if row is None:
            stop = why or "failed"
            break
        largest, b, predicted = row, 2 * b, 2 * row["try_s"]
        if b > max_batch:
            stop = f"--max-batch {max_batch}"
        elif predicted > max_try_s:
            stop = f"next try ~{predicted:.0f} s > --max-try-s {max_try_s:.0f}"
        elif predicted > time_left():
            stop = f"time budget (next try ~{predicted:.0f} s)"
        else:
            continue
        break
    return {"largest": largest, "stopped_by": stop, "tried": tried}


@contextlib.contextmanager
def float32_exact():
    """float32 matmuls and convolutions in full float32 inside (runtime.setup turns TF32 on for GPUs),
    for references; the previous settings come back after."""
    was = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was
