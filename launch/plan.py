"""The runs of a study: which (arm, lr, seed, budget) to train, where, with which train.py arguments.

Two phases. Tuning: every arm with an lr grid trains each lr on the tuning seeds (`tune_seeds`) at
every budget. Reporting: each arm trains the reported seeds at the lr its tuning seeds chose for each
budget (`choose_lrs`, launch/results.py). Without tune_seeds the tuning runs are the reported runs.

Several budgets share runs (spec.share_runs, the wsd schedule): for one (arm, lr, seed) the largest
budget trains straight and checkpoints at the step where each smaller budget starts its decay
(train.fork_steps); the smaller budget then continues from that checkpoint with its own budget, which
gives exactly the run that budget would have trained alone (tests/test_train.py), at a fraction of
its cost. Folders: OUT/runs/<arm>/lr<lr>/seed<seed>/<kind><budget>/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import Config, ConfigError, changed_keys, load_config
from engine.budget import Budget
from launch.paths import in_root, rel
from launch.results import DIVERGED
from launch.spec import BUDGET_KEYS, ArmSpec, StudySpec, shares_runs
from schema import toml_literal

RECORD = "study_run.json"  # in each run folder: the train.py arguments it was started with


@dataclass
class Run:
    arm: str
    lr: float
    seed: int
    budget: float
    out_dir: Path
    args: list[str]                            # train.py's arguments: config file, then overrides
    phase: str = "report"                      # "tune" | "report"
    fork: tuple[Path, int] | None = None       # continue from this run's checkpoint after this step
    grid: bool = False                         # one of several lrs: a divergence is a result, not a failure
    cost: float = 0.0                          # the part of its budget it trains itself (progress estimates)

    @property
    def label(self) -> str:
        return f"{self.arm} lr {self.lr:g} seed {self.seed} {budget_label(self.budget)}"

    @property
    def finished(self) -> bool:
        return (self.out_dir / "result.json").is_file()

    @property
    def diverged(self) -> bool:
        return (self.out_dir / DIVERGED).is_file()


def budget_label(value: float) -> str:
    return f"{value:g}"


def as_overrides(table: dict[str, Any]) -> list[str]:
    return [f"--{k}={toml_literal(v, k)}" for k, v in table.items()]


def arm_overrides(spec: StudySpec, arm: ArmSpec, budget: float | None = None) -> list[str]:
    """The arm's settings: [common] first, then the arm's overrides (which win), then the study's
    budget, stated in full: the budget keys the study does not use are zeroed, so a budget that an
    arm's config file sets itself (e.g. max_time_s) cannot clash with the study's or add to it."""
    kind = spec.budget.kind
    value = spec.budget.values[-1] if budget is None else budget
    budgets = {"train.max_tokens": 0, "train.max_flops": 0.0, "train.max_time_s": 0.0, BUDGET_KEYS[kind]: value,
               "train.n_evals": spec.n_evals}
    if kind == "iters" or kind == "tokens":
        budgets[BUDGET_KEYS[kind]] = int(value)
    if shares_runs(spec):
        budgets["optim.schedule"] = "wsd"
    return as_overrides(spec.common) + as_overrides(arm.overrides) + as_overrides(budgets)


def resolve_arm(spec: StudySpec, arm: ArmSpec, budget: float | None = None) -> Config:
    """The arm's resolved config as its runs will see it at `budget` (the largest by default), but for
    seed, lr and out_dir; checked now so that a mistake in the last arm fails before hours of training."""
    try:
        return load_config(in_root(arm.config), arm_overrides(spec, arm, budget))
    except ConfigError as e:
        raise ConfigError(f"arm {arm.name} ({arm.config}): {e}") from None


def eval_split(spec: StudySpec, phase: str) -> str:
    """Tuning runs are scored on one half of the validation documents, reported runs on the other; without
    tune_seeds the tuning runs are the reported ones, scored on the reported half (the report says so)."""
    return "val_tune" if phase == "tune" and spec.tune_seeds else "val_report"


def run_args(spec: StudySpec, arm: ArmSpec, lr: float, seed: int, budget: float, out_dir: Path,
             fork_steps: list[int], phase: str) -> list[str]:
    fixed = {"train.out_dir": rel(out_dir), "train.seed": seed, "optim.lr": lr, "train.init_from": "auto",
             "train.eval_split": eval_split(spec, phase),
             "wandb.group": spec.name,
             # wandb's run id is the run name (engine/runlog.py), so it must be unique across studies
             "wandb.run_name": f"{spec.name}-{arm.name}-lr{lr:g}-seed{seed}-{budget_label(budget)}"}
    if fork_steps:
        fixed["train.fork_steps"] = fork_steps
    return [rel(in_root(arm.config)), *arm_overrides(spec, arm, budget), *as_overrides(fixed)]


def ladder(spec: StudySpec, arm: ArmSpec, lr: float, seed: int, budgets: list[float],
           steps: dict[float, Budget], phase: str) -> list[Run]:
    """The runs of one (arm, lr, seed) over `budgets`: the largest first, the others continuing from its
    forks when the study shares runs, else each on its own. steps[b]: budget b in steps for this arm."""
    folder = in_root(spec.out_dir) / "runs" / arm.name / f"lr{lr:g}" / f"seed{seed}"
    grid = len(arm.lrs) > 1
    if not shares_runs(spec):
        return [Run(arm.name, lr, seed, b, folder / budget_label(b),
                    run_args(spec, arm, lr, seed, b, folder / budget_label(b), [], phase), phase, None, grid, b)
                for b in sorted(budgets, reverse=True)]
    top, rest = max(budgets), sorted(set(budgets) - {max(budgets)}, reverse=True)
    top_dir = folder / budget_label(top)
    forks = sorted({steps[b].decay_start for b in rest})
    runs = [Run(arm.name, lr, seed, top, top_dir, run_args(spec, arm, lr, seed, top, top_dir, forks, phase), phase,
                None, grid, top)]
    for b in rest:
        out, start = folder / budget_label(b), steps[b].decay_start
        runs.append(Run(arm.name, lr, seed, b, out, run_args(spec, arm, lr, seed, b, out, [], phase), phase,
                        (top_dir, start), grid, b * (1 - start / steps[b].total_steps)))
    return runs


def tuned_budgets(spec: StudySpec) -> list[float]:
    """The budgets the learning rates are tuned at: all, or those up to spec.tune_budget."""
    return [b for b in spec.budget.values if not spec.tune_budget or b <= spec.tune_budget]


def lr_for(chosen: dict[str, dict[float, float]], arm: str, budget: float) -> tuple[float | None, float | None]:
    """(lr, the budget it was tuned at): the choice at `budget`, or, for a budget larger than any tuned one,
    the choice at the largest tuned budget below it (StudySpec.tune_budget)."""
    tuned = sorted(b for b in chosen.get(arm, {}) if b <= budget)
    return (chosen[arm][tuned[-1]], tuned[-1]) if tuned else (None, None)


def tuning_runs(spec: StudySpec, steps: dict[str, dict[float, Budget]], only: list[str] = ()) -> list[Run]:
    """Every lr of every arm with a grid on the tuning seeds (the reported seeds when there are none), at
    the tuned budgets."""
    seeds = spec.tune_seeds or spec.seeds
    return [run for arm in spec.arms if len(arm.lrs) > 1 and (not only or arm.name in only)
            for lr in arm.lrs for seed in seeds
            for run in ladder(spec, arm, lr, seed, tuned_budgets(spec), steps[arm.name], "tune")]


def report_runs(spec: StudySpec, chosen: dict[str, dict[float, float]], default_lrs: dict[str, float],
                steps: dict[str, dict[float, Budget]], only: list[str] = ()) -> list[Run]:
    """The reported seeds of every arm at the lr chosen for each budget (lr_for); an arm without a
    grid at its one lr. Without tune_seeds, the grid arms' reported runs at the tuned budgets are the
    tuning runs."""
    runs = []
    for arm in spec.arms:
        if only and arm.name not in only:
            continue
        by_lr: dict[float, list[float]] = {}
        tuned = tuned_budgets(spec) if len(arm.lrs) > 1 and not spec.tune_seeds else []
        for b in [b for b in spec.budget.values if b not in tuned]:
            lr = lr_for(chosen, arm.name, b)[0] if len(arm.lrs) > 1 else (arm.lrs or [default_lrs[arm.name]])[0]
            if lr is not None:
                by_lr.setdefault(lr, []).append(b)
        runs += [run for lr, budgets in by_lr.items() for seed in spec.seeds
                 for run in ladder(spec, arm, lr, seed, budgets, steps[arm.name], "report")]
    return runs


class PlanError(RuntimeError):
    """A run folder that does not belong to this study file any more; the message says what to do."""


def check_same_settings(run: Run) -> None:
    """A run folder must keep the settings it was started with, finished or not: a changed budget or
    override would otherwise be reported over results trained without it; and so would a model, data or
    optimizer setting that the same arguments resolve to differently now (a default changed in the code)."""
    record = run.out_dir / RECORD
    if record.is_file():
        before = json.loads(record.read_text())["args"]
        if before != run.args:
            changed = sorted(set(before) ^ set(run.args))
            raise PlanError(f"{run.out_dir} was started with other settings (differs in: {', '.join(changed)}); "
                            f"delete that folder to redo it, or give the study another out_dir")
    trained = run.out_dir / "config.json"
    if trained.is_file():
        changed = changed_settings(json.loads(trained.read_text()), run.args)
        if changed:
            raise PlanError(f"{run.out_dir} was trained with settings its arguments no longer give (a default "
                            f"changed in the code: {'; '.join(changed)}); delete that folder (or the study's "
                            f"runs/) to retrain, or give the study another out_dir")


def changed_settings(trained: dict, args: list[str]) -> list[str]:
    """'section.key: then -> now' for each model, data and optim setting that differs between a run's
    config.json and what its train.py arguments resolve to now (vocab_size 0 is resolved from the data
    at train time, so it matches whatever was resolved)."""
    now = json.loads(json.dumps(load_config(in_root(args[0]), args[1:]).to_dict()))  # as config.json holds it
    changed = []
    for section in ("model", "data", "optim"):
        then, fresh = trained.get(section, {}), now[section]
        changed += [f"{section}.{key}: {then.get(key)!r} -> {fresh.get(key)!r}" for key in changed_keys(then, fresh)
                    if not (section == "model" and key == "vocab_size" and fresh[key] == 0)]
    return changed
