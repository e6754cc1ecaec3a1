"""Run a study: every arm of a study file at one shared budget, over seeds (and an optional lr grid),
then write plots and report.md.

    python study.py                                       # configs/studies/default.toml, on this machine
    python study.py configs/studies/owt_original_flops.toml
    python study.py STUDY.toml --only gpt --dry-run

Runs are train.py subprocesses (torchrun over all GPUs when there are several), one after another, in
OUT/runs/<arm>/lr<lr>/seed<seed>. A run with result.json is finished and skipped; an interrupted one
resumes from its checkpoint (train.init_from=auto), so rerunning a study only redoes what is missing.
Paths inside a study file (arm configs, out_dir, data.data_dir) are relative to the repository root,
where the commands run (--dry-run prints them as they would be typed there).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from analysis.results import DIVERGED
from analysis.spec import BUDGET_KEYS, ArmSpec, StudySpec, as_overrides, in_root, load_study
from config import Config, ConfigError, load_config, resolve_vocab

ROOT = Path(__file__).resolve().parent
DEFAULT_STUDY = ROOT / "configs" / "studies" / "default.toml"
STDERR_TAIL = 25  # lines of a failed run's stderr to show
RECORD = "study_run.json"  # in each run folder: the train.py arguments it was started with


class StudyError(RuntimeError):
    """A run or a data preparation failed; the message says which, why and where its log is."""


@dataclass
class Run:
    arm: str
    lr: float
    seed: int
    out_dir: Path
    args: list[str]  # train.py's arguments: config file, then overrides
    grid: bool = False  # one of several lrs of its arm: a divergence there is a result, not a failure

    @property
    def label(self) -> str:
        return f"{self.arm} lr {self.lr:g} seed {self.seed}"

    @property
    def finished(self) -> bool:
        return (self.out_dir / "result.json").is_file()

    @property
    def diverged(self) -> bool:
        return (self.out_dir / DIVERGED).is_file()


def arm_overrides(spec: StudySpec, arm: ArmSpec) -> list[str]:
    """The arm's settings: [common] first, then the arm's overrides (which win), then the study's
    budget, stated in full: the budget keys the study does not use are zeroed, so a budget that an
    arm's config file sets itself (e.g. max_time_s) cannot clash with the study's or add to it."""
    kind, value = spec.budget.item()
    budget = {"train.max_tokens": 0, "train.max_flops": 0.0, "train.max_time_s": 0.0, BUDGET_KEYS[kind]: value,
              "train.n_evals": spec.n_evals}
    return as_overrides(spec.common) + as_overrides(arm.overrides) + as_overrides(budget)


def resolve_arm(spec: StudySpec, arm: ArmSpec) -> Config:
    """The arm's resolved config as its runs will see it (but for seed, lr and out_dir), checked now so a
    mistake in the last arm fails before hours of training."""
    try:
        return load_config(in_root(arm.config), arm_overrides(spec, arm))
    except ConfigError as e:
        raise ConfigError(f"arm {arm.name} ({arm.config}): {e}") from None


def rel(path: Path) -> str:
    """Inside the repository: relative to it (runs start there), so a moved checkout keeps its runs."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def study_args(spec: StudySpec, arm: ArmSpec, lr: float, seed: int, out_dir: Path) -> list[str]:
    fixed = {"train.out_dir": rel(out_dir), "train.seed": seed, "optim.lr": lr, "train.init_from": "auto",
             "wandb.group": spec.name,
             # wandb's run id is the run name (engine/runlog.py), so it must be unique across studies
             "wandb.run_name": f"{spec.name}-{arm.name}-lr{lr:g}-seed{seed}"}
    return ["train.py", rel(in_root(arm.config)), *arm_overrides(spec, arm), *as_overrides(fixed)]


def plan(spec: StudySpec, configs: dict[str, Config], only: list[str]) -> list[Run]:
    out = in_root(spec.out_dir)
    runs = []
    for arm in spec.arms:
        if only and arm.name not in only:
            continue
        lrs = arm.lrs or [configs[arm.name].optim.lr]
        if len({f"{lr:g}" for lr in lrs}) != len(lrs):
            raise ConfigError(f"arm {arm.name}: lrs {lrs} are too close to name their folders apart")
        for lr in lrs:
            for seed in spec.seeds:
                run_dir = out / "runs" / arm.name / f"lr{lr:g}" / f"seed{seed}"
                runs.append(Run(arm.name, lr, seed, run_dir, study_args(spec, arm, lr, seed, run_dir), len(lrs) > 1))
    return runs


def launcher() -> list[str]:
    """torchrun over every GPU when there are several (grad_accum must divide by their number), else python."""
    import torch
    k = torch.cuda.device_count()
    if k > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}"]
    return [sys.executable]


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


def preflight(configs: dict[str, Config], dry_run: bool) -> None:
    """Print each arm's budget in steps as train.py will compute it (engine.budget.Budget), so that a
    budget too small for an arm (e.g. not past its warm-up), or a block_size too small for its task,
    fails now, not after the arms before it."""
    import torch
    from data import DataError, open_dataset
    from engine.budget import Budget
    from models import build_model
    for name, cfg in configs.items():
        if not (dry_run and unprepared(cfg)):  # a dry run may come before the data is prepared
            try:
                data = open_dataset(cfg.data)  # a prepared folder or a synthetic task: both know their vocabulary
                data.check_block_size(cfg.model.block_size)
            except DataError as e:
                raise ConfigError(f"arm {name}: {e}") from None
            cfg = resolve_vocab(cfg, data.vocab_size)
        if cfg.model.vocab_size == 0:
            continue  # nothing to size the vocabulary from yet
        with torch.device("meta"):  # shapes only: no memory, no time, even for GPT-2 sizes
            flops_per_token = build_model(cfg.model).flops_per_token()
        tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
        try:
            steps = Budget(cfg.train, cfg.optim, tokens_per_step, flops_per_token).total_steps
        except ConfigError as e:
            raise ConfigError(f"arm {name}: {e}") from None
        print(f"{name}: {flops_per_token:.4g} training FLOPs/token, {tokens_per_step:,} tokens/step"
              + (f", {steps:,} steps" if steps else ""), flush=True)


def check_same_settings(run: Run) -> None:
    """A run folder must keep the settings it was started with, finished or not: a changed budget or
    override would otherwise be reported over results trained without it."""
    record = run.out_dir / RECORD
    if record.is_file():
        before = json.loads(record.read_text())["args"]
        if before != run.args:
            changed = sorted(set(before) ^ set(run.args))
            raise StudyError(f"{run.out_dir} was started with other settings (differs in: {', '.join(changed)}); "
                             f"delete that folder to redo it, or give the study another out_dir")


def tail(path: Path, n: int) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def last_metrics(run: Run) -> dict:
    """The newest line of the run's metrics.jsonl (for progress), or {}."""
    try:
        lines = (run.out_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def execute(run: Run, prefix: str, cmd: list[str]) -> None:
    """Train one run, its output going to the run folder; one progress line (live on a terminal)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / RECORD).write_text(json.dumps({"args": run.args}, indent=1) + "\n")
    live = sys.stdout.isatty()
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run.out_dir / "stdout.log", "a") as out, open(run.out_dir / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd + run.args, cwd=ROOT, stdout=out, stderr=err, env=env)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                if live:
                    m = last_metrics(run)
                    print(f"\r{prefix} step {m.get('step', 0)} loss {m.get('loss', float('nan')):.4g} "
                          f"({time.time() - t0:.0f} s)\033[K", end="", flush=True)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    if live:
        print("\r\033[K", end="")
    stderr = (run.out_dir / "stderr.log").read_text(errors="replace")
    if proc.returncode != 0 and run.grid and "error: training diverged" in stderr:  # train.py's Diverged
        (run.out_dir / DIVERGED).write_text(json.dumps({"stderr_tail": stderr.splitlines()[-3:]}) + "\n")
        print(f"{prefix} diverged (non-finite loss); left out of the lr choice", flush=True)
        return
    if proc.returncode != 0 or not run.finished:
        raise StudyError(f"run {run.label} failed (exit code {proc.returncode}); last lines of its stderr "
                         f"({run.out_dir / 'stderr.log'}):\n{tail(run.out_dir / 'stderr.log', STDERR_TAIL)}\n"
                         f"fix the cause and rerun the same command: finished runs are kept, this one resumes")
    result = json.loads((run.out_dir / "result.json").read_text())
    acc = f", val acc {result['val_acc']:.4f}" if result.get("val_acc") is not None else ""
    print(f"{prefix} trained in {time.time() - t0:.0f} s: val loss {result['val_loss']:.4f}{acc} "
          f"after {result['step']} steps", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train every arm of a study at one budget, then write its report.")
    p.add_argument("study", nargs="?", default=str(DEFAULT_STUDY), help="study file (default: %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="ARM",
                   help="run only this arm (repeatable); the report covers every finished arm")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec, text = load_study(args.study)
        unknown = sorted(set(args.only) - {a.name for a in spec.arms})
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: no such arm; arms: {', '.join(a.name for a in spec.arms)}")
        configs = {arm.name: resolve_arm(spec, arm) for arm in spec.arms}
        runs = plan(spec, configs, args.only)
        for run in plan(spec, configs, []):  # every arm: the report covers all of them
            check_same_settings(run)
        chosen = {a: c for a, c in configs.items() if not args.only or a in args.only}
        prepare_data(chosen, args.dry_run)
        preflight(chosen, args.dry_run)
        cmd = launcher()
        for i, run in enumerate(runs, 1):
            prefix = f"[{i}/{len(runs)}] {run.label}:"
            if args.dry_run:
                print(shlex.join(cmd + run.args) + ("   # finished, skipped" if run.finished else ""))
            elif run.finished or run.diverged:
                print(f"{prefix} {'finished' if run.finished else 'diverged'} earlier, skipped", flush=True)
            else:
                execute(run, prefix, cmd)
        if args.dry_run:
            return 0
        from analysis.report import write_report  # plots, stats, samples: heavy imports only when needed
        report = write_report(spec, text, {a: c.model.name for a, c in configs.items()}, in_root(spec.out_dir),
                              plan(spec, configs, []))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume (finished runs are kept)", file=sys.stderr)
        return 130
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
