"""Training a study's runs: one after another in this process, several at once in worker processes
(CPU studies: `jobs`), or through torchrun over all GPUs; a line per run with its position, the
measured pace and an estimate of the time left.

A ladder (launch/plan.py: a budget's top run and the shorter budgets that continue from its fork
checkpoints) always trains in order in one process; ladders are independent of each other, so a CPU
study with jobs = 2 trains two ladders at a time, each with half the cores. Every run is deterministic
given its seed (the thread count is fixed per run), whatever ran beside it; its wall-clock is measured
under the same sharing as every other arm's, which the report states.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from launch.paths import ROOT, rel
from launch.plan import RECORD, Run
from launch.results import DIVERGED
STDERR_TAIL = 25  # lines of a failed run's stderr to show


class StudyError(RuntimeError):
    """A run or a data preparation failed; the message says which, why and where its log is."""


def tail(path: Path, n: int) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in lines[-n:])


def start_fork(run: Run) -> None:
    """A run that continues another's fork point: copy that checkpoint in (once), so it resumes there."""
    parent, step = run.fork
    source = parent / "forks" / str(step)
    if not (run.out_dir / "ckpt.json").is_file():
        if not (source / "ckpt.json").is_file():
            raise StudyError(f"run {run.label} continues {rel(parent)} after step {step}, but {rel(source)} "
                             f"holds no checkpoint; delete {rel(parent)} to retrain it")
        shutil.copytree(source, run.out_dir, dirs_exist_ok=True)


def train_here(run: Run) -> str | None:
    """Train one run in this process, its output going to the run folder; the error text, if it failed."""
    from config import load_config
    from engine.guard import Diverged, Preempted
    from engine.trainer import train
    with open(run.out_dir / "stdout.log", "a") as out, open(run.out_dir / "stderr.log", "w") as err, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train(load_config(run.args[0], run.args[1:]))
        except Diverged as e:
            print(f"error: training diverged: {e}", file=err)
            return f"error: training diverged: {e}"
        except Preempted:
            raise KeyboardInterrupt from None
        except Exception as e:  # ConfigError, DataError, CheckpointError, a bug: reported with its log
            import traceback
            traceback.print_exc(file=err)
            return f"{type(e).__name__}: {e}"
    return None


def train_subprocess(run: Run, launcher: list[str]) -> str | None:
    """Train one run with torchrun over every GPU; the tail of its stderr if it failed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run.out_dir / "stdout.log", "a") as out, open(run.out_dir / "stderr.log", "w") as err:
        proc = subprocess.Popen([*launcher, "train.py", *run.args], cwd=ROOT, stdout=out, stderr=err, env=env)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    return None if code == 0 else (run.out_dir / "stderr.log").read_text(errors="replace")


def launcher() -> list[str] | None:
    """torchrun over every GPU when there are several (grad_accum must divide by their number); None:
    train in this process."""
    import torch
    k = torch.cuda.device_count()
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}"] if k > 1 else None


def execute(run: Run) -> str:
    """Train one run; what happened, in a few words. A diverged grid run is recorded, not fatal."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if run.fork:
        start_fork(run)
    (run.out_dir / RECORD).write_text(json.dumps({"args": run.args}, indent=1) + "\n")
    t0 = time.time()
    cmd = launcher()
    error = train_here(run) if cmd is None else train_subprocess(run, cmd)
    if error is not None and run.grid and "error: training diverged" in error:
        (run.out_dir / DIVERGED).write_text(json.dumps({"error": error.strip().splitlines()[-1]}) + "\n")
        return "diverged (non-finite loss); left out of the lr choice"
    if error is not None or not run.finished:
        raise StudyError(f"run {run.label} failed: {(error or 'no result.json').strip().splitlines()[-1]}\n"
                         f"last lines of its log ({rel(run.out_dir / 'stderr.log')}):\n"
                         f"{tail(run.out_dir / 'stderr.log', STDERR_TAIL)}\n"
                         f"fix the cause and rerun the same command: finished runs are kept, this one resumes")
    result = json.loads((run.out_dir / "result.json").read_text())
    acc = f", val acc {result['val_acc']:.4f}" if result.get("val_acc") is not None else ""
    return f"trained in {time.time() - t0:.0f} s: val loss {result['val_loss']:.4f}{acc} after {result['step']} steps"


def train_ladder(ladder: list[Run], threads: int = 0) -> list[tuple[Run, str, float]]:
    """Train a ladder's runs in order (the shorter budgets continue from the top run's forks):
    [(run, what happened, seconds)]. threads > 0: this process's torch threads (a worker's share)."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    done = []
    for run in ladder:
        t0 = time.time()
        if run.finished or run.diverged:
            done.append((run, f"{'finished' if run.finished else 'diverged'} earlier, skipped", 0.0))
        else:
            done.append((run, execute(run), time.time() - t0))
    return done


class Progress:
    """Position, measured pace and an estimate of the time left, from the budget each run trains itself.
    The count of runs is an estimate until the learning rates are chosen (report_runs); replan() corrects it."""

    def __init__(self, runs: int, total_cost: float, jobs: int = 1):
        self.runs, self.total, self.done, self.seconds, self.jobs, self.count = runs, total_cost, 0.0, 0.0, jobs, 0

    def replan(self, runs: int, total_cost: float) -> None:
        self.runs, self.total = self.count + runs, self.done + total_cost

    def report(self, run: Run, what: str, seconds: float) -> None:
        self.count += 1
        self.done, self.seconds = self.done + run.cost * (seconds > 0), self.seconds + seconds
        left = (f", about {self.seconds / self.done * (self.total - self.done) / self.jobs / 60:.1f} min left"
                if self.done else "")
        print(f"[{self.count}/{self.runs}{left}] {run.phase} {run.label}: {what}", flush=True)


def ladders(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped by (arm, lr, seed), in plan order: each group's top run first."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.arm, run.lr, run.seed), []).append(run)
    return list(groups.values())


def run_all(runs: list[Run], progress: Progress, dry_run: bool, jobs: int = 1) -> None:
    """Train every run (or print its command): ladder by ladder, `jobs` ladders at a time."""
    if dry_run:
        for run in runs:
            fork = f"   # continues {rel(run.fork[0])} after step {run.fork[1]}" if run.fork else ""
            print(shlex.join(["python", "train.py", *run.args]) + ("   # finished" if run.finished else fork))
        return
    if jobs <= 1 or launcher() is not None:
        for ladder in ladders(runs):
            for run, what, seconds in train_ladder(ladder):
                progress.report(run, what, seconds)
        return
    threads = max(1, (os.cpu_count() or jobs) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(train_ladder, ladder, threads) for ladder in ladders(runs)}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    for run, what, seconds in future.result():  # a StudyError in a worker is raised here
                        progress.report(run, what, seconds)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (study.py turns it into one): stop the workers too,
            for worker in multiprocessing.active_children():  # or they train on as orphans; a run stopped
                worker.terminate()  # mid-step resumes from its last (atomically written) checkpoint
            raise
        except BaseException:
            for future in pending:  # the ladders not started yet; the running ones finish
                future.cancel()
            raise
