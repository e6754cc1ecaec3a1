import math

import pytest


from config import ConfigError, OptimConfig, TrainConfig
from engine.budget import Budget
from engine.optim import make_optimizer
from models import build_model, tiny_config


def schedule(step: int, cfg: OptimConfig, total_steps: int, time_s: float = 0.0) -> float:
    train = TrainConfig(max_iters=total_steps)
    return Budget(train, cfg, tokens_per_step=1, flops_per_token=1.0).lr(step, time_s)


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    assert schedule(0, cfg, 1000) == 1.0 / 11 and schedule(9, cfg, 1000) == 10 / 11
    for step in (10, 35, 60, 85, 109):  # plain cosine formula as the reference
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))
        assert abs(schedule(step, cfg, 1000) - expected) < 1e-12
    assert schedule(60, cfg, 1000) == 0.55           # half-way: the midpoint of lr and min_lr
    assert schedule(110, cfg, 1000) == schedule(5000, cfg, 1000) == 0.1


def test_schedule_without_decay_iters_ends_at_the_last_step():
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_iters=0, lr_decay_iters=0)
    assert schedule(0, cfg, 100) == 1.0 and schedule(100, cfg, 100) == 0.0
    assert abs(schedule(50, cfg, 100) - 0.5) < 1e-12


def test_token_and_flop_budgets_become_whole_steps_and_the_schedule_ends_there():
    optim = OptimConfig(lr=1.0, min_lr=0.0, warmup_iters=0)
    by_tokens = Budget(TrainConfig(max_tokens=1000), optim, tokens_per_step=300, flops_per_token=2.0)
    assert by_tokens.total_steps == 4                          # 4 x 300 >= 1000 > 3 x 300
    by_flops = Budget(TrainConfig(max_flops=6000.0), optim, tokens_per_step=300, flops_per_token=2.0)
    assert by_flops.total_steps == 10
    assert by_flops.lr(10, 0.0) == 0.0 and not by_flops.done(9, 0.0) and by_flops.done(10, 0.0)


def test_clock_budget_decays_with_the_share_of_time_used():
    budget = Budget(TrainConfig(max_time_s=100.0), OptimConfig(lr=1.0, min_lr=0.0, warmup_iters=0), 1, 1.0)
    assert budget.total_steps is None
    assert abs(budget.lr(7, 50.0) - 0.5) < 1e-12 and budget.lr(9, 100.0) == 0.0
    assert budget.done(3, 100.0) and not budget.done(10_000, 99.9)


def test_evaluations_fall_on_even_fractions_of_the_budget():
    budget = Budget(TrainConfig(max_iters=100, n_evals=4), OptimConfig(warmup_iters=10), 1, 1.0)
    due = [s for s in range(1, 101) if budget.eval_due(s, 0.0, budget.fraction(s - 1, 0.0))]
    assert due == [25, 50, 75, 100]
    clock = Budget(TrainConfig(max_time_s=10.0, n_evals=2), OptimConfig(), 1, 1.0)
    times = [0.0, 3.0, 4.9, 5.2, 7.0, 10.1]
    due = [t for prev, t in zip(times, times[1:]) if clock.eval_due(1, t, clock.fraction(1, prev))]
    assert due == [5.2, 10.1]


def test_weight_decay_applies_to_matrices_only():
    model = build_model(tiny_config("gpt"))
    opt = make_optimizer(model, OptimConfig(weight_decay=0.1), "cpu")
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())  # every parameter once (tied head included once)


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10, schedule="wsd", decay_frac=0.2)
    budget = Budget(TrainConfig(max_iters=100), cfg, 1, 1.0)
    assert budget.decay_start == 80
    assert schedule(9, cfg, 100) == 10 / 11 and all(schedule(s, cfg, 100) == 1.0 for s in (10, 50, 80))
    for step in (85, 90, 99):
        assert schedule(step, cfg, 100) == pytest.approx(1.0 - 0.9 * (step - 80) / 20)
    assert schedule(100, cfg, 100) == pytest.approx(0.1)
    # a shorter budget decays earlier but agrees with the longer one until its own decay starts
    assert all(schedule(s, cfg, 40) == schedule(s, cfg, 100) for s in range(0, 32))
    clock = Budget(TrainConfig(max_time_s=100.0), cfg, 1, 1.0)
    assert clock.lr(50, 50.0) == 1.0 and clock.lr(50, 90.0) == pytest.approx(0.55)


def test_lr_multipliers_give_the_named_parts_their_own_groups_and_rates():
    """optim.lr_mult = {attn = 10}: every layer's attention trains at 10x the schedule, the rest at 1x; the
    weight-decay split holds inside each group; an unknown part is refused, naming the model's parts."""
    from engine.optim import set_lr
    model = build_model(tiny_config("gpt"))
    opt = make_optimizer(model, OptimConfig(weight_decay=0.1, lr_mult={"attn": 10.0}), "cpu")
    set_lr(opt, 1e-3)
    attn = {id(p) for b in model.h for m in (b.ln_1, b.mixer) for p in m.parameters()}  # a part holds its norm
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= attn or not ids & attn  # a group is all attention or none of it
        assert group["lr"] == (1e-2 if ids <= attn else 1e-3)
        assert all((p.dim() >= 2) == (group["weight_decay"] > 0) for p in group["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="lr_mult names 'route', which this model does not have; its parts: attn"):
        make_optimizer(model, OptimConfig(lr_mult={"route": 10.0}), "cpu")
