"""AdamW with weight-decay groups, and the learning-rate schedules (warm-up, then cosine or WSD)."""
from __future__ import annotations

import inspect
import math

import torch

from config import ConfigError, OptimConfig
from models.layers import component_params


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """Decay matrices (linears, convs, embeddings' tied head) but not biases and norm gains: decaying
    a gain towards 0 fights the normalisation it belongs to (as in GPT-2 / nanoGPT practice). The parts
    named in optim.lr_mult (model.components()' names without the layer: route, cnn, attn, ...) get their
    own groups whose learning rate is the schedule's times the multiplier (set_lr)."""
    mult = part_multipliers(model, cfg.lr_mult)
    keyed: dict[tuple[float, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            keyed.setdefault((mult.get(id(p), 1.0), p.dim() >= 2), []).append(p)
    groups = [{"params": params, "weight_decay": cfg.weight_decay if matrix else 0.0, "lr_mult": m}
              for (m, matrix), params in sorted(keyed.items(), key=lambda kv: (kv[0][0] != 1.0, not kv[0][1]))]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def part_multipliers(model: torch.nn.Module, lr_mult: dict[str, float]) -> dict[int, float]:
    """{id(parameter): multiplier} for the parameters of every component part named in lr_mult."""
    if not lr_mult:
        return {}
    parts: dict[str, list] = {}
    for name, params in component_params(model.components()).items():  # each parameter in one component
        parts.setdefault(name.split(".")[-1], []).extend(params)
    unknown = sorted(set(lr_mult) - set(parts))
    if unknown:
        raise ConfigError(f"optim.lr_mult names {unknown[0]!r}, which this model does not have; its parts: "
                          f"{', '.join(sorted(parts))}")
    return {id(p): float(m) for part, m in lr_mult.items() for p in parts[part]}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate for this step, times each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def lr_at(step: int, cfg: OptimConfig, decay_progress: float) -> float:
    """Linear warm-up over the first warmup_iters steps, then the decay from cfg.lr to cfg.min_lr as
    decay_progress goes from 0 to 1 (min_lr after that): a cosine, or for wsd a straight line (its
    constant phase is decay_progress <= 0, which engine/budget.py works out)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    progress = min(max(decay_progress, 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr + shape * (cfg.lr - cfg.min_lr)
