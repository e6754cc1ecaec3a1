"""How long a run trains, how far along it is, and when it evaluates.

A budget is steps (train.max_iters), tokens, training FLOPs or training seconds. Tokens and FLOPs
convert to a whole number of steps up front (the first step that reaches the budget is the last);
seconds cannot, so progress is measured on the clock. Either way the learning-rate schedule ends
at the budget and evaluations fall at the same fractions of it for every model, so the curves of
models of different speed line up. Under the wsd schedule the decay takes the last decay_frac of the
budget; until `decay_start` a run is step for step the run of any longer budget.
"""
from __future__ import annotations

import math

from config import ConfigError, OptimConfig, TrainConfig
from engine.optim import lr_at


class Budget:
    def __init__(self, train: TrainConfig, optim: OptimConfig, tokens_per_step: int, flops_per_token: float):
        self.train, self.optim = train, optim
        self.time_limit = train.max_time_s if train.max_time_s > 0 else None
        if train.max_tokens > 0:
            self.total_steps = math.ceil(train.max_tokens / tokens_per_step)
        elif train.max_flops > 0:
            self.total_steps = math.ceil(train.max_flops / (tokens_per_step * flops_per_token))
        else:
            self.total_steps = None if self.time_limit else train.max_iters
        peak_until = self.total_steps if self.decay_start is None else self.decay_start
        if peak_until is not None and peak_until <= optim.warmup_iters:
            raise ConfigError(f"the budget is {self.total_steps} steps of {tokens_per_step} tokens: the warm-up "
                              f"(optim.warmup_iters={optim.warmup_iters}) would not end before the decay; raise "
                              f"the budget or lower the warm-up")

    def fraction(self, step: int, time_s: float) -> float:
        """Share of the budget used so far (1.0 or more: done)."""
        return time_s / self.time_limit if self.time_limit else step / self.total_steps

    def done(self, step: int, time_s: float) -> bool:
        return self.fraction(step, time_s) >= 1.0

    @property
    def decay_start(self) -> int | None:
        """wsd: the first step of the decay (the steps before it are shared with longer budgets)."""
        if self.total_steps is None or self.optim.schedule != "wsd":
            return None
        return self.total_steps - max(1, round(self.optim.decay_frac * self.total_steps))

    def lr(self, step: int, time_s: float) -> float:
        if self.optim.schedule == "wsd":
            if self.time_limit:  # clock budget: decay over the last decay_frac of the time
                start = 1.0 - self.optim.decay_frac
                return lr_at(step, self.optim, (self.fraction(step, time_s) - start) / self.optim.decay_frac)
            return lr_at(step, self.optim, (step - self.decay_start) / (self.total_steps - self.decay_start))
        if self.time_limit:  # clock budget: the cosine follows the share of time used
            return lr_at(step, self.optim, self.fraction(step, time_s))
        decay_end = self.optim.lr_decay_iters or self.total_steps
        warmup = self.optim.warmup_iters
        return lr_at(step, self.optim, (step - warmup) / max(1, decay_end - warmup))

    def eval_due(self, step: int, time_s: float, prev_fraction: float) -> bool:
        """Evaluate after this step? Always at the end; else at n_evals even fractions of the
        budget when set, else every eval_interval steps."""
        if self.done(step, time_s):
            return True
        if self.train.n_evals > 0:
            n = self.train.n_evals
            return math.floor(self.fraction(step, time_s) * n) > math.floor(prev_fraction * n)
        return bool(self.train.eval_interval) and step % self.train.eval_interval == 0
