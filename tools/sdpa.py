"""Which kernel runs a scaled-dot-product attention, found three ways (scripts/gpu_check.py uses them).

    shapes = sdpa_shapes(model, idx)              # (q, k, v) shapes of every attention call of a forward
    name, refused = detect_backend(q, k, v)       # each backend alone, in the dispatcher's priority order
    dispatcher_choice(q, k, v)                    # torch's own pick (a private function; None if missing)
    profiled_backend(q, k, v)                     # the aten ops (and, on a GPU, kernels) a profiler saw
    errors_against_math(q, k, v)                  # the default dispatch against the float32 math kernel

torch picks a backend per call from the shapes, dtype, device and whether gradients are needed: the
first in its priority order whose checks pass. Running each backend alone under sdpa_kernel([b]) in
that order, forward and backward, the first that runs is the one the dispatcher uses.
"""
from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from tools.timing import float32_exact, synchronize

# the aten op each backend runs (its backward op starts with the same name); CPU's flash op adds "_for_cpu"
OP_BACKENDS = {"_scaled_dot_product_flash_attention": "FLASH_ATTENTION",
               "_scaled_dot_product_efficient_attention": "EFFICIENT_ATTENTION",
               "_scaled_dot_product_cudnn_attention": "CUDNN_ATTENTION",
               "_scaled_dot_product_attention_math": "MATH",
               "_scaled_dot_product_fused_attention_overrideable": "OVERRIDEABLE"}
KERNEL_WORDS = re.compile(r"flash|fmha|attention|attn|sdpa|cudnn", re.I)
TRIED = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)


class SDPARecorder(TorchFunctionMode):
    """Records the (q, k, v) shapes of every F.scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.shapes.append(tuple(tuple(t.shape) for t in args[:3]))
        return func(*args, **(kwargs or {}))


def sdpa_shapes(model: torch.nn.Module, idx: torch.Tensor) -> list[tuple]:
    """(q, k, v) shapes of each attention call in model(idx), without gradients (a meta-device model
    and idx cost nothing)."""
    with torch.no_grad(), SDPARecorder() as recorder:
        model(idx)
    return recorder.shapes


def priority_order() -> list[SDPBackend]:
    """The dispatcher's order of backends (torch's own list where it exposes it)."""
    try:
        order = [SDPBackend(int(b)) for b in torch._C._get_sdp_priority_order()]
    except (AttributeError, TypeError, ValueError):
        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                 SDPBackend.CUDNN_ATTENTION]  # torch's default order on CUDA
    return [b for b in order if b in TRIED]


def backend_error(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """None if `backend` alone runs forward and backward (causal) on q, k, v; else the first line of its error."""
    try:
        with warnings.catch_warnings(), sdpa_kernel([backend]):
            warnings.simplefilter("ignore")  # each refusing backend warns why
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(torch.randn_like(out))
        synchronize(q.device)
        return None
    except RuntimeError as e:
        return (str(e).strip().splitlines() or ["RuntimeError"])[0][:160]
    finally:
        for t in (q, k, v):
            t.grad = None


def detect_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[str | None, dict[str, str]]:
    """(the first backend in priority order that runs alone: the one the dispatcher uses, {each backend
    before it: why it refused}). Later backends are not tried: they would never run."""
    refused = {}
    for backend in priority_order():
        if (why := backend_error(backend, q, k, v)) is None:
            return backend.name, refused
        refused[backend.name] = why
    return None, refused


def dispatcher_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """torch's own pick for a causal call (a private function, so None where it is missing)."""
    try:
        return SDPBackend(int(torch._fused_sdp_choice(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True))).name
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return None


def profiled_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """The attention ops of a profiled forward and backward, the backends they belong to, and on a GPU
    the names of its attention kernels."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if q.is_cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        synchronize(q.device)
    for t in (q, k, v):
        t.grad = None
    names = [e.key for e in prof.key_averages()]
    ops = sorted({n for n in names if n.startswith("aten::_scaled_dot_product")})
    return {"profiled_ops": ops,
            "profiled_backends": sorted({b for op in ops for key, b in OP_BACKENDS.items()
                                         if op.removeprefix("aten::").startswith(key)}),
            "kernels": sorted({n[:80] for n in names if not n.startswith("aten::") and KERNEL_WORDS.search(n)})[:8]}


def errors_against_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """The default dispatch on q, k, v (their dtype) and on their float32 copies, against the math
    kernel in float32 without TF32: max abs and relative (Frobenius) errors."""
    with torch.no_grad(), float32_exact():
        q32, k32, v32 = q.float(), k.float(), v.float()
        with sdpa_kernel([SDPBackend.MATH]):
            ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).float()
        out32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    return {"max_abs_err": (out - ref).abs().max().item(), "rel_err": ((out - ref).norm() / ref.norm()).item(),
            "max_abs_err_fp32": (out32 - ref).abs().max().item(), "ref_max_abs": ref.abs().max().item()}
