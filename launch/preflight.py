"""Before any run of a study trains: every arm's config resolved, the datasets the chosen arms read
prepared, and each arm's budgets counted in steps as the trainer will count them. A mistake in the
last arm (an unknown key, a budget that does not pass the warm-up, a block_size too small for its
task) fails here, not after hours of training the arms before it."""
from __future__ import annotations

import shlex
import subprocess
import sys

from config import Config, ConfigError, resolve_vocab
from engine.budget import Budget
from launch.paths import ROOT, in_root, rel
from launch.plan import resolve_arm
from launch.runner import StudyError
from launch.spec import ArmSpec, StudySpec

Steps = dict[str, dict[float, Budget]]  # {arm: {budget: the budget in steps}}


def preflight(spec: StudySpec, only: list[str], dry_run: bool) -> tuple[dict[str, Config], Steps]:
    """({arm: its resolved config at the largest budget}, {arm: {budget: Budget}}), the steps printed;
    `only` names the arms whose data is prepared (all of them when empty)."""
    unknown = sorted(set(only) - {a.name for a in spec.arms})
    if unknown:
        raise ConfigError(f"--only {unknown[0]}: no such arm; arms: {', '.join(a.name for a in spec.arms)}")
    configs = {arm.name: resolve_arm(spec, arm) for arm in spec.arms}
    prepare_data([configs[a.name] for a in spec.arms if not only or a.name in only], dry_run)
    return configs, {arm.name: arm_steps(spec, arm, configs[arm.name], dry_run) for arm in spec.arms}


def unprepared(cfg: Config) -> bool:
    """A dataset to prepare first (not a synthetic task, generated on the fly): no meta.json, or a built-in
    one written before the validation documents were halved for tuning and reporting whose halves cannot
    be read off its end-of-text tokens (data/loader.py validation_cut; a corpus of one's own is named with
    its --files by the loader's error instead)."""
    import json

    from data import SYNTHETIC_TASKS
    from data.prepare import BUILTIN
    meta = in_root(cfg.data.data_dir) / cfg.data.dataset / "meta.json"
    if cfg.data.dataset in SYNTHETIC_TASKS:
        return False
    try:
        found = json.loads(meta.read_text())
    except (OSError, ValueError):
        return True
    return "val_tune_tokens" not in found and found.get("eot") is None and cfg.data.dataset in BUILTIN


def prepare_data(configs: list[Config], dry_run: bool) -> None:
    """data/prepare.py for each dataset the arms read that is not prepared yet."""
    todo = {(c.data.data_dir, c.data.dataset) for c in configs if unprepared(c)}
    for data_dir, name in sorted(todo):
        cmd = [sys.executable, "data/prepare.py", name, "--out_root", rel(in_root(data_dir))]
        print(shlex.join(cmd), flush=True)
        if not dry_run and subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise StudyError(f"preparing dataset {name} failed (see above); fix it and rerun the study")


def arm_steps(spec: StudySpec, arm: ArmSpec, cfg: Config, dry_run: bool) -> dict[float, Budget]:
    """{budget: Budget} of one arm, from its FLOPs per token and tokens per step (a model on the meta
    device: shapes only, no memory, no time, even for GPT-2 sizes), printed in a line."""
    from data import DataError
    from engine.setup import set_up
    absent = dry_run and unprepared(cfg)  # a dry run may come before the data: any vocabulary gives the steps
    try:  # a prepared folder or a synthetic task: both know their vocabulary
        setup = set_up(resolve_vocab(cfg, 1) if absent else cfg, "vocab" if absent else "train", device="meta")
        if hasattr(setup.data, "require"):  # a prepared folder: the validation halves the runs are scored on
            setup.data.require("val_report")
    except DataError as e:
        raise ConfigError(f"arm {arm.name}: {e}") from None
    tokens_per_step, flops_per_token = setup.tokens_per_step, setup.model.flops_per_token()
    steps = {}
    for value in spec.budget.values:
        c = resolve_arm(spec, arm, value)
        try:
            steps[value] = Budget(c.train, c.optim, tokens_per_step, flops_per_token)
        except ConfigError as e:
            raise ConfigError(f"arm {arm.name} at budget {value:g}: {e}") from None
    counts = [f"{b.total_steps:,}" for b in steps.values() if b.total_steps]
    print(f"{arm.name}: {flops_per_token:.4g} training FLOPs/token, {tokens_per_step:,} tokens/step"
          + (f", {' / '.join(counts)} steps" if counts else ""), flush=True)
    return steps
