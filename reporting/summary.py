"""Every figure of a study in one typed summary (written as summary.json), from which report.md is
rendered, so the two cannot disagree.

Per arm and budget: the final validation loss of each reported seed and their mean with a 95% interval
(Student t over seeds, see reporting/stats.py), its evaluation noise (standard error over windows), bits
per byte, the margin to the bigram reference, the paired differences to the baseline per seed and their
mean with its interval (same seed = same data order and evaluation windows in both arms), the loss early
and late in the window (context use). Per arm: the compute multiplier on three axes (training FLOPs,
wall-clock, tokens), read off the baseline's power law (marked where extrapolated) and by piecewise
interpolation between its measured points.

summary.json is `to_json(summary)`: dataclasses.asdict, but for the figures an entry could not compute
(no evaluation windows, no references, no arm to compare with), which it leaves out instead of writing
null; a reader tells "not computed" from "computed, but undefined" by the key. An interval is written
wherever its estimate is: null there means one seed, no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from launch.results import RunResult, read_jsonl
from launch.spec import StudySpec
from reporting.cells import Cell
from reporting.references import Reference
from reporting.stats import (compute_multiplier, fit_power_law, piecewise_multiplier, seed_interval, standard_error,
                             within)

AXES = ("flops", "time_s", "tokens")  # the three meanings of equal compute
STUCK = 0.05  # nats/token: a final loss this close to the unigram reference (or above it) learned nothing else
PLATEAU_MARGIN = 0.1  # nats/token below the bigram's loss: off the plateau near it that every model first sits on
PLATEAU_SMOOTH = 3    # consecutive logged training losses averaged (each is one batch's: noisy)
IF_COMPUTED = {"written": lambda entry, value: value is not None}


def figure() -> Any:
    """A figure written to summary.json only where it was computed."""
    return field(default=None, metadata=IF_COMPUTED)


def interval_of(estimate: str) -> Any:
    """An interval written to summary.json wherever its estimate is (null: one seed, no interval)."""
    return field(default=None, metadata={"written": lambda entry, _: getattr(entry, estimate) is not None})


@dataclass
class BudgetEntry:
    """One arm at one budget, over its reported seeds."""
    budget: float
    lr: float | None = None
    lr_at_edge: bool = False
    seeds: list[int] = field(default_factory=list)
    flops: float | None = None
    time_s: float | None = None
    tokens: float | None = None
    val_loss: float | None = None
    val_loss_ci95: list[float] | None = interval_of("val_loss")
    val_loss_by_seed: dict[int, float] | None = figure()
    eval_se: float | None = figure()
    bits_per_byte: float | None = figure()
    margin_to_bigram: float | None = figure()
    delta_vs_baseline: float | None = figure()
    delta_vs_baseline_ci95: list[float] | None = interval_of("delta_vs_baseline")
    delta_vs_baseline_by_seed: dict[int, float] | None = figure()   # seed -> d_s
    delta_vs_front: float | None = figure()
    delta_vs_front_ci95: list[float] | None = interval_of("delta_vs_front")
    delta_vs_mixing: float | None = figure()
    delta_vs_mixing_ci95: list[float] | None = interval_of("delta_vs_mixing")
    loss_first_quarter: float | None = figure()
    loss_last_quarter: float | None = figure()
    val_acc: float | None = figure()
    # at the largest budget of an arm with a front: its loss minus the front's at equal tokens (null outside
    # the front's range of tokens)
    front_equal_tokens: float | None = field(default=None, metadata={"written": lambda e, _: e.compared_to_front})
    compared_to_front: bool = field(default=False, metadata={"written": lambda *_: False})


@dataclass
class Routing:
    """What training did to the parts that route, over the reported runs at the largest budget (mean over
    seeds): each component's relative update size per step, ||dtheta|| / ||theta|| (engine/trainer.py),
    as the median over the first and over the last fifth of the logged steps; and each attention
    layer's entropy against uniform (1: a running mean, 0: one key) at every evaluation."""
    update: dict[str, list[float]]   # component -> [first fifth, last fifth]
    entropy: dict[str, list[float]]  # "h<i>" -> one value per evaluation


@dataclass
class Escape:
    """When each reported run at the largest budget left the plateau near the bigram level: the first logged
    step at which its training loss, averaged over PLATEAU_SMOOTH consecutive logged values, is PLATEAU_MARGIN
    below the bigram's loss (None: never), and the run's steps. A ranking of runs still on the plateau, or
    that left it late, measures when they left it rather than what their mixer can do."""
    step: dict[int, int | None]   # seed -> step
    steps: dict[int, int]         # seed -> the run's steps


@dataclass
class ArmSummary:
    baseline: str                      # the arm it is compared with
    model: str | None
    control: bool
    front: str | None
    mixing: str | None
    lr_grid: list[float]
    lr: float | None                   # at the largest budget
    lr_at_edge: bool
    budgets: list[BudgetEntry]         # by FLOPs (else budget)
    loss_by_position: list[float] | None
    compute_multiplier: list[float | None] | None                      # FLOPs, by budget; None: the baseline
    compute_multiplier_by_axis: dict[str, list[float | None]] | None   # {axis: by budget}, off the power law
    compute_multiplier_extrapolated: dict[str, list[bool]] | None      # {axis: by budget}: the law read beyond
    compute_multiplier_piecewise: dict[str, list[float | None]] | None  # {axis: by budget}, measured points only
    power_law: dict[str, list[float] | None]                           # {axis: [a, b] of L = a C^-b}
    parameters: int | None
    flops_per_token: float | None
    hardware_flops_per_token: float | None
    tokens_per_s: float | None
    mfu: float | None
    peak_memory_bytes: int | None
    routing: Routing | None
    escape: Escape | None = None
    health: list[str] = field(default_factory=list)

    @property
    def top(self) -> BudgetEntry:
        """The entry at the largest budget."""
        return max(self.budgets, key=lambda e: e.budget)


@dataclass
class Summary:
    study: str
    budget_kind: str
    budgets: list[float]
    seeds: list[int]
    tune_seeds: list[int]
    baseline: str
    references: Reference | None
    arms: dict[str, ArmSummary]


def to_json(value: Any) -> Any:
    """dataclasses.asdict, leaving out the fields whose metadata says they are not written."""
    if is_dataclass(value):
        out = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if f.metadata.get("written", lambda *_: True)(value, item):
                out[f.name] = to_json(item)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def paired(cell: Cell, other: Cell | None) -> dict[int, float] | None:
    """{seed: d_s} over the seeds both cells finished, d_s the mean over the shared validation windows of
    cell loss - other loss; None without both (or without the same windows)."""
    if other is None or other is cell:
        return None
    a, b = cell.windows(), other.windows()
    if a is None or b is None or a.shape[1] != b.shape[1]:
        return None
    rows_a, rows_b = {r.seed: i for i, r in enumerate(cell.runs)}, {r.seed: i for i, r in enumerate(other.runs)}
    return {s: float(np.mean(a[rows_a[s]] - b[rows_b[s]])) for s in sorted(rows_a.keys() & rows_b.keys())} or None


def delta(by_seed: dict[int, float] | None) -> tuple[float | None, list[float] | None]:
    """(mean of the per-seed differences, its 95% interval over seeds), or (None, None) without any."""
    if not by_seed:
        return None, None
    return float(np.mean(list(by_seed.values()))), seed_interval(list(by_seed.values()))


def budget_entry(cell: Cell, ref: Reference | None, baseline: Cell | None = None, front: Cell | None = None,
                 mixing: Cell | None = None) -> BudgetEntry:
    """The figures of one arm at one budget (see the module docstring), with its paired differences to
    the cells of the arms it is compared with at the same budget."""
    e = BudgetEntry(cell.budget, cell.lr, cell.at_edge, [r.seed for r in cell.runs],
                    *(cell.mean(axis) for axis in AXES))
    if not cell.runs:
        return e
    e.val_loss_by_seed = {r.seed: r.result["val_loss"] for r in cell.runs}
    e.val_loss, e.val_loss_ci95 = float(np.mean(cell.finals)), seed_interval(cell.finals)
    windows = cell.windows()
    if windows is not None:
        e.eval_se = float(np.mean([standard_error(w) for w in windows]))
    if ref is not None:
        e.bits_per_byte, e.margin_to_bigram = ref.bits_per_byte(e.val_loss), e.val_loss - ref.bigram
    e.delta_vs_baseline_by_seed = paired(cell, baseline)
    e.delta_vs_baseline, e.delta_vs_baseline_ci95 = delta(e.delta_vs_baseline_by_seed)
    e.delta_vs_front, e.delta_vs_front_ci95 = delta(paired(cell, front))
    e.delta_vs_mixing, e.delta_vs_mixing_ci95 = delta(paired(cell, mixing))
    by_position = cell.by_position()
    if by_position is not None:
        q = max(1, len(by_position) // 4)
        e.loss_first_quarter, e.loss_last_quarter = float(by_position[:q].mean()), float(by_position[-q:].mean())
    if cell.accs:
        e.val_acc = float(np.mean(cell.accs))
    return e


def points(entries: list[BudgetEntry], axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(compute on the axis, final loss) of the entries that have both."""
    pairs = [(getattr(e, axis), e.val_loss) for e in entries if getattr(e, axis) and e.val_loss]
    return np.array([x for x, _ in pairs], dtype=np.float64), np.array([y for _, y in pairs], dtype=np.float64)


def power_laws(entries: list[BudgetEntry]) -> dict[str, list[float] | None]:
    """{axis: [a, b] of the arm's own power law L = a C^-b over its budgets}, None under two points."""
    fits = {}
    for axis in AXES:
        x, y = points(entries, axis)
        fits[axis] = list(fit_power_law(x, y)) if len(x) >= 2 else None
    return fits


def multipliers(arm_entries: list[BudgetEntry], base_entries: list[BudgetEntry]) -> tuple[dict, dict, dict]:
    """({axis: multiplier per budget off the baseline's power law}, {axis: whether that reads the law
    outside the baseline's measured losses}, {axis: multiplier per budget by piecewise interpolation}).
    A multiplier says how many times the arm's compute the baseline needs for the arm's loss: < 1 means
    the baseline is more efficient. None where it cannot be computed (under two baseline points, the arm
    lacks the axis; piecewise: the arm's loss outside the baseline's measured losses)."""
    fitted, extrapolated, piecewise = {}, {}, {}
    for axis in AXES:
        base_x, base_y = points(base_entries, axis)
        base_fit = fit_power_law(base_x, base_y) if len(base_x) >= 2 else None
        known = [(getattr(e, axis), e.val_loss) if base_fit and getattr(e, axis) and e.val_loss else None
                 for e in arm_entries]
        fitted[axis] = [compute_multiplier(*k, base_fit) if k else None for k in known]
        extrapolated[axis] = [bool(k) and not within(k[1], base_y) for k in known]
        piecewise[axis] = [piecewise_multiplier(*k, base_x, base_y) if k else None for k in known]
    return fitted, extrapolated, piecewise


def routing(runs: list[RunResult]) -> Routing | None:
    """Routing figures of these runs (see Routing), or None when their metrics log none."""
    updates: dict[str, list[list[float]]] = {}
    entropies: dict[str, list[list[float]]] = {}
    for run in runs:
        lines = read_jsonl(run.path / "metrics.jsonl")
        logged = [m for m in lines if any(k.startswith("update_") for k in m)]
        fifth = max(1, len(logged) // 5)
        for key in dict.fromkeys(k for m in logged for k in m if k.startswith("update_")):  # in logged order
            values = [m[key] for m in logged if m.get(key) is not None]
            if values:
                updates.setdefault(key.removeprefix("update_"), []).append(
                    [float(np.median(values[:fifth])), float(np.median(values[-fifth:]))])
        for key in dict.fromkeys(k for m in lines for k in m if k.startswith("attn_entropy_")):
            entropies.setdefault(key.removeprefix("attn_entropy_"), []).append([m[key] for m in lines if key in m])
    if not updates and not entropies:
        return None
    mean = lambda rows: np.mean([r[:min(map(len, rows))] for r in rows], axis=0).tolist()  # noqa: E731
    return Routing(update={k: mean(v) for k, v in updates.items()}, entropy={k: mean(v) for k, v in entropies.items()})


def escape(runs: list[RunResult], ref: Reference | None) -> Escape | None:
    """When these runs left the bigram plateau (see Escape); None without references or logged losses."""
    if ref is None:
        return None
    step, steps = {}, {}
    for run in runs:
        logged = [(m["step"], m["loss"]) for m in read_jsonl(run.path / "metrics.jsonl") if m.get("loss") is not None]
        if len(logged) < PLATEAU_SMOOTH:
            continue
        smooth = np.convolve([loss for _, loss in logged], np.ones(PLATEAU_SMOOTH) / PLATEAU_SMOOTH, "valid")
        below = np.flatnonzero(smooth < ref.bigram - PLATEAU_MARGIN)
        step[run.seed] = int(logged[below[0] + PLATEAU_SMOOTH - 1][0]) if below.size else None
        steps[run.seed] = int(run.result.get("step") or logged[-1][0])
    return Escape(step, steps) if step else None


def at_equal_tokens(entry: BudgetEntry, front_entries: list[BudgetEntry]) -> float | None:
    """The arm's loss minus its front's at the arm's own token count, the front's final losses over its
    budgets interpolated linearly in log tokens; None outside the front's range. At equal FLOPs an image
    arm sees several times fewer tokens than its front: this separates what its block does per token
    (a defect if it hurts) from what it costs."""
    points = sorted((e.tokens, e.val_loss) for e in front_entries if e.tokens and e.val_loss)
    x = entry.tokens
    if len(points) < 2 or not x or entry.val_loss is None or not points[0][0] <= x <= points[-1][0]:
        return None
    xs, ys = zip(*points)
    return entry.val_loss - float(np.interp(math.log(x), np.log(xs), ys))


def health(top: BudgetEntry, front_top: BudgetEntry | None, ref: Reference | None) -> list[str]:
    """Flags for an arm at the largest budget: stuck at the unigram level while its front passes the
    bigram; worse than its own front alone at equal tokens (what the block does per token: a defect to
    look for) by more than twice the evaluation noise; worse at equal FLOPs (interval above zero: the
    block costs more than it adds)."""
    flags = []
    if top.val_loss is None:
        return ["no finished run"]
    if ref is not None and top.val_loss >= ref.unigram - STUCK:
        front_ok = front_top is not None and (front_top.val_loss or math.inf) < ref.bigram
        flags.append("stuck at the unigram level" + (" while its front passes the bigram" if front_ok else ""))
    per_token = top.front_equal_tokens
    if per_token is not None and per_token > 2 * (top.eval_se or 0):
        flags.append(f"worse than its own front at equal tokens by {per_token:.3f} nats/token")
    ci = top.delta_vs_front_ci95
    if ci is not None and ci[0] > 0:
        flags.append(f"worse than its own front at equal FLOPs by {top.delta_vs_front:.3f} nats/token (95% CI "
                     f"{ci[0]:.3f} to {ci[1]:.3f})")
    return flags


def arm_summary(spec: StudySpec, name: str, cells: dict[tuple[str, float], Cell], model: str | None,
                entries: list[BudgetEntry], base_entries: list[BudgetEntry], base: str,
                ref: Reference | None) -> ArmSummary:
    """An arm over its budgets: the entries, its lr grid, multipliers, power laws and efficiency figures."""
    budgets = spec.budget.values
    arm = next(a for a in spec.arms if a.name == name)
    fitted, extrapolated, piecewise = multipliers(entries, base_entries)
    top = cells[(name, budgets[-1])]
    grid = sorted({g.lr for b in budgets for g in cells[(name, b)].grid})
    by_position = top.by_position()
    return ArmSummary(
        baseline=base, model=model, control=arm.control, front=arm.front or None, mixing=arm.mixing or None,
        lr_grid=grid or [top.lr], lr=top.lr, lr_at_edge=top.at_edge,
        budgets=sorted(entries, key=lambda e: e.flops or e.budget),
        loss_by_position=by_position.tolist() if by_position is not None else None,
        compute_multiplier=None if name == base else fitted["flops"],
        compute_multiplier_by_axis=None if name == base else fitted,
        compute_multiplier_extrapolated=None if name == base else extrapolated,
        compute_multiplier_piecewise=None if name == base else piecewise, power_law=power_laws(entries),
        parameters=top.first("parameters"), flops_per_token=top.first("flops_per_token"),
        hardware_flops_per_token=top.first("hardware_flops_per_token"),
        tokens_per_s=top.mean("tokens_per_s"), mfu=top.mean("mfu"),
        peak_memory_bytes=max((r.result.get("peak_memory_bytes") or 0 for r in top.runs), default=None),
        routing=routing(top.runs), escape=escape(top.runs, ref))


def summarize(spec: StudySpec, cells: dict[tuple[str, float], Cell], models: dict[str, str], base: str,
              ref: Reference | None) -> Summary:
    budgets = spec.budget.values
    arms = {}
    for arm in spec.arms:
        own = arm.baseline or base  # each arm against its own baseline, by default the study's
        entries = [budget_entry(cells[(arm.name, b)], ref, baseline=cells[(own, b)],
                                front=cells[(arm.front, b)] if arm.front else None,
                                mixing=cells[(arm.mixing, b)] if arm.mixing else None) for b in budgets]
        base_entries = [budget_entry(cells[(own, b)], ref) for b in budgets]
        arms[arm.name] = arm_summary(spec, arm.name, cells, models.get(arm.name), entries, base_entries, own, ref)
    for arm in spec.arms:  # the front's own entries are complete only now
        top, front_top = arms[arm.name].top, arms[arm.front].top if arm.front else None
        if arm.front:
            top.front_equal_tokens, top.compared_to_front = at_equal_tokens(top, arms[arm.front].budgets), True
        arms[arm.name].health = health(top, front_top, ref)
    return Summary(spec.name, spec.budget.kind, budgets, spec.seeds, spec.tune_seeds, base, ref, arms)
