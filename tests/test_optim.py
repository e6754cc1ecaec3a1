import math

import torch

from config import OptimConfig
from engine.optim import lr_at, make_optimizer
from models import build_model, tiny_config


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert lr_at(0, cfg, 1000) == 1.0 / 11 and lr_at(9, cfg, 1000) == 10 / 11
    for step in (10, 35, 60, 85, 109):  # plain cosine formula as the reference
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert abs(lr_at(step, cfg, 1000) - expected) < 1e-12
    assert lr_at(60, cfg, 1000) == 0.55           # half-way: the midpoint of lr and min_lr
    assert lr_at(110, cfg, 1000) == lr_at(5000, cfg, 1000) == 0.1


def test_schedule_without_decay_iters_ends_at_the_last_step():
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_iters=0, lr_decay_iters=0)
    assert lr_at(0, cfg, 100) == 1.0 and lr_at(100, cfg, 100) == 0.0
    assert abs(lr_at(50, cfg, 100) - 0.5) < 1e-12


def test_weight_decay_applies_to_matrices_only():
    model = build_model(tiny_config("gpt"))
    opt = make_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # every parameter once (tied head included once)
