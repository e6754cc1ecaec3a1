"""What a study's runs produced: finished runs read back, each arm's lr chosen per budget, and each arm at
each budget summarised over its reported seeds.

Only finished runs count (train.py writes result.json last). An arm with an lr grid is reported, at
each budget, at the lr with the lowest mean final validation loss over its tuning seeds (the reported
seeds when the study has none, which the report marks as optimistic).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIVERGED = "diverged.json"  # written by study.py for a grid run whose loss became non-finite


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

    @property
    def window_losses(self) -> np.ndarray | None:
        """The final evaluation's loss per validation window (the same windows in every run), or None."""
        values = self.result.get("val_window_losses")
        return np.asarray(values, dtype=np.float64) if values else None


@dataclass
class GridRow:
    lr: float
    loss: float | None     # mean final val loss over the tuning seeds that finished
    finished: int
    diverged: int


@dataclass
class Cell:
    """One arm at one budget: its reported runs at the chosen lr, and how that lr was chosen."""
    arm: str
    budget: float
    lr: float | None                       # None: nothing finished
    runs: list[RunResult]                  # finished reported runs at that lr, by seed
    grid: list[GridRow] = field(default_factory=list)  # the tuning table the lr came from (empty without a grid)
    at_edge: bool = False                  # the chosen lr is the smallest or the largest of the grid
    tuned_at: float | None = None          # the budget whose grid chose the lr (a smaller one: tune_budget)

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
        """Final validation accuracy per seed; [] unless every run has one."""
        values = [r.result.get("val_acc") for r in self.runs]
        return values if values and None not in values else []

    def windows(self) -> np.ndarray | None:
        """(seeds, windows) final validation losses, or None if a run lacks them."""
        rows = [r.window_losses for r in self.runs]
        return np.stack(rows) if rows and all(w is not None for w in rows) else None

    def by_position(self) -> np.ndarray | None:
        """Mean over seeds of the loss at each position of the window, or None."""
        rows = [r.result.get("val_loss_by_position") for r in self.runs]
        return np.mean(rows, axis=0) if rows and all(rows) else None


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


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


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


def lr_for(chosen: dict[str, dict[float, float]], arm: str, budget: float) -> tuple[float | None, float | None]:
    """(lr, the budget it was tuned at): the choice at `budget`, or, for a budget larger than any tuned one,
    the choice at the largest tuned budget below it (StudySpec.tune_budget)."""
    tuned = sorted(b for b in chosen.get(arm, {}) if b <= budget)
    return (chosen[arm][tuned[-1]], tuned[-1]) if tuned else (None, None)


def cells(arms: list[str], budgets: list[float], tuning: list, reported: list,
          seeds: list[int]) -> dict[tuple[str, float], Cell]:
    """Every (arm, budget): the reported seeds' runs at the chosen lr (among the reported runs, or the
    tuning runs when the lr is chosen on the reported seeds themselves) and the tuning table."""
    chosen = choose_lrs(tuning)
    tuned = load(tuning)
    done = [r for r in load(reported) + tuned if r.seed in seeds]
    out = {}
    for arm in arms:
        for budget in budgets:
            lr, tuned_at = lr_for(chosen, arm, budget)
            grid = grid_rows(tuning, tuned, arm, tuned_at) if tuned_at is not None else []
            if not grid:  # no grid: the arm's one lr
                lr = next((r.lr for r in reported if (r.arm, r.budget) == (arm, budget)), None)
            runs = sorted((r for r in done if (r.arm, r.budget, r.lr) == (arm, budget, lr)), key=lambda r: r.seed)
            edge = bool(grid) and lr is not None and lr in (grid[0].lr, grid[-1].lr)
            out[(arm, budget)] = Cell(arm, budget, lr, runs, grid, edge, tuned_at if grid else None)
    return out


def curve(cell: Cell, x_key: str, y_key: str = "val_loss") -> tuple[np.ndarray, ...] | None:
    """(x mean, y mean, y min, y max) over seeds, point by point (None if some evaluation lacks y_key).
    With n_evals the k-th evaluation of every seed falls at the same fraction of the budget, so points
    are matched by index."""
    if not cell.runs or any(y_key not in e for r in cell.runs for e in r.evals):
        return None
    n = min(len(r.evals) for r in cell.runs)
    xs = np.array([[r.evals[i][x_key] for i in range(n)] for r in cell.runs], dtype=np.float64)  # (seeds, n)
    ys = np.array([[r.evals[i][y_key] for i in range(n)] for r in cell.runs], dtype=np.float64)
    return xs.mean(0), ys.mean(0), ys.min(0), ys.max(0)
