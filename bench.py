"""Time training steps of any config: python bench.py CONFIG.toml [--section.key=value ...] [--steps N] [--warmup N]

Runs the trainer's own train_step on the configured batch (prepared data if present, else random
ids: throughput does not depend on the text) and prints one JSON line last: ms/iter (median),
tokens/s, training FLOPs per token, achieved FLOP/s, MFU (GPU: datasheet peak; CPU: this machine's
measured matmul rate) and peak memory (GPU: allocator peak; CPU: the process's peak RSS).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from config import Config, ConfigError, load_config, resolve_vocab
from data import DataError, open_dataset
from engine import runtime
from engine.optim import make_optimizer
from engine.perf import cpu_matmul_flops, peak_flops, peak_memory_bytes
from models import build_model
from tools.timing import random_batches, rates, reset_peak_memory, time_steps


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
    return cfg, random_batches(cfg.train.batch_size, cfg.model.block_size, cfg.model.vocab_size, n_micro, seed=step)


def bench(cfg: Config, steps: int = 10, warmup: int = 3) -> dict:
    rt = runtime.setup(cfg.train.device, cfg.train.dtype)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    cfg, batches = batches_for(cfg, cfg.train.grad_accum, 0)
    torch.manual_seed(cfg.train.seed)
    raw = build_model(cfg.model).to(rt.device)
    model = torch.compile(raw) if cfg.train.compile else raw
    optimizer = make_optimizer(raw, cfg.optim, rt.device.type)
    reset_peak_memory(rt.device)
    times = time_steps(model, optimizer, batches, rt, cfg.optim.grad_clip, steps, warmup)
    ms = statistics.median(times) * 1e3
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    flops_per_token = raw.flops_per_token()
    peak = peak_flops(rt.device)
    rate = rates(ms, tokens, flops_per_token, peak)
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
