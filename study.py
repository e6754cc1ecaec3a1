"""Run a study: every arm of a study file at each of its budgets, its learning rate tuned on separate
seeds, then the reported seeds; then plots, report.md and summary.json.

    python study.py                                       # configs/studies/default.toml, on this machine
    python study.py configs/studies/owt_original_flops.toml
    python study.py STUDY.toml --only gpt --dry-run
    python study.py --help                                # every key of a study file

Runs train in this process one after another (as torchrun subprocesses when there are several GPUs),
in OUT/runs/<arm>/lr<lr>/seed<seed>/<budget>/ (launch/plan.py). A run with result.json is finished
and skipped; an interrupted one resumes from its checkpoint, so rerunning a study only redoes what is
missing. Paths inside a study file (arm configs, out_dir, data.data_dir) are relative to the
repository root.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from config import ConfigError
from launch.paths import ROOT, in_root, work_at_root
from launch.plan import PlanError, check_same_settings, report_runs, tuning_runs
from launch.preflight import preflight
from launch.results import choose_lrs
from launch.runner import Progress, StudyError, run_all
from launch.spec import ArmSpec, BudgetSpec, SampleSpec, StudySpec, load_study
from schema import describe

DEFAULT_STUDY = ROOT / "configs" / "studies" / "default.toml"


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
    configs, steps = preflight(spec, only, dry_run)
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
    from reporting.report import write_report  # plots, statistics, samples: heavy imports only when needed
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
    work_at_root()  # runs, data and configs are named relative to the repository root
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
