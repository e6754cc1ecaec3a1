"""The study's statistics against plain references: the vectorised bootstrap equals a loop over the same
draws, its interval covers a known mean at about the nominal rate where a window-only scheme does not,
and the power-law fit, its inverse and the compute multiplier recover known curves."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from reporting.stats import (bootstrap_mean_ci, bootstrap_replicates, compute_multiplier, fit_power_law, power_law,
                            power_law_inverse, standard_error, within)


def loop_replicates(diffs: np.ndarray, n_boot: int, seed: int) -> list[float]:
    """Crossed resampling written out: the documented draws (all seeds, then all windows), then for each
    replicate the plain sum over its S drawn seeds crossed with its W drawn windows."""
    S, W = diffs.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, S, size=(n_boot, S))
    windows = rng.integers(0, W, size=(n_boot, W))
    reps = []
    for r in range(n_boot):
        total = 0.0
        for i in range(S):
            for j in range(W):
                total += float(diffs[seeds[r, i], windows[r, j]])
        reps.append(total / (S * W))
    return reps


def nested_ci(diffs: np.ndarray, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """A scheme that treats windows as nested in seeds (drawn afresh for each seed): it averages a window
    effect shared by every seed away."""
    S, W = diffs.shape
    seeds = rng.integers(0, S, size=(n_boot, S))
    windows = rng.integers(0, W, size=(n_boot, S, W))
    reps = diffs[seeds[:, :, None], windows].mean(axis=(1, 2))
    return tuple(np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]))


def window_only_ci(diffs: np.ndarray, n_boot: int, rng: np.random.Generator,
                   level: float = 0.95) -> tuple[float, float]:
    """A wrong scheme: keep the seeds, resample only windows (independently per seed)."""
    S, W = diffs.shape
    windows = rng.integers(0, W, size=(n_boot, S, W))
    reps = diffs[np.arange(S)[None, :, None], windows].mean(axis=(1, 2))
    return tuple(np.quantile(reps, [(1 - level) / 2, (1 + level) / 2]))


def test_bootstrap_equals_loop():
    diffs = np.random.default_rng(1).normal(size=(3, 7))
    ours = bootstrap_replicates(diffs, 200, np.random.default_rng(5))
    ref = loop_replicates(diffs, 200, seed=5)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
    mean, lo, hi = bootstrap_mean_ci(diffs, n_boot=200, seed=5, level=0.9)
    assert mean == pytest.approx(sum(map(float, diffs.ravel())) / diffs.size, rel=1e-12)
    np.testing.assert_allclose([lo, hi], np.quantile(ref, [0.05, 0.95]), rtol=1e-12)


def test_bootstrap_covers_the_true_mean_and_window_only_does_not():
    """200 synthetic studies, diffs = mu + seed effect (sd 1) + window noise (sd 1), S=8, W=20.

    Two-level: a percentile interval from 8 seeds runs a little narrow of the nominal 0.95 (the
    bootstrap variance carries a factor (S-1)/S, and normal rather than t quantiles):
    P(|t_7| < 1.96 sqrt(7/8)) ~ 0.89; the binomial sd over 200 studies is ~0.022, hence [0.82, 0.98].
    Window-only: its width reflects the window noise alone, sd 1/sqrt(160) ~ 0.08, while the mean's sd
    is sqrt(1/8 + 1/160) ~ 0.36, so it covers ~P(|z| < 1.96 * 0.22) ~ 0.33 of the time.
    """
    rng = np.random.default_rng(0)
    mu, S, W, n_studies = 0.3, 8, 20, 200
    two_level = window_only = 0
    widths = []
    for k in range(n_studies):
        diffs = mu + rng.normal(size=(S, 1)) + rng.normal(size=(S, W))
        _, lo, hi = bootstrap_mean_ci(diffs, n_boot=1000, seed=k)
        wlo, whi = window_only_ci(diffs, 1000, rng)
        two_level += lo <= mu <= hi
        window_only += wlo <= mu <= whi
        widths.append((whi - wlo) / (hi - lo))
    assert 0.82 <= two_level / n_studies <= 0.98
    assert window_only / n_studies < 0.5
    assert np.median(widths) < 0.3


def test_a_window_effect_shared_by_every_seed_is_counted():
    """diffs = mu + window effect (sd 1, the same for every seed) + noise, S=3, W=30: the crossed interval
    covers mu at about the nominal rate; the nested scheme averages the shared effect over the seeds'
    separate draws and covers far less often."""
    rng = np.random.default_rng(1)
    mu, S, W, n_studies = 0.3, 3, 30, 200
    crossed = nested = 0
    for k in range(n_studies):
        diffs = mu + rng.normal(size=(1, W)) + 0.3 * rng.normal(size=(S, W))
        _, lo, hi = bootstrap_mean_ci(diffs, n_boot=1000, seed=k)
        nlo, nhi = nested_ci(diffs, 1000, rng)
        crossed += lo <= mu <= hi
        nested += nlo <= mu <= nhi
    assert 0.85 <= crossed / n_studies <= 0.99
    assert nested / n_studies < 0.75


def test_one_seed_is_window_resampling():
    """S == 1: the interval is the window noise alone, mean +- 1.96 standard errors (W large)."""
    values = np.random.default_rng(2).normal(1.0, 2.0, size=400)
    mean, lo, hi = bootstrap_mean_ci(values[None, :], n_boot=4000)
    half = norm.ppf(0.975) * standard_error(values)
    assert (hi - lo) / (2 * half) == pytest.approx(1.0, abs=0.1)
    assert (lo + hi) / 2 == pytest.approx(mean, abs=0.1 * half)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((0, 4)), np.array([[0.0, np.nan]])])
def test_bootstrap_rejects_bad_input(bad: np.ndarray):
    with pytest.raises(ValueError):
        bootstrap_mean_ci(bad)


def test_standard_error_equals_formula():
    values = np.random.default_rng(3).normal(size=37)
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    assert standard_error(values) == pytest.approx(math.sqrt(var) / math.sqrt(n), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        standard_error(np.array([1.0]))


@pytest.mark.parametrize("a, b", [(10.0, 0.1), (3.0, 0.05), (50.0, 0.5), (0.7, 1.0), (2.0, -0.2)])
def test_fit_recovers_noiseless_power_law(a: float, b: float):
    x = np.geomspace(1e12, 1e15, 6)
    a_hat, b_hat = fit_power_law(x, power_law(x, a, b))
    assert a_hat == pytest.approx(a, rel=1e-8)
    assert b_hat == pytest.approx(b, rel=1e-8, abs=1e-12)


def test_fit_is_close_on_noisy_curve():
    """1% multiplicative noise on 8 points over 3 decades: the slope's sd is ~0.01 / (sd(ln x) * sqrt(8))
    ~ 0.0014, so b within 0.01; the fit at the centre of the data is within 1% of the true curve."""
    a, b = 10.0, 0.1
    x = np.geomspace(1e12, 1e15, 8)
    y = power_law(x, a, b) * np.exp(np.random.default_rng(4).normal(0, 0.01, size=8))
    a_hat, b_hat = fit_power_law(x, y)
    assert b_hat == pytest.approx(b, abs=0.01)
    centre = math.sqrt(x[0] * x[-1])
    assert power_law(centre, a_hat, b_hat) == pytest.approx(power_law(centre, a, b), rel=0.01)


@pytest.mark.parametrize("x, y, match", [
    ([1.0], [2.0], "at least 2 points"),
    ([1.0, 2.0], [2.0, -1.0], "positive"),
    ([0.0, 2.0], [2.0, 1.0], "positive"),
    ([2.0, 2.0], [2.0, 1.0], "distinct"),
    ([1.0, 2.0, 3.0], [2.0, 1.0], "one length"),
])
def test_fit_rejects_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(np.array(x), np.array(y))


def test_inverse_is_the_inverse():
    a, b = 10.0, 0.1
    x = np.geomspace(1e10, 1e16, 7)
    np.testing.assert_allclose(power_law_inverse(power_law(x, a, b), a, b), x, rtol=1e-10)
    y = np.linspace(2.5, 4.0, 7)
    np.testing.assert_allclose(power_law(power_law_inverse(y, a, b), a, b), y, rtol=1e-12)
    with pytest.raises(ValueError, match="no inverse"):
        power_law_inverse(3.0, a, 0.0)


@pytest.mark.parametrize("shift, expected", [(4.0, 0.25), (1 / 3, 3.0)])
def test_multiplier_of_a_compute_shifted_arm(shift: float, expected: float):
    """Baseline L = 10 C^-0.1; the arm at compute C reaches the baseline's loss at C / shift, i.e. it
    needs `shift` times the compute: multiplier 1 / shift at every budget, extrapolated or not."""
    budgets = np.geomspace(1e12, 1e15, 5)
    base_losses = power_law(budgets, 10.0, 0.1)
    fit = fit_power_law(budgets, base_losses)
    for c in budgets:
        y_arm = power_law(c / shift, 10.0, 0.1)
        assert compute_multiplier(c, y_arm, fit) == pytest.approx(expected, rel=1e-8)
    # The arm 4x less efficient at the smallest budget has a loss above all the baseline's: an extrapolation.
    assert within(base_losses[2], base_losses)
    assert within(power_law(budgets[0] / 4.0, 10.0, 0.1), base_losses) is False
