"""What a study's runs produced: finished runs read back, summarised per arm, and tested.

Only finished runs count (train.py writes result.json last). An arm with an lr grid is summarised at
the lr with the lowest mean final validation loss over its seeds; the report says so, and that the
choice uses the same seeds it then reports (a mild optimistic bias a held-out seed set would remove).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIVERGED = "diverged.json"  # written by study.py for a grid run whose loss became non-finite


@dataclass
class RunResult:
    arm: str
    lr: float
    seed: int
    path: Path
    result: dict           # result.json: the final figures
    run: dict              # run.json: environment, parameter counts
    config: dict           # config.json: the resolved config
    evals: list[dict]      # the metrics.jsonl lines that carry val_loss, in order


@dataclass
class ArmSummary:
    name: str
    lr: float | None                       # the lr whose runs are reported (None: nothing finished)
    runs: list[RunResult]                  # finished runs at that lr, by seed
    grid: list[tuple[float, float | None, int, int]] = field(default_factory=list)  # (lr, mean val, n done, n diverged)

    @property
    def finals(self) -> list[float]:
        return [r.result["val_loss"] for r in self.runs]

    def mean(self, key: str) -> float | None:
        values = [r.result.get(key) for r in self.runs]
        return float(np.mean(values)) if values and all(v is not None for v in values) else None

    def first(self, key: str):
        return self.runs[0].result.get(key) if self.runs else None

    @property
    def accs(self) -> list[float]:
        """Final validation accuracy per seed; [] unless every run has one (a run from before accuracy
        was measured has none, and a mean over some seeds only would mislead)."""
        values = [final_acc(r) for r in self.runs]
        return values if values and None not in values else []


def final_acc(run: RunResult) -> float | None:
    """result.json's val_acc, else the last evaluation's (runs finished before train.py copied it into
    result.json; their last evaluation line is the final one)."""
    value = run.result.get("val_acc")
    return value if value is not None or not run.evals else run.evals[-1].get("val_acc")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run(arm: str, lr: float, seed: int, path: Path) -> RunResult | None:
    """The run in `path` if it finished, else None."""
    if not (path / "result.json").is_file():
        return None
    evals = [m for m in read_jsonl(path / "metrics.jsonl") if "val_loss" in m]
    return RunResult(arm, lr, seed, path, json.loads((path / "result.json").read_text()),
                     json.loads((path / "run.json").read_text()), json.loads((path / "config.json").read_text()),
                     evals)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def welch(a: list[float], b: list[float]) -> dict | None:
    """Welch's t-test (unequal variances) of two samples: {t, df, p} (two-sided), None with < 2 values in
    either. Zero variance in both gives p = nan (scipy's answer): the test has nothing to say."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats
    res = stats.ttest_ind(a, b, equal_var=False)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.nan
    return {"t": float(res.statistic), "df": float(df), "p": float(res.pvalue)}


def summarize_arm(name: str, by_lr: dict[float, list[tuple[int, Path]]]) -> ArmSummary:
    """Read one arm's runs ({lr: [(seed, path)]}) and pick its lr: lowest mean final val loss among the
    lrs whose seeds all finished (else among any with a finished run); ties go to the smaller lr."""
    finished: dict[float, list[RunResult]] = {}
    grid = []
    for lr, seeds in sorted(by_lr.items()):
        runs = [r for seed, path in seeds if (r := load_run(name, lr, seed, path)) is not None]
        diverged = sum((path / DIVERGED).is_file() for _, path in seeds)
        finished[lr] = runs
        grid.append((lr, mean_std([r.result["val_loss"] for r in runs])[0] if runs else None, len(runs), diverged))
    complete = [g for g in grid if g[2] == len(by_lr[g[0]])] or [g for g in grid if g[2]]
    if not complete:
        return ArmSummary(name, None, [], grid)
    lr = min(complete, key=lambda g: (g[1], g[0]))[0]
    return ArmSummary(name, lr, sorted(finished[lr], key=lambda r: r.seed), grid if len(grid) > 1 else [])


def curve(arm: ArmSummary, x_key: str, y_key: str = "val_loss") -> tuple[np.ndarray, ...] | None:
    """(x mean, y mean, y min, y max) over seeds, point by point (None if some evaluation lacks y_key).
    With n_evals the k-th evaluation of every seed falls at the same fraction of the budget, so points
    are matched by index."""
    if not arm.runs or any(y_key not in e for r in arm.runs for e in r.evals):
        return None
    n = min(len(r.evals) for r in arm.runs)
    xs = np.array([[r.evals[i][x_key] for i in range(n)] for r in arm.runs], dtype=np.float64)  # (seeds, n)
    ys = np.array([[r.evals[i][y_key] for i in range(n)] for r in arm.runs], dtype=np.float64)
    return xs.mean(0), ys.mean(0), ys.min(0), ys.max(0)
