"""The verdict of a study: one sentence per subject arm at the largest budget. It names the arm better or
worse than the baseline (and its token mixer helping or hurting against the same block without mixing)
only where the claim holds: the seed-level 95% interval of the difference (reporting/stats.py) excludes
zero and rests on at least CLAIM_SEEDS seeds both arms finished. Otherwise it says "no claim" and why.
"""
from __future__ import annotations

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
            lines.append(f"- {name}: no claim against {base}{figures}: {'; '.join(reasons)}{trend(arm)}.{mixing}")
            continue
        lines.append(f"- {name} is {'worse' if d > 0 else 'better'} than {base} at {e.budget:g} {BUDGET_WORDS[kind]} "
                     f"by {abs(d):.3f} nats/token (95% CI {ci(interval)}){trend(arm)}.{mixing}")
    return lines + [""]


def trend(arm: ArmSummary) -> str:
    """How the measured difference to the baseline moves over the budgets, each paired over seeds: measured,
    not read off a power law (a fit through a budget still on the bigram plateau can put the multiplier on
    the wrong side of 1). The lead passes when the sign flips between the smallest and the largest budget
    with both intervals excluding zero; otherwise the gap widens or narrows when the difference grows or
    shrinks in size monotonically, and a difference that does not move monotonically is called so."""
    measured = [e for e in arm.budgets or [] if e.delta_vs_baseline is not None]
    if len(measured) < 2:
        return ""
    ds = [e.delta_vs_baseline for e in measured]
    moves = (f"; the difference goes {' / '.join(signed(d) for d in ds)} from {measured[0].budget:g} to "
             f"{measured[-1].budget:g}")
    if ds[0] * ds[-1] < 0:
        intervals = (measured[0].delta_vs_baseline_ci95, measured[-1].delta_vs_baseline_ci95)
        if all(i is not None and not i[0] <= 0 <= i[1] for i in intervals):
            before, after = ("the baseline", "the arm") if ds[-1] < 0 else ("the arm", "the baseline")
            return moves + f", so the lead passes from {before} to {after}"
        return moves + ", a change of sign that an interval including zero leaves open"
    sizes = [abs(d) for d in ds]
    if max(sizes) - min(sizes) <= 0.1 * max(sizes):
        return moves + ", about constant"
    if sorted(sizes) not in (sizes, sizes[::-1]):
        return moves + f", not monotone (largest at {measured[sizes.index(max(sizes))].budget:g})"
    return moves + f", so the gap {'widens' if sizes[-1] > sizes[0] else 'narrows'} with compute"


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
