"""What the benchmarks, the GPU check and the tests share, kept out of the training core (engine/):
timing training steps and searching the largest batch (timing.py), which attention kernel runs
(sdpa.py), and the seconds-long dataset and run of the smoke checks (smoke.py). bench.py and scripts/
are the tools; they import this package, never the other way round."""
