"""The host-side cost a training pays besides the model: generating a synthetic batch. Speed targets live
here, printed, not in timed tests (the study's intervals, t intervals over a few seeds, cost nothing).

    python scripts/bench_host.py     # one JSON line per figure; a few seconds

Target: a realistic synthetic batch (64 x 256 tokens, vocabulary 8192, 32 pairs) well under 10 ms, so
that data never limits a CPU step. Measured on 2 Zen 4 cores: see the note of issue 18.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.synthetic import SyntheticTask  # noqa: E402


def median_ms(work: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        work(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    for name in ("copy", "mqar"):
        task = SyntheticTask(name, vocab_size=8192, n_pairs=32)
        ms = median_ms(lambda i: task.batch("train", 64, 256, seed=0, step=i, micro=0), 15)
        print(json.dumps({"figure": f"{name}_batch_64x256_ms", "median_ms": round(ms, 3), "target_ms": 10}))


if __name__ == "__main__":
    main()
