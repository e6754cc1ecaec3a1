"""The verdict of a study: one sentence per subject arm at the largest budget. It names the arm better or
worse than the baseline (and its token mixer helping or hurting against the same block without mixing)
only where the claim holds: the seed-level 95% interval of the difference (reporting/stats.py) excludes
zero and rests on at least CLAIM_SEEDS seeds both arms finished. Otherwise it says "no claim" and why.
"""
from __future__ import annotations

import math

from reporting.markdown import BUDGET_WORDS, NO_INTERVAL, ci, signed
from reporting.summary import ArmSummary, BudgetEntry, Summary

# Seeds a claim needs (issue 17's rule, not a power calculation): with 3, a rerun of the same commit moved an
# arm from "nothing measurable" to "hurts", and a t interval on so few values rests on their normality alone.
CLAIM_SEEDS = 5


def shared_seeds(entry: BudgetEntry, other: BudgetEntry) -> int:
    """How many seeds a paired difference of the two entries rests on: the seeds both finished."""
    return len(set(entry.seeds) & set(other.seeds))


def no_claim(estimate: float | None, interval: list[float] | None, n_seeds: int) -> list[str]:
    """Why a paired difference supports no claim of a direction; [] where it does."""
    if estimate is None:
        return ["no paired runs to compare"]
    if interval is None:
        return [f"{NO_INTERVAL} (a claim needs {CLAIM_SEEDS} seeds)"]
    reasons = ["the interval includes zero"] if interval[0] <= 0 <= interval[1] else []
    return reasons + ([f"only {n_seeds} seeds, a claim needs {CLAIM_SEEDS}"] if n_seeds < CLAIM_SEEDS else [])


def verdict_lines(summary: Summary) -> list[str]:
    """A sentence per subject arm (not its own baseline, not a control) on its difference to its baseline."""
    kind = summary.budget_kind
    lines = []
    for name, arm in summary.arms.items():
        base = arm.baseline
        if name == base or arm.control:
            continue
        e, d, interval = arm.top, arm.top.delta_vs_baseline, arm.top.delta_vs_baseline_ci95
        mixing = mixing_clause(arm, summary.arms[arm.mixing].top if arm.mixing else None)
        reasons = no_claim(d, interval, shared_seeds(e, summary.arms[base].top))
        if reasons:
            figures = f" ({signed(d)} nats/token, 95% CI {ci(interval, d)})" if d is not None else ""
            lines.append(f"- {name}: no claim against {base}{figures}: {'; '.join(reasons)}.{mixing}")
            continue
        lines.append(f"- {name} is {'worse' if d > 0 else 'better'} than {base} at {e.budget:g} {BUDGET_WORDS[kind]} "
                     f"by {abs(d):.3f} nats/token (95% CI {ci(interval)}){trend(arm)}.{mixing}")
    return lines + [""]


def trend(arm: ArmSummary) -> str:
    """How the FLOPs multiplier moves over the budgets, where it is known at the first and the last: the gap
    widens when the multiplier moves away from 1 (below 1 the baseline leads, above 1 the arm does)."""
    m = arm.compute_multiplier or []
    if len(m) < 2 or not m[0] or not m[-1]:
        return ""
    flags = (arm.compute_multiplier_extrapolated or {}).get("flops") or []
    note = " (extrapolated: read off the baseline's power law beyond its measured losses)" if flags and (
        flags[0] or flags[-1]) else ""
    if abs(m[-1] / m[0] - 1) <= 0.1:
        return f"; the compute multiplier stays about constant over the budgets{note}"
    moves = f"; the compute multiplier goes from {m[0]:.3g} to {m[-1]:.3g} over the budgets{note}"
    if (m[0] - 1) * (m[-1] - 1) < 0:
        return moves + f", so the lead passes from {'the baseline to the arm' if m[-1] > 1 else 'the arm to the baseline'}"
    return moves + f", so the gap {'widens' if abs(math.log(m[-1])) > abs(math.log(m[0])) else 'narrows'} with compute"


def mixing_clause(arm: ArmSummary, mixing_top: BudgetEntry | None) -> str:
    """What the arm's token mixer adds against the same block without mixing (mixing_top: that arm at the
    largest budget), where the study has it."""
    d, interval = arm.top.delta_vs_mixing, arm.top.delta_vs_mixing_ci95
    if mixing_top is None or d is None:
        return ""
    reasons = no_claim(d, interval, shared_seeds(arm.top, mixing_top))
    if reasons:
        return (f" Its mixer against the same block without mixing ({arm.mixing}): no claim ({d:+.3f} nats/token, "
                f"95% CI {ci(interval, d)}): {'; '.join(reasons)}.")
    return (f" Against the same block without mixing ({arm.mixing}) its mixer {'helps' if d < 0 else 'hurts'} by "
            f"{abs(d):.3f} nats/token (95% CI {ci(interval)}).")
