"""Time training steps of any config: python bench.py CONFIG.toml [--section.key=value ...] [--steps N] [--warmup N]

Runs the trainer's own train_step on the configured batch (prepared data if present, else random
ids: throughput does not depend on the text) and prints one JSON line last: ms/iter (median),
tokens/s, training FLOPs per token, achieved FLOP/s, MFU (GPU: datasheet peak; CPU: this machine's
measured matmul rate) and peak memory (GPU: allocator peak; CPU: the process's peak RSS).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from config import Config, ConfigError, load_config, resolve_vocab
from data import DataError, open_dataset
from engine import runtime
from engine.optim import make_optimizer
from engine.perf import cpu_matmul_flops, peak_flops
from engine.trainer import train_step
from models import build_model


def batches_for(cfg: Config, n_micro: int, step: int) -> tuple[Config, list]:
    """(the config with its vocabulary sized, n_micro training batches): from the prepared data when
    there is some, else random ids (throughput does not depend on the text)."""
    try:
        data = open_dataset(cfg.data)
    except DataError:
        data = None
    if data is not None:
        cfg = resolve_vocab(cfg, data.vocab_size)
        return cfg, [data.batch("train", cfg.train.batch_size, cfg.model.block_size, seed=0, step=step, micro=i)
                     for i in range(n_micro)]
    if cfg.model.vocab_size == 0:
        raise ConfigError(f"dataset {cfg.data.dataset!r} is not prepared and model.vocab_size is 0: prepare it "
                          f"(python data/prepare.py {cfg.data.dataset}) or pass --model.vocab_size=N")
    g = torch.Generator().manual_seed(step)
    shape = (cfg.train.batch_size, cfg.model.block_size)
    return cfg, [(torch.randint(0, cfg.model.vocab_size, shape, generator=g),
                  torch.randint(0, cfg.model.vocab_size, shape, generator=g)) for _ in range(n_micro)]


def bench(cfg: Config, steps: int = 10, warmup: int = 3) -> dict:
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    cfg, batches = batches_for(cfg, cfg.train.grad_accum, 0)
    torch.manual_seed(cfg.train.seed)
    raw = build_model(cfg.model).to(rt.device)
    model = torch.compile(raw) if cfg.train.compile else raw
    optimizer = make_optimizer(raw, cfg.optim, rt.device.type)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        train_step(model, optimizer, batches, rt, cfg.optim.grad_clip)  # ends in .item(): synchronised
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    flops_per_token = raw.flops_per_token()
    peak = peak_flops(rt.device)
    achieved = tokens / (ms / 1e3) * flops_per_token
    memory = (torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "model": cfg.model.name, "device": str(rt.device), "dtype": str(rt.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "batch_size": cfg.train.batch_size, "grad_accum": cfg.train.grad_accum,
        "block_size": cfg.model.block_size, "parameters": sum(p.numel() for p in raw.parameters()),
        "steps": steps, "ms_per_iter": round(ms, 3), "ms_per_iter_min": round(min(times) * 1e3, 3),
        "tokens_per_s": round(tokens / (ms / 1e3), 1), "flops_per_token": flops_per_token,
        "achieved_flops": achieved, "peak_flops": peak, "mfu": achieved / peak if peak else None,
        "peak_memory_bytes": memory, "cpu_matmul_flops": cpu_matmul_flops() if rt.device.type == "cpu" else None,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Time training steps of a config; prints one JSON line last.",
                                     allow_abbrev=False)  # --s... must stay free for --section.key overrides
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, thread pools)")
    args, overrides = parser.parse_known_args(argv)
    try:
        result = bench(load_config(args.config, overrides), steps=args.steps, warmup=args.warmup)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"config": str(Path(args.config)), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
