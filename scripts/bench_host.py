"""The host-side costs a training or a study pays besides the model: generating a synthetic batch and
the study's bootstrap intervals. Speed targets live here, printed, not in timed tests.

    python scripts/bench_host.py     # one JSON line per figure; a few seconds

Targets: a realistic synthetic batch (64 x 256 tokens, vocabulary 8192, 32 pairs) well under 10 ms, so
that data never limits a CPU step; 2,000 bootstrap replicates of a 3 x 100 table under 0.5 s, so that a
report with dozens of intervals takes seconds. Measured on 2 Zen 4 cores: see the note of issue 18.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from reporting.stats import bootstrap_mean_ci  # noqa: E402
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
    diffs = np.random.default_rng(0).normal(size=(3, 100))
    ms = median_ms(lambda i: bootstrap_mean_ci(diffs, n_boot=2000, seed=i), 5)
    print(json.dumps({"figure": "bootstrap_2000_replicates_3x100_ms", "median_ms": round(ms, 3), "target_ms": 500}))


if __name__ == "__main__":
    main()
