"""Kill -9 a tiny training run at random moments, many times in a row, and check that nothing breaks.

python scripts/fault_inject.py --trials 40 [--seed 0] [--out DIR] [--max-iters 60]

Each trial starts `train.py ... --train.init_from=auto` and SIGKILLs it: at a random moment of a random
step, during start-up, or (a fraction of trials) while a checkpoint or the manifest is being written:
the process is frozen with SIGSTOP as soon as a fresh `*.tmp` appears and killed only if it is still there,
so those kills land inside a write for certain. After every kill, every checkpoint the manifest names
must pass its sha256 and load with weights_only=True; the next launch must resume from the newest one.
When the trials are spent the run finishes, and its final weights must equal, bit for bit, those of
the same run never interrupted (the trainer is deterministic on the CPU), and so must its loss curve.
Prints one line per trial and a final one-line JSON summary; exits 0 only if everything held.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.checkpoint import MANIFEST, has_checkpoint, load_checkpoint, read_manifest, sha256_file  # noqa: E402
from tools.smoke import tiny_overrides, write_char_dataset  # noqa: E402

EVAL_INTERVAL = 3   # a checkpoint every 3 steps: many writes to land in
TIMING_KEYS = ("time_s", "tokens_per_s", "mfu")  # the only metrics allowed to differ between two runs
LAUNCH_TIMEOUT = 600


class Launch:
    """One train.py process; a thread drains stdout and notes when it prints 'start at step N'."""

    def __init__(self, args: list[str], log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        with open(log, "a") as err:  # stderr of every launch, for a post-mortem
            self.proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=err)
        self.t0, self.t_start, self.start_step = time.monotonic(), None, None
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if (m := re.search(r"start at step (\d+)", line)) and self.start_step is None:
                self.start_step, self.t_start = int(m[1]), time.monotonic()
                self.started.set()
        self.started.set()  # EOF: wake a waiter even if the line never came

    def killed(self) -> bool:
        return self.proc.wait(LAUNCH_TIMEOUT) == -signal.SIGKILL


def fresh_tmps(out_dir: Path, before: dict) -> list[str]:
    """*.tmp files created or changed since the snapshot `before` (stale ones from older kills are not)."""
    return sorted(name for name, st in tmp_snapshot(out_dir).items() if before.get(name) != st)


def tmp_snapshot(out_dir: Path) -> dict:
    snap = {}
    for p in out_dir.glob("*.tmp") if out_dir.exists() else ():
        try:
            st = p.stat()
            snap[p.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:  # renamed away while we looked
            pass
    return snap


def freeze(pid: int) -> None:
    """SIGSTOP and wait until the kernel reports the process stopped, so the files hold still."""
    os.kill(pid, signal.SIGSTOP)
    for _ in range(2000):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in "Tt":
                return
        time.sleep(0.0005)


def kill_in_write(launch: Launch, out_dir: Path, before: dict, target: str, skip: int) -> None:
    """SIGKILL inside a checkpoint write (target 'ckpt') or a manifest write ('manifest') after letting
    `skip` checkpoint writes complete. The manifest write takes microseconds to milliseconds: after 3 more
    checkpoints without catching one, take the next checkpoint write instead."""
    passed = 0  # checkpoint writes let through
    while launch.proc.poll() is None:
        for name in fresh_tmps(out_dir, before):
            if not name.startswith("ckpt"):  # result.json.tmp: the run is ending
                continue
            manifest = name == MANIFEST + ".tmp"
            if passed >= skip and (manifest == (target == "manifest") or (not manifest and passed >= skip + 3)):
                freeze(launch.proc.pid)
                if name in fresh_tmps(out_dir, before):  # still unfinished: the kill lands inside the write
                    launch.proc.kill()
                    return
                os.kill(launch.proc.pid, signal.SIGCONT)
            passed += not manifest
            while launch.proc.poll() is None and name in fresh_tmps(out_dir, before):
                time.sleep(0.0002)  # let this write finish before looking for the next one
        time.sleep(0.0002)


def kill_after_step(launch: Launch, out_dir: Path, target: int, rng: random.Random) -> None:
    """SIGKILL at a random moment of the step after `target`: wait for metrics.jsonl to log `target`,
    then for a random share of the time the previous step took (so it adapts to the machine's speed)."""
    seen, t_seen, gap = -1, time.monotonic(), 0.05
    while launch.proc.poll() is None:
        step = max((m["step"] for m in metrics(out_dir) if "event" not in m), default=-1)
        if step != seen:
            seen, t_seen, gap = step, time.monotonic(), time.monotonic() - t_seen if seen >= 0 else gap
        if step >= target:
            time.sleep(rng.uniform(0, gap))
            launch.proc.kill()
            return
        time.sleep(0.002)


def verify(out_dir: Path) -> tuple[int, list[str], int]:
    """(checkpoints verified, problems, step the next launch must resume from)."""
    problems, entries = [], read_manifest(out_dir)
    if (out_dir / MANIFEST).exists():
        try:
            json.loads((out_dir / MANIFEST).read_text())["checkpoints"]
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"manifest unreadable: {e}")
    for e in entries:
        path = out_dir / e["file"]
        if not path.is_file() or sha256_file(path) != e["sha256"]:
            problems.append(f"{e['file']}: missing or checksum mismatch")
            continue
        try:
            if torch.load(path, map_location="cpu", weights_only=True)["step"] != e["step"]:
                problems.append(f"{e['file']}: holds another step than the manifest says")
        except Exception as exc:
            problems.append(f"{e['file']}: unreadable ({exc})")
    resume = load_checkpoint(out_dir, log=problems.append)["step"] if has_checkpoint(out_dir) else 0
    return len(entries) - len(problems), problems, resume


def metrics(out_dir: Path) -> list[dict]:
    """The lines of metrics.jsonl; a line being written while we read is skipped."""
    path, lines = out_dir / "metrics.jsonl", []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    return lines


def curve(out_dir: Path) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in metrics(out_dir)]


def record_kill(s: dict, run_dir: Path, launch: Launch, before: set, mode: str, echo) -> int:
    """Check the run directory after a kill, add it to the summary s; returns the step to resume from."""
    in_write = [n for n in fresh_tmps(run_dir, before) if n.startswith("ckpt")]
    s["kills_in_ckpt_write"] += bool(in_write)
    s["kills_in_manifest_write"] += MANIFEST + ".tmp" in in_write
    s["kills_in_startup"] += launch.start_step is None
    ok, problems, resume = verify(run_dir)
    s["checkpoints_verified"] += ok
    s["unreadable_checkpoints"] += len(problems)
    reached = max((m["step"] for m in metrics(run_dir) if "event" not in m), default=0)
    lost = reached - resume if launch.start_step is not None else 0  # a process that never started lost nothing
    s["metrics_lines_lost"] += lost < 0  # the checkpoint is ahead of metrics.jsonl: the lines between are gone
    s["steps_lost"].append(max(lost, 0))
    echo(f"kill {s['kills']:3d} ({mode}{', in ' + ' '.join(in_write) if in_write else ''}): reached step "
         f"{reached}, resume from {resume}, lost {lost}; {ok} checkpoint(s) verified"
         f"{'; PROBLEMS: ' + '; '.join(problems) if problems else ''}")
    return resume


def finish(s: dict, launch: Launch, reference: Launch, run_dir: Path, reference_dir: Path) -> dict:
    """Wait for the last launch and the reference run, compare weights and curves; the final summary."""
    finished = launch.proc.wait(LAUNCH_TIMEOUT) == 0 and (run_dir / "result.json").exists()
    reference_ok = reference.proc.wait(LAUNCH_TIMEOUT) == 0
    weights_equal = curves_equal = False
    if finished and reference_ok:
        a, b = load_checkpoint(run_dir)["model"], load_checkpoint(reference_dir)["model"]
        weights_equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        curves_equal = curve(run_dir) == curve(reference_dir)
    lost = s.pop("steps_lost")
    s.update(max_steps_lost=max(lost, default=0), mean_steps_lost=round(sum(lost) / max(len(lost), 1), 2),
             finished=finished, final_weights_equal=weights_equal, loss_curves_equal=curves_equal)
    s["ok"] = bool(finished and weights_equal and curves_equal and s["unreadable_checkpoints"] == 0
                   and s["resume_failures"] == 0 and s["max_steps_lost"] <= EVAL_INTERVAL)
    return s


def run_campaign(trials: int, seed: int, out: Path, max_iters: int, write_fraction: float = 0.4,
                 startup_fraction: float = 0.1, dropout: float = 0.1, modes: list[str] | None = None,
                 echo=print) -> dict:
    """Deliver `trials` kills (modes drawn at random, or taken in turn from `modes`: write | ckpt |
    manifest | startup | timer), let the run finish, compare with an uninterrupted run; return the summary."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    write_char_dataset(out)
    (out / "empty.toml").write_text("")
    extra = {"train.max_iters": max_iters, "train.eval_interval": EVAL_INTERVAL, "train.log_interval": 1,
             "model.dropout": dropout, "train.threads": 1, "train.init_from": '"auto"'}  # dropout: RNG state matters
    args = lambda d: [str(out / "empty.toml"), *tiny_overrides(out, out / d, **extra)]
    run_dir, log = out / "faulted", out / "stderr.log"
    reference = Launch(args("reference"), out / "reference.log")  # runs alongside the trials
    s = {"trials": trials, "kills": 0, "kills_in_ckpt_write": 0, "kills_in_manifest_write": 0, "kills_in_startup": 0,
         "resumes_ok": 0, "resume_failures": 0, "checkpoints_verified": 0, "unreadable_checkpoints": 0,
         "metrics_lines_lost": 0, "steps_lost": []}
    startup, expected = 5.0, 0  # seconds a launch takes to start (measured), the step the next one starts at
    while True:
        before, launch = tmp_snapshot(run_dir), Launch(args("faulted"), log)
        mode = None if s["kills"] >= trials else modes[s["kills"] % len(modes)] if modes else rng.choices(
            ["write", "startup", "timer"], [write_fraction, startup_fraction, 1 - write_fraction - startup_fraction])[0]
        if mode == "startup":  # anywhere from interpreter start to the first step, not later
            launch.started.wait(rng.uniform(0, startup))
            launch.proc.kill()
        launch.started.wait(LAUNCH_TIMEOUT)
        if launch.start_step is None and mode != "startup" or launch.start_step not in (None, expected):
            s["resume_failures"] += 1
            echo(f"resume failed: expected start at step {expected}, got {launch.start_step}; see {log}")
            break
        if launch.start_step is not None:
            startup = launch.t_start - launch.t0
            s["resumes_ok"] += s["kills"] > 0  # the first launch starts from scratch: not a resume
        if mode in ("write", "ckpt", "manifest"):  # write: a checkpoint or the manifest, drawn
            target = rng.choice(["ckpt", "manifest"]) if mode == "write" else mode
            kill_in_write(launch, run_dir, before, target, rng.randint(0, 1))
        elif mode == "timer":  # spread over the run: the steps left shared by the kills left and the last launch
            pace = max(1, round(2 * (max_iters - expected) / (trials - s["kills"] + 1)))
            kill_after_step(launch, run_dir, min(expected + rng.randint(0, pace), max_iters - 1), rng)
        if mode is None or not launch.killed():  # trials spent, or it finished before the kill
            break
        s["kills"] += 1
        expected = record_kill(s, run_dir, launch, before, mode, echo)
    return finish(s, launch, reference, run_dir, out / "reference")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=30, help="SIGKILLs to deliver before letting the run finish")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill schedule (not the training)")
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a fresh temporary one)")
    p.add_argument("--max-iters", type=int, default=60, help="length of the training run in steps")
    p.add_argument("--write-fraction", type=float, default=0.4, help="share of kills aimed at a checkpoint write")
    p.add_argument("--dropout", type=float, default=0.1, help="model.dropout (> 0: resume must restore the RNG)")
    a = p.parse_args(argv)
    out = a.out or Path(tempfile.mkdtemp(prefix="fault_inject_"))
    if out.exists() and any(out.iterdir()):
        p.error(f"--out {out} is not empty")
    summary = run_campaign(a.trials, a.seed, out, a.max_iters, a.write_fraction, dropout=a.dropout)
    print(f"kills {summary['kills']} (in a checkpoint write {summary['kills_in_ckpt_write']}, of which the manifest "
          f"{summary['kills_in_manifest_write']}; in start-up {summary['kills_in_startup']}), resumes ok "
          f"{summary['resumes_ok']}, unreadable checkpoints {summary['unreadable_checkpoints']}, steps lost max "
          f"{summary['max_steps_lost']} mean {summary['mean_steps_lost']}, kills that lost metrics lines "
          f"{summary['metrics_lines_lost']}, final weights equal {summary['final_weights_equal']}, loss curves equal "
          f"{summary['loss_curves_equal']}; files in {out}")
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
