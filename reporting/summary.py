"""Every figure of a study in one dict (written as summary.json), from which report.md is rendered, so
the two cannot disagree.

Per arm and budget: the final validation loss over the reported seeds with a 95% interval (bootstrap
over seeds and evaluation windows), its evaluation noise (standard error over windows), bits per
byte, the margin to the bigram reference, the paired difference to the baseline with its interval
(same seed = same data order and evaluation windows in both arms), the loss early and late in the
window (context use), and the compute multiplier on three axes (training FLOPs, wall-clock, tokens).
"""
from __future__ import annotations

import math

import numpy as np

from launch.results import RunResult, read_jsonl
from launch.spec import StudySpec
from reporting.cells import Cell
from reporting.references import Reference
from reporting.stats import bootstrap_mean_ci, compute_multiplier, fit_power_law, standard_error

AXES = ("flops", "time_s", "tokens")  # the three meanings of equal compute
STUCK = 0.05  # nats/token: a final loss this close to the unigram reference (or above it) learned nothing else


def paired(cell: Cell, base: Cell) -> np.ndarray | None:
    """(seeds, windows) loss differences cell - base over the seeds both finished, or None."""
    a, b = cell.windows(), base.windows()
    if a is None or b is None:
        return None
    seeds = sorted({r.seed for r in cell.runs} & {r.seed for r in base.runs})
    rows = [[r.seed for r in cell.runs].index(s) for s in seeds], [[r.seed for r in base.runs].index(s) for s in seeds]
    return (a[rows[0]] - b[rows[1]]) if seeds else None


def budget_entry(cell: Cell, ref: Reference | None, **others: Cell | None) -> dict:
    """The figures of one arm at one budget (see the module docstring); others: {name: the cell of the
    arm it is compared with at the same budget}, each giving delta_vs_<name> and its interval."""
    entry = {"budget": cell.budget, "lr": cell.lr, "lr_at_edge": cell.at_edge, "seeds": [r.seed for r in cell.runs],
             **{axis: cell.mean(axis) for axis in AXES}, "val_loss": None}
    windows = cell.windows()
    if not cell.runs:
        return entry
    entry["val_loss"] = float(np.mean(cell.finals))
    if windows is not None:
        mean, lo, hi = bootstrap_mean_ci(windows)
        entry.update(val_loss_ci95=[lo, hi], eval_se=float(np.mean([standard_error(w) for w in windows])))
    if ref is not None:
        entry.update(bits_per_byte=ref.bits_per_byte(entry["val_loss"]), margin_to_bigram=entry["val_loss"] - ref.bigram)
    for name, other in others.items():
        d = paired(cell, other) if other is not None and other is not cell else None
        if d is not None:
            mean, lo, hi = bootstrap_mean_ci(d)
            entry[f"delta_vs_{name}"], entry[f"delta_vs_{name}_ci95"] = mean, [lo, hi]
    by_position = cell.by_position()
    if by_position is not None:
        q = max(1, len(by_position) // 4)
        entry["loss_first_quarter"], entry["loss_last_quarter"] = float(by_position[:q].mean()), float(
            by_position[-q:].mean())
    if cell.accs:
        entry["val_acc"] = float(np.mean(cell.accs))
    return entry


def multipliers(arm_entries: list[dict], base_entries: list[dict]) -> tuple[dict, dict]:
    """({axis: [multiplier per budget]}, {axis: [a, b] of the arm's own power law}) on each axis. The
    multiplier says how many times the arm's compute the baseline needs for the arm's loss (its power
    law, fitted on its budgets): < 1 means the baseline is more efficient. None where it cannot be
    computed (under two baseline points, or the arm lacks the axis)."""
    out, fits = {}, {}
    for axis in AXES:
        bx = [(e[axis], e["val_loss"]) for e in base_entries if e.get(axis) and e.get("val_loss")]
        ax = [(e[axis], e["val_loss"]) for e in arm_entries if e.get(axis) and e.get("val_loss")]
        fits[axis] = list(fit_power_law(*map(np.asarray, zip(*ax)))) if len(ax) >= 2 else None
        if len(bx) < 2:
            out[axis] = [None for _ in arm_entries]
            continue
        base_fit = fit_power_law(*map(np.asarray, zip(*bx)))
        out[axis] = [compute_multiplier(e[axis], e["val_loss"], base_fit) if e.get(axis) and e.get("val_loss")
                     else None for e in arm_entries]
    return out, fits


def front_gradient_share(run: RunResult) -> list[float] | None:
    """[first, last] share of the gradient norm that reaches the front (embedding + front blocks) at the
    logged steps: a share that collapses means the image stage stopped passing gradient back."""
    lines = [m for m in read_jsonl(run.path / "metrics.jsonl") if "grad_norm" in m and m["grad_norm"] > 0]
    if not lines:
        return None
    share = [math.hypot(m.get("grad_norm_embedding", 0.0), m.get("grad_norm_front", m.get("grad_norm_blocks", 0.0)))
             / m["grad_norm"] for m in lines]
    return [share[0], share[-1]]


def at_equal_tokens(entry: dict, front_entries: list[dict]) -> float | None:
    """The arm's loss minus its front's at the arm's own token count, the front's final losses over its
    budgets interpolated linearly in log tokens; None outside the front's range. At equal FLOPs an image
    arm sees several times fewer tokens than its front: this separates what its block does per token
    (a defect if it hurts) from what it costs."""
    points = sorted((e["tokens"], e["val_loss"]) for e in front_entries if e.get("tokens") and e.get("val_loss"))
    x = entry.get("tokens")
    if len(points) < 2 or not x or entry.get("val_loss") is None or not points[0][0] <= x <= points[-1][0]:
        return None
    xs, ys = zip(*points)
    return entry["val_loss"] - float(np.interp(math.log(x), np.log(xs), ys))


def health(name: str, top: dict, front_top: dict | None, ref: Reference | None) -> list[str]:
    """Flags for an arm at the largest budget: stuck at the unigram level while its front passes the
    bigram; worse than its own front alone at equal tokens (what the block does per token: a defect to
    look for) by more than twice the evaluation noise; worse at equal FLOPs (interval above zero: the
    block costs more than it adds)."""
    flags = []
    loss = top.get("val_loss")
    if loss is None:
        return ["no finished run"]
    if ref is not None and loss >= ref.unigram - STUCK:
        front_ok = front_top is not None and (front_top.get("val_loss") or math.inf) < ref.bigram
        flags.append("stuck at the unigram level" + (" while its front passes the bigram" if front_ok else ""))
    per_token = top.get("front_equal_tokens")
    if per_token is not None and per_token > 2 * (top.get("eval_se") or 0):
        flags.append(f"worse than its own front at equal tokens by {per_token:.3f} nats/token")
    ci = top.get("delta_vs_front_ci95")
    if ci is not None and ci[0] > 0:
        flags.append(f"worse than its own front at equal FLOPs by {top['delta_vs_front']:.3f} nats/token (95% CI "
                     f"{ci[0]:.3f} to {ci[1]:.3f})")
    return flags


def summarize(spec: StudySpec, cells: dict[tuple[str, float], Cell], models: dict[str, str], base: str,
              ref: Reference | None) -> dict:
    budgets = spec.budget.values
    arms = {}
    base_entries = [budget_entry(cells[(base, b)], ref) for b in budgets]
    for arm in spec.arms:
        entries = [budget_entry(cells[(arm.name, b)], ref, baseline=cells[(base, b)],
                                front=cells[(arm.front, b)] if arm.front else None,
                                mixing=cells[(arm.mixing, b)] if arm.mixing else None) for b in budgets]
        mult, fits = multipliers(entries, base_entries)
        top_cell = cells[(arm.name, budgets[-1])]
        grid = sorted({g.lr for b in budgets for g in cells[(arm.name, b)].grid})
        arms[arm.name] = {
            "model": models.get(arm.name), "control": arm.control, "front": arm.front or None,
            "mixing": arm.mixing or None,
            "lr_grid": grid or [top_cell.lr], "lr": top_cell.lr, "lr_at_edge": top_cell.at_edge,
            "budgets": sorted(entries, key=lambda e: e.get("flops") or e["budget"]),
            "loss_by_position": (bp.tolist() if (bp := top_cell.by_position()) is not None else None),
            "compute_multiplier": None if arm.name == base else mult["flops"],
            "compute_multiplier_by_axis": None if arm.name == base else mult, "power_law": fits,
            "parameters": top_cell.first("parameters"), "flops_per_token": top_cell.first("flops_per_token"),
            "hardware_flops_per_token": top_cell.first("hardware_flops_per_token"),
            "tokens_per_s": top_cell.mean("tokens_per_s"), "mfu": top_cell.mean("mfu"),
            "peak_memory_bytes": max((r.result.get("peak_memory_bytes") or 0 for r in top_cell.runs), default=None),
            "front_gradient_share": front_gradient_share(top_cell.runs[0]) if top_cell.runs else None,
        }
    for arm in spec.arms:
        top, front_top = entries_top(arms[arm.name]), entries_top(arms[arm.front]) if arm.front else None
        if arm.front:
            top["front_equal_tokens"] = at_equal_tokens(top, arms[arm.front]["budgets"])
        arms[arm.name]["health"] = health(arm.name, top, front_top, ref)
    return {"study": spec.name, "budget_kind": spec.budget.kind, "budgets": budgets, "seeds": spec.seeds,
            "tune_seeds": spec.tune_seeds, "baseline": base,
            "references": ref.as_dict() if ref is not None else None, "arms": arms}


def entries_top(arm: dict) -> dict:
    """An arm's entry at the largest budget."""
    return max(arm["budgets"], key=lambda e: e["budget"])
