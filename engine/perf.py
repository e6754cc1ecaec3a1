"""Compute accounting: peak rates for MFU, and memory counted from the autograd graph."""
from __future__ import annotations

import functools
import resource
import time

import torch

# Dense bf16 tensor-core peaks in FLOP/s (vendor datasheets, no sparsity). Matched by substring of
# torch.cuda.get_device_name(); the first match wins, so specific names come before general ones.
GPU_PEAK_BF16 = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("A6000", 155e12), ("V100", 125e12), ("T4", 65e12),
]


@functools.cache
def cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 matmul rate of this CPU (FLOP/s), the CPU's stand-in for a datasheet peak."""
    g = torch.Generator().manual_seed(0)  # a private generator: the global one belongs to training (dropout)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s for MFU: the table for known GPUs, a measured matmul rate on the CPU, else None."""
    if device.type == "cpu":
        return cpu_matmul_flops()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((peak for key, peak in GPU_PEAK_BF16 if key in name), None)
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """GPU: the allocator's peak since the last reset; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def activation_bytes(model: torch.nn.Module, block_size: int, batch: int = 1) -> int:
    """Bytes that autograd saves for backward in one forward of `batch` sequences of block_size,
    counted on the meta device (nothing is allocated, so it works for GPT-2-size models on a laptop).
    Each storage is counted once; parameters are excluded (they are counted as weights)."""
    import copy

    meta_model = copy.deepcopy(model).to("meta")
    param_ptrs = {id(p) for p in meta_model.parameters()}
    seen, total = set(), 0

    def pack(t: torch.Tensor):
        nonlocal total
        key = (id(t.untyped_storage()) if not t.is_meta else id(t), t.dtype, tuple(t.shape))
        if id(t) not in param_ptrs and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    idx = torch.zeros(batch, block_size, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        meta_model.train()
        meta_model(idx, idx)
    return total
