"""The statistics of a study: paired bootstrap intervals, evaluation noise, and power-law compute fits.

Paired differences. Every run of every arm is scored on the same validation windows in the same order
(engine/evaluation.py), so an arm is compared with the baseline cell by cell: diffs[s, w] = arm loss
minus baseline loss for seed s and window w, shape (S, W). Two sources of noise sit in that table: which
seeds were trained (init, data order) and which windows were scored. Seeds and windows are crossed
(every seed is scored on every window), so the bootstrap resamples both factors at once: S seeds and
W windows with replacement, the drawn windows the same for every drawn seed. A window that is hard for
every seed then counts with its full weight, as it would on new text.

Compute multipliers. A loss-vs-compute curve is fitted as L = a * C^(-b) (a line in log-log space, as
in Kaplan et al. 2020). The baseline's fit answers "how much compute would the baseline need to reach
this loss", so an arm's loss at its compute becomes a compute ratio, the study's headline number.
"""
from __future__ import annotations

import numpy as np


def bootstrap_replicates(diffs: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of crossed bootstrap resamples of diffs (S, W).

    One replicate draws S seeds and W windows with replacement and averages the S*W cells they cross.
    The draws are made in two calls, so a loop can reproduce them: first all seeds
    rng.integers(0, S, (n_boot, S)), then all windows rng.integers(0, W, (n_boot, W)).
    """
    S, W = diffs.shape
    seeds = rng.integers(0, S, size=(n_boot, S))            # (n_boot, S)
    windows = rng.integers(0, W, size=(n_boot, W))          # (n_boot, W)
    cells = diffs[seeds[:, :, None], windows[:, None, :]]   # (n_boot, S, W)
    return cells.mean(axis=(1, 2))                          # (n_boot,)


def bootstrap_mean_ci(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the paired differences diffs (S seeds, W windows) and its percentile
    bootstrap interval at `level`, resampling seeds and windows (crossed, see bootstrap_replicates).

    With S == 1 the seed draw is always that one seed, so the interval reflects the window noise only:
    it says nothing about how another training seed would have turned out. With few seeds a percentile
    interval runs narrow of its nominal level (about 0.89 instead of 0.95 at S = 8, less at S = 3).
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"diffs must be a non-empty (seeds, windows) array, got shape {diffs.shape}")
    if not np.isfinite(diffs).all():
        raise ValueError("diffs contains nan or inf; drop the runs or windows that lack a finite loss first")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    reps = bootstrap_replicates(diffs, n_boot, np.random.default_rng(seed))  # (n_boot,)
    tail = (1 - level) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail])
    return float(diffs.mean()), float(lo), float(hi)


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of one run's per-window losses (W,): its evaluation noise alone
    (sample standard deviation with ddof=1, over sqrt(W))."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"a standard error needs a 1-D array of at least 2 values, got shape {values.shape}")
    return float(values.std(ddof=1) / np.sqrt(len(values)))


def fit_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of y = a * x^(-b), least squares on log y against log x (errors are relative, not absolute)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        raise ValueError("a power-law fit needs finite, positive x and y (it is a line in log-log space)")
    if np.unique(x).size < 2:
        raise ValueError("a power-law fit needs at least 2 distinct x values")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(np.exp(intercept)), float(-slope)


def power_law(x: np.ndarray | float, a: float, b: float) -> np.ndarray | float:
    """y = a * x^(-b)."""
    return a * np.power(x, -b)


def power_law_inverse(y: np.ndarray | float, a: float, b: float) -> np.ndarray | float:
    """The x at which a * x^(-b) equals y: x = (a / y)^(1/b)."""
    if b == 0:
        raise ValueError("a flat power law (b = 0) reaches one value only; it has no inverse")
    return np.power(a / np.asarray(y, dtype=np.float64), 1.0 / b)


def compute_multiplier(x_arm: float, y_arm: float, base_fit: tuple[float, float]) -> float:
    """How many times the arm's compute x_arm the baseline needs to reach the arm's loss y_arm, by the
    baseline's fitted power law base_fit = (a, b): power_law_inverse(y_arm, a, b) / x_arm.

    Sign convention: > 1, the arm is more compute-efficient (the baseline would need more compute for
    the same loss); < 1, less efficient (0.25: the baseline gets there with a quarter of the compute).
    When y_arm lies outside the baseline's measured losses the value is an extrapolation of the fit;
    it is still returned; mark it with `within(y_arm, baseline_losses)`.
    """
    if x_arm <= 0 or y_arm <= 0:
        raise ValueError(f"compute and loss must be positive, got x_arm={x_arm}, y_arm={y_arm}")
    return float(power_law_inverse(y_arm, *base_fit) / x_arm)


def within(y: float, ys: np.ndarray) -> bool:
    """Whether y lies in [min(ys), max(ys)], i.e. a multiplier at loss y interpolates the fit."""
    ys = np.asarray(ys, dtype=np.float64)
    return bool(ys.size and ys.min() <= y <= ys.max())
