"""Time training steps of any config: python bench.py CONFIG.toml [--section.key=value ...] [--steps N] [--warmup N]
                                     python bench.py CONFIG.toml --each_mixer [...]  (one line per token mixer)

Runs the trainer's own train_step on the configured batch (prepared data if present, else random
ids: throughput does not depend on the text) and prints one JSON line last: ms/iter (median),
tokens/s, training FLOPs per token, achieved FLOP/s, MFU (GPU: datasheet peak; CPU: this machine's
measured matmul rate) and peak memory (GPU: allocator peak; CPU: the process's peak RSS).
--each_mixer times the config's shape once per registered token mixer (model.name = "lm", the mixer and
an MLP in every layer): the mixers' cost side by side at one shape.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from config import Config, ConfigError, load_config
from data import DataError
from engine import runtime
from engine.optim import make_optimizer
from engine.perf import cpu_matmul_flops, peak_flops, peak_memory_bytes
from engine.setup import Setup, set_up
from tools.timing import random_batches, rates, reset_peak_memory, time_steps


def step_batches(setup: Setup) -> list:
    """One optimizer step's micro-batches: from the prepared data when there is some, else random ids
    (throughput does not depend on the text)."""
    c = setup.cfg
    if setup.data is None:
        return random_batches(c.train.batch_size, c.model.block_size, c.model.vocab_size, c.train.grad_accum)
    return [setup.data.batch("train", c.train.batch_size, c.model.block_size, seed=0, step=0, micro=i)
            for i in range(c.train.grad_accum)]


def bench(cfg: Config, steps: int = 10, warmup: int = 3) -> dict:
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    setup = set_up(cfg, data="if_prepared")
    cfg, raw, batches = setup.cfg, setup.model.to(rt.device), step_batches(setup)
    model = torch.compile(raw) if cfg.train.compile else raw
    optimizer = make_optimizer(raw, cfg.optim, rt.device.type)
    reset_peak_memory(rt.device)
    times = time_steps(model, optimizer, batches, rt, cfg.optim.grad_clip, steps, warmup)
    ms = statistics.median(times) * 1e3
    flops_per_token = raw.flops_per_token()
    peak = peak_flops(rt.device)
    rate = rates(ms, setup.tokens_per_step, flops_per_token, peak)
    memory = peak_memory_bytes(rt.device)
    return {
        "model": cfg.model.name, "device": str(rt.device), "dtype": str(rt.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
        "block_size": cfg.model.block_size, "parameters": sum(p.numel() for p in raw.parameters()),
        "steps": steps, "ms_per_iter": round(ms, 3), "ms_per_iter_min": round(min(times) * 1e3, 3),
        "tokens_per_s": round(rate["tokens_per_s"], 1), "flops_per_token": flops_per_token,
        "achieved_flops": rate["achieved_flops"], "peak_flops": peak, "mfu": rate["mfu"],
        "peak_memory_bytes": memory, "cpu_matmul_flops": cpu_matmul_flops() if rt.device.type == "cpu" else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Time training steps of a config; prints one JSON line last.",
                                     allow_abbrev=False)  # --s... must stay free for --section.key overrides
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, thread pools)")
    parser.add_argument("--each_mixer", action="store_true", help="one line per registered token mixer at this shape")
    args, overrides = parser.parse_known_args(argv)
    from models import MIXERS
    variants = ({m: ['--model.name="lm"', f'--model.mixers=["{m}"]', "--model.mlp=[true]"] for m in MIXERS}
                if args.each_mixer else {None: []})
    try:
        for mixer, extra in variants.items():
            result = bench(load_config(args.config, overrides + extra), steps=args.steps, warmup=args.warmup)
            print(json.dumps({"config": str(Path(args.config)), **({"mixer": mixer} if mixer else {}), **result}),
                  flush=True)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
