"""What a run leaves behind: metrics.jsonl (one JSON object per logged step), optional wandb, and
run.json (code version and environment), so every curve can be traced to what produced it."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def run_record(cfg, rt, model) -> dict:
    device_name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else platform.processor()
    return {
        "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(),
        "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
        "device": str(rt.device), "device_name": device_name, "world_size": rt.world_size,
        "dtype": str(rt.dtype), "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "param_counts": model.param_counts(), "flops_per_token": model.flops_per_token(),
    }


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl on the master process and mirrors them to wandb.

    Every line carries step, tokens (all processes), flops (training FLOPs so far), time_s (training
    wall-clock so far, evaluation excluded) and lr; throughput since the previous line is added as
    tokens_per_s and mfu. On resume, lines after the checkpoint's step are dropped: they belong to
    work that the crash lost and that is about to be redone."""

    def __init__(self, out_dir: Path, cfg, rt, tokens_per_step: int, flops_per_token: float,
                 peak_flops: float | None, resume_step: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.master, self.world_size = rt.master, rt.world_size
        self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak_flops
        self.last: dict = {}
        self.prev_tokens, self.prev_time = 0, 0.0
        self.wandb = None
        if not self.master:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate(resume_step)
        if cfg.wandb.enabled and cfg.wandb.mode != "disabled":
            import wandb
            self.wandb = wandb.init(project=cfg.wandb.project, name=cfg.wandb.run_name or None,
                                    group=cfg.wandb.group or None, mode=cfg.wandb.mode, config=cfg.to_dict(),
                                    dir=str(out_dir), resume="allow",
                                    id=cfg.wandb.run_name or None)
        self.file = open(self.path, "a")

    def _truncate(self, step: int) -> None:
        """Drop the lines after `step` (work that is about to be redone) and continue from there."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        curve = [json.loads(line) for line in kept if "event" not in json.loads(line)]
        self.last = curve[-1] if curve else {}
        self.prev_tokens, self.prev_time = self.last.get("tokens", 0), self.last.get("time_s", 0.0)

    def rewind(self, step: int, **event) -> None:
        """After a rollback to `step`: forget the lines past it and record why (an `event` line)."""
        if not self.master:
            return
        self.file.close()
        self._truncate(step)
        self.file = open(self.path, "a")
        self.file.write(json.dumps({"step": step, **event}) + "\n")
        self.file.flush()
        print(f"rolled back to step {step}: {event}", flush=True)

    def write(self, step: int, **fields) -> None:
        tokens = step * self.tokens_per_step
        record = {"step": step, "tokens": tokens, "flops": tokens * self.flops_per_token, **fields}
        dt, dtok = record["time_s"] - self.prev_time, tokens - self.prev_tokens
        if dt > 0 and dtok > 0:
            record["tokens_per_s"] = dtok / dt
            if self.peak:  # model FLOPs utilisation: achieved / (peak x devices)
                record["mfu"] = record["tokens_per_s"] * self.flops_per_token / (self.peak * self.world_size)
        self.prev_tokens, self.prev_time, self.last = tokens, record["time_s"], record
        if not self.master:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(record, step=step)
        print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                       if k not in ("tokens", "flops")), flush=True)

    def close(self) -> None:
        if self.master:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()
