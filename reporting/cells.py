"""Each arm at each budget of a study: its reported runs at the chosen learning rate and how that rate
was chosen (a Cell), and its validation curve over seeds; what the summary, the plots and the report
are computed from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from launch.plan import lr_for
from launch.results import GridRow, RunResult, choose_lrs, grid_rows, load


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
        """(seeds, windows) final validation losses (the same windows in every run), or None if a run lacks them."""
        rows = [r.result.get("val_window_losses") for r in self.runs]
        return np.asarray(rows, dtype=np.float64) if rows and all(rows) else None

    def by_position(self) -> np.ndarray | None:
        """Mean over seeds of the loss at each position of the window, or None."""
        rows = [r.result.get("val_loss_by_position") for r in self.runs]
        return np.mean(rows, axis=0) if rows and all(rows) else None


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
