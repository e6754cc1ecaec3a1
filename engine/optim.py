"""AdamW with weight-decay groups, and the learning-rate schedules (warm-up, then cosine or WSD)."""
from __future__ import annotations

import inspect
import math

import torch

from config import OptimConfig


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """Decay matrices (linears, convs, embeddings' tied head) but not biases and norm gains: decaying
    a gain towards 0 fights the normalisation it belongs to (as in GPT-2 / nanoGPT practice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def lr_at(step: int, cfg: OptimConfig, decay_progress: float) -> float:
    """Linear warm-up over the first warmup_iters steps, then the decay from cfg.lr to cfg.min_lr as
    decay_progress goes from 0 to 1 (min_lr after that): a cosine, or for wsd a straight line (its
    constant phase is decay_progress <= 0, which engine/budget.py works out)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    progress = min(max(decay_progress, 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr + shape * (cfg.lr - cfg.min_lr)
