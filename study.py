"""Run a study: every arm of a study file at each of its budgets, its learning rate tuned on separate
seeds, then the reported seeds; then plots, report.md and summary.json.

    python study.py                                       # configs/studies/default.toml, on this machine
    python study.py configs/studies/owt_original_flops.toml
    python study.py STUDY.toml --only gpt --dry-run
    python study.py --help                                # every key of a study file

Runs train in this process one after another (as torchrun subprocesses when there are several GPUs),
in OUT/runs/<arm>/lr<lr>/seed<seed>/<budget>/ (analysis/plan.py). A run with result.json is finished
and skipped; an interrupted one resumes from its checkpoint, so rerunning a study only redoes what is
missing. Paths inside a study file (arm configs, out_dir, data.data_dir) are relative to the
repository root.
"""
from __future__ import annotations

import argparse
import os
import signal
import shlex
import subprocess
import sys
from pathlib import Path

from analysis.plan import PlanError, arm_overrides, check_same_settings, rel, report_runs, tuning_runs
from analysis.results import choose_lrs
from analysis.runner import Progress, StudyError, run_all
from analysis.spec import ArmSpec, BudgetSpec, SampleSpec, StudySpec, in_root, load_study
from config import Config, ConfigError, load_config, resolve_vocab
from engine.budget import Budget
from schema import describe

ROOT = Path(__file__).resolve().parent
DEFAULT_STUDY = ROOT / "configs" / "studies" / "default.toml"


def resolve_arm(spec: StudySpec, arm: ArmSpec, budget: float | None = None) -> Config:
    """The arm's resolved config as its runs will see it at `budget` (the largest by default), but for
    seed, lr and out_dir; checked now so that a mistake in the last arm fails before hours of training."""
    try:
        return load_config(in_root(arm.config), arm_overrides(spec, arm, budget))
    except ConfigError as e:
        raise ConfigError(f"arm {arm.name} ({arm.config}): {e}") from None


def unprepared(cfg: Config) -> bool:
    """A dataset to prepare first: no meta.json, and not a synthetic task (generated on the fly)."""
    from data import SYNTHETIC_TASKS
    return cfg.data.dataset not in SYNTHETIC_TASKS and not (in_root(cfg.data.data_dir) / cfg.data.dataset /
                                                            "meta.json").is_file()


def prepare_data(configs: dict[str, Config], dry_run: bool) -> None:
    """data/prepare.py for each dataset the arms read that is not prepared yet."""
    todo = {(c.data.data_dir, c.data.dataset) for c in configs.values() if unprepared(c)}
    for data_dir, name in sorted(todo):
        cmd = [sys.executable, "data/prepare.py", name, "--out_root", rel(in_root(data_dir))]
        print(shlex.join(cmd), flush=True)
        if not dry_run and subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise StudyError(f"preparing dataset {name} failed (see above); fix it and rerun the study")


def preflight(spec: StudySpec, arms: list[ArmSpec], dry_run: bool) -> dict[str, dict[float, Budget]]:
    """{arm: {budget: Budget}}: each arm's budgets in steps as the trainer will compute them, printed;
    a budget too small for an arm (e.g. not past its warm-up) or a block_size too small for its task
    fails now, not after the arms before it."""
    from data import DataError
    from engine.setup import set_up
    steps = {}
    for arm in arms:
        cfg = resolve_arm(spec, arm)
        # a dry run may come before the data is prepared: any vocabulary gives the step counts
        absent = dry_run and unprepared(cfg)
        try:  # a prepared folder or a synthetic task: both know their vocabulary
            setup = set_up(resolve_vocab(cfg, 1) if absent else cfg, "vocab" if absent else "train", device="meta")
        except DataError as e:
            raise ConfigError(f"arm {arm.name}: {e}") from None
        flops_per_token, tokens_per_step = setup.model.flops_per_token(), setup.tokens_per_step
        steps[arm.name] = {}
        for value in spec.budget.values:
            c = resolve_arm(spec, arm, value)
            try:
                steps[arm.name][value] = Budget(c.train, c.optim, tokens_per_step, flops_per_token)
            except ConfigError as e:
                raise ConfigError(f"arm {arm.name} at budget {value:g}: {e}") from None
        counts = [f"{b.total_steps:,}" for b in steps[arm.name].values() if b.total_steps]
        print(f"{arm.name}: {flops_per_token:.4g} training FLOPs/token, {tokens_per_step:,} tokens/step"
              + (f", {' / '.join(counts)} steps" if counts else ""), flush=True)
    return steps


def parse_args(argv: list[str]) -> argparse.Namespace:
    keys = "\n".join(f"  {k:<22} {t:<14} {d:<14} {doc}" for cls, p in [(StudySpec, ""), (BudgetSpec, "budget."),
                                                                        (ArmSpec, "arm."), (SampleSpec, "sample.")]
                     for k, t, d, doc in describe(cls, p) if k not in ("budget", "sample"))
    p = argparse.ArgumentParser(description="Train every arm of a study at its budgets, then write its report.",
                                epilog=f"study file keys (key, type, default, meaning):\n{keys}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", default=str(DEFAULT_STUDY), help="study file (default: %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="ARM",
                   help="run only this arm (repeatable); the report covers every finished arm")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    return p.parse_args(argv)


def run_study(spec: StudySpec, text: str, only: list[str], dry_run: bool) -> Path | None:
    unknown = sorted(set(only) - {a.name for a in spec.arms})
    if unknown:
        raise ConfigError(f"--only {unknown[0]}: no such arm; arms: {', '.join(a.name for a in spec.arms)}")
    configs = {arm.name: resolve_arm(spec, arm) for arm in spec.arms}
    chosen_arms = [a for a in spec.arms if not only or a.name in only]
    prepare_data({a.name: configs[a.name] for a in chosen_arms}, dry_run)
    steps = preflight(spec, spec.arms, dry_run)
    default_lrs = {name: c.optim.lr for name, c in configs.items()}
    tuning = tuning_runs(spec, steps)
    first_lrs = {a.name: {b: a.lrs[0] for b in spec.budget.values} for a in spec.arms if a.lrs}
    guess = report_runs(spec, first_lrs, default_lrs, steps, only)  # their count and cost before lrs are chosen
    for run in tuning:
        check_same_settings(run)
    todo = [r for r in tuning if not only or r.arm in only]
    progress = Progress(len(todo + guess), sum(r.cost for r in todo + guess if not r.finished), spec.jobs)
    print(f"{len(todo)} tuning runs, then about {len(guess)} reported runs"
          + (f", {spec.jobs} at a time" if spec.jobs > 1 else ""), flush=True)
    run_all(todo, progress, dry_run, spec.jobs)
    if dry_run and not all(r.finished or r.diverged for r in todo):
        print("# the reported runs follow from the tuning runs' results (the lr each arm's tuning seeds choose)")
        return None
    reported = report_runs(spec, choose_lrs(tuning), default_lrs, steps)
    for run in reported:
        check_same_settings(run)
    todo = [r for r in reported if not only or r.arm in only]
    progress.replan(len(todo), sum(r.cost for r in todo if not r.finished))
    run_all(todo, progress, dry_run, spec.jobs)
    if dry_run:
        return None
    from analysis.report import write_report  # plots, statistics, samples: heavy imports only when needed
    path, main_table = write_report(spec, text, {a: c.model.name for a, c in configs.items()}, in_root(spec.out_dir),
                                    tuning, reported)
    print(f"\n{main_table}\n")
    return path


def interrupt(signum, frame):
    raise KeyboardInterrupt  # a kill (SIGTERM) stops the runs as Ctrl-C does, workers and subprocesses included


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return run_main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_main(args: argparse.Namespace) -> int:
    study_file = Path(args.study).resolve()
    os.chdir(ROOT)  # runs, data and configs are named relative to the repository root
    try:
        spec, text = load_study(study_file)
        report = run_study(spec, text, args.only, args.dry_run)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StudyError, PlanError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 130
    if report is not None:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
