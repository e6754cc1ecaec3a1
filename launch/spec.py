"""The study file: a TOML list of arms trained at one or several shared budgets, validated like a config.

    name = "default"
    seeds = [1, 2, 3]             # the seeds reported
    tune_seeds = [0]              # the seeds each arm's learning rate is chosen on (disjoint from seeds)
    n_evals = 8
    [budget]                      # exactly one of flops, time_s, tokens, iters: a value or a list
    flops = [1e12, 3e12, 1e13]
    [common]                      # dotted config keys applied to every arm
    "data.dataset" = "owt_sample"
    [[arm]]
    name = "gpt"
    config = "configs/tiny_gpt.toml"
    overrides = { "model.n_layer" = 2 }
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]  # a grid: the lr of each budget is the tuning seeds' best

Every key is checked with schema.build, so a typo is a ConfigError naming the valid keys. Overrides
become `--section.key=value` strings read back by schema.apply_overrides, the parser train.py uses.
`python study.py --help` lists every key (schema.describe).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.paths import in_root
from schema import ConfigError, build, load_toml, option

# [budget] key -> the train.py key that carries it
BUDGET_KEYS = {"flops": "train.max_flops", "time_s": "train.max_time_s", "tokens": "train.max_tokens",
               "iters": "train.max_iters"}
# Keys the study sets for every run; an override of one would silently break the comparison.
STUDY_KEYS = ("train.out_dir", "train.seed", "train.init_from", "train.n_evals", "wandb.group", "wandb.run_name",
              "train.fork_steps", "train.eval_split", *BUDGET_KEYS.values())
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a folder name and part of a wandb id


@dataclass
class BudgetSpec:
    flops: float | list[float] | None = option(None, "training FLOPs (counted by each model's flops_per_token)")
    time_s: float | list[float] | None = option(None, "training wall-clock seconds, evaluation excluded")
    tokens: int | list[int] | None = option(None, "training tokens, all processes")
    iters: int | list[int] | None = option(None, "optimizer steps (equal compute only for equal models)")

    @property
    def kind(self) -> str:
        (kind,) = [k for k in BUDGET_KEYS if getattr(self, k) is not None]
        return kind

    @property
    def values(self) -> list[float]:
        """The budgets, smallest first."""
        value = getattr(self, self.kind)
        return sorted(value if isinstance(value, list) else [value])


@dataclass
class SampleSpec:
    prompt: str = option("", "the prompt; empty: the first prompt_tokens tokens of the validation split")
    prompt_tokens: int = option(16, "tokens of the validation split used as the prompt")
    max_new_tokens: int = option(60, "tokens sampled after the prompt")
    temperature: float = option(0.8, "sampling temperature")
    top_k: int = option(200, "sample among the k most likely tokens")
    seed: int = option(1337, "generator seed")


@dataclass
class ArmSpec:
    name: str = option("", "the arm's name (a folder name)")
    config: str = option("", "a train.py config file")
    overrides: Any = option({}, "{\"section.key\" = value} or nested tables, laid over [common]")
    lrs: list[float] = option([], "learning-rate grid (>= 4 values over a decade to bracket the optimum); empty: "
                              "the config's optim.lr")
    control: bool = option(False, "a control arm (reported, never the subject of a verdict)")
    front: str = option("", "the arm that is this arm's front alone: the health check flags this arm if it is "
                        "worse than its own front")
    mixing: str = option("", "the arm that is this arm with its token mixer replaced by none: the report gives what "
                         "the mixer adds")
    baseline: str = option("", "the arm this one is compared with (differences, multipliers, the verdict); empty: "
                           "the study's baseline. A study may hold several comparisons, e.g. one-layer arms against "
                           "one-layer attention and two-layer arms against two-layer attention")


@dataclass
class StudySpec:
    name: str = option("", "the study's name (a folder name)")
    description: str = option("", "a paragraph at the top of the report")
    notes: str = option("", "a section of the report (markdown): what the arms are and why")
    out_dir: str = option("", "where runs, plots and the report go; empty: studies/<name>")
    seeds: list[int] = option([0], "the seeds reported (each seed: the same initial data order in every arm)")
    tune_seeds: list[int] = option([], "the seeds each arm's lr is chosen on, disjoint from seeds; empty: chosen "
                                   "on the reported seeds (the report marks it as optimistic)")
    tune_budget: float = option(0.0, "the learning rates are tuned at this budget and the smaller ones; a larger "
                                "budget takes the choice of the largest tuned one; 0: tuned at every budget")
    n_evals: int = option(10, "evaluations at even fractions of each run's budget")
    share_runs: bool = option(True, "several budgets: one wsd run per arm, lr and seed whose shorter budgets "
                              "continue from its checkpoints (bit-identical to separate runs, ~1/3 cheaper); "
                              "false: separate runs with the configs' own schedule")
    jobs: int = option(1, "CPU studies: runs trained at once, each in its own process with cores / jobs threads "
                       "(GPU studies train one run at a time)")
    baseline: str = option("", "the arm the others are compared with; empty: the first GPT arm, else the first arm")
    reference: str = option("gpt2", "gpt2: a pretrained GPT-2 row when its weights load; empty: none",
                            ("gpt2", ""))
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    common: Any = option({}, "dotted config keys applied to every arm")
    sample: SampleSpec = field(default_factory=SampleSpec)
    arm: Any = option([], "the arms: [[arm]] tables")

    @property
    def arms(self) -> list[ArmSpec]:
        return self.arm


def flatten(table: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layer": 2}} and {"model.n_layer": 2} both -> {"model.n_layer": 2}."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of dotted keys, e.g. {{ \"model.n_layer\" = 2 }}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = prefix + key
        if isinstance(value, dict):
            out.update(flatten(value, where, dotted + "."))
        elif "." not in dotted:
            raise ConfigError(f"{where}: {dotted!r} needs a section, e.g. \"train.{dotted}\"")
        else:
            out[dotted] = value
    return out


def _check_arm(arm: ArmSpec, where: str) -> ArmSpec:
    if not NAME.match(arm.name):
        raise ConfigError(f"{where}.name = {arm.name!r}: give a name of letters, digits, _ . - (it names a folder)")
    if not arm.config:
        raise ConfigError(f"{where} ({arm.name}) has no config; e.g. config = \"configs/tiny_gpt.toml\"")
    if not in_root(arm.config).is_file():
        raise ConfigError(f"{where} ({arm.name}): config file {arm.config} not found")
    arm.overrides = flatten(arm.overrides, f"{where}.overrides")
    if any(lr <= 0 for lr in arm.lrs) or len(set(arm.lrs)) != len(arm.lrs):
        raise ConfigError(f"{where} ({arm.name}): lrs must be distinct positive numbers, got {arm.lrs}")
    if arm.lrs and "optim.lr" in arm.overrides:
        raise ConfigError(f"{where} ({arm.name}): give the learning rate either as optim.lr or as lrs, not both")
    return arm


def validate(spec: StudySpec) -> StudySpec:
    """Cross-field checks; the arms' configs themselves are checked later against config.py."""
    if not NAME.match(spec.name):
        raise ConfigError(f"name = {spec.name!r}: give the study a name of letters, digits, _ . - (it names a folder)")
    set_budgets = [k for k in BUDGET_KEYS if getattr(spec.budget, k) is not None]
    if len(set_budgets) != 1:
        raise ConfigError(f"[budget] must set exactly one of {', '.join(BUDGET_KEYS)} (shared budgets make "
                          f"the arms comparable); got {', '.join(set_budgets) or 'none'}")
    values = spec.budget.values
    if not values or min(values) <= 0 or len(set(values)) != len(values):
        raise ConfigError(f"budget.{set_budgets[0]} must be positive and distinct, got {values}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {spec.seeds}")
    if len(set(spec.tune_seeds)) != len(spec.tune_seeds) or set(spec.tune_seeds) & set(spec.seeds):
        raise ConfigError(f"tune_seeds {spec.tune_seeds} must be distinct and disjoint from seeds {spec.seeds}: "
                          f"an lr chosen on the reported seeds flatters the arms")
    if spec.tune_budget and spec.tune_budget not in values:
        raise ConfigError(f"tune_budget = {spec.tune_budget:g} is not one of the budgets {values}")
    if spec.jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {spec.jobs}")
    if spec.n_evals <= 0:
        raise ConfigError(f"n_evals must be positive, got {spec.n_evals}")
    spec.common = flatten(spec.common, "[common]")
    if not isinstance(spec.arm, list) or not spec.arm:
        raise ConfigError("the study has no arms; add at least one [[arm]] table with name and config")
    spec.arm = [_check_arm(build(ArmSpec, a, f"arm[{i}]."), f"arm[{i}]") for i, a in enumerate(spec.arm)]
    names = [a.name for a in spec.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be distinct, got {names}")
    reserved = set(STUDY_KEYS) | ({"optim.schedule"} if shares_runs(spec) else set())
    for where, table in [("[common]", spec.common)] + [(f"arm {a.name}", a.overrides) for a in spec.arms]:
        taken = sorted(set(table) & reserved)
        if taken:
            raise ConfigError(f"{where} sets {taken[0]}, which the study sets for every run (out_dir, seed, "
                              f"budget, evaluation points, the shared wsd schedule and the validation half scored "
                              f"come from the study file's own keys: seeds, tune_seeds, [budget], n_evals); remove it")
    if spec.baseline and spec.baseline not in names:
        raise ConfigError(f"baseline = {spec.baseline!r} is not an arm; arms: {', '.join(names)}")
    for arm in spec.arms:
        for key in ("front", "mixing", "baseline"):
            if getattr(arm, key) and getattr(arm, key) not in names:
                raise ConfigError(f"arm {arm.name}: {key} = {getattr(arm, key)!r} is not an arm; arms: {', '.join(names)}")
    spec.out_dir = spec.out_dir or f"studies/{spec.name}"
    return spec


def shares_runs(spec: StudySpec) -> bool:
    """Several step-counted budgets trained as one wsd run with forks (see StudySpec.share_runs)."""
    return spec.share_runs and len(spec.budget.values) > 1 and spec.budget.kind != "time_s"


def load_study(path: str | Path) -> tuple[StudySpec, str]:
    """(validated spec, the file's text) of a study file."""
    data = load_toml(path, where="configs/studies/")
    return validate(build(StudySpec, data)), Path(path).read_text()


def loads_study(text: str) -> StudySpec:
    try:
        return validate(build(StudySpec, tomllib.loads(text)))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
