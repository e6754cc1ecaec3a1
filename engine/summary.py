"""train.py --summary: parameters per component, FLOPs per token, and training memory, then exit."""
from __future__ import annotations

from config import Config
from engine.perf import activation_bytes
from engine.setup import set_up

GiB = 2 ** 30


def summarize(cfg: Config) -> dict:
    setup = set_up(cfg, data="vocab")  # the vocabulary sized from the data, exactly as the trainer does
    cfg, model = setup.cfg, setup.model
    n = sum(p.numel() for p in model.parameters())
    act = activation_bytes(model, cfg.model.block_size)
    return {
        "parameters": n, "param_counts": model.param_counts(), "flops_per_token": model.flops_per_token(),
        # fp32 weights and gradients (4 B each) and AdamW's two moments (8 B) per parameter
        "weights_bytes": 4 * n, "grads_bytes": 4 * n, "optimizer_bytes": 8 * n,
        "activation_bytes_per_sequence_fp32": act,
        "micro_batch_activation_bytes": act * cfg.train.batch_size,
    }


def print_summary(cfg: Config) -> None:
    s = summarize(cfg)
    print(f"model {cfg.model.name}: {s['parameters'] / 1e6:.2f}M parameters")
    for part, count in s["param_counts"].items():
        print(f"  {part:<14} {count / 1e6:10.3f}M")
    print(f"training FLOPs per token (T={cfg.model.block_size}): {s['flops_per_token'] / 1e9:.3f} GFLOP")
    print("training memory (fp32, AdamW):")
    for key in ("weights", "grads", "optimizer"):
        print(f"  {key:<14} {s[key + '_bytes'] / GiB:10.3f} GiB")
    print(f"  activations  {s['activation_bytes_per_sequence_fp32'] / GiB:10.3f} GiB per sequence "
          f"({s['micro_batch_activation_bytes'] / GiB:.2f} GiB per micro-batch of {cfg.train.batch_size}; "
          f"about half under bf16 autocast)")
