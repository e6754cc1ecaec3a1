"""What a study's runs produced: finished runs read back, and each arm's lr chosen per budget.

Only finished runs count (train.py writes result.json last). An arm with an lr grid is reported, at
each budget, at the lr with the lowest mean final validation loss over its tuning seeds (the reported
seeds when the study has none, which the report marks as optimistic).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIVERGED = "diverged.json"  # written by launch/runner.py for a grid run whose loss became non-finite


@dataclass
class RunResult:
    arm: str
    lr: float
    seed: int
    budget: float
    path: Path
    result: dict           # result.json: the final figures
    run: dict              # run.json: environment, parameter counts
    config: dict           # config.json: the resolved config
    evals: list[dict]      # the metrics.jsonl lines that carry val_loss, in order


@dataclass
class GridRow:
    lr: float
    loss: float | None     # mean final val loss over the tuning seeds that finished
    finished: int
    diverged: int


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run(arm: str, lr: float, seed: int, budget: float, path: Path) -> RunResult | None:
    """The run in `path` if it finished, else None."""
    if not (path / "result.json").is_file():
        return None
    evals = [m for m in read_jsonl(path / "metrics.jsonl") if "val_loss" in m]
    return RunResult(arm, lr, seed, budget, path, json.loads((path / "result.json").read_text()),
                     json.loads((path / "run.json").read_text()), json.loads((path / "config.json").read_text()),
                     evals)


def load(runs: list) -> list[RunResult]:
    """The finished ones of planned runs (objects with arm, lr, seed, budget, out_dir)."""
    return [r for run in runs if (r := load_run(run.arm, run.lr, run.seed, run.budget, run.out_dir)) is not None]


def grid_rows(tuning: list, finished: list[RunResult], arm: str, budget: float) -> list[GridRow]:
    """The tuning table of one arm at one budget: per lr, the mean over tuning seeds that finished."""
    rows = []
    for lr in sorted({r.lr for r in tuning if r.arm == arm and r.budget == budget}):
        planned = [r for r in tuning if (r.arm, r.budget, r.lr) == (arm, budget, lr)]
        done = [f.result["val_loss"] for f in finished if (f.arm, f.budget, f.lr) == (arm, budget, lr)]
        rows.append(GridRow(lr, float(np.mean(done)) if done else None, len(done), sum(r.diverged for r in planned)))
    return rows


def choose_lrs(tuning: list) -> dict[str, dict[float, float]]:
    """{arm: {budget: lr}}: per arm and budget, the lr with the lowest mean final val loss among those
    whose tuning seeds all finished (else among any that finished); ties go to the smaller lr."""
    finished = load(tuning)
    chosen: dict[str, dict[float, float]] = {}
    for arm, budget in sorted({(r.arm, r.budget) for r in tuning}):
        rows = grid_rows(tuning, finished, arm, budget)
        n_seeds = len({r.seed for r in tuning if r.arm == arm})
        complete = [g for g in rows if g.finished == n_seeds] or [g for g in rows if g.finished]
        if complete:
            chosen.setdefault(arm, {})[budget] = min(complete, key=lambda g: (g.loss, g.lr)).lr
    return chosen
