"""Where a run executes: device, precision, and the process group when launched by torchrun."""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from schema import ConfigError

# A rank that dies leaves the others blocked in a collective; this bounds the wait so they exit
# with an error instead of hanging forever. Long enough for a slow evaluation or checkpoint.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("T2I_COLLECTIVE_TIMEOUT_MIN", "30")))


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype          # autocast dtype; float32 means no autocast
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device = {name!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device = {name!r}; valid: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no GPU is visible; use --train.device=auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 autocast on GPUs that support it (halves activation memory, uses the tensor cores);
    float32 elsewhere: CPU bf16 autocast is slower than float32 on most CPUs."""
    if name == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def setup(device_name: str, dtype_name: str) -> Runtime:
    """Join the torchrun process group if launched by torchrun; pick device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores: ~3x, 1e-3 relative error
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, pick_dtype(dtype_name, device), rank, local_rank, world_size)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    if not rt.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """The elementwise sum of t over the processes (t itself with one process)."""
    if rt.distributed:
        t = t.clone()
        dist.all_reduce(t)
    return t


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
