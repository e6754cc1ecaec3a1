"""The statistics of a study: seed-level intervals, evaluation noise, and compute multipliers.

Intervals are over training seeds. Every run of every arm is scored on the same validation windows in
the same order (engine/evaluation.py), and seed s gives every arm the same data order, so an arm is
compared with another seed by seed: d_s = the mean over the shared windows of (arm loss - other loss).
The 95% interval of the difference is a Student t interval on those S values,
mean(d) +- t_{0.975, S-1} * sd(d, ddof=1) / sqrt(S); an arm's own loss gets the same interval over its
per-seed losses. With one seed there is no interval: one run says nothing about another seed.

Why not a bootstrap (issue 17). The report used to resample seeds and windows (a crossed percentile
bootstrap). With 3 seeds a percentile interval cannot reach past the worst seed: per-seed differences to
the GPT of 0.225, 0.029 and 0.266 can only resample to means within [0.029, 0.266], so it excluded zero,
while the t interval on them, [-0.141, 0.488], includes it; and a rerun of the same commit on another
machine moved one arm's difference from "+0.012 [-0.029, 0.036]" (nothing measurable) to
"+0.034 [0.023, 0.042]" (hurts). The t interval has its nominal coverage at any S (for normal seed
effects) and widens as it should when seeds are few; the verdict still names a direction only with
enough seeds (reporting/verdict.py). The interval is conditional on the scored windows: their noise is
reported beside it as the standard error over windows (eval SE).

Compute multipliers. "How much compute would the baseline need to reach this loss", read two ways from
the baseline's measured (compute, final loss) points: off a power law L = a * C^(-b) fitted to them (a
line in log-log space, as in Kaplan et al. 2020), which extrapolates beyond them, and by piecewise
linear interpolation between them in log-log space, which does not (None outside their losses).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import t as student_t


def seed_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """[lo, hi]: the Student t interval at `level` of the mean of per-seed values (S,),
    mean +- t_{(1 + level) / 2, S - 1} * sd(ddof=1) / sqrt(S); None for one value (no spread to measure)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array of per-seed values, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values contains nan or inf; drop the runs that lack a finite loss first")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if values.size == 1:
        return None
    half = student_t.ppf((1 + level) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return [float(values.mean() - half), float(values.mean() + half)]


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


def power_law_miss(x: np.ndarray, y: np.ndarray, a: float, b: float) -> tuple[float, int]:
    """(largest |a x^-b - y|, its index): how far a law strays from the points it was fitted to. A fit through
    a budget still on the bigram plateau can miss the others by more than the arms differ there."""
    misses = np.abs(power_law(np.asarray(x, dtype=np.float64), a, b) - np.asarray(y, dtype=np.float64))
    return float(misses.max()), int(misses.argmax())


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


def piecewise_inverse(y: float, xs: np.ndarray, ys: np.ndarray) -> float | None:
    """The least x at which the broken line through the points (xs, ys), ordered by x and straight between
    neighbours in log-log space, reaches y; None where y lies outside [min(ys), max(ys)] (no extrapolation)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or not ((xs > 0).all() and (ys > 0).all()):
        raise ValueError(f"xs and ys must be 1-D arrays of one length of positive values, got {xs} and {ys}")
    order = np.argsort(xs)
    log_x, log_y, target = np.log(xs[order]), np.log(ys[order]), math.log(y)
    for i in range(len(xs) - 1):  # the first segment that reaches y: losses need not fall monotonically
        if min(log_y[i], log_y[i + 1]) <= target <= max(log_y[i], log_y[i + 1]):
            if log_y[i] == log_y[i + 1]:
                return float(xs[order][i])
            share = (target - log_y[i]) / (log_y[i + 1] - log_y[i])
            return float(np.exp(log_x[i] + share * (log_x[i + 1] - log_x[i])))
    return None


def piecewise_multiplier(x_arm: float, y_arm: float, base_x: np.ndarray, base_y: np.ndarray) -> float | None:
    """compute_multiplier read off the baseline's measured points (base_x, base_y) by piecewise log-log
    interpolation instead of its power law; None where y_arm lies outside the baseline's measured losses."""
    if x_arm <= 0 or y_arm <= 0:
        raise ValueError(f"compute and loss must be positive, got x_arm={x_arm}, y_arm={y_arm}")
    x = piecewise_inverse(y_arm, base_x, base_y)
    return None if x is None else x / x_arm
