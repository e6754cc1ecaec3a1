"""The study file: a TOML list of arms trained at one shared budget, validated like a config.

    name = "default"
    seeds = [0, 1, 2]
    n_evals = 8
    [budget]                      # exactly one of flops, time_s, tokens, iters
    flops = 3e12
    [common]                      # dotted config keys applied to every arm
    "data.dataset" = "owt_sample"
    [[arm]]
    name = "gpt"
    config = "configs/tiny_gpt.toml"
    overrides = { "model.n_layer" = 2 }
    lrs = [1e-3, 3e-3]            # optional grid; the report picks each arm's best lr and says so

Every key is checked with config.build, so a typo is a ConfigError naming the valid keys. Overrides
become `--section.key=value` strings read back by config.apply_overrides, the parser train.py uses.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schema import ConfigError, build, load_toml, toml_literal

# [budget] key -> the train.py key that carries it
BUDGET_KEYS = {"flops": "train.max_flops", "time_s": "train.max_time_s", "tokens": "train.max_tokens",
               "iters": "train.max_iters"}
# Keys the study sets for every run; an override of one would silently break the comparison.
STUDY_KEYS = ("train.out_dir", "train.seed", "train.init_from", "train.n_evals", "wandb.group", "wandb.run_name",
              *BUDGET_KEYS.values(), "train.max_flops", "train.max_time_s", "train.max_tokens")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # becomes a folder name and part of a wandb id
ROOT = Path(__file__).resolve().parent.parent


def in_root(path: str | Path) -> Path:
    """Paths inside a study file are relative to the repository root, wherever study.py is started."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


@dataclass
class BudgetSpec:
    flops: float | None = None     # training FLOPs (counted by each model's flops_per_token)
    time_s: float | None = None    # training wall-clock seconds, evaluation excluded
    tokens: int | None = None      # training tokens, all processes
    iters: int | None = None       # optimizer steps (equal compute only for equal models)

    def item(self) -> tuple[str, float]:
        """(kind, value) of the one budget that is set."""
        (kind,) = [k for k in BUDGET_KEYS if getattr(self, k) is not None]
        return kind, getattr(self, kind)


@dataclass
class SampleSpec:
    prompt: str = ""               # "" : the first prompt_tokens tokens of the validation split
    prompt_tokens: int = 16
    max_new_tokens: int = 60
    temperature: float = 0.8
    top_k: int = 200
    seed: int = 1337


@dataclass
class ArmSpec:
    name: str = ""
    config: str = ""               # a train.py config file
    overrides: Any = field(default_factory=dict)   # {"section.key": value} or nested tables
    lrs: list[float] = field(default_factory=list)  # empty: the config's optim.lr


@dataclass
class StudySpec:
    name: str = ""
    description: str = ""
    out_dir: str = ""              # default studies/<name>
    seeds: list[int] = field(default_factory=lambda: [0])
    n_evals: int = 10              # evaluations at evenly spaced fractions of the budget
    baseline: str = ""             # arm the others are tested against; "" : the first GPT arm, else the first arm
    reference: str = "gpt2"        # "gpt2": a pretrained GPT-2 row when its weights load offline or online; "": none
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    common: Any = field(default_factory=dict)
    sample: SampleSpec = field(default_factory=SampleSpec)
    arm: Any = field(default_factory=list)

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


def as_overrides(table: dict[str, Any]) -> list[str]:
    return [f"--{k}={toml_literal(v, k)}" for k, v in table.items()]


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
        raise ConfigError(f"[budget] must set exactly one of {', '.join(BUDGET_KEYS)} (one shared budget makes "
                          f"the arms comparable); got {', '.join(set_budgets) or 'none'}")
    if not spec.budget.item()[1] > 0:
        raise ConfigError(f"budget.{set_budgets[0]} must be positive")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {spec.seeds}")
    if spec.n_evals <= 0:
        raise ConfigError(f"n_evals must be positive, got {spec.n_evals}")
    if spec.reference not in ("", "gpt2"):
        raise ConfigError(f"reference = {spec.reference!r}; valid choices: gpt2, \"\" (none)")
    spec.common = flatten(spec.common, "[common]")
    if not isinstance(spec.arm, list) or not spec.arm:
        raise ConfigError("the study has no arms; add at least one [[arm]] table with name and config")
    spec.arm = [_check_arm(build(ArmSpec, a, f"arm[{i}]."), f"arm[{i}]") for i, a in enumerate(spec.arm)]
    names = [a.name for a in spec.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be distinct, got {names}")
    for where, table in [("[common]", spec.common)] + [(f"arm {a.name}", a.overrides) for a in spec.arms]:
        taken = sorted(set(table) & set(STUDY_KEYS))
        if taken:
            raise ConfigError(f"{where} sets {taken[0]}, which the study sets for every run (out_dir, seed, "
                              f"budget and evaluation points come from the study file's own keys)")
    if spec.baseline and spec.baseline not in names:
        raise ConfigError(f"baseline = {spec.baseline!r} is not an arm; arms: {', '.join(names)}")
    spec.out_dir = spec.out_dir or f"studies/{spec.name}"
    return spec


def load_study(path: str | Path) -> tuple[StudySpec, str]:
    """(validated spec, the file's text) of a study file."""
    data = load_toml(path, where="configs/studies/")
    return validate(build(StudySpec, data)), Path(path).read_text()


def loads_study(text: str) -> StudySpec:
    try:
        return validate(build(StudySpec, tomllib.loads(text)))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
