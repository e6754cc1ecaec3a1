"""Accuracy against difficulty, for arms trained on a synthetic task (data/synthetic.py).

A diagnostics study varies difficulty knobs (data.task_pairs K, model.block_size T, data.task_vocab V)
and width (model.n_embd) around a centre. Which keys vary, and the centre (each key's most common value,
ties to the smaller), are read from the runs' resolved configs (config.json), never from arm names.
The slice along one key keeps the arms whose other difficulty keys sit at the centre. A line is one
model at one width; a setting that varies among one model's arms besides those (say model.n_layer)
names its lines too, so two arms never share a point.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from reporting.cells import Cell
from data import SYNTHETIC_TASKS

DIFFICULTY = {"data.task_pairs": "K", "model.block_size": "T", "data.task_vocab": "V"}  # key -> short name
WIDTH = "model.n_embd"
SECTIONS = ("model", "data", "optim")  # train.* and wandb.* say how a run ran (folder, seed, budget), not what
DERIVED = ("model.name", WIDTH, "model.vocab_size", "optim.lr")  # named anyway; follows task_vocab; chosen per arm
Point = tuple[Any, float, float, float]  # (x, mean accuracy over seeds, min, max)


def settings(arm: Cell) -> dict[str, Any]:
    """The arm's resolved model, data and optim settings as dotted keys (its first run's config.json)."""
    config = arm.runs[0].config
    return {f"{s}.{k}": v for s in SECTIONS for k, v in (config.get(s) or {}).items()}


def is_synthetic(arm: Cell) -> bool:
    return bool(arm.runs) and (arm.runs[0].config.get("data") or {}).get("dataset") in SYNTHETIC_TASKS


def most_common(values: list) -> Any:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v))


@dataclass
class Sweep:
    arms: list[Cell]        # finished synthetic arms with a final val_acc, in study order
    conf: dict[str, dict]         # arm name -> settings()
    swept: list[str]              # difficulty keys that vary across the arms, in DIFFICULTY's order
    centre: dict[str, Any]        # every difficulty key's and the width's most common value
    lines: dict[str, str]         # arm name -> its line: model, width and extra settings
    models: dict[str, str]        # arm name -> the same without the width (the lines of the width plot)

    @property
    def width_swept(self) -> bool:
        return len({self.conf[a.arm].get(WIDTH) for a in self.arms}) > 1

    def setting(self, arm: Cell) -> tuple:
        return tuple(self.conf[arm.arm].get(k) for k in self.swept)

    def slice(self, key: str) -> dict[str, list[Point]]:
        """{line: points sorted by x} along `key` (a difficulty key, or WIDTH at the centre difficulty)."""
        others = [k for k in self.swept if k != key]
        names = self.models if key == WIDTH else self.lines
        out: dict[str, list[Point]] = {}
        for a in self.arms:
            c = self.conf[a.arm]
            if all(c.get(k) == self.centre[k] for k in others):
                out.setdefault(names[a.arm], []).append((c.get(key), *acc_stats(a)))
        return {line: sorted(points) for line, points in out.items()}


def acc_stats(arm: Cell) -> tuple[float, float, float]:
    a = np.asarray(arm.accs, dtype=np.float64)
    return float(a.mean()), float(a.min()), float(a.max())


def line_names(arms: list[Cell], conf: dict[str, dict], width: bool) -> dict[str, str]:
    """arm name -> 'model w<n_embd> key=value ..', the extra keys being those that vary within a model."""
    by_model: dict[Any, list[dict]] = {}
    for a in arms:
        by_model.setdefault(conf[a.arm].get("model.name"), []).append(conf[a.arm])
    names = {}
    for a in arms:
        c = conf[a.arm]
        group = by_model[c.get("model.name")]
        extras = [k for k in c if k not in DIFFICULTY and k not in DERIVED
                  and len({repr(g.get(k)) for g in group}) > 1]
        names[a.arm] = " ".join([str(c.get("model.name"))] + ([f"w{c.get(WIDTH)}"] if width else [])
                                 + [f"{k.split('.', 1)[1]}={c.get(k)}" for k in extras])
    return names


def find_sweep(arms: list[Cell]) -> Sweep | None:
    """The sweep among the finished synthetic arms that report accuracy; None if there are none."""
    arms = [a for a in arms if is_synthetic(a) and a.accs]
    if not arms:
        return None
    conf = {a.arm: settings(a) for a in arms}
    centre = {k: most_common([conf[a.arm].get(k) for a in arms]) for k in [*DIFFICULTY, WIDTH]}
    swept = [k for k in DIFFICULTY if len({conf[a.arm].get(k) for a in arms}) > 1]
    lines, seen = line_names(arms, conf, width=True), set()
    for a in arms:  # the same line and setting twice (arms that differ only in lr): keep both, named apart
        key = (lines[a.arm], tuple(conf[a.arm].get(k) for k in [*DIFFICULTY, "data.dataset"]))
        if key in seen:
            lines[a.arm] += f" ({a.arm})"
        seen.add(key)
    return Sweep(arms, conf, swept, centre, lines, line_names(arms, conf, width=False))


def columns(sweep: Sweep) -> list[tuple]:
    """Every difficulty setting the arms were trained at: the centre first, then by how many keys
    (and which) sit off the centre, then by value."""
    centre = tuple(sweep.centre[k] for k in sweep.swept)
    off = lambda s: [i for i, (v, c) in enumerate(zip(s, centre)) if v != c]  # noqa: E731
    settings_ = {sweep.setting(a) for a in sweep.arms} | {centre}
    return sorted(settings_, key=lambda s: (len(off(s)), off(s), s))


def column_name(sweep: Sweep, setting: tuple) -> str:
    """'K=2' for a setting off the centre in K; the centre is named in full ('centre: K=4 T=32 V=64')."""
    parts = [f"{DIFFICULTY[k]}={v}" for k, v in zip(sweep.swept, setting) if v != sweep.centre[k]]
    if parts:
        return " ".join(parts)
    return "centre: " + " ".join(f"{short}={sweep.centre[k]}" for k, short in DIFFICULTY.items())


def acc_table(sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of final val acc (mean over seeds): a row per line, a column per setting."""
    cols = columns(sweep)
    cells: dict[str, dict[tuple, str]] = {}
    for a in sweep.arms:
        cells.setdefault(sweep.lines[a.arm], {})[sweep.setting(a)] = f"{acc_stats(a)[0]:.4f}"
    header = ["model, width", *[column_name(sweep, s) for s in cols]]
    return header, [[line, *[row.get(s, "—") for s in cols]] for line, row in cells.items()]
