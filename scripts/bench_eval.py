"""eval.py's speed on the case issue 11 measured: a ~3.3M-parameter GPT with GPT-2 BPE (2 layers, width 64,
64-token windows, its 50304-way head most of the work) scoring the whole embedded OpenWebText sample
(data/corpora/openwebtext_sample_1206docs.jsonl, 1.43M tokens), eval.py run as its own process. Prints
one JSON line: tokens scored, seconds, tokens/s, user and system CPU seconds, peak RSS.

    python scripts/bench_eval.py                 # about two minutes on 2 CPU cores
    python scripts/bench_eval.py --threads 1 --batch_size 64

Measured on 2 cores: 1,428,563 tokens in 126 s, 11.3k tokens/s, user 242 s, system 3.6 s, 1.2 GiB peak.
The issue reported 743k tokens in 116 s with more system (2:13) than user time (6.4k tokens/s): 1.8x.
The head alone is 2 x 64 x 50304 FLOPs a token: a plain float32 matmul of its shape (512 tokens at once)
runs at 63.5 GFLOP/s here, 9.9k tokens/s, so eval.py is at the head's matmul bound; what remains is the
model's own cost, not the scoring's.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT / "data" / "corpora" / "openwebtext_sample_1206docs.jsonl"


def checkpoint(out_dir: Path) -> None:
    """One training step of the tiny GPT on the BPE sample: a checkpoint of the benchmark's shape."""
    from config import load_config
    from engine.trainer import train
    if not (ROOT / "data" / "owt_sample" / "meta.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "data" / "prepare.py"), "owt_sample"], check=True, cwd=ROOT)
    overrides = ['--data.dataset="owt_sample"', f'--train.out_dir="{out_dir}"', "--train.max_iters=1",
                 "--train.eval_iters=1", "--train.log_interval=1", "--optim.warmup_iters=0", "--wandb.enabled=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        train(load_config(ROOT / "configs" / "tiny_gpt.toml", overrides))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="eval.py --threads (0: its default)")
    p.add_argument("--batch_size", type=int, default=0, help="eval.py --batch_size (0: its default)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        checkpoint(run)
        cmd = [sys.executable, str(ROOT / "eval.py"), "--out_dir", str(run), "--files", str(CORPUS), "--json"]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--batch_size", str(args.batch_size)] if args.batch_size else []
        # as a user runs it: its own process (eval.py tunes the allocator only when it is the process)
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens = result["overall"]["tokens"] if "overall" in result else result["tokens"]
    print(json.dumps({"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds),
                      "user_s": round(after.ru_utime - before.ru_utime, 1),
                      "system_s": round(after.ru_stime - before.ru_stime, 1),
                      "peak_rss_mib": round(after.ru_maxrss / 1024)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
